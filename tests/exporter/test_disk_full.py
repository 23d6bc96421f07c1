"""A full disk while the exporter writes: exit 8 with one line, nothing left behind, the older version still served.

The exporter runs as a process of its own under ``RLIMIT_FSIZE`` (no file may grow past
the limit; SIGXFSZ ignored, so a write fails with EFBIG as it would with ENOSPC),
at limits that fail the first byte, the middle and the very last byte of the snapshot.
"""

from __future__ import annotations

import os
import resource
import signal
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from avapdefs.folder import TEMP_PREFIX, list_snapshots, read_newest, snapshot_name
from exporter import unchanged
from exporter.cli import EXIT_FOLDER, EXIT_OK
from tests.exporter.helpers import ExporterProcess, insert_generated, run_export

ROWS = 2_000
CREATED_AT_MS = "1767225600000"  # fixed, so that the reference file has the size of the one the limit cuts


def _file_size_limit(limit_bytes: int) -> Callable[[], None]:
    def apply() -> None:  # in the child, before it runs the exporter
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


@pytest.mark.parametrize("cut", ["first byte", "middle", "last byte"])
def test_a_full_disk_fails_the_export_and_leaves_nothing_behind(
    db: psycopg.Connection, pg_dsn: str, folder: Path, tmp_path: Path, cut: str
) -> None:
    insert_generated(db, ROWS, code_bytes=256)
    assert run_export(pg_dsn, folder, "--created-at-ms", CREATED_AT_MS) == EXIT_OK
    db.execute("UPDATE obex_dapl_functions SET code = code || '#' WHERE name = 'cmd.0000007'")
    db.commit()
    reference = tmp_path / "reference"
    assert run_export(pg_dsn, reference, "--created-at-ms", CREATED_AT_MS) == EXIT_OK
    size = (reference / snapshot_name(1)).stat().st_size
    limit = {"first byte": 0, "middle": size // 2, "last byte": size - 1}[cut]
    state = (folder / unchanged.STATE_NAME).read_bytes()

    with ExporterProcess(
        pg_dsn, folder, "--created-at-ms", CREATED_AT_MS, preexec_fn=_file_size_limit(limit)
    ) as exporter:
        assert exporter.wait(60) == EXIT_FOLDER, exporter.lines
    assert exporter.last_line == f"avap-export: snapshot folder {folder}: File too large", exporter.lines
    assert [version for version, _ in list_snapshots(folder)] == [1]
    assert [name for name in os.listdir(folder) if name.startswith(TEMP_PREFIX)] == []
    assert read_newest(folder).snapshot.info.version == 1
    assert (folder / unchanged.STATE_NAME).read_bytes() == state

    assert run_export(pg_dsn, folder, "--created-at-ms", CREATED_AT_MS) == EXIT_OK  # room again
    assert [version for version, _ in list_snapshots(folder)] == [1, 2]
    assert (folder / snapshot_name(2)).stat().st_size == size


def test_a_full_disk_mid_read_ends_the_export_at_once(db: psycopg.Connection, pg_dsn: str, folder: Path) -> None:
    # 64 KiB is reached after a few thousand of the 30,000 rows: the write fails while the COPY
    # still streams. The open COPY held the connection's lock, which the rollback then waited
    # for: the exporter hung for good, holding the folder's lock.
    insert_generated(db, 30_000, code_bytes=256)
    with ExporterProcess(pg_dsn, folder, preexec_fn=_file_size_limit(64 * 1024)) as exporter:
        assert exporter.wait(30) == EXIT_FOLDER, exporter.lines
    assert not any("30000 commands written" in line for line in exporter.lines)  # it failed mid-read
    assert exporter.last_line == f"avap-export: snapshot folder {folder}: File too large"
    assert list_snapshots(folder) == []
    assert [name for name in os.listdir(folder) if name.startswith(TEMP_PREFIX)] == []
    assert run_export(pg_dsn, folder) == EXIT_OK
