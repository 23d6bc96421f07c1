"""The serving image: one version's answers, index and file in one read-only file every server process maps.

When a version is first loaded it is verified once and written, uncompressed,
into the server's cache folder (``<snapshots>/.serving/``) as
``<version>-<content hash>.f<IMAGE_FORMAT>.avimg``. Every process then maps
that file read-only (``mmap.ACCESS_READ``), so its pages are the kernel's page
cache, shared by all of them, and a restart (or process N+1) starts without
decompressing or indexing anything. Layout, after a 4 KiB header::

    payload      the snapshot's uncompressed payload: entries 0x0A <len> <Command>, each a GetCommandResponse
    file         the snapshot file byte for byte (what SyncCatalog streams)
    names        every command's UTF-8 name, ascending, concatenated
    name_starts  u64[N + 1]: name k is names[name_starts[k]:name_starts[k + 1]]
    spans        u64[2N]: the file offsets where answer k starts and ends
    slots        u32[M]: open-addressing hash table, crc32(name) & (M - 1), linear probing; k + 1, 0 empty

Why SIGBUS cannot happen: touching a mapped page past the end of a file that
was truncated after it was mapped kills the process, so a mapped file must
never shrink. The server is the only writer of its cache folder; an image is
written under a temporary name, fsynced and renamed into place, and never
opened for writing again (its mode is read-only). A damaged image is
replaced by renaming a new file over its name, and a stale one is unlinked:
both leave the inode a process has mapped intact until it unmaps it. Names
are content-addressed (version and content hash), so a name never comes to
mean other bytes. The snapshot files themselves are never mapped: an operator
may truncate those (``store.py``).

Verification. The writer checks the payload it decompresses against the
snapshot's content hash (sha256, the check a snapshot file gets) and records
in the header that content hash, the snapshot file's sha256 (what a sync
announces) and an XXH3-128 checksum of the payload and one of the rest
(file, index, table). Every process that maps an image it did not write
checks, before first use: the header's magic, format, byte order and sizes;
that its content hash is the snapshot's (an image of another version or
content, renamed, is refused); both XXH3 checksums over the bytes on disk
(truncation, bit flips, a torn write); and that the embedded file's header
equals the snapshot file's. XXH3 rather than sha256 on this path because it
runs on every start of every process: at 50,000 commands (122 MB image)
mapping and checking took 93-107 ms with sha256 over the payload and the
rest, and takes about 15 ms with XXH3. A checksum is as good as a
cryptographic hash against accidents; neither defends against an attacker
who can write the server's own folder (who could as well replace the
snapshots), and the payload's sha256 was checked when the image was written.
The checksums are read with ``pread``, not through the map, so pages a
process never serves stay out of its RSS. An image that fails is removed and
rebuilt from the snapshot, never served.

Writing: ``image_write.py`` (once per version, what a cold start waits on).

Lookups: GetCommand finds a name through the hash table in the map, so no
process holds a dict of the catalog (``bench/bench_image.py``, 50,000 commands,
one thread, medians): the former dict of answer bytes 2.5-3.0 M lookups/s but
106 MB per process; the hash table in the map 0.33-0.57 M/s (1.7-3 us, most
of it copying the ~2 KB answer out of a random place in the map; a per-process
dict of name -> index was no faster once the copy is paid, and costs 8 MB per
process, 160 MB at 1,000,000 commands); bisect over the mapped names
0.08-0.15 M/s.

Thread safety: an ``Image`` is immutable; any number of threads may read it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload
from zlib import crc32

import xxhash

from avapdefs.errors import SnapshotError
from avapdefs.format import wire
from avapdefs.format.snapshot import (
    MAX_HEADER_BYTES,
    PREAMBLE,
    SnapshotInfo,
    read_info,
)
from avapdefs.v1.definitions_pb2 import SyncCatalogResponse

IMAGE_FORMAT = 2  # 2: XXH3-128 checksums and the file's sha256 in the header (1: sha256 of the sections)
SUFFIX = ".avimg"
CACHE_NAME = ".serving"
MAGIC = b"AVAPIMG\x00"
HEADER_BYTES = 4096
BYTE_ORDER = 0x01020304  # written natively: an image from a machine of the other byte order does not match
# magic, format, byte order, total size, content hash, sha256 of the snapshot file,
# XXH3-128 of the payload, XXH3-128 of everything after it, 6 x (offset, size); then XXH3-128 of those fields
HEADER = struct.Struct("=8sIIQ32s32s16s16s12Q")
_CHECKSUM_BYTES = 16
_SECTIONS = ("payload", "file", "names", "name_starts", "spans", "slots")
_CHUNK_TAG = wire.tag(SyncCatalogResponse.CHUNK_FIELD_NUMBER)
_HASH_READ_BYTES = 1 << 20


class ImageError(Exception):
    """An image file is missing, damaged or not the one asked for; ``reason`` says which."""

    def __init__(self, reason: str, path: Path) -> None:
        super().__init__(f"{path}: {reason}")
        self.reason = reason
        self.path = path


CACHE_FOLDER_MODE = 0o755  # like the snapshot folder it sits in: images are 0444, readable by any user


def make_cache_folder(cache: Path) -> None:
    """Create the cache folder ``cache`` when missing, ``CACHE_FOLDER_MODE`` whatever the umask.

    Raises:
        OSError: it cannot be created.
    """
    try:
        cache.mkdir()
    except FileExistsError:
        return
    os.chmod(cache, CACHE_FOLDER_MODE)


def image_name(info: SnapshotInfo) -> str:
    """The file name of the image of the snapshot ``info`` describes."""
    return f"{info.version:010d}-{info.content_hash.hex()}.f{IMAGE_FORMAT}{SUFFIX}"


class Answers(Mapping[bytes, bytes]):
    """UTF-8 command name -> serialized ``GetCommandResponse``, found through the image's hash table."""

    def __init__(self, image: Image) -> None:
        self._image = image

    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        """The answer for ``name``, or ``default``: one crc32 and usually one probe."""
        image = self._image
        slots, starts, names, mask = image.slots, image.name_starts, image.names_view, image.mask
        slot = crc32(name) & mask
        while found := slots[slot]:
            k = found - 1
            if names[starts[k] : starts[k + 1]] == name:
                spans = image.spans
                return image.buffer[spans[2 * k] : spans[2 * k + 1]]
            slot = (slot + 1) & mask
        return default

    def __getitem__(self, name: bytes) -> bytes:
        found = self.get(name)
        if found is None:
            raise KeyError(name)
        return found

    def __len__(self) -> int:
        return self._image.count

    def __iter__(self) -> Iterator[bytes]:
        image = self._image
        return (bytes(image.names_view[image.name_starts[k] : image.name_starts[k + 1]]) for k in range(image.count))


