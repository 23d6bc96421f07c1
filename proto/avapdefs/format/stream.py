"""A snapshot file checked in one pass while its pieces arrive: what a sync client runs on the chunks it receives.

``snapshot.verify`` checks a file held whole. ``verify_stream`` takes the file
as consecutive pieces of any size (a SyncCatalog stream's chunks, pulled as
they come, never joined) and checks everything ``verify`` does, at once:

- the sha256 of the file's bytes (the checksum a server announces) and its
  size, as the pieces pass;
- the preamble and header, as soon as they are complete;
- the zstd frame, inflated straight into the payload's buffer: zstd writes
  into the space it is given, so no step can make more than the header's
  size, whatever the frame;
- the content hash and the command count of each part of the payload just
  written, on a helper thread while zstd inflates the next part (zstd and
  sha256 both release the GIL); the file's own sha256 there too;
- and, for a caller that wants the catalog parsed, each run of whole commands
  handed to its ``on_entries`` (a Catalog's parse) once counted, between
  inflating steps, so the parse follows the inflating part by part, while
  the parts are still in the cache, instead of after the whole payload.

The payload is written once and read once more, never copied or joined
(bench/README.md has the figures).

The payload lives in an anonymous private mapping of the size the header
states: only pages the frame really fills are ever touched, so a header that
claims a huge payload costs address space, not memory, and is refused when
the frame ends short. It is handed out as a read-only memoryview.

zstd's stream reader does not say whether its frame ended exactly where the
data does. So after the frame, the reader is given a tiny frame of our own
(one byte): zstd decodes it only if the frame before it ended there, its
checksum checked; anything cut short or left over fails or is not that byte.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import mmap
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, cast

import zstandard

from avapdefs.errors import CorruptSnapshotError, TruncatedSnapshotError
from avapdefs.format import wire
from avapdefs.format.snapshot import MAGIC, MAX_HEADER_BYTES, PREAMBLE, Snapshot, SnapshotInfo, check_size, read_info

_STEP_BYTES = 1 << 20  # payload bytes inflated per step, then hashed and counted on the helper thread
_READ_BYTES = 1 << 18  # the most compressed bytes zstd is handed at once
# A one-byte frame of our own, fed to zstd after a snapshot's frame: zstd's stream reader does not say
# whether a frame ended exactly where the data does, but it decodes this one (its checksum checked) only
# if the frame before it ended there. server/image_write.py does the same.
END_BYTE = 0x5A
END_FRAME = zstandard.ZstdCompressor(write_checksum=True).compress(bytes((END_BYTE,)))
_EMPTY_HASH = hashlib.sha256().digest()
_HUGE_PAGE_BYTES = 2 << 20


class _Source:
    """The file's pieces as zstd's stream reader reads them: hashed and counted as they pass, cut at the frame's end.

    ``read`` hands out the frame's bytes, then ``END_FRAME`` once, then nothing.
    """

    def __init__(self, pieces: Iterable[bytes | memoryview], hashing: ThreadPoolExecutor | None) -> None:
        self._pieces = iter(pieces)
        self._hashing = hashing  # where the pieces are hashed, off the inflating thread; None: not hashed
        self._hasher = hashlib.sha256()
        self._hashed: Future[None] | None = None  # the last piece's hashing
        self._rest = memoryview(b"")
        self.received = 0
        self.frame_left = 0
        self.short = False  # the pieces ended inside the frame
        self._ended = False

    def take(self, size: int) -> bytes:
        """The next ``size`` bytes (fewer only when the pieces end)."""
        parts: list[memoryview] = []
        have = 0
        while have < size and (self._rest or self._more()):
            part = self._rest[: size - have]
            self._rest = self._rest[len(part) :]
            parts.append(part)
            have += len(part)
        return b"".join(parts)

    def _more(self) -> bool:
        """Pull the next non-empty piece into ``_rest``; False when there is none."""
        for piece in self._pieces:
            view = memoryview(piece).cast("B")
            if view:
                self.received += len(view)
                if self._hashing is not None:
                    self._hashed = self._hashing.submit(self._hasher.update, view)
                self._rest = view
                return True
        return False

    def read(self, size: int) -> memoryview | bytes:
        """What zstd reads next: at most ``size`` bytes of the frame, then the end frame once."""
        if self.frame_left:
            if not self._rest and not self._more():
                self.short = True  # zstd stops short, and the caller says why
                return b""
            taken = self._rest[: min(size, self.frame_left)]
            self._rest = self._rest[len(taken) :]
            self.frame_left -= len(taken)
            return taken
        if not self._ended:
            self._ended = True
            return END_FRAME
        return b""

    def rest_size(self) -> int:
        """How many bytes follow the frame (pulling every remaining piece)."""
        extra = len(self._rest)
        while self._more():
            extra += len(self._rest)
        self._rest = memoryview(b"")
        return extra

    def digest(self) -> bytes:
        """The sha256 of every byte received (when they are hashed)."""
        if self._hashed is not None:
            self._hashed.result()  # the pieces are hashed in order, so the last one is hashed last
        return self._hasher.digest()


class _PayloadCheck:
    """The content hash and the command count of a payload handed over part by part, and its runs of whole entries.

    Each part is hashed and counted on the ``hashing`` thread (sha256 releases the GIL, so it runs
    beside zstd) while the next one inflates. ``on_entries`` runs on the calling thread, on the part
    before the one just handed over (counted by then, so its whole entries are known): a parse holds
    the GIL, and on a thread of its own it kept the inflating thread waiting for it.
    """

    def __init__(
        self,
        buffer: memoryview,
        hashing: ThreadPoolExecutor,
        path: Path | str | None,
        on_entries: Callable[[memoryview], object] | None,
    ) -> None:
        self._buffer = buffer
        self._hasher = hashlib.sha256()
        self._counter = wire.EntryCounter(path)
        self._on_entries = on_entries
        self._handed = 0  # payload bytes handed to on_entries so far
        self._hashing = hashing
        self._pending: list[Future[int]] = []

    def add(self, start: int, end: int) -> None:
        """Hash and count ``buffer[start:end]`` (each part after the one before it); hand on the part before.

        Raises:
            CorruptSnapshotError: the part before is not command entries.
            Exception: what ``on_entries`` raised.
        """
        self._pending.append(self._hashing.submit(self._check, start, end))
        if self._on_entries is not None and len(self._pending) > 1:
            self._hand_on(self._pending[-2].result())

    def _check(self, start: int, end: int) -> int:
        """Hash and count a part; the payload bytes of whole entries so far."""
        with memoryview(self._buffer) as whole, whole[start:end] as part:
            self._hasher.update(part)
            self._counter.feed(part)
        return self._counter.whole_bytes

    def _hand_on(self, whole_bytes: int) -> None:
        if self._on_entries is not None and whole_bytes > self._handed:
            with memoryview(self._buffer) as whole, whole[self._handed : whole_bytes] as entries:
                self._on_entries(entries)
            self._handed = whole_bytes

    def result(self) -> tuple[bytes, int]:
        """The content hash and the command count, once every part is done (and handed on).

        Raises:
            CorruptSnapshotError: the payload is not a sequence of command entries.
            Exception: what ``on_entries`` raised.
        """
        whole_bytes = 0
        for pending in self._pending:
            whole_bytes = pending.result()
        self._hand_on(whole_bytes)
        return self._hasher.digest(), self._counter.finish()


def verify_stream(
    pieces: Iterable[bytes | memoryview],
    *,
    file_size: int | None = None,
    file_sha256: bytes | None = None,
    path: Path | str | None = None,
    on_entries: Callable[[memoryview], object] | None = None,
) -> Snapshot:
    """Check a snapshot file given as consecutive ``pieces`` and return it, its payload a read-only view.

    The checks are those of ``snapshot.verify``, and the two a sync header adds.
    ``pieces`` is pulled one piece at a time, so a live stream is checked as it
    arrives; an exception it raises passes through unchanged.

    Args:
        pieces: the file's bytes, in order, cut anywhere.
        file_size: the size the file must have (a sync header's ``data_size``); None: the header's own.
        file_sha256: the sha256 the file's bytes must have (a sync header's ``data_sha256``); None or b"": unchecked.
        path: the file, for error messages.
        on_entries: called with each run of whole command entries of the payload, in order, as soon as it is
            inflated and counted, on the calling thread between inflating steps: ``Catalog().MergeFromString``
            parses the catalog as it comes (messages concatenate). The payload is not verified yet when it is
            called: drop what it built when ``verify_stream`` raises. Its views are valid during the call only.

    Raises:
        SnapshotError: a subclass saying precisely what is wrong.
        Exception: what ``on_entries`` raised.
    """
    hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-hash")
    try:
        source = _Source(pieces, hashing if file_sha256 else None)
        info = _read_head(source, file_size, path)
        snapshot = _inflate(source, info, path, hashing, on_entries)
        if source.rest_size():
            raise CorruptSnapshotError(f"file is {source.received} bytes, header says {info.file_size}", path=path)
        if file_sha256 and source.digest() != file_sha256:
            raise CorruptSnapshotError("the file's sha256 differs from the one announced", path=path)
    finally:
        hashing.shutdown(wait=True, cancel_futures=True)
    return snapshot


def _read_head(source: _Source, file_size: int | None, path: Path | str | None) -> SnapshotInfo:
    head = source.take(PREAMBLE.size)
    if len(head) == PREAMBLE.size and head.startswith(MAGIC):
        header_size = PREAMBLE.unpack_from(head)[3]
        if 0 < header_size <= MAX_HEADER_BYTES:
            head += source.take(header_size)
    info = read_info(head, path=path)  # magic, format, header size and checksum
    if file_size is not None:
        check_size(file_size, info, path)
    source.frame_left = info.compressed_size
    return info


def _inflate(
    source: _Source,
    info: SnapshotInfo,
    path: Path | str | None,
    hashing: ThreadPoolExecutor,
    on_entries: Callable[[memoryview], object] | None,
) -> Snapshot:
    """Inflate the frame into the payload's buffer, checking each part as it is written."""
    # zstd only calls the source's read(n), which is all a _Source has of a file.
    reader = zstandard.ZstdDecompressor().stream_reader(cast("IO[bytes]", source), read_size=_READ_BYTES)
    size = info.uncompressed_size
    buffer = _payload_buffer(info, path)
    check = _PayloadCheck(buffer, hashing, path, on_entries) if buffer is not None else None
    written = 0
    if buffer is not None and check is not None:
        with memoryview(buffer) as view:
            for part in _parts(reader, view, size, source, path):
                check.add(written, written + part)
                written += part
    tail = _frame_tail(reader, source, path)
    if source.short:
        raise TruncatedSnapshotError("file ends inside the zstd frame", path=path)
    if written != size:
        raise CorruptSnapshotError(f"payload is {written} bytes, header says {size}", path=path)
    if tail != (1, END_BYTE, 0):
        raise CorruptSnapshotError("zstd frame is incomplete or followed by other data", path=path)
    content_hash, count = check.result() if check is not None else (_EMPTY_HASH, 0)
    if content_hash != info.content_hash:
        raise CorruptSnapshotError("content hash mismatch", path=path)
    if count != info.command_count:
        raise CorruptSnapshotError(f"payload holds {count} commands, header says {info.command_count}", path=path)
    return Snapshot(info, buffer.toreadonly() if buffer is not None else b"")


