"""The snapshot file format, both directions: write, read, verify.

A snapshot file is (see docs/snapshot-format.md for the byte-by-byte layout)::

    preamble   20 bytes  magic b"AVAPSNAP", format version (u16 BE), flags (u16 BE, 0),
                         header size H (u32 BE), CRC-32 of the header (u32 BE)
    header     H bytes   a serialized avapdefs.v1.SnapshotHeader
    frame      one zstd frame (content checksum on) of the serialized avapdefs.v1.Catalog

The content hash is the sha256 of the *uncompressed* serialized Catalog, so a
version's identity does not depend on compression settings. Commands are
written in ascending order of their UTF-8 names, so the same commands always
give the same payload bytes.

Streamed reading, for files too large to hold whole, is in ``reader.py``;
protobuf framing below the message level in ``wire.py``.

Thread safety: a ``SnapshotWriter`` belongs to one thread. The read functions
create their own ``ZstdDecompressor`` per call (zstandard's decompressors are
not thread safe), so they may be called from any thread.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import zstandard
from google.protobuf.message import DecodeError

from avapdefs import fileio
from avapdefs.errors import (
    CatalogOrderError,
    CorruptSnapshotError,
    NotASnapshotError,
    TruncatedSnapshotError,
    UnsupportedFormatError,
)
from avapdefs.format import wire
from avapdefs.v1.definitions_pb2 import Catalog, Command, SnapshotHeader

MAGIC = b"AVAPSNAP"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct(">8sHHII")  # magic, format version, flags, header size, header CRC-32
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_LEVEL = 3
HASH_BYTES = 32

_CONTENT_HASH_FIELD = 15  # Command.content_hash, the highest field number
_CONTENT_HASH_KEY = wire.tag(_CONTENT_HASH_FIELD) + wire.varint(HASH_BYTES)
_WRITE_BUFFER_BYTES = 1 << 20
_STREAM_SLICE_BYTES = 1 << 15  # compressed bytes per read: a catalog compressing 17:1 gives 0.5 MB of payload
_ZSTD_MAX_BLOCK_BYTES = 128 << 10  # what one zstd block can decompress to; its smallest encoding is 4 bytes
MAX_STEP_OUTPUT_BYTES = 32 << 20  # the most one decompression step may produce, whatever the frame
_STEP_INPUT_BYTES = MAX_STEP_OUTPUT_BYTES // _ZSTD_MAX_BLOCK_BYTES * 4  # 1 KiB


@dataclass(frozen=True)
class SnapshotInfo:
    """What a snapshot's preamble and header say about it."""

    version: int
    content_hash: bytes
    compressed_size: int
    uncompressed_size: int
    command_count: int
    created_at_unix_ms: int
    source: str
    header_size: int
    format_version: int = FORMAT_VERSION

    @property
    def payload_offset(self) -> int:
        """Where the zstd frame starts in the file."""
        return PREAMBLE.size + self.header_size

    @property
    def file_size(self) -> int:
        """The exact size of a well-formed file with this header."""
        return self.payload_offset + self.compressed_size


@dataclass(frozen=True)
class Snapshot:
    """A verified snapshot: its header and its uncompressed payload.

    The payload is bytes, or a read-only memoryview when ``stream.verify_stream``
    inflated it into a buffer of its own.
    """

    info: SnapshotInfo
    payload: bytes | memoryview

    def catalog(self) -> Catalog:
        """Parse the payload into a Catalog message (costly for large catalogs)."""
        catalog = Catalog()
        catalog.ParseFromString(self.payload)  # type: ignore[arg-type]  # any buffer parses; bytes() would copy it
        return catalog


def seal_command(command: Command) -> bytes:
    """Set ``command.content_hash`` and return the command serialized.

    The hash is the sha256 of the command serialized without it. Field 15 is
    the highest field number, so the sealed bytes are the unsealed bytes plus
    the hash field: serialized once, not twice.
    """
    command.ClearField("content_hash")
    sealed = seal_serialized(command.SerializeToString())
    command.content_hash = sealed[-HASH_BYTES:]
    return sealed