class Names(Sequence[str]):
    """Every command name, ascending, decoded from the image on access (``bisect`` works on it)."""

    def __init__(self, image: Image) -> None:
        self._image = image

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self._decode(k) for k in range(*index.indices(self._image.count))]
        if index < 0:
            index += self._image.count
        if not 0 <= index < self._image.count:
            raise IndexError(index)
        return self._decode(index)

    def _decode(self, k: int) -> str:
        starts = self._image.name_starts
        return str(self._image.names_view[starts[k] : starts[k + 1]], "utf-8", "replace")

    def __len__(self) -> int:
        return self._image.count


class Chunks(Sequence[bytes]):
    """The embedded snapshot file as serialized ``SyncCatalogResponse.chunk`` messages, cut on access."""

    def __init__(self, image: Image, chunk_bytes: int) -> None:
        self._image = image
        self._chunk_bytes = chunk_bytes
        self._count = -(-len(image.file) // chunk_bytes)

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return [self[k] for k in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(index)
        data = self._image.file[index * self._chunk_bytes : (index + 1) * self._chunk_bytes]
        return _CHUNK_TAG + wire.varint(len(data)) + data  # bytes + memoryview: one copy

    def __len__(self) -> int:
        return self._count


@dataclass(frozen=True, eq=False)
class Image:
    """A mapped (or, when the cache cannot be written, in-memory) serving image, verified.

    Attributes:
        path: the image file (None for one held in memory).
        info: the header of the snapshot it holds.
        buffer: the whole image (a read-only mmap, or bytes).
        payload: the uncompressed snapshot payload.
        file: the snapshot file, byte for byte.
        file_sha256: sha256 of ``file``.
        count: commands in the index.
    """

    path: Path | None
    info: SnapshotInfo
    buffer: mmap.mmap | bytes
    payload: memoryview
    file: memoryview
    file_sha256: bytes
    names_view: memoryview
    name_starts: memoryview
    spans: memoryview
    slots: memoryview
    count: int
    mask: int

    @property
    def answers(self) -> Answers:
        """Name -> GetCommandResponse bytes."""
        return Answers(self)

    @property
    def names(self) -> Names:
        """The names, ascending."""
        return Names(self)

    def chunks(self, chunk_bytes: int) -> Chunks:
        """The file as SyncCatalog chunk messages of ``chunk_bytes`` data bytes."""
        return Chunks(self, chunk_bytes)


def views(buffer: mmap.mmap | bytes, path: Path | None, sections: Sequence[tuple[int, int]]) -> dict[str, object]:
    whole = memoryview(buffer)
    (payload, file, names, starts, spans, slots) = (whole[start : start + size] for start, size in sections)
    return {
        "path": path, "buffer": buffer, "payload": payload, "file": file, "names_view": names,
        "name_starts": starts.cast("Q"), "spans": spans.cast("Q"), "slots": slots.cast("I"),
        "count": len(starts) // 8 - 1, "mask": len(slots) // 4 - 1,
    }  # fmt: skip


def open_image(path: Path, info: SnapshotInfo) -> Image:
    """Map the image at ``path`` read-only and verify it holds the snapshot ``info`` describes.

    Raises:
        FileNotFoundError: there is no image at ``path``.
        ImageError: the file is not a valid image of that snapshot.
    """
    return map_image(path, info)


def map_image(path: Path, info: SnapshotInfo, *, written: bool = False) -> Image:
    # The writer (written=True) needs no check of the checksums of what it just wrote.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        seen = os.fstat(fd)
        if not stat.S_ISREG(seen.st_mode) or seen.st_size < HEADER_BYTES:
            raise ImageError("not a regular file of at least a header", path)
        buffer = mmap.mmap(fd, seen.st_size, access=mmap.ACCESS_READ)
        try:
            sections = _check_header(buffer, info, path)
            _, _, _, _, _, file_sha256, payload_xxh3, rest_xxh3, *_ = HEADER.unpack_from(buffer)
            if not written:
                payload_start, payload_size = sections[0]
                if _xxh3(fd, payload_start, payload_size) != payload_xxh3:
                    raise ImageError("payload does not match the header's checksum", path)
                rest_start = payload_start + payload_size
                if _xxh3(fd, rest_start, len(buffer) - rest_start) != rest_xxh3:
                    raise ImageError("index or file does not match the header's checksum", path)
            image = Image(info=info, file_sha256=file_sha256, **views(buffer, path, sections))  # type: ignore[arg-type]
            _check_file(image, info, path)
            return image
        except BaseException:
            # Views of the map may still exist (the refused image's, held by the traceback): closing
            # would then raise BufferError over the real error; the map goes with its last view.
            with contextlib.suppress(BufferError):
                buffer.close()
            raise
    finally:
        os.close(fd)


def _check_header(buffer: mmap.mmap, info: SnapshotInfo, path: Path) -> list[tuple[int, int]]:
    magic, form, order, total, content_hash, _, _, _, *flat = HEADER.unpack_from(buffer)
    if magic != MAGIC or form != IMAGE_FORMAT or order != BYTE_ORDER:
        raise ImageError("not a serving image of this format", path)
    checksum = buffer[HEADER.size : HEADER.size + _CHECKSUM_BYTES]
    if xxhash.xxh3_128_digest(buffer[: HEADER.size]) != checksum:
        raise ImageError("header does not match its checksum", path)
    if total != len(buffer):
        raise ImageError(f"image is {len(buffer)} bytes, its header says {total}", path)
    if content_hash != info.content_hash:
        raise ImageError("image of another content hash", path)
    sections = list(zip(flat[0::2], flat[1::2], strict=True))
    end = HEADER_BYTES
    for start, size in sections:
        if start < end or start + size > total:
            raise ImageError("sections overlap or run past the end", path)
        end = start + size
    starts, spans, slots = (size for _, size in sections[3:])
    count = starts // 8 - 1
    slot_count = slots // 4
    if sections[0][1] != info.uncompressed_size or count < 0 or starts % 8 or spans != 16 * count:
        raise ImageError("index sizes do not agree", path)
    if slot_count < 1 or slot_count & (slot_count - 1) or slot_count < 2 * count:
        raise ImageError("bad hash table size", path)
    return sections


def _xxh3(fd: int, start: int, size: int) -> bytes:
    # Read, not hashed through the map: pages a process never serves from stay out of its RSS.
    hasher = xxhash.xxh3_128()
    buffer = bytearray(_HASH_READ_BYTES)
    view = memoryview(buffer)
    end = start + size
    while start < end:
        got = os.preadv(fd, [view[: min(_HASH_READ_BYTES, end - start)]], start)
        if got <= 0:
            raise OSError("image ended early")
        hasher.update(view[:got])
        start += got
    return hasher.digest()


def _check_file(image: Image, info: SnapshotInfo, path: Path) -> None:
    try:
        embedded = read_info(image.file[: PREAMBLE.size + MAX_HEADER_BYTES], path=path)
    except SnapshotError as exc:
        raise ImageError(f"the embedded snapshot file: {exc.reason}", path) from exc
    if embedded != info or len(image.file) != info.file_size:
        raise ImageError("the embedded snapshot file is not the one on disk", path)


def remove_stale(cache: Path, keep: set[str]) -> list[Path]:
    """Delete the images in ``cache`` whose names are not in ``keep``; a process that maps one keeps its pages."""
    removed: list[Path] = []
    if not cache.is_dir():
        return removed
    with contextlib.suppress(OSError):
        for path in cache.iterdir():
            if path.name.endswith(SUFFIX) and path.name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed
