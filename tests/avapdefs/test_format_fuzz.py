"""Fuzzing the readers of every file format: mutated files only ever raise the format's own error, in bounded memory.

Snapshot files (whole, streamed, and written into a serving image, as the
server loads them), delta files (decoded and applied, as a client or a server
does) and serving images (mapped and checked) are mutated: bit flips,
truncations, extensions, overwritten bytes, and header fields set to huge
values under a valid checksum (a header that claims 100 GB). Each reader must
refuse with ``SnapshotError`` (``DeltaMismatchError`` for a delta that does
not apply, ``ImageError`` for an image), never another exception, and its
peak of Python allocations (tracemalloc) stays small: nothing is allocated
from a size a file claims, only from what it really holds. The serving image
is the server's (``server/image.py``) but is fuzzed here, beside the formats
it is made from, with the same mutations.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import xxhash
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avapdefs.errors import AvapDefsError, DeltaMismatchError, SnapshotError
from avapdefs.folder import snapshot_name
from avapdefs.format import delta, snapshot, wire
from avapdefs.format.reader import iter_file_commands, verify_file
from avapdefs.v1.definitions_pb2 import CatalogDelta
from server.image import _CHECKSUM_BYTES, CACHE_NAME, HEADER, HEADER_BYTES, Image, ImageError, open_image
from server.image_write import write_image
from server.store import SnapshotStore
from tests.helpers import export_snapshot, sample_command

# Every reader's peak of Python allocations, for files of a few KB that may claim 100 GB.
PEAK_LIMIT_BYTES = 8 << 20
# For a frame that really inflates to 256 MiB: a few decompression steps, never the whole.
BOMB_PEAK_LIMIT_BYTES = 3 * snapshot.MAX_STEP_OUTPUT_BYTES + (8 << 20)
HUGE = [100 << 30, (1 << 63) - 1, (1 << 64) - 1, 1 << 40]
FUZZ = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _commands(version: int) -> list:  # type: ignore[type-arg]
    return [sample_command(f"cmd.{i:02d}", code=f"# version {version}\nx = {i * version}\n") for i in range(12)]


BASE_INFO, BASE = snapshot.encode_snapshot(_commands(6), version=6, source="fuzz", created_at_unix_ms=1)
SNAP_INFO, SNAP = snapshot.encode_snapshot(_commands(7), version=7, source="fuzz", created_at_unix_ms=2)
DELTA = delta.encode_delta(delta.make_delta(snapshot.verify(BASE), snapshot.verify(SNAP)))
_BUILT = write_image(None, SNAP, SNAP_INFO, Path("fuzz.avsnap"))
assert isinstance(_BUILT.buffer, bytes)
IMAGE: bytes = _BUILT.buffer
ANSWERS = {name: bytes(answer) for name, answer in _BUILT.answers.items()}


@pytest.fixture(scope="module", autouse=True)
def _tracing() -> Iterator[None]:
    tracemalloc.start()
    yield
    tracemalloc.stop()


def _bounded(read: Callable[[], object], limit_bytes: int = PEAK_LIMIT_BYTES) -> object:
    """``read()``'s result or its AvapDefsError/ImageError, with its peak of allocations asserted to be small."""
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        result: object = read()
    except (AvapDefsError, ImageError) as exc:
        result = exc
    peak = tracemalloc.get_traced_memory()[1] - before
    assert peak < limit_bytes, f"{read}: peak {peak >> 20} MiB"
    return result


@st.composite
def _mutations(draw: st.DrawFn, valid: bytes) -> bytes:
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "extend", "overwrite"]))
        if kind == "flip" and data:
            position = draw(st.integers(0, len(data) - 1))
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif kind == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif data:
            position = draw(st.integers(0, len(data) - 1))
            data[position : position + 8] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def _with_header(info: snapshot.SnapshotInfo, payload_from: bytes = SNAP) -> bytes:
    """A snapshot whose header (checksum valid) is ``info``, followed by ``payload_from``'s frame."""
    return snapshot.encode_prefix(info) + payload_from[SNAP_INFO.payload_offset :]


_SIZE_FIELDS = ["compressed_size", "uncompressed_size", "command_count"]
_CHECKED_SIZE_FIELDS = ["uncompressed_size", "command_count"]  # a rebuilt snapshot has its own compressed size


@st.composite
def _huge_headers(draw: st.DrawFn) -> bytes:
    field = draw(st.sampled_from(_SIZE_FIELDS))
    value = draw(st.sampled_from([*HUGE, 0, 1]))
    if field == "command_count":
        value &= (1 << 32) - 1  # a fixed32
    return _with_header(dataclasses.replace(SNAP_INFO, **{field: value}))  # type: ignore[arg-type]