def seal_serialized(body: bytes) -> bytes:
    """``body``, a Command serialized without ``content_hash``, sealed: followed by its content hash field."""
    return body + _CONTENT_HASH_KEY + hashlib.sha256(body).digest()


def header_message(info: SnapshotInfo) -> SnapshotHeader:
    """The SnapshotHeader message of ``info``."""
    return SnapshotHeader(
        catalog_version=info.version,
        content_hash=info.content_hash,
        compressed_size=info.compressed_size,
        uncompressed_size=info.uncompressed_size,
        command_count=info.command_count,
        created_at_unix_ms=info.created_at_unix_ms,
        source=info.source,
    )


def encode_prefix(info: SnapshotInfo) -> bytes:
    """The preamble and header of a snapshot, as they are on disk."""
    header = header_message(info).SerializeToString()
    return PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(header), zlib.crc32(header)) + header


class SnapshotWriter:
    """Streams commands, in name order, into one snapshot file.

    The preamble and header are reserved first (their size does not depend on
    the payload, because every header field is fixed-width), the payload is
    hashed and compressed as commands arrive, and ``finish`` fills the header
    in place. Memory stays at the compressor's window plus one buffer.

    Args:
        file: a seekable binary file positioned where the snapshot starts.
        version: the catalog version to record.
        source: where the commands came from, recorded in the header.
        created_at_unix_ms: creation time; now when None.
        level: zstd compression level.
    """

    def __init__(
        self,
        file: BinaryIO,
        *,
        version: int,
        source: str,
        created_at_unix_ms: int | None = None,
        level: int = DEFAULT_LEVEL,
    ) -> None:
        self._file = file
        self._start = file.tell()
        created = created_at_unix_ms if created_at_unix_ms is not None else int(time.time() * 1000)
        self._info = SnapshotInfo(version, bytes(HASH_BYTES), 0, 0, 0, created, source, 0)
        self._prefix_size = len(encode_prefix(self._info))
        file.write(bytes(self._prefix_size))
        compressor = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=False)
        self._stream = compressor.stream_writer(file, closefd=False)
        self._hasher = hashlib.sha256()
        self._buffer = bytearray()
        self._uncompressed_size = 0
        self._count = 0
        self._previous: bytes | None = None
        self._previous_name = ""
        self._worker: _Worker | None = None

    def compress_in_background(self) -> None:
        """From now on, hash and compress on a second thread while the caller makes the next commands.

        zstd and sha256 release the GIL, so the two overlap. The same bytes, in the same 1 MiB
        pieces, reach the same single-threaded compressor: the file is byte-identical either way.
        Call ``close`` when not calling ``finish`` (on an error), to end that thread.
        """
        if self._worker is None:
            self._worker = _Worker(self._consume)

    def add(self, command: Command) -> None:
        """Seal ``command`` (set its content hash) and append it."""
        self.add_serialized(command.name, seal_command(command))

    def add_serialized(self, name: str, serialized: bytes | memoryview) -> None:
        """Append one already serialized (and sealed) Command named ``name``.

        Raises:
            CatalogOrderError: ``name`` does not sort after the previous name.
        """
        key = name.encode("utf-8")
        if self._previous is not None and key <= self._previous:
            raise CatalogOrderError(name, self._previous_name)
        self._previous, self._previous_name = key, name
        self._buffer += wire.ENTRY_TAG + wire.varint(len(serialized))
        self._buffer += serialized
        self._count += 1
        if len(self._buffer) >= _WRITE_BUFFER_BYTES:
            self._drain()

    def _drain(self) -> None:
        self._uncompressed_size += len(self._buffer)
        if self._worker is None:
            self._consume(self._buffer)
            self._buffer.clear()
        else:
            self._worker.put(self._buffer)
            self._buffer = bytearray()

    def _consume(self, piece: bytearray) -> None:
        self._hasher.update(piece)
        self._stream.write(piece)

    def close(self) -> None:
        """End the compressing thread, if any, without finishing the file (``finish`` calls it too)."""
        if self._worker is not None:
            worker, self._worker = self._worker, None
            worker.join()

    @property
    def command_count(self) -> int:
        """Commands added so far."""
        return self._count

    @property
    def uncompressed_size(self) -> int:
        """Payload bytes added so far."""
        return self._uncompressed_size + len(self._buffer)

    def finish(self) -> SnapshotInfo:
        """End the frame, write the final header, and return it.

        The file is left positioned at the end of the snapshot. Nothing is
        fsynced: publishing is the caller's job.
        """
        self._drain()
        self.close()
        self._stream.flush(zstandard.FLUSH_FRAME)
        end = self._file.tell()
        info = SnapshotInfo(
            version=self._info.version,
            content_hash=self._hasher.digest(),
            compressed_size=end - self._start - self._prefix_size,
            uncompressed_size=self._uncompressed_size,
            command_count=self._count,
            created_at_unix_ms=self._info.created_at_unix_ms,
            source=self._info.source,
            header_size=self._prefix_size - PREAMBLE.size,
        )
        prefix = encode_prefix(info)
        assert len(prefix) == self._prefix_size, "snapshot header size must not depend on the payload"
        self._file.seek(self._start)
        self._file.write(prefix)
        self._file.seek(end)
        return info


