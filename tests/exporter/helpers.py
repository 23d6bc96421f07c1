"""Exporter test helpers: legacy rows, inserting them, running the exporter's CLI in this process."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg

from avapdefs.format.package import build_package, is_package
from avapdefs.format.snapshot import seal_command
from avapdefs.v1.definitions_pb2 import Command
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


def _text(data: bytes | str | None) -> str:
    return data.decode() if isinstance(data, bytes) else data or ""


def reference_sealed(row: Sequence[Any], *, signing_key: bytes | None = None) -> bytes:
    """The sealed Command of a row as the exporter made it before it encoded by hand: protobuf's
    own ``Command(...)`` and ``SerializeToString``. An independent encoder to compare the exporter's
    bytes with. ``row`` has SourceRow's fields, texts as bytes or str (a plain SELECT's values)."""
    (row_id, name, type_, interface, code, description, logic, component, service, command, bytecode, version,
     source_hash) = row  # fmt: skip
    stored = bytes(bytecode or b"")
    package = stored if is_package(stored) else build_package(_text(code), signing_key) if signing_key else b""
    return seal_command(
        Command(
            name=_text(name),
            type=_text(type_),
            interface_json=_text(interface) if _text(interface).strip() else "",
            code=_text(code),
            description=_text(description),
            logic=bool(logic),
            component_type=_text(component),
            service=_text(service),
            command=_text(command),
            source_id=row_id,
            bytecode=stored,
            bytecode_version=version or 0,
            bytecode_source_hash=_text(source_hash),
            signed_package=package,
        )
    )
