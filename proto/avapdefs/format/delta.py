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

Making and applying walk both catalogs once, in name order (a merge of two
sorted streams), so they work as well over files streamed from disk
(``make_delta_files``, ``apply_delta_file``: memory is the changed commands
plus one decompression slice) as over payloads already in memory.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import zstandard
from google.protobuf.message import DecodeError

from avapdefs.errors import CorruptSnapshotError, DeltaMismatchError, NotASnapshotError, UnsupportedFormatError
from avapdefs.format.reader import CommandReader
from avapdefs.format.snapshot import (
    Snapshot,
    SnapshotInfo,
    SnapshotWriter,
    header_message,
    inflate_steps,
    info_from_header,
)
from avapdefs.format.wire import command_name, iter_entries
from avapdefs.v1.definitions_pb2 import CatalogDelta

MAGIC = b"AVAPDLTA"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct(">8sH")
DEFAULT_LEVEL = 9
_MAX_DELTA_BYTES = 1 << 34


Commands = Iterable[bytes | memoryview]  # serialized commands, ascending by UTF-8 name


def _named(commands: Commands) -> Iterator[tuple[bytes, bytes | memoryview]]:
    """(name, serialized) of each command, refusing any that breaks the name order a merge relies on."""
    previous: bytes | None = None
    for entry in commands:
        name = command_name(entry)
        if previous is not None and name <= previous:
            raise CorruptSnapshotError(f"command {name!r} out of name order after {previous!r}")
        previous = name
        yield name, entry


def make_delta(base: Snapshot, target: Snapshot) -> CatalogDelta:
    """The delta that turns ``base`` into ``target`` (both in memory)."""
    made = make_delta_streams(base.info, iter_entries(base.payload), target.info, iter_entries(target.payload))
    assert made is not None, "no size limit was given"
    return made


def make_delta_files(base: Path, target: Path, *, max_upsert_bytes: int | None = None) -> CatalogDelta | None:
    """The delta that turns the snapshot file ``base`` into ``target``, both streamed from disk.

    Both files are verified as they are read (content hash and count at their ends).

    Args:
        base: the older snapshot file.
        target: the newer snapshot file.
        max_upsert_bytes: give up (return None) once the changed commands exceed this many bytes.

    Raises:
        SnapshotError: either file cannot be read or is not a valid snapshot.
    """
    with CommandReader(base) as old, CommandReader(target) as new:
        return make_delta_streams(old.info, old, new.info, new, max_upsert_bytes=max_upsert_bytes)


def make_delta_streams(
    base_info: SnapshotInfo,
    base_commands: Commands,
    target_info: SnapshotInfo,
    target_commands: Commands,
    *,
    max_upsert_bytes: int | None = None,
) -> CatalogDelta | None:
    """The delta between two catalogs given as streams of serialized commands in name order.

    Only the changed commands are held, so memory follows the size of the change.
    Both streams are read to the end (a verifying stream checks itself there).

    Returns:
        The delta, or None when its changed commands exceed ``max_upsert_bytes``.

    Raises:
        CorruptSnapshotError: a stream is out of name order (or fails its own checks).
    """
    delta = CatalogDelta(
        base_version=base_info.version, base_content_hash=base_info.content_hash, target=header_message(target_info)
    )
    limit = max_upsert_bytes if max_upsert_bytes is not None else _MAX_DELTA_BYTES
    upserted = 0
    for name, base_entry, target_entry in _merge(_named(base_commands), _named(target_commands)):
        if target_entry is None:
            delta.removed_names.append(name.decode("utf-8"))
        elif base_entry is None or base_entry != target_entry:
            delta.upserts.append(bytes(target_entry))
            upserted += len(target_entry)
            if upserted > limit:
                return None
    return delta


Pair = tuple[bytes, bytes | memoryview | None, bytes | memoryview | None]


def _merge(
    base: Iterator[tuple[bytes, bytes | memoryview]], target: Iterator[tuple[bytes, bytes | memoryview]]
) -> Iterator[Pair]:
    """(name, base entry or None, target entry or None) for every name of either side, in name order."""
    old, new = next(base, None), next(target, None)
    while old is not None or new is not None:
        if new is None or (old is not None and old[0] < new[0]):
            assert old is not None
            yield old[0], old[1], None
            old = next(base, None)
        elif old is None or new[0] < old[0]:
            yield new[0], None, new[1]
            new = next(target, None)
        else:
            yield new[0], old[1], new[1]
            old, new = next(base, None), next(target, None)


