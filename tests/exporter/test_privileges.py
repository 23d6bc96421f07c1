"""Least privilege: the exporter runs as the read-only role ``exporter/schema.sql`` documents, and needs no more."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from avapdefs.folder import list_snapshots
from exporter.cli import EXIT_DATABASE, EXIT_OK
from exporter.sample import SCHEMA_PATH
from tests.exporter.helpers import insert_rows, row, run_export

# The statements of the role's section of schema.sql: its "--   ...;" lines.
_STATEMENT = re.compile(r"^--   (\S.*;)$", re.MULTILINE)


def _role_statements(role: str, database: str) -> list[str]:
    text = SCHEMA_PATH.read_text(encoding="utf-8")
    statements = _STATEMENT.findall(text[text.index("-- The exporter's role") :])
    assert len(statements) == 5
    names = {"avap_export": sql.Identifier(role), "avap": sql.Identifier(database)}
    return [
        re.sub(r"\b(avap_export|avap)\b(?= |;)", lambda m: names[m.group(1)].as_string(), statement)
        for statement in statements
    ]


@pytest.fixture
def reader_dsn(db: psycopg.Connection, pg_dsn: str) -> Iterator[str]:
    """A DSN that logs in to the test database as a new role made by schema.sql's statements."""
    role = f"avap_export_{secrets.token_hex(4)}"
    database = db.info.dbname
    for statement in _role_statements(role, database):
        db.execute(statement.encode("utf-8"))
    db.commit()
    try:
        yield psycopg.conninfo.make_conninfo(pg_dsn, user=role)
    finally:
        db.rollback()
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
        db.commit()


def test_the_exporter_runs_as_the_read_only_role(db: psycopg.Connection, reader_dsn: str, folder: Path) -> None:
    insert_rows(db, [row("addVar"), row("if")])
    db.execute("INSERT INTO avap_bytecode (command_name, bytecode, version) VALUES ('addVar', '\\x01', 1)")
    db.commit()
    assert run_export(reader_dsn, folder) == EXIT_OK
    assert run_export(reader_dsn, folder) == EXIT_OK  # the unchanged check reads the write counters too
    assert [version for version, _ in list_snapshots(folder)] == [1]
    # Past its read-only default, the role still cannot write.
    with psycopg.connect(reader_dsn, autocommit=True) as reader, pytest.raises(psycopg.errors.InsufficientPrivilege):
        reader.execute("SET default_transaction_read_only = off")
        reader.execute("INSERT INTO obex_dapl_functions (name) VALUES ('x')")


def test_a_missing_grant_is_a_clear_database_error(
    db: psycopg.Connection, reader_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    insert_rows(db, [row("addVar")])
    role = psycopg.conninfo.conninfo_to_dict(reader_dsn)["user"]
    db.execute(sql.SQL("REVOKE SELECT ON avap_bytecode FROM {}").format(sql.Identifier(str(role))))
    db.commit()
    assert run_export(reader_dsn, folder) == EXIT_DATABASE
    assert "permission denied for table avap_bytecode" in capsys.readouterr().err
    assert list_snapshots(folder) == []
