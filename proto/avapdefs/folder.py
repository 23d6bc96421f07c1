"""The snapshot folder: its file names, listing, the pin, choosing the version to use, atomic writes, the lock, pruning.

The one place that knows how a folder of snapshots works; the exporter
(publishing), the server (serving and following) and the client (its local
cache) all call it. A folder holds:

    catalog-<N, 10 digits>.avsnap              the snapshot of catalog version N
    catalog-<N>.from-<B>.avdelta               a delta from version B to version N
    PIN                                        a version number: serve that one, not the newest
    .lock                                      the exporter's lock (flock; never deleted)
    .export-state                              the exporter's record of the table it last read (exporter/unchanged.py)
    .source-state                              how a server following an object store is doing (remote.Follower)
    .serving/                                  the server's mapped serving images, one per version (server/image.py)
    .tmp-*                                     files being written; never match a name above

Files appear only by rename (``atomic_file``), so a reader never sees a
partial file. Nothing is trusted by its name: a snapshot is used only once
it verifies, and a version that does not is skipped with one warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from avapdefs import fileio
from avapdefs.errors import LockedError, NoSnapshotError, SnapshotError

# The snapshot format (and protobuf with it) is imported by read_header and read_verified when
# called: avap-server's supervisor lists and checks folders but never reads a snapshot, and the
# import would add about 20 ms to its start-up.
if TYPE_CHECKING:
    from avapdefs.format.snapshot import Snapshot, SnapshotInfo

logger = logging.getLogger(__name__)

SNAPSHOT_SUFFIX = ".avsnap"
DELTA_SUFFIX = ".avdelta"
TEMP_PREFIX = ".tmp-"
PIN_NAME = "PIN"
LOCK_NAME = ".lock"
SOURCE_STATE_NAME = ".source-state"
# Every file of a folder: read by any user (a server may run as another user than its writer), written
# by its writer only; never 0666 under a umask of 000. Nothing secret is ever written into a folder.
FILE_MODE = 0o644
_MAX_SOURCE_STATE_BYTES = 64 << 10
_NAME = re.compile(r"^catalog-(\d{10,})\.avsnap$")
_DELTA_NAME = re.compile(r"^catalog-(\d{10,})\.from-(\d{10,})\.avdelta$")
_TEMP_WRITER = re.compile(r"\.(\d{1,10})\.[0-9a-f]{8}$")  # atomic_file's ".<pid>.<random>" ending
_T = TypeVar("_T")
# Every version number read from a name, a pin file or a flag is bounded: the header's
# field is 64 bits, and one more than the largest version must still fit.
MAX_VERSION = (1 << 63) - 1
_MAX_VERSION_DIGITS = len(str(MAX_VERSION))


def snapshot_name(version: int) -> str:
    """The file name of catalog version ``version``."""
    return f"catalog-{version:010d}{SNAPSHOT_SUFFIX}"


def parse_version(name: str) -> int | None:
    """The catalog version in a snapshot file name, or None for any other name."""
    match = _NAME.match(name)
    return _bounded(match.group(1)) if match else None


def _bounded(digits: str) -> int | None:
    if len(digits) > _MAX_VERSION_DIGITS:
        return None
    value = int(digits)
    return value if value <= MAX_VERSION else None


def delta_name(base_version: int, target_version: int) -> str:
    """The file name of the delta from ``base_version`` to ``target_version``."""
    return f"catalog-{target_version:010d}.from-{base_version:010d}{DELTA_SUFFIX}"


def is_followed(name: str) -> bool:
    """Whether a change to the file ``name`` can change what a server of the folder serves."""
    return name == PIN_NAME or parse_version(name) is not None or _DELTA_NAME.match(name) is not None


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def list_snapshots(folder: Path) -> list[tuple[int, Path]]:
    """Every snapshot file in ``folder`` as (version, path), oldest first; a missing folder holds none."""
    return sorted((version, folder / name) for name in _names(folder) if (version := parse_version(name)) is not None)


def list_deltas(folder: Path) -> list[tuple[int, int, Path]]:
    """Every delta file in ``folder`` as (base version, target version, path), sorted."""
    matches = [(match, name) for name in _names(folder) if (match := _DELTA_NAME.match(name))]
    bounded = [(_bounded(match.group(2)), _bounded(match.group(1)), folder / name) for match, name in matches]
    return sorted((base, target, path) for base, target, path in bounded if base is not None and target is not None)


def read_header(path: Path) -> SnapshotInfo:
    """The header of the snapshot at ``path``, without reading its payload.

    Raises:
        SnapshotError: the file cannot be read or its header is not valid.
    """
    from avapdefs.format.snapshot import MAX_HEADER_BYTES, PREAMBLE, check_version, read_info

    info = read_info(fileio.read_bytes(path, prefix_bytes=PREAMBLE.size + MAX_HEADER_BYTES), path=path)
    return check_version(info, parse_version(path.name), path)


@dataclass(frozen=True)
class VerifiedFile:
    """A snapshot file read whole into memory and verified."""

    path: Path
    data: bytes  # the file's bytes exactly as verified
    snapshot: Snapshot


def read_verified(path: Path) -> VerifiedFile:
    """Read the snapshot file at ``path`` into memory and verify it, and that its name names its version.

    Raises:
        SnapshotError: the file cannot be read or is not a valid snapshot, or its name gives another version.
    """
    from avapdefs.format.snapshot import read_file_bytes, verify

    data = read_file_bytes(path, named_version=parse_version(path.name))
    return VerifiedFile(path, data, verify(data, path=path))


def _warn_skipped(path: Path, exc: SnapshotError) -> None:
    logger.warning("skipping snapshot %s: %s", path, exc.reason)


def first_valid(
    candidates: Iterable[tuple[int, Path]],
    load: Callable[[Path], _T],
    on_refused: Callable[[Path, SnapshotError], None] = _warn_skipped,
) -> tuple[_T | None, list[SnapshotError]]:
    """``load`` each candidate in turn and return the first result that does not raise SnapshotError.

    Each refused file is reported once through ``on_refused`` (by default a
    warning naming the file and what is wrong with it).

    Returns:
        The first result (None when every candidate was refused), and the errors of those refused.
    """
    refused: list[SnapshotError] = []
    for _, path in candidates:
        try:
            return load(path), refused
        except SnapshotError as exc:
            on_refused(path, exc)
            refused.append(exc)
    return None, refused


def no_snapshot_error(folder: Path, refused: Iterable[SnapshotError] = ()) -> NoSnapshotError:
    """The error for a folder none of whose snapshots could be used."""
    refused = tuple(refused)
    count = len(refused) or len(list_snapshots(folder))
    what = f"none of its {count} snapshot files verifies" if count else "it holds no snapshot file"
    return NoSnapshotError(f"no valid snapshot: {what}", path=folder, skipped=refused)


def read_newest(folder: Path) -> VerifiedFile:
    """The newest snapshot in ``folder`` that verifies.

    Raises:
        NoSnapshotError: no snapshot file in ``folder`` verifies (or there is none).
    """
    found, refused = first_valid(reversed(list_snapshots(folder)), read_verified)
    if found is None:
        raise no_snapshot_error(folder, refused)
    return found


@dataclass(frozen=True)
class Newest:
    """The newest version in a folder, as a writer of the next one needs it.

    Attributes:
        version: the highest version present (0 when none); the next is this + 1.
        info: the header of the newest snapshot whose header reads, or None.
    """

    version: int
    info: SnapshotInfo | None


def read_newest_header(folder: Path) -> Newest:
    """The highest version in ``folder`` and the newest header that reads."""
    snapshots = list_snapshots(folder)
    info, _ = first_valid(reversed(snapshots), read_header)
    return Newest(snapshots[-1][0] if snapshots else 0, info)


@dataclass(frozen=True)
class Choice:
    """Which snapshot files a server of the folder should try, best first.

    Attributes:
        candidates: (version, path) to try in order; the first that verifies is served.
        pinned: the pinned version in force (0 for none).
        missing_pin: a pinned version that is not in the folder (None when all is well).
    """

    candidates: list[tuple[int, Path]]
    pinned: int
    missing_pin: int | None = None


def choose(folder: Path, *, pin: int | None = None, live: int | None = None) -> Choice:
    """The snapshots to try for serving ``folder``, given the version now ``live`` (None before the first).

    The pin file wins over ``pin``. While a version is pinned, only that one
    is tried; if it is not in the folder (``missing_pin``), the live version
    keeps serving, and with none live yet the newest is served instead.
    Unpinned, only versions newer than the live one are tried: the live one
    is the newest that verified.
    """
    pin = read_pin(folder) or pin
    snapshots = list_snapshots(folder)
    if pin is not None:
        pinned = [(version, path) for version, path in snapshots if version == pin]
        missing = None if pinned else pin
        if pinned or live is not None:
            return Choice([c for c in pinned if c[0] != live], pin, missing)
        return Choice(snapshots[::-1], 0, missing)
    return Choice([c for c in reversed(snapshots) if live is None or c[0] > live], 0)


def read_pin(folder: Path) -> int | None:
    """The version pinned in ``folder``, or None when there is no (readable, numeric) pin file."""
    try:
        text = fileio.read_bytes(folder / PIN_NAME, "pin file", prefix_bytes=64).decode("ascii").strip()
    except (SnapshotError, UnicodeDecodeError):
        return None
    version = _bounded(text) if text.isdigit() else None
    return version or None


def write_pin(folder: Path, version: int) -> None:
    """Pin ``folder`` to ``version``, atomically."""
    with atomic_file(folder / PIN_NAME) as file:
        file.write(f"{version}\n".encode("ascii"))


def remove_pin(folder: Path) -> bool:
    """Remove the pin; returns whether there was one."""
    try:
        (folder / PIN_NAME).unlink()
    except FileNotFoundError:
        return False
    with contextlib.suppress(OSError):
        fsync_folder(folder)
    return True


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
    is removed and ``final_path`` is untouched. The file is ``FILE_MODE``
    whatever the umask (a writer may ``fchmod`` it otherwise inside the block).
    """
    folder = final_path.parent
    temp_path = folder / f"{TEMP_PREFIX}{final_path.name}.{os.getpid()}.{os.urandom(4).hex()}"
    try:
        with open(temp_path, "w+b") as file:
            os.fchmod(file.fileno(), FILE_MODE)
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, final_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp_path.unlink()
        raise
    fsync_folder(folder)


