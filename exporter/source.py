"""Read the legacy definitions tables from PostgreSQL: one consistent, streamed read.

One ``READ ONLY``, ``REPEATABLE READ`` transaction sees one state of the
tables however long the read takes. The rows arrive through ``COPY (query)
TO STDOUT (FORMAT BINARY)`` and are parsed here: a COPY streams (memory
holds one row, never the table), lets PostgreSQL sort in parallel workers,
and costs far less per row than a cursor's fetches and per-value loading.
At 1,000,000 rows of 2 KB: 7.4 s to drain the COPY, against 13.9 s through
a server-side cursor (bench/bench_export.py; the sort is in both).

The binary format is fixed by the query, not by the table: integers and the
boolean are cast, and text columns must be of a type sent as its UTF-8 bytes
(``text``, ``varchar``, ``char``, ``name``), so the same rows always give the
same stream. That stream's sha256 (``Source.digest``) identifies the rows
exactly; ``exporter/unchanged.py`` uses it to tell an unchanged table cheaply.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import struct
from collections.abc import Generator, Iterable, Iterator, Sequence
from typing import NamedTuple

import psycopg
from psycopg import pq, sql

from exporter.errors import ConnectError, SchemaError, SourceError
from exporter.watchdog import GRACE_S, Watchdog

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

# PostgreSQL type OIDs. A text-like value's binary form is its bytes in the client encoding (UTF8 here).
_INT8, _INT4, _BOOL, _BYTEA = 20, 23, 16, 17
_TEXT_TYPES = {25: "text", 1043: "varchar", 1042: "char", 19: "name"}
_TEXT_COLUMNS = ("name", "type", "interface", "code", "description", "componenttype", "service", "command")
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_COPY_HEADER = struct.Struct(">11sii")  # signature, flags, header extension length
_FIELD_COUNT = len(DEFINITION_COLUMNS) + 3
_I16 = struct.Struct(">h").unpack_from
_I32 = struct.Struct(">i").unpack_from
_FIELD_RANGE = range(_FIELD_COUNT)
_from_bytes = int.from_bytes
_KEEPALIVE_PROBES = 3
_new_row = tuple.__new__  # SourceRow(*fields) without the keyword machinery: about 0.5 us a row less


class SourceRow(NamedTuple):
    """One row of the definitions table, joined with its precompiled package (if any).

    Text arrives as its UTF-8 bytes, undecoded (``build.py`` decodes only what it checks).
    The field order is the column order of the query below (``DEFINITION_COLUMNS``, then ``BYTECODE_COLUMNS``).
    """

    id: int | None
    name: bytes | None
    type: bytes | None
    interface: bytes | None
    code: bytes | None
    description: bytes | None
    logic: bool | None
    componenttype: bytes | None
    service: bytes | None
    command: bytes | None
    bytecode: bytes | None
    bytecode_version: int | None
    bytecode_source_hash: bytes | None


def _identifier(table: str) -> sql.Identifier:
    # "schema.table" names a table in a schema; a bare name follows search_path.
    return sql.Identifier(*table.split(".", 1))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _own_options(dsn: str) -> str:
    """The server options the connection would have without ours: the DSN's ``options``, else ``PGOPTIONS``.

    A keyword argument to ``psycopg.connect`` replaces the DSN's value and libpq's default alike,
    so they are read here (the default through libpq, which reads the variable) and passed on.

    Raises:
        psycopg.ProgrammingError: ``dsn`` does not parse.
    """
    given = psycopg.conninfo.conninfo_to_dict(dsn).get("options")
    if given is not None:
        return str(given)
    default = next((option.val for option in pq.Conninfo.get_defaults() if option.keyword == b"options"), None)
    return default.decode() if default else ""


@contextlib.contextmanager
def connect(
    dsn: str, *, connect_timeout_s: int, statement_timeout_s: int = 600, keepalive_s: int = 60
) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """Open a connection for the export (libpq's PG* variables fill what ``dsn`` leaves out).

    No step waits without bound: a statement (or a lock wait) longer than
    ``statement_timeout_s`` is cancelled by the server, a transaction left
    idle that long is ended (and ``open_source``'s watchdog ends the waits a
    frozen server cannot). Over TCP, a host silent for about ``keepalive_s``
    is given up: keepalive probes start after half of it, three of them a
    sixth apart, and data unacknowledged that long (TCP_USER_TIMEOUT) ends
    the connection too. Text is always sent as UTF-8, whatever the environment asks for.
    Server settings the DSN (or ``PGOPTIONS``) gives in ``options``, such as
    ``-c search_path=...``, are kept; the two timeouts follow them, so the
    flag's value is the one in force.

    Raises:
        ConnectError: the database cannot be reached or refuses the connection (or ``dsn`` does not parse).
    """
    timeout_ms = statement_timeout_s * 1000
    idle_s = max(keepalive_s // 2, 1)
    timeouts = f"-c statement_timeout={timeout_ms} -c idle_in_transaction_session_timeout={timeout_ms}"
    try:
        conn = psycopg.connect(
            dsn,
            connect_timeout=connect_timeout_s,
            application_name="avap-export",
            client_encoding="UTF8",
            options=" ".join(filter(None, (_own_options(dsn), timeouts))),
            keepalives=1,
            keepalives_idle=idle_s,
            keepalives_interval=max((keepalive_s - idle_s) // _KEEPALIVE_PROBES, 1),
            keepalives_count=_KEEPALIVE_PROBES,
            tcp_user_timeout=keepalive_s * 1000,
        )
    except psycopg.Error as exc:
        raise ConnectError(f"cannot connect to PostgreSQL: {_first_line(exc)}") from exc
    with conn:
        yield conn


@contextlib.contextmanager
def open_source(
    conn: psycopg.Connection[tuple[object, ...]],
    *,
    table: str,
    bytecode_table: str,
    statement_timeout_s: int | None = None,
) -> Iterator[Source]:
    """Start one export transaction on ``conn`` and check the tables.

    Args:
        conn: an open connection, not in a transaction.
        table: the definitions table.
        bytecode_table: the table of precompiled packages; "" when there is none.
        statement_timeout_s: the connection's statement timeout; a watchdog (``exporter/watchdog.py``)
            cuts the connection when one wait outlasts it by ``GRACE_S``. None: no watchdog.

    Raises:
        SchemaError: a table or column is missing, or a column's type cannot be exported.
        SourceError: the database fails, or the watchdog gave up on it.
    """
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    limit_s = None if statement_timeout_s is None else statement_timeout_s + GRACE_S
    watchdog = Watchdog(conn, limit_s)
    # The watchdog's clock runs from BEGIN to after the COMMIT or ROLLBACK, so those are bounded too.
    with _translated(table, watchdog), watchdog, conn.transaction():
        _check_columns(conn, table, DEFINITION_COLUMNS)
        if bytecode_table:
            _check_columns(conn, bytecode_table, BYTECODE_COLUMNS)
        source = Source(conn, table=table, bytecode_table=bytecode_table, watchdog=watchdog)
        source.check_types()
        yield source
        watchdog.restart()  # the commit is a wait of its own


class Source:
    """The tables as one transaction sees them (made by ``open_source``)."""

    def __init__(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        *,
        table: str,
        bytecode_table: str,
        watchdog: Watchdog | None = None,
    ) -> None:
        self._conn = conn
        self._table = table
        self._bytecode_table = bytecode_table
        self._watchdog = watchdog or Watchdog(conn, None)
        self._digest: bytes | None = None

    @property
    def query(self) -> str:
        """The SELECT the rows come from, as sent."""
        return self._query().as_string(self._conn)

    @property
    def digest(self) -> bytes:
        """The sha256 of the rows' binary stream, known once ``rows`` or ``drain`` has read to the end.

        Equal digests mean equal rows, in equal order, with equal values, for the same ``query``.
        """
        if self._digest is None:
            raise RuntimeError("the rows have not been read to the end")
        return self._digest

    @property
    def checks_utf8(self) -> bool:
        """Whether texts must be checked for UTF-8: only a SQL_ASCII database sends them unchecked."""
        return self._conn.info.parameter_status("server_encoding") in (None, "SQL_ASCII")

    def write_counters(self) -> tuple[int, ...]:
        """PostgreSQL's cumulative counts of rows inserted, updated and deleted in the tables, and their file numbers.

        A hint that the tables were written, never proof that they were not: the counts are
        flushed about once a second, not transactional, reset by ``pg_stat_reset``, and 0 for a view.
        """
        tables = (self._table, self._bytecode_table) if self._bytecode_table else (self._table,)
        counters: list[int] = []
        with self._statement():
            for table in tables:
                quoted = _identifier(table).as_string(self._conn)
                row = self._conn.execute(_COUNTERS, [quoted]).fetchone() or ()
                counters += (int(value or 0) for value in row)  # type: ignore[call-overload]
        return tuple(counters)

    def count(self) -> int:
        """The number of rows the export will read (costs one scan)."""
        with self._statement():
            query = sql.SQL("SELECT count(*) FROM {}").format(_identifier(self._table))
            row = self._conn.execute(query).fetchone()
        return int(row[0]) if row else 0  # type: ignore[call-overload]

    def check_types(self) -> None:
        """Refuse columns whose type has no fixed binary form here (the query describes them; no row is read).

        Raises:
            SchemaError: a text column is not text-like, or ``bytecode`` is not ``bytea``.
        """
        query = sql.SQL("{} LIMIT 0").format(self._query())
        with self._statement():
            description = self._conn.execute(query).description or []
        for column, name in zip(description, (*DEFINITION_COLUMNS, *BYTECODE_COLUMNS[1:]), strict=True):
            if name in _TEXT_COLUMNS or name == "source_hash":
                wanted, types = "text, varchar, char or name", _TEXT_TYPES
            elif name == "bytecode":
                wanted, types = "bytea", {_BYTEA: "bytea"}
            else:
                continue  # cast in the query
            if column.type_code not in types:
                table = self._bytecode_table if name in BYTECODE_COLUMNS else self._table
                raise SchemaError(
                    f"table {table!r}: column {name} is of type oid {column.type_code}, not {wanted}",
                    table=table,
                    columns=[name],
                )

    def rows(self) -> Generator[SourceRow, None, None]:
        """Every row, ascending by the UTF-8 bytes of the name, then by id; then ``digest`` is known.

        A caller that stops before the end must ``close()`` the generator before the transaction
        ends: an open COPY holds the connection's lock, which the rollback waits for.

        Raises:
            SourceError: the database fails during the read.
        """
        digest = hashlib.sha256()
        with self._statement(), contextlib.closing(self._copy()) as chunks:
            yield from _parse_copy(_hashed(chunks, digest))
        self._digest = digest.digest()

    def drain(self) -> bytes:
        """Read every row without parsing it, and return ``digest`` (the cheap way to learn it).

        Raises:
            SourceError: the database fails during the read.
        """
        digest = hashlib.sha256()
        with self._statement(), contextlib.closing(self._copy()) as chunks:
            for data in chunks:
                digest.update(data)
        self._digest = digest.digest()
        return self._digest

    @contextlib.contextmanager
    def _statement(self) -> Iterator[None]:
        # One statement: the watchdog's clock restarts as it begins and as it ends, and errors are translated.
        self._watchdog.restart()
        with _translated(self._table, self._watchdog):
            yield
        self._watchdog.restart()

    def _copy(self) -> Generator[bytes | bytearray | memoryview, None, None]:
        # What psycopg yields may be a view of libpq's buffer, valid until the next read.
        # psycopg holds the connection's lock (not reentrant) until the COPY's block ends: a
        # generator left suspended in it, kept alive by an exception's traceback, made the
        # rollback wait for that lock forever (a full disk mid-COPY hung the exporter).
        statement = sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(self._query())
        with self._conn.cursor() as cursor, cursor.copy(statement) as copy:
            yield from copy

    def _query(self) -> sql.Composed:
        # COLLATE "C" orders by bytes, which in a UTF8 database is the UTF-8
        # order the snapshot format requires; ties (duplicate names) follow by
        # id, so that they are adjacent and reported in a stable order.
        columns = sql.SQL(", ").join(
            sql.SQL(_CAST.get(column, "f.{}")).format(sql.Identifier(column)) for column in DEFINITION_COLUMNS
        )
        order = sql.SQL('ORDER BY f.name COLLATE "C", f.id')
        if not self._bytecode_table:
            return sql.SQL("SELECT {}, NULL::bytea, NULL::integer, NULL::text FROM {} AS f {}").format(
                columns, _identifier(self._table), order
            )
        return sql.SQL(
            "SELECT {}, b.bytecode, b.version::integer, b.source_hash"
            " FROM {} AS f LEFT JOIN {} AS b ON b.command_name = f.name {}"
        ).format(columns, _identifier(self._table), _identifier(self._bytecode_table), order)


_COUNTERS = """
SELECT pg_stat_get_tuples_inserted(t.oid), pg_stat_get_tuples_updated(t.oid), pg_stat_get_tuples_deleted(t.oid),
       pg_relation_filenode(t.oid)
FROM (SELECT to_regclass(%s)::oid AS oid) AS t
"""
_CAST = {"id": "f.{}::bigint", "logic": "f.{}::boolean"}


def _hashed(chunks: Iterable[bytes | bytearray | memoryview], digest: hashlib._Hash) -> Iterator[bytes]:
    # Hashed here, not on another thread: a third thread contending for the GIL cost more than it saved.
    for data in chunks:
        chunk = bytes(data)
        digest.update(chunk)
        yield chunk


def _parse_copy(chunks: Iterable[bytes]) -> Iterator[SourceRow]:
    """The rows of a binary COPY stream (PostgreSQL docs, "COPY", "Binary Format"), in any chunking.

    PostgreSQL sends one row per message, so a row is almost never split; when it is, the
    rest is awaited. Integers and the boolean are decoded; text and bytea stay bytes. The
    stream is read to its end (nothing may follow the trailer), so the COPY ends normally.
    """
    buffer, pos, started, ended = b"", 0, False, False
    for chunk in chunks:
        if ended:
            raise SourceError("the COPY stream goes on after its trailer")
        buffer = buffer[pos:] + chunk if pos < len(buffer) else chunk
        pos = 0
        if not started:
            if len(buffer) < _COPY_HEADER.size:
                continue  # keep the bytes (pos is 0) until the header is whole
            pos, started = _header_end(buffer), True
        while len(buffer) - pos >= 2:
            (count,) = _I16(buffer, pos)
            if count == -1:
                ended = _trailer(buffer, pos)
                break
            if count != _FIELD_COUNT:
                raise SourceError(f"COPY row of {count} fields, expected {_FIELD_COUNT}")
            parsed = _parse_fields(buffer, pos + 2)
            if parsed is None:
                break  # the rest of the row is in the next chunk
            fields, pos = parsed
            yield _source_row(fields)
    if not ended:
        raise SourceError("the COPY stream ended without its trailer")


def _trailer(buffer: bytes, pos: int) -> bool:
    if pos + 2 != len(buffer):
        raise SourceError("the COPY stream goes on after its trailer")
    return True


def _source_row(fields: list[object]) -> SourceRow:
    # The integers and the boolean decoded (their casts fix the widths); text and bytea stay bytes.
    row_id, logic, version = fields[0], fields[6], fields[11]
    fields[0] = None if row_id is None else _from_bytes(row_id, "big", signed=True)  # type: ignore[arg-type]
    fields[6] = None if logic is None else logic != b"\x00"
    fields[11] = None if version is None else _from_bytes(version, "big", signed=True)  # type: ignore[arg-type]
    return _new_row(SourceRow, fields)


def _header_end(buffer: bytes) -> int:
    signature, _, extension = _COPY_HEADER.unpack_from(buffer)
    if signature != _COPY_SIGNATURE or extension < 0:
        raise SourceError("the COPY stream does not start with the binary signature")
    return _COPY_HEADER.size + int(extension)


def _parse_fields(buffer: bytes, pos: int) -> tuple[list[object], int] | None:
    # Each field: its length (-1 for NULL), then its bytes. A slice past the end is only short,
    # so completeness is checked once, at the end; a length prefix past the end raises.
    fields: list[object] = []
    append = fields.append
    try:
        for _ in _FIELD_RANGE:
            (size,) = _I32(buffer, pos)
            pos += 4
            if size < 0:
                append(None)
            else:
                append(buffer[pos : pos + size])
                pos += size
    except struct.error:
        return None
    return (fields, pos) if pos <= len(buffer) else None


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
def _translated(table: str, watchdog: Watchdog) -> Iterator[None]:
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
        if watchdog.fired:
            raise SourceError(
                f"PostgreSQL did not answer within the statement timeout (--statement-timeout-s) and "
                f"{GRACE_S:g} s more; the connection was closed (a frozen server, or a host gone silent)"
            ) from exc
        raise SourceError(f"PostgreSQL failed during the export: {_first_line(exc)}") from exc
