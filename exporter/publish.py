"""The snapshot folder as the exporter sees it: the lock, the newest header, the guards, retention.

Writing the file itself is ``avapdefs.folder.atomic_file`` (temp name, fsync,
rename, fsync the folder) and ``avapdefs.format.snapshot.SnapshotWriter``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from avapdefs.errors import SnapshotError
from avapdefs.folder import list_deltas, list_snapshots
from avapdefs.format import snapshot
from avapdefs.format.snapshot import SnapshotInfo
from exporter.errors import CountDropError, EmptyCatalogError, LockedError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_PREFIX_BYTES = snapshot.PREAMBLE.size + snapshot.MAX_HEADER_BYTES


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[Path]:
    """Hold the exporter's exclusive lock on ``folder`` for the block.

    The lock is ``flock`` on a file that is never deleted (deleting it would
    let two exporters lock two different files); the kernel releases it when
    the holder exits, however it exits.

    Raises:
        LockedError: another process holds it; this one does not wait.
    """
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(path) from None
        yield path
    finally:
        os.close(fd)


def read_header(path: Path) -> SnapshotInfo:
    """The header of the snapshot at ``path``, without reading its payload.

    Raises:
        SnapshotError: the file cannot be read or its header is not valid.
    """
    try:
        with open(path, "rb") as file:
            prefix = file.read(_PREFIX_BYTES)
    except OSError as exc:
        raise SnapshotError(f"cannot read snapshot: {exc.strerror or exc}", path=path) from exc
    return snapshot.read_info(prefix, path=path)


@dataclass(frozen=True)
class Newest:
    """What the folder holds before this run.

    Attributes:
        version: the highest version present (0 when none); the next is this + 1.
        info: the header of the newest snapshot whose header reads, or None.
    """

    version: int
    info: SnapshotInfo | None


def find_newest(folder: Path) -> Newest:
    """The highest version in ``folder`` and the newest readable header."""
    snapshots = list_snapshots(folder)
    for _, path in reversed(snapshots):
        try:
            info = read_header(path)
        except SnapshotError as exc:
            logger.warning("skipping unreadable snapshot: %s", exc)
            continue
        return Newest(snapshots[-1][0], info)
    return Newest(snapshots[-1][0] if snapshots else 0, None)


def check_guards(
    info: SnapshotInfo, previous: SnapshotInfo | None, *, allow_empty: bool, force: bool, max_drop_percent: float
) -> None:
    """Refuse a catalog that looks like a damaged table rather than an edit.

    Args:
        info: the new catalog's header.
        previous: the newest published header, if any.
        allow_empty: accept an empty catalog (and so any drop to zero).
        force: accept any drop in command count.
        max_drop_percent: the largest drop accepted without ``force``.

    Raises:
        EmptyCatalogError: no commands and not ``allow_empty``.
        CountDropError: the count fell by more than ``max_drop_percent``.
    """
    if info.command_count == 0:
        if not allow_empty:
            raise EmptyCatalogError("the table holds no commands; nothing published (use --allow-empty)")
        return
    if previous is None or force or previous.command_count == 0:
        return
    drop = 100.0 * (previous.command_count - info.command_count) / previous.command_count
    if drop > max_drop_percent:
        raise CountDropError(
            f"command count would drop from {previous.command_count} to {info.command_count} "
            f"({drop:.1f}%, more than {max_drop_percent:g}%); nothing published (use --force)",
            previous=previous.command_count,
            current=info.command_count,
        )


def prune(folder: Path, keep: int) -> list[Path]:
    """Delete the oldest snapshots beyond the newest ``keep`` (at least one is always kept), and orphaned deltas.

    Returns:
        The paths deleted: snapshots, then deltas.
    """
    snapshots = list_snapshots(folder)
    doomed = [path for _, path in snapshots[: -max(keep, 1)]]
    for path in doomed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        logger.info("deleted %s (retention keeps %s)", path.name, keep)
    return doomed + prune_deltas(folder)


def prune_deltas(folder: Path) -> list[Path]:
    """Delete every delta whose base or target snapshot is no longer in ``folder``.

    Returns:
        The paths deleted.
    """
    present = {version for version, _ in list_snapshots(folder)}
    doomed = [path for base, target, path in list_deltas(folder) if base not in present or target not in present]
    for path in doomed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        logger.info("deleted %s (its base or target snapshot is gone)", path.name)
    return doomed
