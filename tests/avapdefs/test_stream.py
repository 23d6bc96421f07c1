"""A snapshot checked as its pieces arrive (``verify_stream``): what ``verify`` gives, and its refusals."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import tracemalloc
from collections.abc import Iterator

import psutil
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from avapdefs.errors import CorruptSnapshotError, SnapshotError, SyncError, TruncatedSnapshotError
from avapdefs.format import snapshot, wire
from avapdefs.format.stream import verify_stream
from avapdefs.v1.definitions_pb2 import Catalog, Command
from tests.helpers import sample_command


def _hex(seed: int, size: int) -> str:
    return random.Random(seed).randbytes(size // 2).hex()  # compresses about 2:1


def _encode(commands: list[Command]) -> tuple[snapshot.SnapshotInfo, bytes]:
    return snapshot.encode_snapshot(commands, version=9, source="test", created_at_unix_ms=1_700_000_000_000)


# About 3 MB of payload: several of the stream's 1 MiB steps, and of zstd's reads.
BIG_INFO, BIG = _encode([sample_command(f"cmd{i:04d}", code=_hex(i, 3000)) for i in range(1000)])
SMALL_INFO, SMALL = _encode([sample_command(f"cmd{i}", code="v = 1\n" * 50) for i in range(6)])


def _cut(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    """``data`` in consecutive pieces of the given sizes (cycled)."""
    start = index = 0
    while start < len(data):
        size = sizes[index % len(sizes)]
        yield data[start : start + size]
        start += size
        index += 1


@pytest.mark.parametrize("piece_bytes", [1 << 20, 65_536, 4096, 1000, 7])
def test_any_cut_gives_the_snapshot_verify_gives(piece_bytes: int) -> None:
    data = BIG if piece_bytes >= 1000 else SMALL
    expected = snapshot.verify(data)
    got = verify_stream(_cut(data, [piece_bytes]), file_size=len(data), file_sha256=hashlib.sha256(data).digest())
    assert got.info == expected.info
    assert got.payload == expected.payload
    assert len(got.catalog().commands) == expected.info.command_count


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=8).filter(any))
def test_pieces_of_random_sizes_and_empty_ones(sizes: list[int]) -> None:
    assert verify_stream(_cut(SMALL, sizes)).payload == snapshot.verify(SMALL).payload


@pytest.mark.parametrize("piece_bytes", [1 << 20, 65_536, 4096, 1000])
def test_on_entries_gets_the_payload_in_runs_of_whole_commands_as_it_inflates(piece_bytes: int) -> None:
    runs: list[bytes] = []
    catalog = Catalog()

    def on_entries(entries: memoryview) -> None:
        runs.append(bytes(entries))
        catalog.MergeFromString(entries)  # type: ignore[arg-type]  # any buffer parses

    got = verify_stream(_cut(BIG, [piece_bytes]), on_entries=on_entries)
    assert b"".join(runs) == got.payload
    assert len(runs) > 1  # parsed while the rest inflated, not once at the end
    assert all(len(list(wire.iter_entries(run))) for run in runs)  # each run is whole commands
    assert catalog == snapshot.verify(BIG).catalog()


def test_what_on_entries_raises_passes_through() -> None:
    def refuse(entries: memoryview) -> None:
        raise ValueError("not this one")

    with pytest.raises(ValueError, match="not this one"):
        verify_stream([BIG], on_entries=refuse)


@pytest.mark.parametrize("position", [BIG_INFO.payload_offset + 1000, len(BIG) // 2, len(BIG) - 10])
def test_a_damaged_file_is_refused_the_same_when_parsed_as_it_comes(position: int) -> None:
    damaged = bytearray(BIG)
    damaged[position] ^= 0x40
    with pytest.raises(SnapshotError) as plain:
        verify_stream(_cut(bytes(damaged), [65_536]))
    with pytest.raises(SnapshotError) as parsed:
        verify_stream(_cut(bytes(damaged), [65_536]), on_entries=lambda entries: None)
    assert type(parsed.value) is type(plain.value)


def test_on_entries_is_not_called_for_an_empty_catalog() -> None:
    _, data = _encode([])
    runs: list[memoryview] = []
    verify_stream([data], on_entries=runs.append)
    assert runs == []


def test_the_payload_is_read_only() -> None:
    payload = verify_stream([BIG]).payload
    assert isinstance(payload, memoryview) and payload.readonly


def test_an_empty_catalog() -> None:
    info, data = _encode([])
    got = verify_stream([data])
    assert (got.info, got.payload) == (info, b"")


def test_a_file_cut_anywhere_is_truncated() -> None:
    for length in range(len(SMALL)):
        with pytest.raises(TruncatedSnapshotError):
            verify_stream(_cut(SMALL[:length], [97]))


def test_more_bytes_than_the_header_says_are_refused() -> None:
    with pytest.raises(CorruptSnapshotError, match="header says"):
        verify_stream([SMALL, b"\0"])


def test_the_announced_size_and_sha256_must_match() -> None:
    with pytest.raises(CorruptSnapshotError, match="header says"):
        verify_stream([SMALL], file_size=len(SMALL) + 1)
    with pytest.raises(CorruptSnapshotError, match="sha256 differs"):
        verify_stream([SMALL], file_sha256=bytes(32))


def _reframed(info: snapshot.SnapshotInfo, frame: bytes, uncompressed_size: int | None = None) -> bytes:
    """A file whose header (its checksum right) gives ``frame``'s size, and ``uncompressed_size`` when given."""
    claimed = info.uncompressed_size if uncompressed_size is None else uncompressed_size
    stated = dataclasses.replace(info, compressed_size=len(frame), uncompressed_size=claimed)
    return snapshot.encode_prefix(stated) + frame


