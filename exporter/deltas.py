"""Deltas to the version just published from the versions before it: made, size-checked, verified, published.

A delta is only an optimisation for syncing clients: the snapshot it leads to
is already published, so nothing here fails the export. A delta that cannot
be made, is too large or does not verify is logged and left out.

Memory: both snapshots are streamed from disk (``avapdefs.format.delta.make_delta_files``),
so only the changed commands are held, and making gives up as soon as they
exceed the size limit, so a catalog where most rows changed never sits in
memory twice.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from avapdefs.errors import DeltaMismatchError, SnapshotError
from avapdefs.folder import atomic_file, delta_name, list_snapshots, read_header
from avapdefs.format.delta import apply_delta_file, decode_delta, encode_delta, make_delta_files
from avapdefs.format.snapshot import SnapshotInfo

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

logger = logging.getLogger(__name__)

_VERIFY_LEVEL = 1  # the content hash does not depend on the level, so verify with the fastest
_EXPECTED_ERRORS = (SnapshotError, DeltaMismatchError, OSError)


def write_deltas(folder: Path, target: Path, *, count: int, max_percent: float) -> list[Path]:
    """Write a delta to ``target`` from each of the ``count`` newest older snapshots in ``folder``.

    Args:
        folder: the snapshot folder (its lock held by the caller).
        target: the snapshot just published there.
        count: how many earlier versions get a delta; 0 for none.
        max_percent: keep a delta only when it is smaller than this percentage of ``target``'s file.

    Returns:
        The delta files written, newest base first. Never raises: each failure is logged.
    """
    if count < 1:
        return []
    try:
        version = read_header(target).version
        bases = [path for base, path in list_snapshots(folder) if base < version][-count:]
    except _EXPECTED_ERRORS as exc:
        logger.warning("no deltas to %s: %s", target.name, exc)
        return []
    written = []
    for base in reversed(bases):
        try:
            path = write_delta(base, target, max_percent=max_percent)
        except Exception as exc:  # the snapshot is published; a delta is only a shortcut to it
            unexpected = not isinstance(exc, _EXPECTED_ERRORS)
            logger.warning("no delta from %s to %s: %s", base.name, target.name, exc, exc_info=unexpected)
            continue
        if path is not None:
            written.append(path)
    return written


def write_delta(base: Path, target: Path, *, max_percent: float) -> Path | None:
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
    with atomic_file(path) as file:
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