def _parts(
    reader: zstandard.ZstdDecompressionReader, view: memoryview, size: int, source: _Source, path: Path | str | None
) -> Iterator[int]:
    """Inflate into ``view`` a step at a time and yield each step's size, until it is full or the frame ends."""
    written = 0
    while written < size:
        try:
            got = reader.readinto(view[written : min(written + _STEP_BYTES, size)])
        except zstandard.ZstdError as exc:
            raise _zstd_error(exc, source, path) from exc
        if not got:
            return
        written += got
        yield got


def _frame_tail(
    reader: zstandard.ZstdDecompressionReader, source: _Source, path: Path | str | None
) -> tuple[int, int, int]:
    """What follows the payload: (1, END_BYTE, 0) when the frame ended where the file does, checksum checked."""
    scratch = bytearray(2)
    try:
        first = reader.readinto(scratch)
        byte = scratch[0]
        after = reader.readinto(scratch)
    except zstandard.ZstdError as exc:
        raise _zstd_error(exc, source, path) from exc
    return first, byte, after


def _zstd_error(exc: zstandard.ZstdError, source: _Source, path: Path | str | None) -> Exception:
    if source.short:
        return TruncatedSnapshotError("file ends inside the zstd frame", path=path)
    return CorruptSnapshotError(f"zstd frame does not decompress: {exc}", path=path)


