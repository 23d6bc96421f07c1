"""A snapshot folder: file names, listing, and atomic installation of new files.

Used by everything that writes snapshot files (the exporter publishing, a
client installing a synced copy) and everything that looks for them (the
server). A snapshot of catalog version N is named ``catalog-<N, 10 digits>.avsnap``;
files being written are hidden (``.tmp-...``) and never match that pattern,
so a reader never sees a partial file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from avapdefs.errors import NoSnapshotError, SnapshotError
from avapdefs.format.snapshot import Snapshot, read_bytes, verify

logger = logging.getLogger(__name__)

SNAPSHOT_SUFFIX = ".avsnap"
DELTA_SUFFIX = ".avdelta"
TEMP_PREFIX = ".tmp-"
_NAME = re.compile(r"^catalog-(\d{10,})\.avsnap$")
_DELTA_NAME = re.compile(r"^catalog-(\d{10,})\.from-(\d{10,})\.avdelta$")


def snapshot_name(version: int) -> str:
    """The file name of catalog version ``version``."""
    return f"catalog-{version:010d}{SNAPSHOT_SUFFIX}"


def parse_version(name: str) -> int | None:
    """The catalog version in a snapshot file name, or None for any other name."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def delta_name(base_version: int, target_version: int) -> str:
    """The file name of the delta from ``base_version`` to ``target_version``."""
    return f"catalog-{target_version:010d}.from-{base_version:010d}{DELTA_SUFFIX}"


def list_deltas(folder: Path) -> list[tuple[int, int, Path]]:
    """Every delta file in ``folder`` as (base version, target version, path), sorted."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = [(int(m.group(2)), int(m.group(1)), folder / name) for name in names if (m := _DELTA_NAME.match(name))]
    return sorted(found)


def list_snapshots(folder: Path) -> list[tuple[int, Path]]:
    """Every snapshot file in ``folder`` as (version, path), oldest first.

    A missing folder holds no snapshots.
    """
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = [(version, folder / name) for name in names if (version := parse_version(name)) is not None]
    return sorted(found)


def newest_version(folder: Path) -> int:
    """The highest version in ``folder``, 0 when it holds none."""
    snapshots = list_snapshots(folder)
    return snapshots[-1][0] if snapshots else 0


@dataclass(frozen=True)
class VerifiedFile:
    """A snapshot file read whole into memory and verified."""

    path: Path
    data: bytes  # the file's bytes exactly as verified
    snapshot: Snapshot


def read_verified(path: Path) -> VerifiedFile:
    """Read the snapshot file at ``path`` into memory and verify it.

    Raises:
        SnapshotError: the file cannot be read or is not a valid snapshot.
    """
    data = read_bytes(path)
    return VerifiedFile(path, data, verify(data, path=path))


def read_newest(folder: Path) -> VerifiedFile:
    """The newest snapshot in ``folder`` that verifies.

    Each newer file that does not verify is skipped with one warning naming
    the file and what is wrong with it.

    Raises:
        NoSnapshotError: no snapshot file in ``folder`` verifies (or there is none).
    """
    skipped: list[SnapshotError] = []
    for _, path in reversed(list_snapshots(folder)):
        try:
            return read_verified(path)
        except SnapshotError as exc:
            logger.warning("skipping snapshot %s: %s", path, exc.reason)
            skipped.append(exc)
    what = f"none of its {len(skipped)} snapshot files verifies" if skipped else "it holds no snapshot file"
    raise NoSnapshotError(f"no valid snapshot: {what}", path=folder, skipped=tuple(skipped))


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(final_path: Path) -> Iterator[BinaryIO]:
    """Write a file that appears at ``final_path`` whole or not at all.

    Yields a binary file under a hidden temporary name in the same folder.
    When the block ends normally the file is flushed, fsynced, renamed onto
    ``final_path`` and the folder fsynced; when it raises, the temporary file
    is removed and ``final_path`` is untouched.
    """
    folder = final_path.parent
    temp_path = folder / f"{TEMP_PREFIX}{final_path.name}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        with open(temp_path, "w+b") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, final_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp_path.unlink()
        raise
    fsync_folder(folder)


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete temporary files left in ``folder`` by writers that died.

    Call only while no other writer can be using the folder (for the exporter,
    while holding its lock).

    Returns:
        The paths removed.
    """
    removed = []
    for path in folder.glob(f"{TEMP_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed
