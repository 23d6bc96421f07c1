"""The snapshot folder: names, choosing the version to serve (with the pin), pruning, the header-only read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from avapdefs import folder
from avapdefs.errors import NoSnapshotError, SnapshotError
from avapdefs.format import snapshot
from tests.helpers import MakeSnapshot


def _versions(candidates: list[tuple[int, Path]]) -> list[int]:
    return [version for version, _ in candidates]


@pytest.fixture
def three(make_snapshot: MakeSnapshot) -> Path:
    for version in (1, 2, 3):
        make_snapshot(version=version)
    return make_snapshot(version=3).parent


def test_followed_names_are_snapshots_deltas_and_the_pin_never_temporary_files() -> None:
    assert folder.is_followed(folder.snapshot_name(7))
    assert folder.is_followed(folder.delta_name(6, 7))
    assert folder.is_followed(folder.PIN_NAME)
    assert not folder.is_followed(f"{folder.TEMP_PREFIX}{folder.snapshot_name(7)}.1.ab")
    assert not folder.is_followed(f"{folder.TEMP_PREFIX}{folder.PIN_NAME}.1.ab")
    assert not folder.is_followed(folder.LOCK_NAME)
    assert not folder.is_followed("catalog-7.avsnap")  # a version is at least 10 digits


def test_unpinned_the_newer_versions_are_tried_newest_first(three: Path) -> None:
    assert _versions(folder.choose(three).candidates) == [3, 2, 1]
    assert _versions(folder.choose(three, live=1).candidates) == [3, 2]
    assert folder.choose(three, live=3) == folder.Choice([], 0)


def test_a_pin_file_wins_over_the_pin_setting(three: Path) -> None:
    assert folder.choose(three, pin=2) == folder.Choice([(2, three / folder.snapshot_name(2))], 2)
    folder.write_pin(three, 1)
    assert folder.read_pin(three) == 1
    assert _versions(folder.choose(three, pin=2, live=3).candidates) == [1]  # a rollback
    assert folder.choose(three, live=1) == folder.Choice([], 1)
    assert folder.remove_pin(three) and not folder.remove_pin(three)
    assert folder.read_pin(three) is None


def test_a_missing_pinned_version_keeps_the_live_one_or_falls_back_to_the_newest(three: Path) -> None:
    assert folder.choose(three, pin=9, live=2) == folder.Choice([], 9, missing_pin=9)
    first = folder.choose(three, pin=9)
    assert (_versions(first.candidates), first.pinned, first.missing_pin) == ([3, 2, 1], 0, 9)


@pytest.mark.parametrize("text", [b"", b"abc", b"0", b"-3", b"\xff\xfe"])
def test_an_unreadable_pin_file_is_no_pin(three: Path, text: bytes) -> None:
    (three / folder.PIN_NAME).write_bytes(text)
    assert folder.read_pin(three) is None


def test_the_newest_valid_snapshot_skips_damaged_newer_ones(three: Path) -> None:
    (three / folder.snapshot_name(3)).write_bytes(b"AVAPSNAP damaged")
    assert folder.read_newest(three).snapshot.info.version == 2
    newest = folder.read_newest_header(three)
    assert (newest.version, newest.info and newest.info.version) == (3, 2)


def test_no_valid_snapshot_says_how_many_were_refused(tmp_path: Path, three: Path) -> None:
    with pytest.raises(NoSnapshotError, match="holds no snapshot file"):
        folder.read_newest(tmp_path / "absent")
    for version in (1, 2, 3):
        (three / folder.snapshot_name(version)).write_bytes(b"junk")
    with pytest.raises(NoSnapshotError, match="none of its 3 snapshot files verifies") as raised:
        folder.read_newest(three)
    assert len(raised.value.skipped) == 3


def test_the_header_is_read_without_the_payload(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(version=4)
    whole = snapshot.read_file(path).info
    with open(path, "r+b") as file:  # a damaged payload does not matter to the header
        file.truncate(whole.payload_offset + 1)
    assert folder.read_header(path) == whole
    with pytest.raises(SnapshotError, match="cannot read snapshot"):
        folder.read_header(path.parent / folder.snapshot_name(99))


@pytest.mark.parametrize(
    ("keep", "current", "left"),
    [(2, None, [4, 5]), (1, None, [5]), (3, 3, [1, 2, 3, 4, 5]), (2, 4, [3, 4, 5]), (0, None, [5])],
)
def test_prune_keeps_the_current_version_and_those_below_it_never_newer_ones(
    make_snapshot: MakeSnapshot, keep: int, current: int | None, left: list[int]
) -> None:
    for version in range(1, 6):
        path = make_snapshot(version=version)
    (path.parent / folder.delta_name(1, 2)).write_bytes(b"delta")
    (path.parent / folder.delta_name(4, 5)).write_bytes(b"delta")
    folder.prune(path.parent, keep, current=current)
    assert _versions(folder.list_snapshots(path.parent)) == left
    kept_deltas = [(base, target) for base, target, _ in folder.list_deltas(path.parent)]
    assert kept_deltas == [pair for pair in [(1, 2), (4, 5)] if set(pair) <= set(left)]


def test_temp_files_of_dead_writers_go_those_of_live_ones_stay(tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    name = folder.snapshot_name(4)
    dead = tmp_path / f"{folder.TEMP_PREFIX}{name}.{dead_pid}.0123abcd"
    live = tmp_path / f"{folder.TEMP_PREFIX}{name}.{os.getpid()}.0123abcd"
    odd = tmp_path / f"{folder.TEMP_PREFIX}not-ours"
    for path in (dead, live, odd):
        path.write_bytes(b"partial")
    (tmp_path / f"{folder.TEMP_PREFIX}a-directory").mkdir()
    assert sorted(folder.remove_temp_files(tmp_path, dead_writers_only=True)) == sorted([dead, odd])
    assert live.exists()
    assert folder.remove_temp_files(tmp_path) == [live]  # under the lock: every writer is gone
    assert (tmp_path / f"{folder.TEMP_PREFIX}a-directory").is_dir()
