"""``avap-export --every``: runs on a schedule in one process, goes on after a failed run, stops cleanly on a signal."""

from __future__ import annotations

import os
import random
import re
import signal
import time
from pathlib import Path

import psycopg
import pytest

from avapdefs.folder import TEMP_PREFIX, list_snapshots
from avapdefs.format.reader import verify_file
from exporter import schedule
from exporter.cli import EXIT_DATABASE, EXIT_OK
from tests.exporter.helpers import (
    ExporterProcess,
    PrivatePostgres,
    insert_generated,
    insert_rows,
    read_textfile,
    row,
    run_export,
)

DEADLINE_S = 30.0  # for any one line to come; a run here takes well under a second
ROWS = 30_000  # about 1 s of export: time to stop it while it writes
INTERRUPTED = "; the run under way was interrupted and left nothing half-written"


def _temp_files(*folders: Path) -> list[str]:
    """Temp files the exporter left (snapshots, deltas, its state, the metrics textfile)."""
    return [path.name for folder in folders for path in folder.iterdir() if path.name.startswith(TEMP_PREFIX)]


def _versions(folder: Path) -> list[int]:
    return [version for version, _ in list_snapshots(folder)]


@pytest.fixture(scope="module")
def schedule_dsn(private_pg: PrivatePostgres) -> str:
    """A database on this module's own server (which a test stops) holding two commands."""
    return private_pg.create_database("schedule", lambda conn: insert_rows(conn, [row("addVar"), row("if")]))


def test_every_publishes_each_change_and_goes_on_after_the_database_failed(
    private_pg: PrivatePostgres, schedule_dsn: str, folder: Path, tmp_path: Path
) -> None:
    textfile = tmp_path / "avap_export.prom"
    every = ("--every", "0.3s", "--metrics-textfile", str(textfile))
    with ExporterProcess(schedule_dsn, folder, *every, merge_stdout=True) as exporter:
        line = exporter.line_after(0, "published version 1 ", DEADLINE_S)
        with psycopg.connect(schedule_dsn) as conn:
            insert_rows(conn, [row("end")])
        line = exporter.line_after(line + 1, "published version 2 ", DEADLINE_S)
        private_pg.stop("fast")
        try:
            line = exporter.line_after(line + 1, f"(exit {EXIT_DATABASE}; next run in ", DEADLINE_S)
            failed = read_textfile(textfile)  # written before the line; every run fails while the server is down
        finally:
            private_pg.start()
        line = exporter.line_after(line + 1, "unchanged at version 2: 3 commands", DEADLINE_S)
        exporter.process.send_signal(signal.SIGTERM)
        assert exporter.wait(DEADLINE_S) == schedule.EXIT_STOPPED, exporter.lines
    assert exporter.last_line.startswith("avap-export: stopped by SIGTERM")  # between runs or during one: 0
    assert failed["avap_export_last_run_exit_code"] == EXIT_DATABASE
    assert failed["avap_export_catalog_version"] == 2, "carried over from the last run that read the folder"
    assert 0 < failed["avap_export_last_success_timestamp_seconds"] < failed["avap_export_last_run_timestamp_seconds"]
    assert failed["avap_export_last_run_published"] == 0
    assert _versions(folder) == [1, 2]
    assert _temp_files(folder, tmp_path) == []


def test_sigterm_between_runs_ends_the_wait_at_once_with_exit_0(
    db: psycopg.Connection, pg_dsn: str, folder: Path
) -> None:
    insert_rows(db, [row("addVar")])
    with ExporterProcess(pg_dsn, folder, "--every", "1h", merge_stdout=True) as exporter:
        exporter.line_after(0, "published version 1 ", DEADLINE_S)
        exporter.process.send_signal(signal.SIGTERM)
        assert exporter.wait(10) == schedule.EXIT_STOPPED, exporter.lines  # not an hour
    assert exporter.last_line == "avap-export: stopped by SIGTERM"
    assert exporter.lines[0].startswith("avap-export: exporting every 1h;")
    assert _versions(folder) == [1]
    assert _temp_files(folder) == []


def test_sigterm_while_a_snapshot_is_written_interrupts_the_run_with_exit_0_and_no_temp_file(
    db: psycopg.Connection, pg_dsn: str, folder: Path
) -> None:
    insert_generated(db, ROWS, code_bytes=256)
    with ExporterProcess(pg_dsn, folder, "--every", "1h", merge_stdout=True) as exporter:
        exporter.line_after(0, "10000 commands written", DEADLINE_S)  # two thirds of the rows still to come
        assert any(folder.glob(f"{TEMP_PREFIX}*")), "the snapshot's temp file is open"
        exporter.process.send_signal(signal.SIGTERM)
        assert exporter.wait(DEADLINE_S) == schedule.EXIT_STOPPED, exporter.lines
    assert exporter.last_line == f"avap-export: stopped by SIGTERM{INTERRUPTED}"
    assert _versions(folder) == [] and _temp_files(folder) == []


