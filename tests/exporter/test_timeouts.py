"""The exporter never waits on the database without bound: a blocked statement ends in exit 3, and the lock is freed."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from avapdefs.folder import list_snapshots
from exporter.cli import EXIT_DATABASE
from tests.exporter.helpers import insert_rows, row, run_export


def test_a_table_locked_by_another_session_fails_the_export_within_the_statement_timeout(
    db: psycopg.Connection, pg_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    insert_rows(db, [row("addVar")])
    with psycopg.connect(pg_dsn) as holder, holder.transaction():
        # What a frozen or forgotten session does to the export: its read waits on this lock.
        holder.execute("LOCK TABLE obex_dapl_functions IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        assert run_export(pg_dsn, folder, "--statement-timeout-s", "1") == EXIT_DATABASE
        waited_s = time.monotonic() - started
    assert waited_s < 10  # one second of timeout, plus connecting; never the lock holder's whole life
    assert "statement timeout" in capsys.readouterr().err
    assert list_snapshots(folder) == []
    assert run_export(pg_dsn, folder) == 0  # the folder's lock was released: the next run publishes
    assert [version for version, _ in list_snapshots(folder)] == [1]


def test_a_statement_timeout_below_one_second_is_a_usage_error(pg_dsn: str, folder: Path) -> None:
    assert run_export(pg_dsn, folder, "--statement-timeout-s", "0") == 2
