"""Reading a file of the catalog: the one place a snapshot, delta or pin file is opened for reading.

Every reader of those files (the snapshot format, the streamed reader, the
folder, the server's deltas, inspect) comes here, so an ``OSError`` becomes
a ``SnapshotError`` naming the file in one place, with the original chained.

Nothing in a folder is trusted by its name: only a regular file is read. The
file is opened with ``O_NOFOLLOW`` (a symbolic link is refused, so no name
can lead out of the folder or to ``/dev/zero``) and ``O_NONBLOCK`` (opening a
FIFO returns at once instead of waiting for a writer), then ``fstat`` of the
opened descriptor must say "regular file" before a byte is read. Checking the
descriptor, not the name, leaves no window for the name to be swapped.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from avapdefs.errors import SnapshotError


def open_file(path: Path | str, what: str = "snapshot") -> BinaryIO:
    """Open the file at ``path`` for reading; the caller closes it.

    Args:
        path: the file.
        what: what the file is, for the error message ("snapshot", "delta", ...).

    Raises:
        SnapshotError: the file cannot be opened, is a symbolic link, or is not a
            regular file (a FIFO, a device, a directory).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SnapshotError(f"{what} is a symbolic link; only regular files are read", path=path) from exc
        raise _error(exc, path, what) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SnapshotError(f"{what} is not a regular file ({_kind(mode)}); not read", path=path)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


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


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _error(exc: OSError, path: Path | str, what: str) -> SnapshotError:
    return SnapshotError(f"cannot read {what}: {exc.strerror or exc}", path=path)
