"""Database faults during an export: each ends in exit 3 with one clear line, in bounded time, publishing nothing.

The faults hit a PostgreSQL of this module's own (``private_pg``): it is stopped and
restarted, and its backends are terminated or frozen (SIGSTOP, then SIGCONT). The
exporter runs as a process of its own; each fault strikes while it is mid-COPY.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from avapdefs.folder import TEMP_PREFIX, list_snapshots
from exporter.cli import EXIT_DATABASE, EXIT_OK
from exporter.source import connect
from exporter.watchdog import GRACE_S
from tests.exporter.helpers import ExporterProcess, PrivatePostgres, insert_generated, run_export
from tests.loopback import LoopbackProxy

ROWS = 30_000  # about 1 s of export: long enough to strike mid-COPY, ten times shorter than the statement timeout
MID_COPY = "10000 commands written"
STATEMENT_TIMEOUT_S = 3
WATCHDOG_TEXT = "did not answer within the statement timeout (--statement-timeout-s) and 1 s more"


@pytest.fixture(scope="module")
def faults_dsn(private_pg: PrivatePostgres) -> str:
    """The private server's database holding ROWS generated commands."""
    return private_pg.create_database("faults", lambda conn: insert_generated(conn, ROWS, code_bytes=256))


@pytest.fixture
def proxy(private_pg: PrivatePostgres) -> Iterator[LoopbackProxy]:
    """A TCP proxy on 127.0.0.1 to the private server."""
    server = LoopbackProxy(private_pg.socket_path)
    try:
        yield server
    finally:
        server.close()


def _assert_nothing_published(folder: Path) -> None:
    assert list_snapshots(folder) == []
    assert [path.name for path in folder.iterdir() if path.name.startswith(TEMP_PREFIX)] == []


def _assert_next_run_publishes(dsn: str, folder: Path) -> None:
    # The folder's lock was freed, and the database serves again.
    assert run_export(dsn, folder) == EXIT_OK
    assert [version for version, _ in list_snapshots(folder)] == [1]


def _strike_mid_copy(
    dsn: str, folder: Path, strike: Callable[[int], None], *extra: str, bound_s: float
) -> tuple[int, float, str]:
    """Run the exporter, ``strike(backend pid)`` mid-COPY; return its exit code, the seconds it took after, its line."""
    with ExporterProcess(dsn, folder, "--statement-timeout-s", str(STATEMENT_TIMEOUT_S), *extra) as exporter:
        assert exporter.wait_for("writing version", 30), exporter.lines
        backend = _backend_pid(dsn)
        assert exporter.wait_for(MID_COPY, 30), exporter.lines
        strike(backend)
        struck = time.monotonic()
        code = exporter.wait(bound_s + 10)  # TimeoutExpired beyond: the exporter hung
        took_s = time.monotonic() - struck
    print(f"exit {code} {took_s:.2f} s after the strike: {exporter.last_line}")  # the figures of reliability.md
    return code, took_s, exporter.last_line


def _backend_pid(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as admin:
        found = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'avap-export' AND datname = current_database()"
        ).fetchone()
    assert found is not None, "the exporter's backend is not in pg_stat_activity"
    return int(found[0])


