"""Writing a serving image (``image.py`` has its layout, its checks and how it is mapped).

An image is written once per version, while the other processes of a group
wait for its lock, so it is what a cold start waits on.
The frame is inflated a step (1 MiB) at a time, zstd writing only into the
step's bytes, so no step makes more than that whatever the frame; after the
frame, a one-byte frame of our own proves it ended exactly where the file
does, its checksum checked (as ``avapdefs.format.stream`` does). Two threads
share the work, because zstd, sha256, XXH3 and the writes release the GIL
while finding the entries is Python: the writing thread inflates each step and finds
its entries, a helper hashes and writes it (at most 4 steps behind), then
writes and hashes the snapshot file while the writing thread builds the index. The
helper may run on any CPU the supervisor may use, though the process is
pinned: the CPU of the process waiting for the image is otherwise idle. An
``fdatasync`` every 16 MiB, on a thread of its own, leaves the fsync before
the rename about 4 ms instead of 40. At 50,000 commands (122 MB image), in a
process pinned to one CPU like a group's, this writer and the one before it
alternating (medians of 10): 140-165 ms when the other CPU is free, against
305-350 ms for the single-threaded writer; 291 ms against 384 ms while other
programs kept both CPUs busy; 244 ms of CPU against 289 ms.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import operator
import os
import threading
from array import array
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import accumulate, islice
from pathlib import Path
from typing import IO, cast
from zlib import crc32

import xxhash
import zstandard

from avapdefs.errors import CorruptSnapshotError
from avapdefs.folder import atomic_file
from avapdefs.format import wire
from avapdefs.format.snapshot import MAX_STEP_OUTPUT_BYTES, SnapshotInfo, check_size
from avapdefs.format.stream import END_BYTE, END_FRAME
from server.image import BYTE_ORDER, HEADER, HEADER_BYTES, IMAGE_FORMAT, MAGIC, Image, map_image, views

_TAG = wire.ENTRY_TAG[0]  # a payload entry's tag, and a Command's name's
_STEP_BYTES = 1 << 20  # payload bytes inflated per step, then hashed and written on the helper thread
_STEPS_IN_FLIGHT = 4  # steps inflated but not yet written: what memory holds of the payload
_READ_BYTES = 1 << 20  # compressed bytes handed to zstd at once
_FLUSH_BYTES = 16 << 20  # bytes written between two starts of writing the image to disk
_END = bytes((END_BYTE,))
assert _STEP_BYTES <= MAX_STEP_OUTPUT_BYTES
_WriteAt = Callable[[bytes | memoryview, int], None]  # write these bytes at this offset of the image


def write_image(target: Path | None, file_data: bytes, info: SnapshotInfo, source: Path) -> Image:
    """Verify the snapshot file ``file_data`` while writing its image to ``target`` (or memory when None).

    The payload is inflated a step at a time and each step goes straight to its
    place in the image: memory holds the compressed file, a few steps and the
    index, never the whole payload (see ``_write``).

    Raises:
        SnapshotError: ``file_data`` is not a valid snapshot (nothing is written).
        OSError: ``target`` cannot be written.
    """
    if target is None:
        memory = _MemorySink()
        sections, file_sha256 = _write(memory.write_at, file_data, info, source)
        return Image(info=info, file_sha256=file_sha256, **views(memory.value(), None, sections))  # type: ignore[arg-type]
    with atomic_file(target) as out:
        sink = _FileSink(out.fileno())
        try:
            _write(sink.write_at, file_data, info, source)
        except BaseException:
            sink.close(check=False)  # the error that stopped the writing is the one to report
            raise
        sink.close()
        os.fchmod(out.fileno(), 0o444)  # never written again (see the module docstring)
    return map_image(target, info, written=True)


class _FileSink:
    """Writes at offsets of a file, and starts writing it to disk every ``_FLUSH_BYTES`` on a thread of its own.

    ``atomic_file`` fsyncs the whole image before renaming it: about 40 ms for
    122 MB when nothing was written before (50,000 commands), and about 4 ms when
    an ``fdatasync`` has followed every 16 MiB while the rest was still being made.
    ``write_at`` is called from one thread at a time.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._unflushed = 0
        self._flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-flush", initializer=_any_cpu)
        self._flushes: list[Future[None]] = []

    def write_at(self, data: bytes | memoryview, offset: int) -> None:
        """Write ``data`` at ``offset`` (all of it)."""
        with memoryview(data) as view:
            while view:
                done = os.pwrite(self._fd, view, offset)
                view, offset = view[done:], offset + done
        self._unflushed += len(data)
        if self._unflushed >= _FLUSH_BYTES and (not self._flushes or self._flushes[-1].done()):
            self._unflushed = 0
            self._flushes.append(self._flusher.submit(os.fdatasync, self._fd))

    def close(self, *, check: bool = True) -> None:
        """Wait for the flushes started; with ``check``, raise the error of one that failed.

        Raises:
            OSError: a flush failed (a later fsync need not report a write error again).
        """
        self._flusher.shutdown(wait=True)
        for flush in self._flushes if check else ():
            flush.result()