class _Worker:
    """A thread that applies ``consume`` to each piece put, in order; a failure is raised to the putter.

    At most two pieces wait, so memory stays at a few buffers however far the producer runs ahead.
    """

    def __init__(self, consume: Callable[[bytearray], None]) -> None:
        self._consume = consume
        self._queue: queue.Queue[bytearray | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="snapshot-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (piece := self._queue.get()) is not None:
            if self._error is None:  # after a failure, pieces are only taken, so the producer never blocks
                try:
                    self._consume(piece)
                except BaseException as exc:
                    self._error = exc

    def put(self, piece: bytearray) -> None:
        """Queue ``piece``; raise the failure of an earlier one, if any."""
        self._raise()
        self._queue.put(piece)

    def join(self) -> None:
        """Wait until every piece is consumed and end the thread; raise a failure, if any."""
        self._queue.put(None)
        self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


def write_snapshot(
    file: BinaryIO,
    commands: Iterable[Command],
    *,
    version: int,
    source: str,
    created_at_unix_ms: int | None = None,
    level: int = DEFAULT_LEVEL,
) -> SnapshotInfo:
    """Write ``commands`` (sorted by name here) as one snapshot into ``file``."""
    writer = SnapshotWriter(file, version=version, source=source, created_at_unix_ms=created_at_unix_ms, level=level)
    for command in sorted(commands, key=lambda c: c.name.encode("utf-8")):
        writer.add(command)
    return writer.finish()


def encode_snapshot(commands: Iterable[Command], **kwargs: object) -> tuple[SnapshotInfo, bytes]:
    """The bytes of a snapshot of ``commands``; keyword arguments as ``write_snapshot``."""
    buffer = io.BytesIO()
    info = write_snapshot(buffer, commands, **kwargs)  # type: ignore[arg-type]
    return info, buffer.getvalue()


def read_info(data: bytes | memoryview, *, path: Path | str | None = None) -> SnapshotInfo:
    """Parse and check the preamble and header at the start of ``data``.

    ``data`` may be just the file's first bytes; sizes are checked against the
    whole file by ``verify``.

    Raises:
        NotASnapshotError: the magic is wrong.
        UnsupportedFormatError: the format version is not one this code reads.
        CorruptSnapshotError: the header cannot be parsed or is incomplete.
        TruncatedSnapshotError: ``data`` ends inside the preamble or header.
    """
    view = memoryview(data)
    if len(view) < len(MAGIC) or bytes(view[: len(MAGIC)]) != MAGIC:
        if len(view) < len(MAGIC) and MAGIC.startswith(bytes(view)):
            raise TruncatedSnapshotError(f"file is {len(view)} bytes, shorter than the preamble", path=path)
        raise NotASnapshotError("not a snapshot file (bad magic)", path=path)
    if len(view) < PREAMBLE.size:
        raise TruncatedSnapshotError(f"file is {len(view)} bytes, shorter than the preamble", path=path)
    _, format_version, flags, header_size, header_crc = PREAMBLE.unpack_from(view)
    if format_version != FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"snapshot format version {format_version}; this code reads version {FORMAT_VERSION}",
            format_version=format_version,
            path=path,
        )
    if flags != 0 or not 0 < header_size <= MAX_HEADER_BYTES:
        raise CorruptSnapshotError(f"bad preamble (flags {flags}, header size {header_size})", path=path)
    if len(view) < PREAMBLE.size + header_size:
        raise TruncatedSnapshotError("file ends inside the snapshot header", path=path)
    header_bytes = view[PREAMBLE.size : PREAMBLE.size + header_size]
    if zlib.crc32(header_bytes) != header_crc:
        raise CorruptSnapshotError("snapshot header checksum mismatch", path=path)
    header = SnapshotHeader()
    try:
        header.ParseFromString(bytes(header_bytes))
    except DecodeError as exc:
        raise CorruptSnapshotError(f"snapshot header does not parse: {exc}", path=path) from exc
    return info_from_header(header, header_size, path)


