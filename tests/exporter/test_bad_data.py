"""Bad rows, a missing table or column, an unreachable database: a precise error and nothing published."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from exporter.cli import EXIT_BAD_DATA, EXIT_DATABASE, EXIT_SCHEMA
from tests.exporter.helpers import insert_rows, row, run_export


def _export_fails(pg_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str], code: int, *extra: str) -> str:
    assert run_export(pg_dsn, folder, *extra) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert not folder.exists() or sorted(p.name for p in folder.iterdir()) == [".lock"]  # nothing published, no temp
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines  # one clear line
    return lines[0]


def _ids(db: psycopg.Connection, *names: str | None) -> list[int]:
    query = "SELECT id FROM obex_dapl_functions WHERE name IS NOT DISTINCT FROM %s"
    return [row[0] for name in names for row in db.execute(query, [name]).fetchall()]


def test_null_name(db: psycopg.Connection, pg_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    insert_rows(db, [row("ok"), row(None)])
    (row_id,) = _ids(db, None)
    line = _export_fails(pg_dsn, folder, capsys, EXIT_BAD_DATA)
    assert f"row id={row_id}, column name: is NULL" in line


def test_empty_name(db: psycopg.Connection, pg_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    insert_rows(db, [row(""), row("ok")])
    (row_id,) = _ids(db, "")
    assert f"row id={row_id}, column name: is empty" in _export_fails(pg_dsn, folder, capsys, EXIT_BAD_DATA)


def test_duplicate_names_name_every_id(
    db: psycopg.Connection, pg_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    insert_rows(db, [row("addVar", id=3), row("if", id=5), row("addVar", id=17), row("end", id=20)])
    line = _export_fails(pg_dsn, folder, capsys, EXIT_BAD_DATA)
    assert "rows id=3, id=17, column name: duplicate name 'addVar'" in line


def test_invalid_interface_json(
    db: psycopg.Connection, pg_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    insert_rows(db, [row("ok"), row("broken", interface='[{"item":"x","type":}]')])
    (row_id,) = _ids(db, "broken")
    line = _export_fails(pg_dsn, folder, capsys, EXIT_BAD_DATA)
    assert f"row id={row_id}, column interface: not valid JSON" in line


def test_several_problems_are_reported_together(
    db: psycopg.Connection, pg_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    insert_rows(db, [row(None, id=1), row("a", id=2, interface="{"), row("b", id=3), row("b", id=4)])
    line = _export_fails(pg_dsn, folder, capsys, EXIT_BAD_DATA)
    assert "3 bad row problem(s)" in line
    assert "id=1" in line and "id=2" in line and "id=3, id=4" in line


def test_missing_table(db: psycopg.Connection, pg_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _export_fails(pg_dsn, folder, capsys, EXIT_SCHEMA, "--table", "functions_v2")
    assert "table 'functions_v2' does not exist" in line


def test_missing_bytecode_table(
    db: psycopg.Connection, pg_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db.execute("DROP TABLE avap_bytecode")
    db.commit()
    assert "table 'avap_bytecode' does not exist" in _export_fails(pg_dsn, folder, capsys, EXIT_SCHEMA)


def test_missing_column(db: psycopg.Connection, pg_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db.execute("ALTER TABLE obex_dapl_functions DROP COLUMN interface, DROP COLUMN componenttype")
    db.commit()
    line = _export_fails(pg_dsn, folder, capsys, EXIT_SCHEMA)
    assert "table 'obex_dapl_functions' has no column interface, componenttype" in line


def test_unreachable_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = f"host={tmp_path} port=1 dbname=nowhere user=nobody"  # a socket folder with no server in it
    line = _export_fails(dsn, tmp_path / "snapshots", capsys, EXIT_DATABASE, "--connect-timeout-s", "2")
    assert line.startswith("avap-export: cannot connect to PostgreSQL:")
