"""Read the legacy definitions tables from PostgreSQL: one consistent, streamed read.

One ``READ ONLY``, ``REPEATABLE READ`` transaction sees one state of the
tables however long the read takes; a server-side cursor streams the rows
in batches, so memory holds one batch, never the table.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import psycopg
from psycopg import sql
from psycopg.rows import args_row

from exporter.errors import ConnectError, SchemaError, SourceError

logger = logging.getLogger(__name__)

# The order of SourceRow's fields.
DEFINITION_COLUMNS = (
    "id",
    "name",
    "type",
    "interface",
    "code",
    "description",
    "logic",
    "componenttype",
    "service",
    "command",
)
BYTECODE_COLUMNS = ("command_name", "bytecode", "version", "source_hash")
_CURSOR_NAME = "avap_export_rows"


class SourceRow(NamedTuple):
    """One row of the definitions table, joined with its precompiled package (if any).

    The field order is the column order of the query below (``DEFINITION_COLUMNS``, then ``BYTECODE_COLUMNS``).
    """

    id: int
    name: str | None
    type: str | None
    interface: str | None
    code: str | None
    description: str | None
    logic: bool | None
    componenttype: str | None
    service: str | None
    command: str | None
    bytecode: bytes | None
    bytecode_version: int | None
    bytecode_source_hash: str | None


def _identifier(table: str) -> sql.Identifier:
    # "schema.table" names a table in a schema; a bare name follows search_path.
    return sql.Identifier(*table.split(".", 1))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def connect(
    dsn: str, *, connect_timeout_s: int, statement_timeout_s: int = 600
) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """Open a connection for the export (libpq's PG* variables fill what ``dsn`` leaves out).

    No step waits without bound: a statement (or a lock wait) longer than
    ``statement_timeout_s`` is cancelled by the server, a transaction left
    idle that long is ended, and TCP keepalives notice a peer that vanished.

    Raises:
        ConnectError: the database cannot be reached or refuses the connection.
    """
    timeout_ms = statement_timeout_s * 1000
    try:
        conn = psycopg.connect(
            dsn,
            connect_timeout=connect_timeout_s,
            application_name="avap-export",
            options=f"-c statement_timeout={timeout_ms} -c idle_in_transaction_session_timeout={timeout_ms}",
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
    except psycopg.Error as exc:
        raise ConnectError(f"cannot connect to PostgreSQL: {_first_line(exc)}") from exc
    with conn:
        yield conn


@contextlib.contextmanager
def open_source(
    conn: psycopg.Connection[tuple[object, ...]], *, table: str, bytecode_table: str, fetch_rows: int = 2000
) -> Iterator[Source]:
    """Start the export's one transaction on ``conn`` and check the tables.

    Args:
        conn: an open connection, not in a transaction.
        table: the definitions table.
        bytecode_table: the table of precompiled packages; "" when there is none.
        fetch_rows: rows per round trip of the server-side cursor.

    Raises:
        SchemaError: a table or column is missing.
        SourceError: the database fails.
    """
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    with _translated(table), conn.transaction():
        _check_columns(conn, table, DEFINITION_COLUMNS)
        if bytecode_table:
            _check_columns(conn, bytecode_table, BYTECODE_COLUMNS)
        yield Source(conn, table=table, bytecode_table=bytecode_table, fetch_rows=fetch_rows)


class Source:
    """The tables as one transaction sees them (made by ``open_source``)."""

    def __init__(
        self, conn: psycopg.Connection[tuple[object, ...]], *, table: str, bytecode_table: str, fetch_rows: int
    ) -> None:
        self._conn = conn
        self._table = table
        self._bytecode_table = bytecode_table
        self._fetch_rows = fetch_rows

    def count(self) -> int:
        """The number of rows the export will read (costs one scan)."""
        with _translated(self._table):
            query = sql.SQL("SELECT count(*) FROM {}").format(_identifier(self._table))
            row = self._conn.execute(query).fetchone()
        return int(row[0]) if row else 0  # type: ignore[call-overload]

    def rows(self) -> Iterator[SourceRow]:
        """Every row, ascending by the UTF-8 bytes of the name, then by id.

        Raises:
            SourceError: the database fails during the read.
        """
        with _translated(self._table):
            cursor = self._conn.cursor(_CURSOR_NAME, row_factory=args_row(SourceRow))
            cursor.itersize = self._fetch_rows
            with cursor:
                cursor.execute(self._query())
                yield from cursor

    def _query(self) -> sql.Composed:
        # COLLATE "C" orders by bytes, which in a UTF8 database is the UTF-8
        # order the snapshot format requires; ties (duplicate names) follow by
        # id, so that they are adjacent and reported in a stable order.
        columns = sql.SQL(", ").join(sql.SQL("f.{}").format(sql.Identifier(c)) for c in DEFINITION_COLUMNS)
        order = sql.SQL('ORDER BY f.name COLLATE "C", f.id')
        if not self._bytecode_table:
            return sql.SQL("SELECT {}, NULL::bytea, NULL::integer, NULL::text FROM {} AS f {}").format(
                columns, _identifier(self._table), order
            )
        return sql.SQL(
            "SELECT {}, b.bytecode, b.version, b.source_hash"
            " FROM {} AS f LEFT JOIN {} AS b ON b.command_name = f.name {}"
        ).format(columns, _identifier(self._table), _identifier(self._bytecode_table), order)


def _check_columns(conn: psycopg.Connection[tuple[object, ...]], table: str, needed: Sequence[str]) -> None:
    quoted = _identifier(table).as_string(conn)  # the same quoting the query uses
    row = conn.execute("SELECT to_regclass(%s)::oid", [quoted]).fetchone()
    oid = row[0] if row else None
    if oid is None:
        raise SchemaError(f"table {table!r} does not exist in database {conn.info.dbname!r}", table=table)
    found = {
        name
        for (name,) in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped", [oid]
        )
    }
    missing = [column for column in needed if column not in found]
    if missing:
        listed = ", ".join(missing)
        raise SchemaError(f"table {table!r} has no column {listed}", table=table, columns=missing)


@contextlib.contextmanager
def _translated(table: str) -> Iterator[None]:
    """Turn psycopg's errors into the exporter's, once, here."""
    try:
        yield
    except psycopg.errors.UndefinedTable as exc:
        raise SchemaError(f"table {table!r}: {_first_line(exc)}", table=table) from exc
    except psycopg.errors.UndefinedColumn as exc:
        raise SchemaError(f"table {table!r}: {_first_line(exc)}", table=table) from exc
    except psycopg.errors.QueryCanceled as exc:
        raise SourceError(
            f"PostgreSQL did not answer within the statement timeout (--statement-timeout-s): {_first_line(exc)}"
        ) from exc
    except psycopg.Error as exc:
        raise SourceError(f"PostgreSQL failed during the export: {_first_line(exc)}") from exc