_FRAME = SMALL[SMALL_INFO.payload_offset :]


@pytest.mark.parametrize(
    "data",
    [
        _reframed(SMALL_INFO, _FRAME + b"\0"),  # a byte after the frame, counted in the header
        _reframed(SMALL_INFO, _FRAME + b"\0\0\0\0\0"),
        _reframed(SMALL_INFO, _FRAME[:-2]),  # the frame's checksum cut, the header agreeing
        _reframed(SMALL_INFO, _FRAME + _FRAME),  # a second frame
        _reframed(SMALL_INFO, _FRAME, uncompressed_size=SMALL_INFO.uncompressed_size - 1),
        _reframed(SMALL_INFO, _FRAME, uncompressed_size=SMALL_INFO.uncompressed_size + 1),
        _reframed(SMALL_INFO, b""),  # no frame at all
        _reframed(SMALL_INFO, zstandard.ZstdCompressor().compress(b"")),
    ],
    ids=[
        "one-byte-after",
        "five-bytes-after",
        "checksum-cut",
        "two-frames",
        "claims-less",
        "claims-more",
        "no-frame",
        "other-frame",
    ],
)
def test_a_frame_that_does_not_end_where_the_file_does_is_refused(data: bytes) -> None:
    with pytest.raises(SnapshotError):
        snapshot.verify(data)
    with pytest.raises(CorruptSnapshotError):
        verify_stream(_cut(data, [100]))


_BIT_FLIP = settings(max_examples=200, deadline=None)


@_BIT_FLIP
@given(position=st.integers(0, len(SMALL) - 1), bit=st.integers(0, 7))
def test_any_flipped_bit_is_refused_as_verify_refuses_it(position: int, bit: int) -> None:
    flipped = bytearray(SMALL)
    flipped[position] ^= 1 << bit
    try:
        expected = snapshot.verify(bytes(flipped))
    except SnapshotError as exc:
        with pytest.raises(SnapshotError) as caught:
            verify_stream(_cut(bytes(flipped), [50]))
        assert type(caught.value) is type(exc)
        return
    # A few bits of the zstd frame header (the window size) change nothing decoded.
    assert verify_stream([bytes(flipped)]).payload == expected.payload


@pytest.mark.parametrize("claimed", [100 << 30, 1 << 40, (1 << 63) - 1, (1 << 64) - 1, 1 << 30])
def test_a_huge_claimed_payload_costs_no_memory(claimed: int) -> None:
    data = _reframed(SMALL_INFO, _FRAME, uncompressed_size=claimed)
    rss_before = psutil.Process().memory_info().rss
    tracemalloc.start()
    try:
        with pytest.raises(CorruptSnapshotError):
            verify_stream([data])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
    assert psutil.Process().memory_info().rss - rss_before < 64 << 20  # the 1 GiB claim is mapped, never touched


def test_an_error_of_the_pieces_passes_through() -> None:
    def broken() -> Iterator[bytes]:
        yield BIG[:100_000]
        raise SyncError("UNAVAILABLE", "the sync stream broke")

    with pytest.raises(SyncError, match="broke"):
        verify_stream(broken())