class _MemorySink:
    """Writes at offsets of an image held in memory (when the cache cannot be written); any thread may write."""

    def __init__(self) -> None:
        self._memory = io.BytesIO()
        self._lock = threading.Lock()

    def write_at(self, data: bytes | memoryview, offset: int) -> None:
        """Write ``data`` at ``offset``; a gap before it reads as zeros."""
        with self._lock:
            self._memory.seek(offset)
            self._memory.write(data)

    def value(self) -> bytes:
        """The image (``BytesIO`` hands over its buffer, not a copy)."""
        return self._memory.getvalue()


def _write(write_at: _WriteAt, data: bytes, info: SnapshotInfo, path: Path) -> tuple[list[tuple[int, int]], bytes]:
    """Write the image of the snapshot file ``data`` through ``write_at``; return its sections and the file's sha256.

    Two threads share the work (see the module docstring): this one inflates
    the payload (zstd releases the GIL) and finds its entries (Python), a
    helper thread hashes and writes what was inflated (sha256, XXH3 and the
    write all release the GIL), then writes and hashes the file while this
    one builds the index.
    """
    check_size(len(data), info, path)
    helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-write", initializer=_any_cpu)
    try:
        entries, payload_xxh3 = _write_payload(write_at, data, info, path, helper)
        file_start = _aligned(HEADER_BYTES + info.uncompressed_size)
        file_sha256 = helper.submit(_write_file, write_at, data, file_start)
        parts = [memoryview(part).cast("B") for part in _index(entries.names, entries.offsets)]
        sections = [(HEADER_BYTES, info.uncompressed_size), (file_start, len(data))]
        rest = xxhash.xxh3_128(bytes(file_start - HEADER_BYTES - info.uncompressed_size))
        rest.update(data)
        for part in parts:
            start = _aligned(sections[-1][0] + sections[-1][1])
            rest.update(bytes(start - sections[-1][0] - sections[-1][1]))
            rest.update(part)
            sections.append((start, len(part)))
        digest = file_sha256.result()
        for (start, _), part in zip(sections[2:], parts, strict=True):
            write_at(part, start)
    finally:
        helper.shutdown(wait=True, cancel_futures=True)  # nothing writes once this returns or raises
    flat = [number for section in sections for number in section]
    header = HEADER.pack(MAGIC, IMAGE_FORMAT, BYTE_ORDER, sections[-1][0] + sections[-1][1],
                          info.content_hash, digest, payload_xxh3, rest.digest(), *flat)  # fmt: skip
    write_at(header + xxhash.xxh3_128_digest(header), 0)
    return sections, digest


def _any_cpu() -> None:
    """Let the calling thread run on every CPU the server may use, though its process is pinned to one.

    The processes of a group are each pinned to a CPU by their supervisor, whose
    own CPUs are those the operator allows; without this, the process writing the
    image would share its CPU with its helper while the CPU of the process
    waiting for the image stays idle. The helpers end with the writing.
    """
    with contextlib.suppress(AttributeError, OSError):  # no such call here, or no such parent any more
        os.sched_setaffinity(0, os.sched_getaffinity(0) | os.sched_getaffinity(os.getppid()))


def _aligned(offset: int) -> int:
    return offset + (-offset % 8)


def _write_file(write_at: _WriteAt, data: bytes, start: int) -> bytes:
    write_at(data, start)
    return hashlib.sha256(data).digest()