_REQUIRED_HEADER_FIELDS: tuple[
    Literal["catalog_version", "compressed_size", "uncompressed_size", "command_count", "created_at_unix_ms"], ...
] = ("catalog_version", "compressed_size", "uncompressed_size", "command_count", "created_at_unix_ms")


def info_from_header(header: SnapshotHeader, header_size: int, path: Path | str | None) -> SnapshotInfo:
    """Check a parsed SnapshotHeader is complete and return it as a SnapshotInfo.

    Raises:
        CorruptSnapshotError: a required field is missing or the hash is not 32 bytes.
    """
    missing = [name for name in _REQUIRED_HEADER_FIELDS if not header.HasField(name)]
    if missing or len(header.content_hash) != HASH_BYTES:
        raise CorruptSnapshotError(f"snapshot header incomplete (missing {missing or ['content_hash']})", path=path)
    return SnapshotInfo(
        version=header.catalog_version,
        content_hash=header.content_hash,
        compressed_size=header.compressed_size,
        uncompressed_size=header.uncompressed_size,
        command_count=header.command_count,
        created_at_unix_ms=header.created_at_unix_ms,
        source=header.source,
        header_size=header_size,
    )


def verify(data: bytes | memoryview, *, path: Path | str | None = None) -> Snapshot:
    """Check a whole snapshot file's bytes and return its header and payload.

    Checks the preamble, the header, the file size, the zstd frame and its
    checksum, the uncompressed size, the content hash and the command count.

    Raises:
        SnapshotError: a subclass saying precisely what is wrong.
    """
    info = read_info(data, path=path)
    check_size(len(data), info, path)
    frame = io.BytesIO(memoryview(data)[info.payload_offset : info.file_size])
    # The framing is checked as the payload arrives, so a frame that inflates to
    # something other than commands is refused at its first piece, not once whole.
    hasher = hashlib.sha256()
    counter = wire.EntryCounter(path)
    pieces: list[bytes] = []
    for piece in inflate_frame(frame.read, info, path):
        hasher.update(piece)
        counter.feed(piece)
        pieces.append(piece)
    if hasher.digest() != info.content_hash:
        raise CorruptSnapshotError("content hash mismatch", path=path)
    count = counter.finish()
    if count != info.command_count:
        raise CorruptSnapshotError(f"payload holds {count} commands, header says {info.command_count}", path=path)
    return Snapshot(info, b"".join(pieces))


