"""Reading a file of the catalog: the one place a snapshot, delta or pin file is opened for reading.

Every reader of those files (the snapshot format, the streamed reader, the
folder, the server's deltas, inspect) comes here, so an ``OSError`` becomes
a ``SnapshotError`` naming the file in one place, with the original chained.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from avapdefs.errors import SnapshotError


def open_file(path: Path | str, what: str = "snapshot") -> BinaryIO:
    """Open the file at ``path`` for reading; the caller closes it.

    Args:
        path: the file.
        what: what the file is, for the error message ("snapshot", "delta", ...).

    Raises:
        SnapshotError: the file cannot be opened (the OSError chained).
    """
    try:
        return open(path, "rb")
    except OSError as exc:
        raise _error(exc, path, what) from exc


def read_bytes(path: Path | str, what: str = "snapshot", *, prefix_bytes: int | None = None) -> bytes:
    """The bytes of the file at ``path``: all of them, or at most its first ``prefix_bytes``.

    Raises:
        SnapshotError: the file cannot be read (the OSError chained).
    """
    with open_file(path, what) as file:
        try:
            return file.read() if prefix_bytes is None else file.read(prefix_bytes)
        except OSError as exc:
            raise _error(exc, path, what) from exc


def read_from(file: BinaryIO, size: int, path: Path | str, what: str = "snapshot") -> bytes:
    """Up to ``size`` bytes from an open ``file`` (fewer only at its end).

    Raises:
        SnapshotError: the read fails (the OSError chained).
    """
    try:
        return file.read(size)
    except OSError as exc:
        raise _error(exc, path, what) from exc


def _error(exc: OSError, path: Path | str, what: str) -> SnapshotError:
    return SnapshotError(f"cannot read {what}: {exc.strerror or exc}", path=path)
