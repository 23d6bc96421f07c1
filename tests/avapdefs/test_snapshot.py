"""The snapshot file format: round trip, determinism, and refusal of bad files."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import random
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avapdefs.errors import (
    CatalogOrderError,
    CorruptSnapshotError,
    NotASnapshotError,
    SnapshotError,
    TruncatedSnapshotError,
    UnsupportedFormatError,
)
from avapdefs.format import snapshot, wire
from avapdefs.format.reader import CommandReader, iter_file_commands
from avapdefs.v1.definitions_pb2 import Catalog, Command
from tests.helpers import sample_command

NAMES = ["if", "addVar", "ñandú.cálculo", "RequestGet", "end", "日本語コマンド", "addParam"]


def _encode(commands: list[Command], **kwargs: object) -> tuple[snapshot.SnapshotInfo, bytes]:
    defaults: dict[str, object] = {"version": 7, "source": "test", "created_at_unix_ms": 1_700_000_000_000}
    defaults.update(kwargs)
    return snapshot.encode_snapshot(commands, **defaults)


def test_round_trip_returns_commands_sorted_by_utf8_name() -> None:
    commands = [sample_command(n) for n in NAMES]
    info, data = _encode(commands)
    loaded = snapshot.verify(data)
    assert loaded.info == info
    assert info.command_count == len(NAMES)
    assert [c.name for c in loaded.catalog().commands] == sorted(NAMES, key=lambda n: n.encode())
    by_name = {c.name: c for c in loaded.catalog().commands}
    for original in commands:
        assert by_name[original.name] == original


def test_content_hash_is_sha256_of_uncompressed_payload_and_independent_of_level() -> None:
    commands = [sample_command(n, code="x = 1\n" * 500) for n in NAMES]
    fast, fast_bytes = _encode(commands, level=1)
    slow, _ = _encode(commands, level=19)
    assert fast.content_hash == slow.content_hash
    assert fast.compressed_size != slow.compressed_size
    payload = snapshot.verify(fast_bytes).payload
    assert hashlib.sha256(payload).digest() == fast.content_hash
    assert payload == Catalog(commands=sorted(commands, key=lambda c: c.name.encode())).SerializeToString()


def test_same_commands_give_identical_bytes() -> None:
    first = _encode([sample_command(n) for n in NAMES])[1]
    second = _encode([sample_command(n) for n in reversed(NAMES)])[1]
    assert first == second


def test_command_content_hash_covers_every_field_but_itself() -> None:
    command = sample_command("addVar")
    sealed = snapshot.seal_command(command)
    parsed = Command.FromString(sealed)
    assert parsed == command
    unsealed = Command()
    unsealed.CopyFrom(parsed)
    unsealed.ClearField("content_hash")
    assert parsed.content_hash == hashlib.sha256(unsealed.SerializeToString()).digest()
    changed = sample_command("addVar", code="pass\n")
    snapshot.seal_command(changed)
    assert changed.content_hash != parsed.content_hash


def test_empty_catalog_round_trips() -> None:
    info, data = _encode([])
    assert info.command_count == 0
    assert snapshot.verify(data).payload == b""


def test_large_unicode_command_round_trips() -> None:
    big = sample_command("cálculo.grande", code="# ünïcode ✓\n" + "y = 'x' * 80\n" * 80_000)
    assert len(big.code.encode()) > 1_000_000
    _, data = _encode([big])
    assert snapshot.verify(data).catalog().commands[0] == big


@pytest.mark.parametrize("names", [["b", "a"], ["a", "a"]])
def test_writer_refuses_unordered_or_duplicate_names(names: list[str]) -> None:
    writer = snapshot.SnapshotWriter(io.BytesIO(), version=1, source="test")
    writer.add(sample_command(names[0]))
    with pytest.raises(CatalogOrderError) as caught:
        writer.add(sample_command(names[1]))
    assert caught.value.name == names[1]


def test_foreign_file_is_not_a_snapshot() -> None:
    with pytest.raises(NotASnapshotError):
        snapshot.verify(b"PK\x03\x04 this is a zip file, not a snapshot")


def test_future_format_version_is_unsupported() -> None:
    _, data = _encode([sample_command("a")])
    future = bytearray(data)
    struct.pack_into(">H", future, 8, snapshot.FORMAT_VERSION + 1)
    with pytest.raises(UnsupportedFormatError) as caught:
        snapshot.verify(bytes(future))
    assert caught.value.format_version == snapshot.FORMAT_VERSION + 1


def test_truncated_file_is_refused_at_every_length() -> None:
    _, data = _encode([sample_command(n) for n in NAMES])
    for length in range(len(data)):
        with pytest.raises(TruncatedSnapshotError):
            snapshot.verify(data[:length])


def test_trailing_bytes_are_refused() -> None:
    _, data = _encode([sample_command("a")])
    with pytest.raises(CorruptSnapshotError, match="header says"):
        snapshot.verify(data + b"\0")


def test_wrong_content_hash_is_refused() -> None:
    info, data = _encode([sample_command("a")])
    forged = (
        snapshot.encode_prefix(snapshot.SnapshotInfo(**{**info.__dict__, "content_hash": bytes(32)}))
        + data[info.payload_offset :]
    )
    with pytest.raises(CorruptSnapshotError, match="content hash"):
        snapshot.verify(forged)


def test_read_file_translates_missing_file(tmp_path) -> None:
    with pytest.raises(SnapshotError, match="cannot read"):
        snapshot.read_file(tmp_path / "absent.avsnap")


_VALID = _encode([sample_command(n, code="v = 1\n" * 200) for n in NAMES])[1]


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, len(_VALID) - 1), bit=st.integers(0, 7))
def test_any_flipped_bit_is_refused(position: int, bit: int) -> None:
    flipped = bytearray(_VALID)
    flipped[position] ^= 1 << bit
    try:
        loaded = snapshot.verify(bytes(flipped))
    except SnapshotError:
        return
    # A few bits of the zstd frame header (the window size) change nothing that is
    # decoded: such a file passes only because it is the same snapshot.
    assert loaded == snapshot.verify(_VALID)


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=300))
def test_random_bytes_never_verify(garbage: bytes) -> None:
    with pytest.raises(SnapshotError):
        snapshot.verify(snapshot.MAGIC + garbage)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _streamed(path: Path) -> list[bytes]:
    return list(iter_file_commands(path))


def _hex(seed: str, size: int) -> str:
    # Random hex compresses about 2:1, so a frame of it spans several read slices.
    return random.Random(seed).randbytes(size // 2).hex()


def _varied(count: int, body_bytes: int) -> list[Command]:
    return [sample_command(f"cmd{i:04d}", code=_hex(str(i), body_bytes)) for i in range(count)]


def test_streamed_commands_equal_the_verified_payload(tmp_path: Path) -> None:
    commands = [*_varied(400, 2000), sample_command("zz.big", code=_hex("big", 2_000_000))]
    info, data = _encode(commands)
    assert info.compressed_size > 4 * (1 << 17)  # several slices, and one command spans many
    expected = [bytes(e) for e in wire.iter_entries(snapshot.verify(data).payload)]
    path = _write(tmp_path / "a.avsnap", data)
    with CommandReader(path) as stream:
        assert stream.info == info
        assert list(stream) == expected
        assert list(stream) == expected  # a second pass starts over


def test_stream_of_an_empty_catalog_yields_nothing(tmp_path: Path) -> None:
    assert _streamed(_write(tmp_path / "a.avsnap", _encode([])[1])) == []


def test_stream_refuses_a_truncated_file_on_opening(tmp_path: Path) -> None:
    _, data = _encode(_varied(50, 500))
    for length in (0, 5, snapshot.PREAMBLE.size + 3, len(data) // 2, len(data) - 1):
        with pytest.raises(TruncatedSnapshotError):
            CommandReader(_write(tmp_path / "t.avsnap", data[:length]))


def test_stream_refuses_a_file_cut_short_while_it_is_read(tmp_path: Path) -> None:
    _, data = _encode(_varied(400, 2000))
    path = _write(tmp_path / "a.avsnap", data)
    with CommandReader(path) as stream:
        os.truncate(path, len(data) - 1000)
        with pytest.raises(TruncatedSnapshotError, match="inside the zstd frame"):
            list(stream)


def test_stream_refuses_a_forged_content_hash_at_the_end(tmp_path: Path) -> None:
    info, data = _encode(_varied(20, 500))
    forged = snapshot.encode_prefix(dataclasses.replace(info, content_hash=bytes(32))) + data[info.payload_offset :]
    yielded: list[bytes] = []
    with pytest.raises(CorruptSnapshotError, match="content hash"):
        yielded.extend(iter_file_commands(_write(tmp_path / "a.avsnap", forged)))
    assert len(yielded) == 20  # the commands came first: trust them only once the iteration ends


def test_stream_refuses_trailing_bytes_and_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CorruptSnapshotError, match="header says"):
        CommandReader(_write(tmp_path / "a.avsnap", _VALID + b"\0"))
    with pytest.raises(SnapshotError, match="cannot read"):
        CommandReader(tmp_path / "absent.avsnap")


@settings(max_examples=200, deadline=None)
@given(position=st.integers(0, len(_VALID) - 1), bit=st.integers(0, 7))
def test_stream_refuses_any_flipped_bit(tmp_path_factory: pytest.TempPathFactory, position: int, bit: int) -> None:
    flipped = bytearray(_VALID)
    flipped[position] ^= 1 << bit
    path = _write(tmp_path_factory.mktemp("flip") / "f.avsnap", bytes(flipped))
    try:
        streamed = _streamed(path)
    except SnapshotError:
        return
    assert streamed == [bytes(e) for e in wire.iter_entries(snapshot.verify(_VALID).payload)]
