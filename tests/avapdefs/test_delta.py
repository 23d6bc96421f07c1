"""Record-level deltas: the result is the target catalog, and mismatches are refused."""

from __future__ import annotations

import io

import pytest

from avapdefs import delta, snapshot
from avapdefs.errors import CorruptSnapshotError, DeltaMismatchError
from avapdefs.v1.definitions_pb2 import Command
from tests.factories import sample_command


def _snapshot(commands: list[Command], version: int) -> snapshot.Snapshot:
    return snapshot.verify(snapshot.encode_snapshot(commands, version=version, source="test")[1])


def _catalog(count: int, changed: set[int] = frozenset(), code: str = "pass") -> list[Command]:
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
