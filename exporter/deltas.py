"""Deltas to the newest version from the versions before it: made, size-checked, verified, published.

A delta is only an optimisation for syncing clients: the snapshot it leads to
is already published, so nothing here fails the export. A delta that cannot
be made, is too large or does not verify is logged and left out.

Every run settles the newest version's deltas, not only the run that
published it: a run killed between its rename and its last delta left some
unwritten, and the next run, "unchanged" or not, writes those that are
missing. It costs one listing of the folder when none is: a delta that
exists is not made again, and a base whose delta was declined (too large,
or a base that does not verify, which no later run can change) is recorded
as such in ``.export-state`` (``exporter/unchanged.py``) and not tried again
for that version. A delta that failed to be written (``OSError``: a full
disk, say) is not recorded, so the next run tries it again.

Memory: both snapshots are streamed from disk (``avapdefs.format.delta.make_delta_files``),
so only the changed commands are held, and making gives up as soon as they
exceed the size limit, so a catalog where most rows changed never sits in
memory twice.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from avapdefs.errors import DeltaMismatchError, SnapshotError
from avapdefs.folder import delta_name, list_deltas, list_snapshots, read_header
from avapdefs.format.delta import apply_delta_file, decode_delta, encode_delta, make_delta_files
from avapdefs.format.snapshot import SnapshotInfo
from exporter.config import DEFAULT_FILE_MODE
from exporter.files import published_file

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

logger = logging.getLogger(__name__)

_VERIFY_LEVEL = 1  # the content hash does not depend on the level, so verify with the fastest
_EXPECTED_ERRORS = (SnapshotError, DeltaMismatchError, OSError)


@dataclass(frozen=True)
class DeltaOutcome:
    """What ``write_deltas`` did.

    Attributes:
        written: the delta files written by this call, newest base first.
        declined: the base versions, among the ones that should have a delta, that get none:
            too large, or not made for a reason that cannot change. Sorted.
    """

    written: tuple[Path, ...] = ()
    declined: tuple[int, ...] = ()


def write_deltas(
    folder: Path,
    target: Path,
    *,
    count: int,
    max_percent: float,
    declined: Collection[int] = (),
    mode: int = DEFAULT_FILE_MODE,
) -> DeltaOutcome:
    """Make sure a delta to ``target`` exists from each of the ``count`` newest older snapshots in ``folder``.

    Writes the deltas that are missing: those of a base that has one already, or that an
    earlier run ``declined``, are left as they are.

    Args:
        folder: the snapshot folder (its lock held by the caller).
        target: the newest snapshot there.
        count: how many earlier versions get a delta; 0 for none.
        max_percent: keep a delta only when it is smaller than this percentage of ``target``'s file.
        declined: base versions declined for ``target`` by an earlier run (``DeltaOutcome.declined``).
        mode: the permissions of the delta files.

    Returns:
        The deltas written and the bases declined. Never raises: each failure is logged.
    """
    if count < 1:
        return DeltaOutcome()
    try:
        version = read_header(target).version
        bases = [(base, path) for base, path in list_snapshots(folder) if base < version][-count:]
        present = {base for base, to, _ in list_deltas(folder) if to == version}
    except _EXPECTED_ERRORS as exc:
        logger.warning("no deltas to %s: %s", target.name, exc)
        return DeltaOutcome()
    written: list[Path] = []
    refused = {base for base, _ in bases if base in declined}
    for base, path in reversed(bases):
        if base in present or base in refused:
            continue
        try:
            made = write_delta(path, target, max_percent=max_percent, mode=mode)
        except Exception as exc:  # the snapshot is published; a delta is only a shortcut to it
            unexpected = not isinstance(exc, _EXPECTED_ERRORS)
            logger.warning("no delta from %s to %s: %s", path.name, target.name, exc, exc_info=unexpected)
            if not isinstance(exc, OSError):  # a full disk may have room next time; a damaged base never heals
                refused.add(base)
            continue
        if made is None:
            refused.add(base)
        else:
            written.append(made)
    return DeltaOutcome(tuple(written), tuple(sorted(refused)))


def write_delta(base: Path, target: Path, *, max_percent: float, mode: int = DEFAULT_FILE_MODE) -> Path | None:
    """Publish the delta from snapshot file ``base`` to ``target`` beside them, verified first.

    Returns:
        The delta file, or None when it is not smaller than ``max_percent`` of ``target``'s file size.

    Raises:
        SnapshotError: either snapshot cannot be read or does not verify.
        DeltaMismatchError: the delta applied to ``base`` does not reproduce ``target``.
        OSError: the delta file cannot be written.
    """
    info = read_header(target)
    limit_bytes = int(info.file_size * max_percent / 100)
    # The raw changed commands are capped at the same share of the payload: far beyond it the
    # compressed delta could not get under the limit, and memory stays at that share.
    made = make_delta_files(base, target, max_upsert_bytes=int(info.uncompressed_size * max_percent / 100))
    data = encode_delta(made) if made is not None else b""
    if made is None or len(data) >= limit_bytes:
        logger.info("no delta from %s to %s: not under %g%% of its %s bytes", base.name, target.name, max_percent,
                    info.file_size)  # fmt: skip
        return None
    _verify(base, data, info)
    path = target.parent / delta_name(made.base_version, info.version)
    with published_file(path, mode) as file:
        file.write(data)
    logger.info("wrote %s: %s bytes (%.1f%% of the full file), %s upserted, %s removed", path.name, len(data),
                100 * len(data) / info.file_size, len(made.upserts), len(made.removed_names))  # fmt: skip
    return path


def _verify(base: Path, data: bytes, target: SnapshotInfo) -> None:
    """Apply the encoded delta to ``base`` exactly as a client would, and compare with ``target``.

    The rebuilt snapshot goes to a sink that keeps nothing: only its header matters.
    """
    rebuilt = apply_delta_file(base, decode_delta(data), cast(BinaryIO, _NullSink()), level=_VERIFY_LEVEL)
    if (rebuilt.version, rebuilt.content_hash) != (target.version, target.content_hash):
        raise DeltaMismatchError(f"delta from {base.name} does not reproduce version {target.version}")


class _NullSink(io.RawIOBase):
    """A seekable, writable file that keeps nothing (what ``SnapshotWriter`` needs: write, tell, seek)."""

    def __init__(self) -> None:
        super().__init__()
        self._position = self._size = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer, /) -> int:
        written = memoryview(data).nbytes
        self._position += written
        self._size = max(self._size, self._position)
        return written

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}
        self._position = bases[whence] + offset
        return self._position