def test_a_stopped_server_is_a_connect_error_at_once(
    private_pg: PrivatePostgres, faults_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private_pg.stop("fast")
    try:
        started = time.monotonic()
        assert run_export(faults_dsn, folder) == EXIT_DATABASE
        took_s = time.monotonic() - started
    finally:
        private_pg.start()
    err = capsys.readouterr().err
    assert err.startswith("avap-export: cannot connect to PostgreSQL: ") and err.count("\n") == 1, err
    assert took_s < 5
    _assert_nothing_published(folder)
    _assert_next_run_publishes(faults_dsn, folder)


# The server's own message (its backend, or a parallel worker of the COPY, ended "due to administrator
# command"), or the end of the stream, when libpq meets the end before the message.
LOST = ("due to administrator command", "server closed the connection unexpectedly")


@pytest.mark.parametrize("fault", ["pg_terminate_backend", "pg_ctl stop -m fast", "pg_ctl stop -m immediate"])
def test_a_server_that_ends_the_connection_mid_read_fails_the_export_at_once(
    private_pg: PrivatePostgres, faults_dsn: str, folder: Path, fault: str
) -> None:
    def strike(backend: int) -> None:
        if fault == "pg_terminate_backend":
            with psycopg.connect(private_pg.dsn(), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", [backend])
        else:
            private_pg.stop(fault.rsplit(" ", 1)[-1])

    try:
        code, took_s, line = _strike_mid_copy(faults_dsn, folder, strike, bound_s=5)
    finally:
        private_pg.start()  # a no-op when it runs
    assert code == EXIT_DATABASE, line
    assert line.startswith("avap-export: PostgreSQL failed during the export: "), line
    assert any(text in line for text in LOST), line
    assert took_s < 5
    _assert_nothing_published(folder)
    _assert_next_run_publishes(faults_dsn, folder)


def test_a_frozen_backend_is_given_up_after_the_statement_timeout(faults_dsn: str, folder: Path) -> None:
    frozen: list[int] = []

    def strike(backend: int) -> None:
        os.kill(backend, signal.SIGSTOP)  # a child of the private server: the test's own process tree
        frozen.append(backend)

    try:
        code, took_s, line = _strike_mid_copy(faults_dsn, folder, strike, bound_s=STATEMENT_TIMEOUT_S + GRACE_S)
    finally:
        for backend in frozen:
            os.kill(backend, signal.SIGCONT)
    assert code == EXIT_DATABASE, line
    assert WATCHDOG_TEXT in line, line
    # The clock started with the COPY, before the freeze: never more than the timeout and the grace.
    assert took_s < STATEMENT_TIMEOUT_S + GRACE_S + 2
    _assert_nothing_published(folder)
    _assert_next_run_publishes(faults_dsn, folder)


def test_a_host_that_goes_silent_mid_read_is_given_up_after_the_statement_timeout(
    faults_dsn: str, folder: Path, proxy: LoopbackProxy
) -> None:
    # On loopback the proxy's kernel still answers TCP keepalive probes, as a live host with a hung
    # database would: the watchdog, not the keepalive, ends this wait.
    dsn = psycopg.conninfo.make_conninfo(faults_dsn, host="127.0.0.1", port=proxy.port)
    code, took_s, line = _strike_mid_copy(
        dsn, folder, lambda _: proxy.go_silent(), "--keepalive-s", "2", bound_s=STATEMENT_TIMEOUT_S + GRACE_S
    )
    assert code == EXIT_DATABASE, line
    assert WATCHDOG_TEXT in line, line
    assert took_s < STATEMENT_TIMEOUT_S + GRACE_S + 2
    _assert_nothing_published(folder)
    _assert_next_run_publishes(faults_dsn, folder)


def test_a_host_that_drops_the_connection_mid_read_fails_the_export_at_once(
    faults_dsn: str, folder: Path, proxy: LoopbackProxy
) -> None:
    dsn = psycopg.conninfo.make_conninfo(faults_dsn, host="127.0.0.1", port=proxy.port)
    code, took_s, line = _strike_mid_copy(dsn, folder, lambda _: proxy.drop(), bound_s=5)
    assert code == EXIT_DATABASE, line
    assert line.startswith("avap-export: PostgreSQL failed during the export: "), line
    assert took_s < 5
    _assert_nothing_published(folder)
    _assert_next_run_publishes(faults_dsn, folder)


@pytest.mark.parametrize(("keepalive_s", "idle_s", "interval_s"), [(60, 30, 10), (9, 4, 1), (2, 1, 1)])
def test_the_keepalive_setting_reaches_the_socket(
    faults_dsn: str, proxy: LoopbackProxy, keepalive_s: int, idle_s: int, interval_s: int
) -> None:
    dsn = psycopg.conninfo.make_conninfo(faults_dsn, host="127.0.0.1", port=proxy.port)
    with connect(dsn, connect_timeout_s=5, keepalive_s=keepalive_s) as conn:
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        with sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == idle_s
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == interval_s
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == keepalive_s * 1000


@pytest.mark.parametrize("value", ["1", "x"])
def test_a_keepalive_below_two_seconds_is_a_usage_error(
    faults_dsn: str, folder: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    assert run_export(faults_dsn, folder, "--keepalive-s", value) == 2
    monkeypatch.setenv("AVAP_EXPORT_KEEPALIVE_S", value)
    assert run_export(faults_dsn, folder) == 2
