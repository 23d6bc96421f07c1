"""Reading the tables: the binary COPY stream, parsed in any chunking; column types it cannot export."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import psycopg
import pytest

from avapdefs.folder import snapshot_name
from avapdefs.format import snapshot
from exporter.cli import EXIT_DATABASE, EXIT_SCHEMA
from exporter.sample import create_schema
from exporter.source import SourceRow, _parse_copy, connect, open_source
from tests.exporter.helpers import insert_rows, row, run_export


def _stream(dsn: str) -> tuple[bytes, list[SourceRow], bytes]:
    with (
        connect(dsn, connect_timeout_s=5) as conn,
        open_source(conn, table="obex_dapl_functions", bytecode_table="avap_bytecode") as source,
    ):
        rows = list(source.rows())
        digest = source.digest
        with conn.cursor() as cursor, cursor.copy(f"COPY ({source.query}) TO STDOUT (FORMAT BINARY)") as copy:
            data = b"".join(bytes(chunk) for chunk in copy)
    return data, rows, digest


def test_rows_parse_the_same_in_any_chunking(db: psycopg.Connection, pg_dsn: str) -> None:
    insert_rows(db, [row("a", logic=True, id=-3), row("ñ", interface=None, code="x" * 70_000), row("z", logic=None)])
    db.execute("INSERT INTO avap_bytecode (command_name, bytecode, version) VALUES ('a', '\\x00ff', -2)")
    db.commit()
    data, rows, _ = _stream(pg_dsn)
    assert [(r.id, r.name, r.logic, r.bytecode, r.bytecode_version) for r in rows] == [
        (-3, b"a", True, b"\x00\xff", -2),
        (rows[1].id, b"z", None, None, None),
        (rows[2].id, "ñ".encode(), False, None, None),  # UTF-8 byte order: after "z"
    ]
    assert rows[2].interface is None and rows[2].code == b"x" * 70_000
    for size in (1, 2, 3, 7, 19, 20, 1000, 4096, len(data)):
        chunks = [data[start : start + size] for start in range(0, len(data), size)]
        assert list(_parse_copy(chunks)) == rows


def test_the_digest_follows_every_value(db: psycopg.Connection, pg_dsn: str) -> None:
    insert_rows(db, [row("a", description=None)])
    first = _stream(pg_dsn)[2]
    assert _stream(pg_dsn)[2] == first
    db.execute("UPDATE obex_dapl_functions SET description = ''")  # NULL -> empty: the same command, another row
    db.commit()
    assert _stream(pg_dsn)[2] != first


def test_a_truncated_stream_is_an_error() -> None:
    from exporter.errors import SourceError

    with pytest.raises(SourceError, match="without its trailer"):
        list(_parse_copy([b"PGCOPY\n\xff\r\n\x00" + bytes(8)]))


def test_a_column_of_a_type_without_a_text_form_is_refused(
    pg_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE defs (id int, name text, interface jsonb, description text, type text,"
            " logic bool, componenttype text, service text, command text, code text)"
        )
        conn.execute("INSERT INTO defs (id, name, interface) VALUES (1, 'a', '[]')")
    assert run_export(pg_dsn, folder, "--table", "defs", "--bytecode-table", "") == EXIT_SCHEMA
    assert "column interface is of type" in capsys.readouterr().err


def test_char_and_smallint_columns_export_as_they_read(pg_dsn: str, folder: Path) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE defs (id smallint, name char(6), interface varchar, description text, type name,"
            " logic bool, componenttype text, service text, command text, code text)"
        )
        conn.execute("INSERT INTO defs (id, name, type) VALUES (7, 'ab', 'function')")
    assert run_export(pg_dsn, folder, "--table", "defs", "--bytecode-table", "") == 0
    (command,) = snapshot.read_file(folder / snapshot_name(1)).catalog().commands
    assert (command.name, command.type, command.source_id) == ("ab    ", "function", 7)


def _schema_of_its_own(db: psycopg.Connection, schema: str, name: str) -> None:
    """The legacy tables in ``schema`` too, holding one command ``name`` (the db fixture's in public stay)."""
    db.execute(psycopg.sql.SQL("CREATE SCHEMA {}").format(psycopg.sql.Identifier(schema)))
    db.execute(psycopg.sql.SQL("SET search_path TO {}").format(psycopg.sql.Identifier(schema)))
    create_schema(db)
    insert_rows(db, [row(name)])  # unqualified: into the schema just set
    db.execute("RESET search_path")
    db.commit()


def test_the_dsns_own_options_are_kept_beside_the_timeouts(db: psycopg.Connection, pg_dsn: str, folder: Path) -> None:
    # Before, the timeouts were passed as options= and replaced the DSN's own: the tables of public were read.
    insert_rows(db, [row("in.public")])
    _schema_of_its_own(db, "mine", "in.mine")
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, options="-c search_path=mine")
    with connect(dsn, connect_timeout_s=5, statement_timeout_s=7) as conn:
        settings = conn.execute("SELECT current_setting('search_path'), current_setting('statement_timeout')")
        assert settings.fetchone() == ("mine", "7s")
        conn.rollback()  # open_source begins its own transaction
        with open_source(conn, table="obex_dapl_functions", bytecode_table="avap_bytecode") as source:
            assert [r.name for r in source.rows()] == [b"in.mine"]
    assert run_export(dsn, folder, "--statement-timeout-s", "9") == 0
    (command,) = snapshot.read_file(folder / snapshot_name(1)).catalog().commands
    assert command.name == "in.mine"


def test_options_from_pgoptions_are_kept_too(
    db: psycopg.Connection, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _schema_of_its_own(db, "theirs", "in.theirs")
    monkeypatch.setenv("PGOPTIONS", "-c search_path=theirs")
    with connect(pg_dsn, connect_timeout_s=5, statement_timeout_s=7) as conn:
        settings = conn.execute("SELECT current_setting('search_path'), current_setting('statement_timeout')")
        assert settings.fetchone() == ("theirs", "7s")
    fields = {**psycopg.conninfo.conninfo_to_dict(pg_dsn), "options": "-c search_path=public"}
    uri = "postgresql:///?" + urllib.parse.urlencode(fields, quote_via=urllib.parse.quote)  # the DSN's own win
    with connect(uri, connect_timeout_s=5) as conn:
        assert conn.execute("SELECT current_setting('search_path')").fetchone() == ("public",)


def test_a_dsn_that_does_not_parse_is_one_line(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_export("host=localhost options", folder) == EXIT_DATABASE
    err = capsys.readouterr().err
    assert "cannot connect to PostgreSQL: " in err and "Traceback" not in err and len(err.splitlines()) == 1