def _payload_buffer(info: SnapshotInfo, path: Path | str | None) -> memoryview | None:
    """A private anonymous mapping of the payload's stated size (None for none); its pages cost memory once written.

    Its start is aligned to a huge page, so that every page of it can be one (where the kernel has them):
    a fresh page costs a fault when first written, and 4 KiB faults took about 6 ms of every 10 MB
    (2 MiB ones about 1 ms). An unaligned mapping keeps 4 KiB pages at its ends: 441 faults for a
    10 MB payload, 5 when aligned.
    """
    size = info.uncompressed_size
    if not size:
        return None
    try:
        mapping = mmap.mmap(-1, size + _HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE)
    except (OSError, OverflowError, ValueError) as exc:
        raise CorruptSnapshotError(
            f"header says the payload is {size} bytes, more than can be mapped ({exc})", path=path
        ) from exc
    with contextlib.suppress(AttributeError, OSError):
        mapping.madvise(mmap.MADV_HUGEPAGE)
    start = -_address(mapping) % _HUGE_PAGE_BYTES
    return memoryview(mapping)[start : start + size]


def _address(mapping: mmap.mmap) -> int:
    """Where ``mapping`` starts in memory."""
    first = ctypes.c_char.from_buffer(mapping)
    try:
        return ctypes.addressof(first)
    finally:
        del first  # releases its hold on the mapping