def test_ctrl_c_while_a_run_waits_on_the_database_cancels_it_with_exit_130(
    db: psycopg.Connection, pg_dsn: str, folder: Path
) -> None:
    insert_rows(db, [row("addVar")])
    with psycopg.connect(pg_dsn) as holder, holder.transaction():
        holder.execute("LOCK TABLE obex_dapl_functions IN ACCESS EXCLUSIVE MODE")  # the run's read waits on it
        with ExporterProcess(pg_dsn, folder, "--every", "1h", merge_stdout=True) as exporter:
            _wait_until_blocked(holder)
            exporter.process.send_signal(signal.SIGINT)
            assert exporter.wait(DEADLINE_S) == schedule.EXIT_INTERRUPTED, exporter.lines  # not the lock's whole life
    assert exporter.last_line == f"avap-export: stopped by SIGINT{INTERRUPTED}"
    assert _versions(folder) == [] and _temp_files(folder) == []
    assert run_export(pg_dsn, folder) == EXIT_OK  # the folder's lock went with the process
    assert _versions(folder) == [1]


def _wait_until_blocked(holder: psycopg.Connection) -> None:
    """Until a session of the holder's database waits for a lock on a table (bounded)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        waiting = holder.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation IS NOT NULL"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
        if waiting and waiting[0]:
            return
        time.sleep(0.05)  # polling a condition, with a deadline
    raise AssertionError("the run never came to wait on the locked table")


def test_a_run_longer_than_the_interval_is_followed_by_the_next_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    interval_s, long_run_s = 0.2, 0.5
    handler = signal.getsignal(signal.SIGTERM)
    spans: list[tuple[float, float]] = []

    def run(signals: schedule.StopSignals) -> schedule.RunEnd:
        started = time.monotonic()
        with signals.interruptible():
            time.sleep(long_run_s if not spans else 0.0)  # the first run outlasts the interval: a stand-in for work
        spans.append((started, time.monotonic()))
        if len(spans) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # kept until the wait that follows, which it ends
        return schedule.RunEnd(EXIT_DATABASE, "the database is down") if len(spans) == 2 else schedule.RunEnd(0)

    assert schedule.run_every(interval_s, run, prog="avap-export") == schedule.EXIT_STOPPED
    (_, first_end), (second_start, _), (third_start, _) = spans
    assert second_start - first_end < interval_s / 2, "the next run starts right after one that ran long"
    assert third_start - second_start >= interval_s, "then one interval from the start of the one before"
    err = capsys.readouterr().err.splitlines()
    assert re.fullmatch(rf"avap-export: the database is down \(exit {EXIT_DATABASE}; next run in [\d.]+s\)", err[1])
    assert err[-1] == "avap-export: stopped by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == handler, "the handlers are put back"


CAMPAIGN_STOPS = 8
CAMPAIGN_SEED = 20_261_201


def test_stops_at_random_moments_leave_every_file_whole(
    db: psycopg.Connection, pg_dsn: str, folder: Path, tmp_path: Path
) -> None:
    # Runs back to back (0.05 s apart) with a change before each process: a stop strikes a wait, a read,
    # a write, a delta, the state file or the metrics file, wherever the random moment falls.
    rng = random.Random(CAMPAIGN_SEED)
    insert_generated(db, 3_000, code_bytes=256)
    textfile = tmp_path / "avap_export.prom"
    for _ in range(CAMPAIGN_STOPS):
        db.execute(
            "UPDATE obex_dapl_functions SET code = code || '#' WHERE name = %s", [f"cmd.{rng.randint(1, 3000):07d}"]
        )
        db.commit()
        signum = rng.choice([signal.SIGTERM, signal.SIGINT])
        with ExporterProcess(pg_dsn, folder, "--every", "0.05s", "--metrics-textfile", str(textfile)) as exporter:
            exporter.line_after(0, "exporting every", DEADLINE_S)
            time.sleep(rng.uniform(0.0, 0.6))  # the moment to strike, not a wait for anything
            exporter.process.send_signal(signum)
            expected = schedule.EXIT_STOPPED if signum == signal.SIGTERM else schedule.EXIT_INTERRUPTED
            assert exporter.wait(DEADLINE_S) == expected, exporter.lines
        assert _temp_files(folder, tmp_path) == []
        for _, path in list_snapshots(folder):
            verify_file(path)  # raises on a partial file
        if textfile.exists():
            assert read_textfile(textfile)["avap_export_last_run_exit_code"] == EXIT_OK
