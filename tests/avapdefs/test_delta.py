"""Record-level deltas: the result is the target catalog, and mismatches are refused."""

from __future__ import annotations

import io
from collections.abc import Set
from pathlib import Path

import pytest

from avapdefs.errors import CorruptSnapshotError, DeltaMismatchError, SnapshotError
from avapdefs.format import delta, snapshot
from avapdefs.v1.definitions_pb2 import Command
from tests.helpers import sample_command


def _snapshot(commands: list[Command], version: int) -> snapshot.Snapshot:
    return snapshot.verify(snapshot.encode_snapshot(commands, version=version, source="test")[1])


def _catalog(count: int, changed: Set[int] = frozenset(), code: str = "pass") -> list[Command]:
    return [sample_command(f"cmd{i:05d}", code=f"# v2\n{code}" if i in changed else code) for i in range(count)]


def _apply(base: snapshot.Snapshot, data: bytes) -> snapshot.Snapshot:
    out = io.BytesIO()
    delta.apply_delta(base, delta.decode_delta(data), out)
    return snapshot.verify(out.getvalue())


def test_changes_additions_and_removals_reproduce_the_target() -> None:
    base = _snapshot(_catalog(200), 1)
    target_commands = [c for c in _catalog(200, changed={3, 50, 199}) if c.name not in {"cmd00007", "cmd00100"}]
    target_commands += [sample_command("aaa.first"), sample_command("cmd00050.5"), sample_command("zzz.last")]
    target = _snapshot(target_commands, 2)
    made = delta.make_delta(base, target)
    assert sorted(made.removed_names) == ["cmd00007", "cmd00100"]
    assert len(made.upserts) == 6
    rebuilt = _apply(base, delta.encode_delta(made))
    assert rebuilt.payload == target.payload
    assert rebuilt.info.content_hash == target.info.content_hash
    assert rebuilt.info.version == 2


def test_unchanged_catalog_gives_an_empty_delta() -> None:
    base = _snapshot(_catalog(50), 1)
    made = delta.make_delta(base, _snapshot(_catalog(50), 2))
    assert not made.upserts and not made.removed_names
    assert _apply(base, delta.encode_delta(made)).info.version == 2


def test_delta_is_small_when_one_percent_changes() -> None:
    code = "x = compute(a, b)\n" * 40
    base = _snapshot(_catalog(2000, code=code), 1)
    target = _snapshot(_catalog(2000, changed=set(range(0, 2000, 100)), code=code), 2)
    data = delta.encode_delta(delta.make_delta(base, target))
    assert len(data) < 0.05 * target.info.compressed_size


def test_wrong_base_is_refused() -> None:
    base = _snapshot(_catalog(10), 1)
    made = delta.make_delta(base, _snapshot(_catalog(10, changed={1}), 2))
    other = _snapshot(_catalog(10, changed={2}), 1)
    with pytest.raises(DeltaMismatchError):
        delta.apply_delta(other, made, io.BytesIO())


def test_forged_target_hash_is_refused() -> None:
    base = _snapshot(_catalog(10), 1)
    made = delta.make_delta(base, _snapshot(_catalog(10, changed={1}), 2))
    made.target.content_hash = bytes(32)
    with pytest.raises(DeltaMismatchError, match="content hash"):
        delta.apply_delta(base, made, io.BytesIO())


def test_damaged_delta_file_is_refused() -> None:
    base = _snapshot(_catalog(10), 1)
    data = bytearray(delta.encode_delta(delta.make_delta(base, _snapshot(_catalog(10, changed={1}), 2))))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(CorruptSnapshotError):
        delta.decode_delta(bytes(data))


def _file(folder: Path, commands: list[Command], version: int) -> Path:
    path = folder / f"v{version}.avsnap"
    path.write_bytes(snapshot.encode_snapshot(commands, version=version, source="test")[1])
    return path


def test_streamed_files_give_the_same_delta_and_result(tmp_path: Path) -> None:
    old_commands = _catalog(300)
    new_commands = [c for c in _catalog(300, changed={0, 150, 299}) if c.name != "cmd00020"] + [sample_command("a")]
    base_path, target_path = _file(tmp_path, old_commands, 1), _file(tmp_path, new_commands, 2)
    streamed = delta.make_delta_files(base_path, target_path)
    assert streamed == delta.make_delta(snapshot.read_file(base_path), snapshot.read_file(target_path))
    out = io.BytesIO()
    info = delta.apply_delta_file(base_path, delta.decode_delta(delta.encode_delta(streamed)), out)
    assert out.getvalue() == target_path.read_bytes()  # same level and header fields: the same file
    assert info.content_hash == snapshot.read_info(target_path.read_bytes()).content_hash


def test_a_change_larger_than_the_limit_gives_none(tmp_path: Path) -> None:
    base_path = _file(tmp_path, _catalog(100), 1)
    target_path = _file(tmp_path, _catalog(100, changed=set(range(100))), 2)
    made = delta.make_delta_files(base_path, target_path)
    assert made is not None
    upsert_bytes = sum(len(u) for u in made.upserts)
    assert delta.make_delta_files(base_path, target_path, max_upsert_bytes=upsert_bytes - 1) is None
    assert delta.make_delta_files(base_path, target_path, max_upsert_bytes=upsert_bytes) is not None


def test_commands_out_of_name_order_are_refused() -> None:
    info = _snapshot(_catalog(3), 1).info
    entries = [snapshot.seal_command(sample_command(n)) for n in ("b", "a")]
    with pytest.raises(CorruptSnapshotError, match="out of name order"):
        delta.make_delta_streams(info, [], info, entries)


def test_a_damaged_base_file_is_refused_while_streaming(tmp_path: Path) -> None:
    base_path = _file(tmp_path, _catalog(50), 1)
    target_path = _file(tmp_path, _catalog(50, changed={1}), 2)
    made = delta.make_delta_files(base_path, target_path)
    assert made is not None
    data = bytearray(base_path.read_bytes())
    data[-10] ^= 0x01  # inside the frame: the zstd checksum or the content hash fails at the end
    base_path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError):
        delta.make_delta_files(base_path, target_path)
    with pytest.raises(SnapshotError):
        delta.apply_delta_file(base_path, made, io.BytesIO())
