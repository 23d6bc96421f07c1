"""A run killed with SIGKILL while writing leaves the folder valid, and the next run succeeds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg

from avapdefs.folder import TEMP_PREFIX, list_snapshots, snapshot_name
from avapdefs.format.snapshot import read_file
from tests.exporter.helpers import insert_generated, run_export

ROWS = 60_000


def test_sigkill_while_writing_leaves_no_visible_partial_file(
    db: psycopg.Connection, pg_dsn: str, folder: Path
) -> None:
    insert_generated(db, ROWS, code_bytes=256)
    command = [sys.executable, "-m", "exporter", "--dsn", pg_dsn, "--snapshots", str(folder), "--log-level", "debug"]
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        # The exporter logs every 10,000 commands written; its first such line
        # means the temp file is open and five sixths of the rows are still to
        # come. Reading the pipe blocks until then: no sleeping, no polling.
        assert child.stderr is not None
        for line in child.stderr:
            if "10000 commands written" in line:
                break
        else:
            raise AssertionError(f"the exporter ended (code {child.wait()}) before writing 10000 commands")
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stderr is not None:
            child.stderr.close()

    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert leftovers, "the exporter was killed after it published: the test did not kill it while writing"
    assert list_snapshots(folder) == []  # a reader sees nothing

    assert run_export(pg_dsn, folder) == 0
    assert [p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)] == []
    assert read_file(folder / snapshot_name(1)).info.command_count == ROWS
