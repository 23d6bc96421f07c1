"""The loaded snapshot: newest valid file, index of pre-serialized answers, sync chunks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from avapdefs.errors import NoSnapshotError
from avapdefs.folder import snapshot_name
from avapdefs.format import snapshot
from avapdefs.v1.definitions_pb2 import CatalogInfo, GetCommandResponse, SyncCatalogResponse, SyncHeader
from server.store import SnapshotStore
from tests.helpers import MakeSnapshot, sample_command
from tests.server.helpers import big_commands

NAMES = ["if", "addVar", "ñandú.cálculo", "日本語コマンド", "end", "RequestGet"]


def test_index_holds_get_command_responses_and_sorted_names(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(commands=[sample_command(name) for name in NAMES])
    loaded = SnapshotStore(path.parent, chunk_bytes=1024).load_newest()
    assert tuple(loaded.names) == tuple(sorted(NAMES, key=lambda name: name.encode("utf-8")))
    for name in NAMES:
        response = GetCommandResponse.FromString(loaded.responses[name.encode("utf-8")])
        assert response.command.name == name
        assert response.command.code == sample_command(name).code
    info = CatalogInfo.FromString(loaded.catalog_info)
    assert (info.version, info.command_count, info.file_size) == (1, len(NAMES), path.stat().st_size)


def test_sync_messages_carry_the_file_in_chunks(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(commands=big_commands(count=3, bytecode_bytes=5000))
    loaded = SnapshotStore(path.parent, chunk_bytes=4096).load_newest()
    data = path.read_bytes()
    assert loaded.file_bytes() == data
    sizes = [len(SyncCatalogResponse.FromString(chunk).chunk) for chunk in loaded.sync_chunks]
    assert max(sizes) == 4096 and sum(sizes) == len(data)
    header = SyncCatalogResponse.FromString(loaded.sync_full_header).header
    assert header.kind == SyncHeader.KIND_FULL and header.data_size == len(data)
    assert SyncCatalogResponse.FromString(loaded.sync_up_to_date).header.kind == SyncHeader.KIND_UP_TO_DATE


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_newest_damaged_file_is_skipped_with_one_log_line(
    make_snapshot: MakeSnapshot, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = make_snapshot(version=1)
    bad = make_snapshot(version=2)
    data = bad.read_bytes()
    damaged = {
        "truncate": data[: len(data) // 2],
        "flip": data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:],
        "garbage": b"not a snapshot at all",
    }[damage]
    bad.write_bytes(damaged)
    with caplog.at_level(logging.WARNING):
        loaded = SnapshotStore(good.parent, chunk_bytes=1024).load_newest()
    assert loaded.info.version == 1 and loaded.path == good
    skipped = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(skipped) == 1 and str(bad) in skipped[0].getMessage()


def test_a_foreign_format_version_is_skipped(make_snapshot: MakeSnapshot) -> None:
    make_snapshot(version=1)
    newer = make_snapshot(version=2)
    data = bytearray(newer.read_bytes())
    data[8:10] = (snapshot.FORMAT_VERSION + 1).to_bytes(2, "big")
    newer.write_bytes(bytes(data))
    assert SnapshotStore(newer.parent, chunk_bytes=1024).load_newest().info.version == 1


def test_no_valid_snapshot_raises_and_leaves_nothing_live(tmp_path: Path) -> None:
    folder = tmp_path / "snapshots"
    folder.mkdir()
    (folder / snapshot_name(1)).write_bytes(b"AVAPSNAP broken")
    store = SnapshotStore(folder, chunk_bytes=1024)
    with pytest.raises(NoSnapshotError, match="none of its 1 snapshot files verifies"):
        store.load_newest()
    assert store.current is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoSnapshotError, match="holds no snapshot file"):
        SnapshotStore(tmp_path / "empty", chunk_bytes=1024).load_newest()
    with pytest.raises(NoSnapshotError, match="the snapshot folder does not exist"):
        SnapshotStore(tmp_path / "missing", chunk_bytes=1024).load_newest()
    with pytest.raises(NoSnapshotError, match="is not a folder"):
        SnapshotStore(folder / snapshot_name(1), chunk_bytes=1024).load_newest()