def _write_payload(
    write_at: _WriteAt, data: bytes, info: SnapshotInfo, path: Path, helper: ThreadPoolExecutor
) -> tuple[_Entries, bytes]:
    """Inflate the frame into the image, checking what ``snapshot.verify`` checks; return its entries and XXH3-128.

    zstd writes each step into new bytes of ``_STEP_BYTES``, so no step makes
    more than that whatever the frame (``MAX_STEP_OUTPUT_BYTES`` is the bound
    every reader keeps); the helper hashes and writes each step while
    the next one inflates, at most ``_STEPS_IN_FLIGHT`` behind.
    """
    size = info.uncompressed_size
    frame = _FrameSource(memoryview(data)[info.payload_offset : info.file_size])
    reader = zstandard.ZstdDecompressor().stream_reader(cast("IO[bytes]", frame), read_size=_READ_BYTES)
    content, checksum = hashlib.sha256(), xxhash.xxh3_128()
    entries = _Entries(HEADER_BYTES, path)
    pending: deque[Future[None]] = deque()
    written = 0
    while written < size:
        wanted = min(_STEP_BYTES, size - written)
        step = _inflate(reader, wanted, path)  # zstd writes straight into the new bytes
        if len(step) < wanted:  # each step is whole until the frame ends (a frame of our own follows it)
            raise CorruptSnapshotError(f"payload ends before the {size} bytes the header says", path=path)
        if len(pending) == _STEPS_IN_FLIGHT:
            pending.popleft().result()
        pending.append(helper.submit(_take_step, step, HEADER_BYTES + written, content, checksum, write_at))
        entries.add(step, HEADER_BYTES + written)
        written += wanted
    _check_frame_end(reader, size, path)
    entries.finish(HEADER_BYTES + size)
    for done in pending:
        done.result()
    if content.digest() != info.content_hash:
        raise CorruptSnapshotError("content hash mismatch", path=path)
    if len(entries.names) != info.command_count:
        raise CorruptSnapshotError(
            f"payload holds {len(entries.names)} commands, header says {info.command_count}", path=path
        )
    return entries, checksum.digest()


def _take_step(step: bytes, offset: int, content: hashlib._Hash, checksum: xxhash.xxh3_128, write_at: _WriteAt) -> None:
    content.update(step)
    checksum.update(step)
    write_at(step, offset)


class _FrameSource:
    """The snapshot's zstd frame as zstd's stream reader reads it, then ``END_FRAME`` once, then nothing.

    zstd's stream reader does not say whether its frame ended exactly where the
    data does; after the frame it decodes the tiny frame of our own only if the
    frame before it ended there, its checksum checked (``_check_frame_end``).
    """

    def __init__(self, frame: memoryview) -> None:
        self._frame = frame
        self._ended = False

    def read(self, size: int) -> memoryview | bytes:
        """At most ``size`` bytes of the frame, then the end frame once."""
        if self._frame:
            piece, self._frame = self._frame[:size], self._frame[size:]
            return piece
        if not self._ended:
            self._ended = True
            return END_FRAME
        return b""


def _inflate(reader: zstandard.ZstdDecompressionReader, size: int, path: Path) -> bytes:
    try:
        return reader.read(size)
    except zstandard.ZstdError as exc:
        raise CorruptSnapshotError(f"zstd frame does not decompress: {exc}", path=path) from exc


def _check_frame_end(reader: zstandard.ZstdDecompressionReader, size: int, path: Path) -> None:
    """Refuse a frame that makes more than ``size`` bytes or does not end where the file does."""
    first = _inflate(reader, 2, path)
    after = _inflate(reader, 2, path)
    if len(first) > 1:
        raise CorruptSnapshotError(f"payload exceeds the {size} bytes the header says", path=path)
    if (first, after) != (_END, b""):
        raise CorruptSnapshotError("zstd frame is incomplete or followed by other data", path=path)