def _read_snapshot(data: bytes, folder: Path, limit_bytes: int = PEAK_LIMIT_BYTES) -> None:
    """Every way a snapshot is read: whole, from its file, streamed, and into a serving image."""
    path = folder / "catalog.avsnap"
    path.write_bytes(data)
    readers: list[Callable[[], object]] = [
        lambda: snapshot.verify(data),
        lambda: snapshot.read_file(path),
        lambda: verify_file(path),
        lambda: sum(1 for _ in iter_file_commands(path)),
        # As the server loads it: the file read once its header and size agree, then verified into an image.
        lambda: write_image(None, snapshot.read_file_bytes(path), snapshot.read_info(data), path),
    ]
    for read in readers:
        result = _bounded(read, limit_bytes)
        if not isinstance(result, SnapshotError) and data != SNAP:
            # Accepted: only a change that decodes to the very same snapshot (a zstd window bit, say).
            assert snapshot.verify(data).payload == snapshot.verify(SNAP).payload


@FUZZ
@given(data=_mutations(SNAP))
def test_a_mutated_snapshot_raises_only_snapshot_errors(tmp_path: Path, data: bytes) -> None:
    _read_snapshot(data, tmp_path)


@FUZZ
@given(data=_huge_headers())
def test_a_header_claiming_huge_sizes_is_refused_without_allocating_them(tmp_path: Path, data: bytes) -> None:
    _read_snapshot(data, tmp_path)
    with pytest.raises(SnapshotError):
        snapshot.verify(data)


def _zstd_bomb(size: int) -> bytes:
    """A zstd frame (checksum on, no content size) of ``size`` zero bytes: a few KB per 256 MiB."""
    return zstandard.ZstdCompressor(level=1, write_checksum=True, write_content_size=False).compress(bytes(size))


def test_a_small_file_that_decompresses_to_gigabytes_is_refused_within_one_step(tmp_path: Path) -> None:
    # Before: the frame was fed to zstd in 32 KiB slices, and one slice of zeros stands for 1 GiB,
    # all produced by one call before the size the header claims was compared.
    frame = _zstd_bomb(256 << 20)
    for claimed in (1000, 100 << 30):
        info = dataclasses.replace(SNAP_INFO, compressed_size=len(frame), uncompressed_size=claimed)
        data = snapshot.encode_prefix(info) + frame
        assert len(data) < 64 << 10
        _read_snapshot(data, tmp_path, BOMB_PEAK_LIMIT_BYTES)
        with pytest.raises(SnapshotError):
            snapshot.verify(data)


def _read_delta(data: bytes) -> None:
    """Decode ``data`` and apply it to the base, as a client does: refused with a format error, or the target made."""
    decoded = _bounded(lambda: delta.decode_delta(data))
    if isinstance(decoded, SnapshotError):
        return
    assert isinstance(decoded, CatalogDelta)
    out = io.BytesIO()
    result = _bounded(lambda: delta.apply_delta(snapshot.verify(BASE), decoded, out))
    if not isinstance(result, SnapshotError | DeltaMismatchError):
        # Applied: only a change that still leads to the very same content (the checks compare its hash).
        assert snapshot.verify(out.getvalue()).payload == snapshot.verify(SNAP).payload


@FUZZ
@given(data=_mutations(DELTA))
def test_a_mutated_delta_raises_only_format_errors(data: bytes) -> None:
    _read_delta(data)


def _delta_file(message: CatalogDelta, frame: Callable[[bytes], bytes] | None = None) -> bytes:
    raw = message.SerializeToString()
    body = frame(raw) if frame else zstandard.ZstdCompressor(write_checksum=True).compress(raw)
    return delta.PREAMBLE.pack(delta.MAGIC, delta.FORMAT_VERSION) + body


@FUZZ
@given(field=st.sampled_from(_CHECKED_SIZE_FIELDS), value=st.sampled_from(HUGE))
def test_a_delta_whose_target_claims_huge_sizes_does_not_apply(field: str, value: int) -> None:
    message = delta.decode_delta(DELTA)
    setattr(message.target, field, value & ((1 << 32) - 1) if field == "command_count" else value)
    data = _delta_file(message)
    _read_delta(data)
    with pytest.raises(DeltaMismatchError):
        delta.apply_delta(snapshot.verify(BASE), delta.decode_delta(data), io.BytesIO())


def _claiming_content_size(frame: bytes, size: int) -> bytes:
    """``frame`` (written without a content size) with its header saying it holds ``size`` bytes."""
    descriptor = frame[4]
    assert descriptor >> 6 == 0 and not descriptor & 0x20  # no content size yet, a window byte follows
    return frame[:4] + bytes((descriptor | 0xC0,)) + frame[5:6] + struct.pack("<Q", size) + frame[6:]