def encode_delta(delta: CatalogDelta, *, level: int = DEFAULT_LEVEL) -> bytes:
    """The bytes of a delta file holding ``delta``."""
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    return PREAMBLE.pack(MAGIC, FORMAT_VERSION) + compressor.compress(delta.SerializeToString())


def decode_delta(data: bytes, *, max_bytes: int = _MAX_DELTA_BYTES) -> CatalogDelta:
    """Parse a delta file's bytes.

    The frame is inflated in bounded steps, never into a buffer of the size it
    claims, so memory follows what it really holds, up to ``max_bytes``.

    Args:
        data: the delta file's bytes.
        max_bytes: refuse a delta that inflates to more (one that claims more is
            refused before inflating): a caller that knows the catalogs' sizes
            gives a bound from them.

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
    frame = data[PREAMBLE.size :]
    try:
        claimed = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise CorruptSnapshotError(f"delta does not decode: {exc}") from exc
    if claimed > max_bytes:  # -1 when the frame does not say
        raise CorruptSnapshotError(f"delta claims {claimed} bytes, over the {max_bytes} it may hold")
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    raw = bytearray()
    for piece in inflate_steps(decompressor, frame, None):
        raw += piece
        if len(raw) > max_bytes:
            raise CorruptSnapshotError(f"delta inflates past the {max_bytes} bytes it may hold")
    if not decompressor.eof or decompressor.unused_data:
        raise CorruptSnapshotError("delta does not decode: its zstd frame is incomplete or followed by other data")
    try:
        return CatalogDelta.FromString(raw)  # type: ignore[arg-type]  # any buffer parses; bytes() would copy it
    except DecodeError as exc:
        raise CorruptSnapshotError(f"delta does not decode: {exc}") from exc


def target_info(delta: CatalogDelta) -> SnapshotInfo:
    """The header of the snapshot ``delta`` produces."""
    return info_from_header(delta.target, 0, None)


def apply_delta(base: Snapshot, delta: CatalogDelta, file: BinaryIO, *, level: int | None = None) -> SnapshotInfo:
    """Write the target snapshot of ``delta`` into ``file``, rebuilt from ``base`` (in memory).

    Args:
        base: the verified snapshot the delta was made from.
        delta: a decoded delta.
        file: a seekable binary file positioned where the snapshot starts.
        level: zstd level for the rebuilt frame (the writer's default when None).

    Raises:
        DeltaMismatchError: ``base`` is not the delta's base, or the result's
            content hash, size or count differ from the target's.
    """
    return apply_delta_stream(base.info, iter_entries(base.payload), delta, file, level=level)


def apply_delta_file(base: Path, delta: CatalogDelta, file: BinaryIO, *, level: int | None = None) -> SnapshotInfo:
    """As ``apply_delta``, with the base snapshot streamed from the file ``base`` and verified as it is read.

    Raises:
        SnapshotError: the base file cannot be read or is not a valid snapshot.
        DeltaMismatchError: as ``apply_delta``.
    """
    with CommandReader(base) as reader:
        return apply_delta_stream(reader.info, reader, delta, file, level=level)


def apply_delta_stream(
    base_info: SnapshotInfo, base_commands: Commands, delta: CatalogDelta, file: BinaryIO, *, level: int | None = None
) -> SnapshotInfo:
    """As ``apply_delta``, with the base given as its header and a stream of its commands in name order.

    Raises:
        DeltaMismatchError: as ``apply_delta``.
        CorruptSnapshotError: the base stream is out of name order (or fails its own checks).
    """
    if base_info.version != delta.base_version or base_info.content_hash != delta.base_content_hash:
        raise DeltaMismatchError(f"delta applies to version {delta.base_version}, not {base_info.version}")
    target = target_info(delta)
    options = {} if level is None else {"level": level}
    writer = SnapshotWriter(
        file, version=target.version, source=target.source, created_at_unix_ms=target.created_at_unix_ms, **options
    )
    removed = {name.encode("utf-8") for name in delta.removed_names}
    for name, base_entry, upsert in _merge(_named(base_commands), _named(delta.upserts)):
        if upsert is not None:
            writer.add_serialized(name.decode("utf-8"), upsert)
        elif base_entry is not None and name not in removed:
            writer.add_serialized(name.decode("utf-8"), base_entry)
    return _check_result(writer.finish(), target)


def _check_result(result: SnapshotInfo, target: SnapshotInfo) -> SnapshotInfo:
    if (result.content_hash, result.uncompressed_size, result.command_count) != (
        target.content_hash,
        target.uncompressed_size,
        target.command_count,
    ):
        raise DeltaMismatchError(f"delta result does not match version {target.version}'s content hash")
    return result
