"""Export against a real PostgreSQL: round trip, determinism, unchanged runs, unicode, big bodies."""

from __future__ import annotations

import io
from pathlib import Path

import psycopg
import pytest

from avapdefs.folder import list_snapshots, snapshot_name
from avapdefs.format import snapshot
from avapdefs.format.package import open_package
from exporter.config import ExportConfig
from exporter.export import run_export as export_now
from tests.exporter.helpers import insert_rows, row, run_export

CREATED = "1700000000000"


def _catalog(path: Path) -> dict[str, object]:
    return {command.name: command for command in snapshot.read_file(path).catalog().commands}


def test_round_trip_rows_to_file_to_catalog(db: psycopg.Connection, pg_dsn: str, folder: Path) -> None:
    rows = [
        row("addVar", logic=False, componenttype="variables", service="core", command="addVar"),
        row("if", logic=True, interface='[{"item":"variable","type":"variable"}]', type="control"),
        row("RequestGet", interface=None, description=None, type=None, code=None, logic=None),
    ]
    insert_rows(db, rows)
    db.execute("INSERT INTO avap_bytecode (command_name, bytecode, version, source_hash) VALUES ('if', %s, 4, 'h')",
               [b"\x00AVBC\xff"])  # fmt: skip
    db.commit()
    assert run_export(pg_dsn, folder, "--created-at-ms", CREATED) == 0
    loaded = snapshot.read_file(folder / snapshot_name(1))
    assert loaded.info.source == "postgresql:obex_dapl_functions"
    assert loaded.info.created_at_unix_ms == int(CREATED)
    commands = list(loaded.catalog().commands)
    assert [c.name for c in commands] == ["RequestGet", "addVar", "if"]  # UTF-8 byte order: upper case first
    ids: dict[str, int] = dict(db.execute("SELECT name, id FROM obex_dapl_functions").fetchall())
    by_name = {c.name: c for c in commands}
    for values in rows:
        command = by_name[str(values["name"])]
        assert command.source_id == ids[command.name]
        assert command.interface_json == (values["interface"] or "")
        assert command.code == (values["code"] or "")
        assert command.description == (values["description"] or "")
        assert command.type == (values["type"] or "")
        assert command.logic == bool(values["logic"])
        assert command.component_type == values["componenttype"]
        assert command.service == values["service"]
        assert command.command == values["command"]
    assert (by_name["if"].bytecode, by_name["if"].bytecode_version, by_name["if"].bytecode_source_hash) == (
        b"\x00AVBC\xff",
        4,
        "h",
    )
    assert by_name["addVar"].bytecode == b"" and by_name["addVar"].bytecode_version == 0


def test_two_exports_of_the_same_rows_are_byte_identical(db: psycopg.Connection, pg_dsn: str, tmp_path: Path) -> None:
    insert_rows(db, [row(f"cmd{i}") for i in range(50)])
    assert run_export(pg_dsn, tmp_path / "a", "--created-at-ms", CREATED) == 0
    assert run_export(pg_dsn, tmp_path / "b", "--created-at-ms", CREATED) == 0
    name = snapshot_name(1)
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_content_hash_does_not_depend_on_the_level(db: psycopg.Connection, pg_dsn: str, tmp_path: Path) -> None:
    insert_rows(db, [row(f"cmd{i}") for i in range(20)])
    assert run_export(pg_dsn, tmp_path / "fast", "--level", "1") == 0
    assert run_export(pg_dsn, tmp_path / "small", "--level", "19") == 0
    fast = snapshot.read_file(tmp_path / "fast" / snapshot_name(1)).info
    small = snapshot.read_file(tmp_path / "small" / snapshot_name(1)).info
    assert fast.content_hash == small.content_hash


def test_unchanged_table_publishes_nothing(
    db: psycopg.Connection, pg_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    insert_rows(db, [row("addVar"), row("if")])
    assert run_export(pg_dsn, folder) == 0
    capsys.readouterr()
    assert run_export(pg_dsn, folder) == 0
    assert capsys.readouterr().out.startswith("unchanged at version 1")
    assert [v for v, _ in list_snapshots(folder)] == [1]
    assert sorted(p.name for p in folder.iterdir()) == [".export-state", ".lock", snapshot_name(1)]  # no temp file
    insert_rows(db, [row("end")])
    assert run_export(pg_dsn, folder) == 0
    assert capsys.readouterr().out.startswith("published version 2")
    assert set(_catalog(folder / snapshot_name(2))) == {"addVar", "if", "end"}


def test_unicode_names_and_one_megabyte_bodies(db: psycopg.Connection, pg_dsn: str, folder: Path) -> None:
    big = "x = '" + "ñ" * 10 + "'\n"
    code = big * (1_048_576 // len(big.encode()) + 1)
    names = ["ñandú.cálculo", "日本語コマンド", "emoji🙂", "Zeta", "alpha", "Ωmega"]
    insert_rows(db, [row(name, code=code if i % 2 else "pass\n") for i, name in enumerate(names)])
    assert run_export(pg_dsn, folder) == 0
    commands = list(snapshot.read_file(folder / snapshot_name(1)).catalog().commands)
    assert [c.name for c in commands] == sorted(names, key=lambda n: n.encode("utf-8"))
    by_name = {c.name: c for c in commands}
    assert by_name["日本語コマンド"].code == code and len(code.encode()) > 1_048_576


def test_table_names_are_options(pg_dsn: str, folder: Path) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA legacy")
        conn.execute(
            "CREATE TABLE legacy.defs (id int, name text, interface text, description text, type text,"
            " logic bool, componenttype text, service text, command text, code text, extra text)"
        )
        conn.execute("INSERT INTO legacy.defs (id, name, code, extra) VALUES (1, 'only', 'pass', 'ignored')")
    assert run_export(pg_dsn, folder, "--table", "legacy.defs", "--bytecode-table", "") == 0
    info = snapshot.read_file(folder / snapshot_name(1)).info
    assert (info.command_count, info.source) == (1, "postgresql:legacy.defs")


def test_signing_key_file_builds_signed_packages(
    db: psycopg.Connection, pg_dsn: str, folder: Path, tmp_path: Path
) -> None:
    insert_rows(db, [row("addVar")])
    key_file = tmp_path / "key"
    key_file.write_bytes(b"k3y\n")
    assert run_export(pg_dsn, folder, "--signing-key-file", str(key_file)) == 0
    (command,) = snapshot.read_file(folder / snapshot_name(1)).catalog().commands
    assert open_package(command.signed_package, b"k3y") == command.code


def test_run_export_streams_with_a_progress_bar(db: psycopg.Connection, pg_dsn: str, folder: Path) -> None:
    insert_rows(db, [row(f"c{i}") for i in range(3)])
    bar = io.StringIO()
    result = export_now(ExportConfig(snapshots=folder, dsn=pg_dsn, progress=True), progress=bar)
    assert result.published and result.info.command_count == 3
    assert "3/3 commands" in bar.getvalue() and bar.getvalue().endswith("\n")