def remove_temp_files(folder: Path, *, dead_writers_only: bool = False) -> list[Path]:
    """Delete temporary files left in ``folder`` by writers that died.

    Args:
        folder: the folder.
        dead_writers_only: remove only files whose writer (the process id in
            the name) is no longer running on this machine; without it, call only
            while holding the folder's lock, when no other writer can be at work.

    Returns:
        The paths removed.
    """
    removed = []
    for path in folder.glob(f"{TEMP_PREFIX}*"):
        if path.is_dir() and not path.is_symlink():
            logger.warning("leaving %s alone: a directory, not a file this folder's writers make", path)
            continue
        if dead_writers_only and _writer_alive(path.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def _writer_alive(name: str) -> bool:
    match = _TEMP_WRITER.search(name)
    if match is None:
        return False  # not a name atomic_file gives: no writer of ours
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process, or a number no process has: leave it
    return True


def check_folder(folder: Path) -> None:
    """Refuse a snapshot folder that does not exist or is not a folder.

    Raises:
        NoSnapshotError: saying which.
    """
    if not folder.exists():
        raise NoSnapshotError("the snapshot folder does not exist", path=folder)
    if not folder.is_dir():
        raise NoSnapshotError("this is not a folder: give --snapshots the folder that holds the snapshots", path=folder)


@contextlib.contextmanager
def folder_lock(folder: Path, *, wait: bool = False) -> Iterator[Path]:
    """Hold the exclusive writer's lock on ``folder`` for the block (two exporters never run at once).

    The lock is ``flock`` on a file that is never deleted (deleting it would
    let two writers lock two different files); the kernel releases it when
    the holder exits, however it exits.

    Args:
        wait: wait for the holder to finish instead of raising ``LockedError``.

    Raises:
        LockedError: another process holds it and ``wait`` is false.
        OSError: the lock file cannot be created.
    """
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockedError(path) from None
        yield path
    finally:
        os.close(fd)


def prune(folder: Path, keep: int, *, current: int | None = None) -> list[Path]:
    """Delete old snapshots, and every delta whose base or target is gone.

    ``current`` (default: the newest version) and the ``keep - 1`` newest
    versions below it stay; older ones go. Nothing newer than ``current`` is
    touched: another writer may just have published it.

    Returns:
        The paths deleted: snapshots, then deltas.
    """
    snapshots = list_snapshots(folder)
    if current is None:
        current = snapshots[-1][0] if snapshots else 0
    older = [path for version, path in snapshots if version < current]
    doomed = older[: max(len(older) - (max(keep, 1) - 1), 0)]
    for path in doomed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        logger.info("deleted %s (retention keeps %s)", path.name, keep)
    return doomed + _prune_deltas(folder)


def _prune_deltas(folder: Path) -> list[Path]:
    present = {version for version, _ in list_snapshots(folder)}
    doomed = [path for base, target, path in list_deltas(folder) if base not in present or target not in present]
    for path in doomed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        logger.info("deleted %s (its base or target snapshot is gone)", path.name)
    return doomed


def write_source_state(folder: Path, state: dict[str, object]) -> None:
    """Record, atomically, how the folder's follower of an object store is doing (a small JSON object)."""
    with atomic_file(folder / SOURCE_STATE_NAME) as file:
        file.write(json.dumps(state, sort_keys=True).encode("utf-8"))


def read_source_state(folder: Path) -> dict[str, object] | None:
    """The follower's record in ``folder``, or None when there is none or it cannot be read."""
    try:
        data = fileio.read_bytes(folder / SOURCE_STATE_NAME, "source state", prefix_bytes=_MAX_SOURCE_STATE_BYTES)
        state = json.loads(data)
    except (SnapshotError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def remove_source_state(folder: Path) -> None:
    """Forget a follower's record (a server that no longer follows a store); a read-only folder keeps it."""
    with contextlib.suppress(OSError):
        (folder / SOURCE_STATE_NAME).unlink()
