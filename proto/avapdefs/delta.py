"""Record-level deltas between catalog versions: make, encode, decode, apply.

A delta lists the commands added or changed (their sealed bytes) and the
names removed. It was chosen over a zstd raw-content dictionary delta
(``zstd --patch-from``) because its size follows the changed commands at any
catalog size, where the dictionary delta grew to 85% of the full file at
111 MB (docs/snapshot-format.md, "Delta files").

A delta file is::

    magic b"AVAPDLTA" (8 bytes), format version (u16 BE), one zstd frame
    (content checksum on) of a serialized avapdefs.v1.CatalogDelta

Applying a delta rebuilds the target *payload* and writes it as a new
snapshot with the target's header fields; the result is checked against the
target's content hash, so a wrong base or a damaged delta never installs.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

import zstandard
from google.protobuf.message import DecodeError

from avapdefs.errors import CorruptSnapshotError, DeltaMismatchError, NotASnapshotError, UnsupportedFormatError
from avapdefs.snapshot import (
    Snapshot,
    SnapshotInfo,
    SnapshotWriter,
    command_name,
    header_message,
    info_from_header,
    iter_command_bytes,
)
from avapdefs.v1.definitions_pb2 import CatalogDelta

MAGIC = b"AVAPDLTA"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct(">8sH")
DEFAULT_LEVEL = 9
_MAX_DELTA_BYTES = 1 << 34


def _entries(snapshot: Snapshot) -> Iterator[tuple[bytes, memoryview]]:
    for entry in iter_command_bytes(snapshot.payload):
        yield command_name(entry), entry


def make_delta(base: Snapshot, target: Snapshot) -> CatalogDelta:
    """The delta that turns ``base`` into ``target``."""
    old = dict(_entries(base))
    delta = CatalogDelta(
        base_version=base.info.version,
        base_content_hash=base.info.content_hash,
        target=header_message(target.info),
    )
    for name, entry in _entries(target):
        previous = old.pop(name, None)
        if previous is None or previous != entry:
            delta.upserts.append(bytes(entry))
    delta.removed_names.extend(name.decode("utf-8") for name in sorted(old))
    return delta


def encode_delta(delta: CatalogDelta, *, level: int = DEFAULT_LEVEL) -> bytes:
    """The bytes of a delta file holding ``delta``."""
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    return PREAMBLE.pack(MAGIC, FORMAT_VERSION) + compressor.compress(delta.SerializeToString())


def decode_delta(data: bytes) -> CatalogDelta:
    """Parse a delta file's bytes.

    Raises:
        NotASnapshotError: not a delta file.
        UnsupportedFormatError: a delta format this code does not read.
        CorruptSnapshotError: the frame or the message is damaged.
    """
    if len(data) < PREAMBLE.size or data[: len(MAGIC)] != MAGIC:
        raise NotASnapshotError("not a delta file (bad magic)")
    _, format_version = PREAMBLE.unpack_from(data)
    if format_version != FORMAT_VERSION:
        raise UnsupportedFormatError(f"delta format version {format_version}", format_version=format_version)
    try:
        raw = zstandard.ZstdDecompressor().decompress(
            data[PREAMBLE.size :], max_output_size=_MAX_DELTA_BYTES, allow_extra_data=False
        )
        return CatalogDelta.FromString(raw)
    except (zstandard.ZstdError, DecodeError) as exc:
        raise CorruptSnapshotError(f"delta does not decode: {exc}") from exc


def target_info(delta: CatalogDelta) -> SnapshotInfo:
    """The header of the snapshot ``delta`` produces."""
    return info_from_header(delta.target, 0, None)


def apply_delta(base: Snapshot, delta: CatalogDelta, file: BinaryIO, *, level: int | None = None) -> SnapshotInfo:
    """Write the target snapshot of ``delta`` into ``file``, rebuilt from ``base``.

    Args:
        base: the verified snapshot the delta was made from.
        delta: a decoded delta.
        file: a seekable binary file positioned where the snapshot starts.
        level: zstd level for the rebuilt frame (the writer's default when None).

    Raises:
        DeltaMismatchError: ``base`` is not the delta's base, or the result's
            content hash, size or count differ from the target's.
    """
    if base.info.version != delta.base_version or base.info.content_hash != delta.base_content_hash:
        raise DeltaMismatchError(f"delta applies to version {delta.base_version}, not {base.info.version}")
    target = target_info(delta)
    options = {} if level is None else {"level": level}
    writer = SnapshotWriter(
        file, version=target.version, source=target.source, created_at_unix_ms=target.created_at_unix_ms, **options
    )
    removed = {name.encode("utf-8") for name in delta.removed_names}
    upserts = iter(delta.upserts)
    pending = next(upserts, None)
    for name, entry in _entries(base):
        while pending is not None and command_name(pending) < name:
            writer.add_serialized(command_name(pending).decode("utf-8"), pending)
            pending = next(upserts, None)
        if pending is not None and command_name(pending) == name:
            continue  # replaced by the upsert, written on the next turn
        if name not in removed:
            writer.add_serialized(name.decode("utf-8"), entry)
    while pending is not None:
        writer.add_serialized(command_name(pending).decode("utf-8"), pending)
        pending = next(upserts, None)
    return _check_result(writer.finish(), target)


def _check_result(result: SnapshotInfo, target: SnapshotInfo) -> SnapshotInfo:
    if (result.content_hash, result.uncompressed_size, result.command_count) != (
        target.content_hash,
        target.uncompressed_size,
        target.command_count,
    ):
        raise DeltaMismatchError(f"delta result does not match version {target.version}'s content hash")
    return result