def inflate_frame(read: Callable[[int], bytes], info: SnapshotInfo, path: Path | str | None = None) -> Iterator[bytes]:
    """Decompress a snapshot's zstd frame, pulled through ``read(n)`` a slice at a time.

    Memory follows the real content, never a size a damaged header claims, and
    no step makes more than ``MAX_STEP_OUTPUT_BYTES`` (``inflate_steps``), so a
    small frame that inflates to gigabytes is refused within one step. zstd
    checks the frame's own checksum, and this the sizes the header states.

    Args:
        read: returns the next ``n`` bytes of the frame (fewer only at its end).
        info: the snapshot's header.
        path: the file, for error messages.

    Raises:
        TruncatedSnapshotError: ``read`` ran out inside the frame.
        CorruptSnapshotError: the frame does not decompress to the header's size.
    """
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    produced = 0
    for start in range(0, info.compressed_size, _STREAM_SLICE_BYTES):
        size = min(_STREAM_SLICE_BYTES, info.compressed_size - start)
        data = read(size)
        if len(data) < size:
            raise TruncatedSnapshotError("file ends inside the zstd frame", path=path)
        for piece in inflate_steps(decompressor, data, path):
            produced += len(piece)
            if produced > info.uncompressed_size:
                raise CorruptSnapshotError(
                    f"payload exceeds the {info.uncompressed_size} bytes the header says", path=path
                )
            yield piece
    if not decompressor.eof or decompressor.unused_data:
        raise CorruptSnapshotError("zstd frame is incomplete or followed by other data", path=path)
    if produced != info.uncompressed_size:
        raise CorruptSnapshotError(f"payload is {produced} bytes, header says {info.uncompressed_size}", path=path)


def inflate_steps(
    decompressor: zstandard.ZstdDecompressionObj, data: bytes, path: Path | str | None
) -> Iterator[bytes]:
    """What ``decompressor`` makes of ``data``, fed in steps that each produce at most ``MAX_STEP_OUTPUT_BYTES``.

    A zstd block of 4 bytes (an RLE block) can stand for 128 KiB, so one call on a
    32 KiB slice could return 1 GiB before anyone compared it with a size; fed
    ``_STEP_INPUT_BYTES`` at a time, a frame that makes more than it should is
    caught within one step.

    Raises:
        CorruptSnapshotError: the frame does not decompress.
    """
    view = memoryview(data)
    for start in range(0, len(view), _STEP_INPUT_BYTES):
        try:
            piece = decompressor.decompress(view[start : start + _STEP_INPUT_BYTES])
        except zstandard.ZstdError as exc:
            raise CorruptSnapshotError(f"zstd frame does not decompress: {exc}", path=path) from exc
        if piece:
            yield piece


def check_size(size: int, info: SnapshotInfo, path: Path | str | None = None) -> None:
    """Refuse a file of ``size`` bytes whose header says another size.

    Raises:
        TruncatedSnapshotError: the file is shorter than its header says.
        CorruptSnapshotError: the file is longer.
    """
    if size != info.file_size:
        kind = TruncatedSnapshotError if size < info.file_size else CorruptSnapshotError
        raise kind(f"file is {size} bytes, header says {info.file_size}", path=path)


def check_version(info: SnapshotInfo, named_version: int | None, path: Path | str | None = None) -> SnapshotInfo:
    """Refuse a header whose version is not ``named_version``, the one the file's name gives (None: no check).

    A file renamed to a higher version (a copy of an old one, say) would be a silent rollback.

    Raises:
        CorruptSnapshotError: the versions differ.
    """
    if named_version is not None and named_version != info.version:
        raise CorruptSnapshotError(f"file name says version {named_version}, its header says {info.version}", path=path)
    return info


def read_file_bytes(path: Path | str, *, named_version: int | None = None) -> bytes:
    """The bytes of the snapshot file at ``path``, read whole only once its header and size agree.

    The header is read first, so a file that is no snapshot, whose size is not
    the one its header states (a huge sparse file, a truncated copy), or whose
    version is not ``named_version`` is refused before its payload is read into
    memory. The bytes are not yet verified: pass them to ``verify``.

    Raises:
        SnapshotError: the file cannot be read, its header is not valid, or its size or version is wrong.
    """
    with fileio.open_file(path) as file:
        info = read_info(fileio.read_from(file, PREAMBLE.size + MAX_HEADER_BYTES, path), path=path)
        check_version(info, named_version, path)
        check_size(os.fstat(file.fileno()).st_size, info, path)
        file.seek(0)
        return fileio.read_from(file, info.file_size, path)


def read_file(path: Path | str) -> Snapshot:
    """Read and verify the snapshot file at ``path``.

    Raises:
        SnapshotError: the file is not a valid snapshot (or cannot be read).
    """
    return verify(read_file_bytes(path), path=path)