def test_a_delta_frame_claiming_100_gb_is_refused_before_allocating() -> None:
    # Before: zstd allocated the output its frame header claims (or, with no claim, 16 GiB) up front.
    raw = delta.decode_delta(DELTA).SerializeToString()
    plain = zstandard.ZstdCompressor(write_checksum=True, write_content_size=False).compress(raw)
    preamble = delta.PREAMBLE.pack(delta.MAGIC, delta.FORMAT_VERSION)
    assert _bounded(lambda: delta.decode_delta(preamble + plain)) == delta.decode_delta(DELTA)
    claiming = preamble + _claiming_content_size(plain, 100 << 30)
    assert isinstance(_bounded(lambda: delta.decode_delta(claiming)), SnapshotError)
    # A frame that really inflates to 256 MiB, given the bound a client has (its catalogs' sizes).
    bomb = preamble + _zstd_bomb(256 << 20)
    bound = 2 * SNAP_INFO.uncompressed_size + (1 << 20)
    result = _bounded(lambda: delta.decode_delta(bomb, max_bytes=bound), BOMB_PEAK_LIMIT_BYTES)
    assert isinstance(result, SnapshotError) and "inflates past" in str(result)


def _read_image(data: bytes, folder: Path, *, same_answers: bool = True) -> None:
    path = folder / "image.avimg"
    if path.exists():
        path.chmod(0o644)
    path.write_bytes(data)
    result = _bounded(lambda: open_image(path, SNAP_INFO))
    if isinstance(result, ImageError) or not same_answers:
        return
    assert isinstance(result, Image)
    # Accepted: a change to bytes nothing reads (the header's unused tail). It must answer as the original.
    assert {name: bytes(answer) for name, answer in result.answers.items()} == ANSWERS
    assert bytes(result.file) == SNAP


@FUZZ
@given(data=_mutations(IMAGE))
def test_a_mutated_serving_image_raises_only_image_errors(tmp_path: Path, data: bytes) -> None:
    _read_image(data, tmp_path)


@FUZZ
@given(field=st.sampled_from([3, *range(8, 20)]), value=st.sampled_from([*HUGE, 0, 1, 7, HEADER_BYTES]))
def test_an_image_header_claiming_huge_sections_is_refused(tmp_path: Path, field: int, value: int) -> None:
    # The header's total size (field 3) and its six sections' offsets and sizes (fields 8 to 19).
    fields = list(HEADER.unpack_from(IMAGE))
    fields[field] = value & ((1 << 64) - 1)
    header = HEADER.pack(*fields)  # with its checksum made again, so the checks behind it are reached
    data = header + xxhash.xxh3_128_digest(header) + IMAGE[HEADER.size + _CHECKSUM_BYTES :]
    # Refused with ImageError, or (a forged header the checks cannot tell, which image.py does not
    # claim to catch: its writer is the server) accepted; never another exception.
    _read_image(data, tmp_path, same_answers=False)


def test_an_image_of_the_same_version_and_content_exported_again_is_rebuilt(tmp_path: Path) -> None:
    # The version exported again (same commands, a later creation time) has the image name of the first.
    # Before: the refusal of the old image raised BufferError (closing a map its views still used), which
    # the store does not catch, so the server could not load the version at all.
    folder = tmp_path / "snapshots"
    export_snapshot(folder, 7, _commands(7))
    SnapshotStore(folder, chunk_bytes=1024).load_newest()
    (image,) = (folder / CACHE_NAME).glob("*.avimg")
    (folder / snapshot_name(7)).unlink()
    again = export_snapshot(folder, 7, _commands(7))
    assert snapshot.read_file(again).info.created_at_unix_ms != SNAP_INFO.created_at_unix_ms
    loaded = SnapshotStore(folder, chunk_bytes=1024).load_newest()
    assert loaded.info == snapshot.read_file(again).info
    assert [path.name for path in (folder / CACHE_NAME).glob("*.avimg")] == [image.name]


def test_the_fuzzed_files_are_valid_to_start_with(tmp_path: Path) -> None:
    # Each mutation starts from a file every reader accepts, so a refusal is the mutation's doing.
    assert snapshot.verify(SNAP).info == SNAP_INFO
    assert delta.target_info(delta.decode_delta(DELTA)).content_hash == SNAP_INFO.content_hash
    path = tmp_path / "image.avimg"
    path.write_bytes(IMAGE)
    assert {name: bytes(answer) for name, answer in open_image(path, SNAP_INFO).answers.items()} == ANSWERS
    assert len(ANSWERS) == len(list(wire.iter_entries(snapshot.verify(SNAP).payload))) == 12
