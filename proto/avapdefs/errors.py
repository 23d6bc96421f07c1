"""Every error the shared core raises, in one hierarchy.

    AvapDefsError
     ├── SnapshotError                 a snapshot file cannot be used (carries .path)
     │    ├── NotASnapshotError        wrong magic: not a snapshot file at all
     │    ├── UnsupportedFormatError   a snapshot of a format version this code does not read
     │    ├── CorruptSnapshotError     header, sizes, zstd frame or content hash do not agree
     │    │    └── TruncatedSnapshotError   the file ends before its header says it does
     │    └── NoSnapshotError          a folder holds no snapshot that verifies
     ├── CatalogOrderError             commands given to a writer out of order or twice
     ├── DeltaMismatchError            a delta applied to the wrong base, or its result fails the target hash
     ├── LockedError                   another writer holds a snapshot folder's lock (carries .lock_path)
     ├── OptionError                   an AVAP_* variable's value cannot be used (carries .variable)
     ├── TlsFileError                  a TLS certificate, key or CA file cannot be used (carries .field)
     └── ServerError                   a call to a definition server failed (carries .code, .details)
          ├── CommandNotFoundError     the server holds no command of that name (carries .name)
          ├── ServerUnavailableError   the server could not be reached, retries included
          │    └── TlsError            no secure connection: TLS on one side only, a certificate refused
          └── SyncError                a sync stream ended early or its data did not verify

Foreign errors are translated once, with the original chained: OSError while
reading a file in ``fileio.py``; zstandard's ZstdError and protobuf's
DecodeError in ``format/snapshot.py`` and ``format/delta.py``; grpc's RpcError
in ``client/rpc.py``.
"""

from __future__ import annotations

from pathlib import Path


class AvapDefsError(Exception):
    """Base class of every error raised by ``avapdefs``."""


class SnapshotError(AvapDefsError):
    """A snapshot file cannot be used.

    Attributes:
        path: the file, when the snapshot came from one (else None).
        reason: what is wrong, in words.
    """

    def __init__(self, reason: str, *, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.reason = reason
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{reason}")


class NotASnapshotError(SnapshotError):
    """The file does not start with the snapshot magic."""


class UnsupportedFormatError(SnapshotError):
    """The file is a snapshot of a format version this code cannot read.

    Attributes:
        format_version: the version the file declares.
    """

    def __init__(self, reason: str, *, format_version: int, path: Path | str | None = None) -> None:
        self.format_version = format_version
        super().__init__(reason, path=path)


class CorruptSnapshotError(SnapshotError):
    """The header, the sizes, the zstd frame or the content hash do not agree."""


class TruncatedSnapshotError(CorruptSnapshotError):
    """The file is shorter than its header says."""


class CatalogOrderError(AvapDefsError):
    """Commands were given to a snapshot writer out of name order, or a name twice.

    Attributes:
        name: the offending command name.
        previous: the name written just before it.
    """

    def __init__(self, name: str, previous: str) -> None:
        self.name = name
        self.previous = previous
        what = "duplicate command name" if name == previous else "command names out of order"
        super().__init__(f"{what}: {name!r} after {previous!r}")


class DeltaMismatchError(AvapDefsError):
    """A delta does not apply to the given base, or its result is not the target."""


class NoSnapshotError(SnapshotError):
    """A snapshot folder holds no snapshot file that verifies.

    Attributes:
        skipped: the error of each snapshot file that was tried and refused, newest first.
    """

    def __init__(self, reason: str, *, path: Path | str | None = None, skipped: tuple[SnapshotError, ...] = ()) -> None:
        self.skipped = skipped
        super().__init__(reason, path=path)


class ServerError(AvapDefsError):
    """A call to a definition server failed.

    Attributes:
        code: the gRPC status code's name, e.g. ``"NOT_FOUND"``.
        details: the server's message.
    """

    def __init__(self, code: str, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code}: {details}")


class CommandNotFoundError(ServerError):
    """The server's catalog holds no command of that name.

    Attributes:
        name: the command asked for.
    """

    def __init__(self, name: str, details: str) -> None:
        self.name = name
        super().__init__("NOT_FOUND", details)


class ServerUnavailableError(ServerError):
    """The server could not be reached, after every retry."""


class TlsError(ServerUnavailableError):
    """No secure connection: the TLS handshake failed, or one side spoke TLS and the other did not.

    Not retried by a single call (no retry changes a certificate); a loop that follows a server
    (``follow``) retries it as it retries any unreachable server.
    """


class SyncError(ServerError):
    """A sync stream ended early, or the data it delivered did not verify."""


class LockedError(AvapDefsError):
    """Another process holds a snapshot folder's writer lock.

    Attributes:
        lock_path: the lock file.
    """

    def __init__(self, lock_path: Path) -> None:
        self.lock_path = lock_path
        super().__init__(f"another exporter is running (it holds {lock_path}); nothing done")


class OptionError(AvapDefsError, ValueError):
    """An ``AVAP_*`` variable (or another setting) has a value its program cannot use.

    Attributes:
        variable: the variable, e.g. ``"AVAP_PORT"``.
    """

    def __init__(self, message: str, *, variable: str) -> None:
        self.variable = variable
        super().__init__(message)


class TlsFileError(AvapDefsError, ValueError):
    """A TLS certificate, key or CA file cannot be used (``avapdefs.tls`` checks them before use).

    Attributes:
        field: the setting it came from (``tls_cert``, ``tls_key``, ``tls_ca``, ``tls_client_ca`` ...).
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)
