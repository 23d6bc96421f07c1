"""Publishing: the lock, retention, the count-drop and empty guards, leftovers of dead runs."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import psycopg
import pytest

from avapdefs.errors import LockedError
from avapdefs.folder import LOCK_NAME, folder_lock, list_snapshots, snapshot_name
from avapdefs.format import snapshot
from exporter.cli import EXIT_LOCKED, EXIT_REFUSED
from tests.exporter.helpers import insert_generated, insert_rows, row, run_export


def _versions(folder: Path) -> list[int]:
    return [version for version, _ in list_snapshots(folder)]


def test_second_exporter_exits_at_once_with_the_lock_code(
    db: psycopg.Connection, pg_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    insert_rows(db, [row("addVar")])
    folder.mkdir()
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running exporter holds
        assert run_export(pg_dsn, folder) == EXIT_LOCKED
        assert "another exporter is running" in capsys.readouterr().err
        assert _versions(folder) == []
    finally:
        os.close(fd)
    assert run_export(pg_dsn, folder) == 0  # released: the next run proceeds
    assert _versions(folder) == [1]


def test_folder_lock_is_exclusive_within_one_process(tmp_path: Path) -> None:
    with folder_lock(tmp_path), pytest.raises(LockedError), folder_lock(tmp_path):
        pass
    with folder_lock(tmp_path):
        pass


def test_retention_keeps_the_newest_n(db: psycopg.Connection, pg_dsn: str, folder: Path) -> None:
    for i in range(5):
        insert_rows(db, [row(f"cmd{i}")])
        assert run_export(pg_dsn, folder, "--keep", "3") == 0
    assert _versions(folder) == [3, 4, 5]
    insert_rows(db, [row("more")])
    assert run_export(pg_dsn, folder, "--keep", "1") == 0
    assert _versions(folder) == [6]


def test_keep_zero_is_refused(pg_dsn: str, folder: Path) -> None:
    assert run_export(pg_dsn, folder, "--keep", "0") == 2


def test_count_drop_beyond_the_limit_is_refused_unless_forced(
    db: psycopg.Connection, pg_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    insert_generated(db, 100, code_bytes=64)
    assert run_export(pg_dsn, folder) == 0
    db.execute("DELETE FROM obex_dapl_functions WHERE id > 40")  # 60% gone: a half-truncated table
    db.commit()
    capsys.readouterr()
    assert run_export(pg_dsn, folder) == EXIT_REFUSED
    err = capsys.readouterr().err
    assert "from 100 to 40" in err and "nothing published" in err
    assert _versions(folder) == [1]
    assert run_export(pg_dsn, folder, "--max-drop-percent", "70") == 0
    assert _versions(folder) == [1, 2]


def test_force_publishes_a_large_drop(db: psycopg.Connection, pg_dsn: str, folder: Path) -> None:
    insert_generated(db, 10, code_bytes=64)
    assert run_export(pg_dsn, folder) == 0
    db.execute("DELETE FROM obex_dapl_functions WHERE id > 1")
    db.commit()
    assert run_export(pg_dsn, folder) == EXIT_REFUSED
    assert run_export(pg_dsn, folder, "--force") == 0
    assert snapshot.read_file(folder / snapshot_name(2)).info.command_count == 1


def test_empty_table_is_refused_unless_allowed(
    db: psycopg.Connection, pg_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_export(pg_dsn, folder) == EXIT_REFUSED
    assert "no commands" in capsys.readouterr().err
    assert _versions(folder) == []
    assert run_export(pg_dsn, folder, "--allow-empty") == 0
    assert snapshot.read_file(folder / snapshot_name(1)).info.command_count == 0


def test_empty_after_a_full_catalog_needs_allow_empty(db: psycopg.Connection, pg_dsn: str, folder: Path) -> None:
    insert_rows(db, [row("a")])
    assert run_export(pg_dsn, folder) == 0
    db.execute("DELETE FROM obex_dapl_functions")
    db.commit()
    assert run_export(pg_dsn, folder, "--force") == EXIT_REFUSED
    assert run_export(pg_dsn, folder, "--allow-empty") == 0
    assert _versions(folder) == [1, 2]


def test_stale_temp_files_are_removed_and_versions_continue(
    db: psycopg.Connection, pg_dsn: str, folder: Path, make_snapshot
) -> None:
    make_snapshot(folder=folder, version=7)
    stale = folder / f".tmp-{snapshot_name(8)}.12345.abcd"
    stale.write_bytes(b"AVAPSNAP partial")
    insert_rows(db, [row("a"), row("b"), row("c")])  # as many as version 7 holds: no count-drop refusal
    assert run_export(pg_dsn, folder) == 0
    assert not stale.exists()
    assert _versions(folder) == [7, 8]


def test_a_corrupt_newest_file_is_never_taken_for_unchanged_nor_reused(
    db: psycopg.Connection, pg_dsn: str, folder: Path
) -> None:
    insert_rows(db, [row("a")])
    assert run_export(pg_dsn, folder) == 0
    (folder / snapshot_name(2)).write_bytes(b"garbage")
    assert run_export(pg_dsn, folder) == 0  # the newest is unreadable: the table is published anew
    assert _versions(folder) == [1, 2, 3]
    same = [snapshot.read_file(folder / snapshot_name(v)).info.content_hash for v in (1, 3)]
    assert same[0] == same[1]
    insert_rows(db, [row("b")])
    assert run_export(pg_dsn, folder) == 0
    assert _versions(folder) == [1, 2, 3, 4]


@pytest.mark.parametrize("damage", ["truncate", "flip a payload bit"])
def test_a_damaged_newest_file_with_an_intact_header_is_replaced_by_a_new_version(
    db: psycopg.Connection, pg_dsn: str, folder: Path, damage: str
) -> None:
    insert_rows(db, [row("a"), row("b")])
    assert run_export(pg_dsn, folder) == 0
    path = folder / snapshot_name(1)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        del data[-10:]
    else:
        data[-20] ^= 0x01
    path.write_bytes(bytes(data))
    assert run_export(pg_dsn, folder, "--keep", "1") == 0  # not "unchanged at version 1"
    assert _versions(folder) == [2]  # and a server of this folder can start
    assert snapshot.read_file(folder / snapshot_name(2)).info.command_count == 2
    assert run_export(pg_dsn, folder) == 0
    assert _versions(folder) == [2]  # intact now: unchanged


def test_odd_names_in_the_folder_do_not_stop_an_export(db: psycopg.Connection, pg_dsn: str, folder: Path) -> None:
    insert_rows(db, [row("a")])
    folder.mkdir()
    (folder / ".tmp-x").mkdir()  # a directory named like a temp file is left alone
    (folder / "catalog-18446744073709551615.avsnap").write_bytes(b"")  # past any version: not a snapshot name
    assert run_export(pg_dsn, folder) == 0
    assert _versions(folder) == [1]
    assert (folder / ".tmp-x").is_dir()