class _Entries:
    """The name and image offset of each command entry of a payload handed over step by step, in order."""

    def __init__(self, start: int, path: Path) -> None:
        self.names: list[bytes] = []
        self.offsets: list[int] = []  # where each entry starts; after ``finish``, where the last one ends too
        self._next = start  # where the next entry starts
        self._cut = b""  # the start of an entry whose head the last step cut (rare: heads are a few bytes)
        self._path = path

    def add(self, step: bytes, start: int) -> None:
        """Index the entries whose heads ``step`` (the payload's bytes from image offset ``start``) completes."""
        if self._next >= start + len(step):
            return  # inside one entry's body
        if self._cut:
            step, start = self._cut + step, self._next
        pos = _scan(step, self._next - start, start, self.names, self.offsets, self._path)
        self._next = start + pos
        self._cut = step[pos:] if pos < len(step) else b""

    def finish(self, end: int) -> None:
        """Check that the last entry ended at ``end``, the payload's end.

        Raises:
            CorruptSnapshotError: it did not.
        """
        if self._next != end or self._cut:
            raise CorruptSnapshotError("the last command entry runs past the end of the payload", path=self._path)
        self.offsets.append(end)


def _scan(step: bytes, pos: int, base: int, names: list[bytes], starts: list[int], path: Path) -> int:
    """Append the name and start (``base`` + offset) of each entry whose head lies whole in ``step[pos:]``.

    An entry is ``0x0A <length> <Command>`` and its head the tag, the length and
    the Command's field 1, its name (b"" when it has none). The usual head (a
    one- or two-byte length, a name under 128 bytes) is read inline, since this
    runs once per command; anything else goes through ``_entry_head``.

    Returns:
        Where the next entry starts: past the end of ``step`` when the last
        entry's body runs on, inside it when that entry's head is cut.
    """
    end = len(step)
    while pos < end:
        stop = -1
        if pos + 6 <= end and step[pos] == _TAG:
            length, body = step[pos + 1], pos + 2
            if length >= 0x80:
                high = step[pos + 2]
                length, body = ((length & 0x7F) | high << 7, pos + 3) if high < 0x80 else (0, -1)
            if body > 0:
                stop, name = body + length, b""
                if length and step[body] == _TAG:
                    size = step[body + 1]
                    last = body + 2 + size
                    if size >= 0x80 or last > end:
                        stop = -1
                    elif last <= stop:
                        name = step[body + 2 : last]
        if stop < 0:
            head = _entry_head(memoryview(step), pos, path)
            if head is None:
                return pos
            name, stop = head
        names.append(name)
        starts.append(base + pos)
        pos = stop
    return pos


def _entry_head(view: memoryview, pos: int, path: Path) -> tuple[bytes, int] | None:
    """The name and end of the entry at ``view[pos]``, or None when its head is cut by the end of ``view``.

    Raises:
        CorruptSnapshotError: a tag other than field 1, or a bad length prefix.
    """
    if view[pos] != _TAG:
        raise CorruptSnapshotError(f"unexpected field tag {view[pos]} in the payload", path=path)
    length, body = wire.peek_varint(view, pos + 1, path)
    if body < 0 or (length and body >= len(view)):
        return None
    stop = body + length
    if not length or view[body] != _TAG:
        return b"", stop
    size, first = wire.peek_varint(view, body + 1, path)
    if first < 0 or first + size > stop:  # a name that runs past its entry: none
        return (b"", stop) if first >= 0 or len(view) >= stop else None
    if first + size > len(view):
        return None
    return bytes(view[first : first + size]), stop


def _index(names: list[bytes], offsets: list[int]) -> tuple[bytes, array[int], array[int], array[int]]:
    """The names, name starts, spans and hash table of the entries ``names[k]`` at ``offsets[k]:offsets[k + 1]``."""
    if all(map(operator.lt, names, islice(names, 1, None))):  # as snapshots are written: sorted, no name twice
        keys, starts, ends = names, offsets[:-1], offsets[1:]
    else:
        latest = dict(zip(names, range(len(names)), strict=False))  # of two entries with one name the later wins
        keys = sorted(latest)
        order = list(map(latest.__getitem__, keys))
        starts, ends = list(map(offsets.__getitem__, order)), list(map(offsets.__getitem__, map((1).__add__, order)))
    spans = array("Q", bytes(16 * len(keys)))
    spans[0::2], spans[1::2] = array("Q", starts), array("Q", ends)
    size = 1 << max(len(keys) * 2 - 1, 1).bit_length()  # at most half full
    slots, mask = array("I", bytes(4 * size)), size - 1
    for k, name in enumerate(keys, 1):
        slot = crc32(name) & mask
        while slots[slot]:
            slot = (slot + 1) & mask
        slots[slot] = k
    return b"".join(keys), array("Q", accumulate(map(len, keys), initial=0)), spans, slots
