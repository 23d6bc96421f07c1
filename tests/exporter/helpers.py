"""Exporter test helpers: legacy rows, inserting them, running the exporter's CLI in this process."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import psycopg

from exporter.cli import main


def row(name: str | None, **fields: object) -> dict[str, object]:
    """A row of obex_dapl_functions with plausible values; ``fields`` override (``id`` allowed)."""
    values: dict[str, object] = {
        "name": name,
        "interface": '[{"item":"targetVarName","type":"variable"},{"item":"varValue","type":"value"}]',
        "description": f"The {name} command.",
        "type": "function",
        "logic": False,
        "componenttype": "core",
        "service": "core",
        "command": name,
        "code": f"def cmd(self, targetVarName, varValue):\n    self.variables[targetVarName] = {name!r}\n",
    }
    values.update(fields)
    return values


def insert_rows(
    conn: psycopg.Connection, rows: Sequence[Mapping[str, object]], table: str = "obex_dapl_functions"
) -> None:
    """Insert rows (dicts of column values) and commit."""
    for values in rows:
        columns = list(values)
        query = psycopg.sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            psycopg.sql.Identifier(table),
            psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, columns)),
            psycopg.sql.SQL(", ").join(psycopg.sql.Placeholder() * len(columns)),
        )
        conn.execute(query, [values[c] for c in columns])
    conn.commit()


def insert_generated(conn: psycopg.Connection, count: int, *, code_bytes: int = 1000, first: int = 1) -> None:
    """Insert ``count`` generated rows named cmd.0000001... in one statement (fast, for volume tests)."""
    repeats = max(code_bytes // 32, 1)
    conn.execute(
        "INSERT INTO obex_dapl_functions (name, interface, description, type, code)"
        ' SELECT \'cmd.\' || lpad(i::text, 7, \'0\'), \'[{"item":"x","type":"value"}]\','
        " 'generated command ' || i, 'function', repeat(md5(i::text), %s)"
        " FROM generate_series(%s::int, %s::int) AS i",
        [repeats, first, first + count - 1],
    )
    conn.commit()


def run_export(dsn: str, folder: Path, *extra: str) -> int:
    """``avap-export --dsn DSN --snapshots FOLDER EXTRA...`` in this process."""
    return main(["--dsn", dsn, "--snapshots", str(folder), *extra])
