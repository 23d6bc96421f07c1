"""A run killed with SIGKILL, at any moment, leaves the folder valid and servable, and the next run succeeds."""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from avapdefs.folder import (
    DELTA_SUFFIX,
    SNAPSHOT_SUFFIX,
    TEMP_PREFIX,
    delta_name,
    list_deltas,
    list_snapshots,
    parse_version,
    read_header,
    read_newest,
    snapshot_name,
)
from avapdefs.format import delta
from avapdefs.format.reader import verify_file
from avapdefs.format.snapshot import read_file
from avapdefs.v1.definitions_pb2 import GetCatalogInfoRequest
from exporter import unchanged
from tests.exporter.helpers import ExporterProcess, insert_generated, run_export
from tests.server.helpers import running_server, stub_for

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


def test_ctrl_c_mid_read_ends_the_run_at_once_and_publishes_nothing(
    db: psycopg.Connection, pg_dsn: str, folder: Path
) -> None:
    # An interrupt while the COPY streams used to hang the run: the open COPY held the connection's
    # lock, which the rollback then waited for.
    insert_generated(db, ROWS, code_bytes=256)
    with ExporterProcess(pg_dsn, folder) as exporter:
        assert exporter.wait_for("10000 commands written", 30), exporter.lines
        exporter.process.send_signal(signal.SIGINT)
        assert exporter.wait(20) == 130, exporter.lines
    assert exporter.last_line == "avap-export: interrupted; nothing published"
    assert list_snapshots(folder) == []
    assert [p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)] == []


# The campaign: many kills at seeded random moments of the write, the rename and the deltas.
CAMPAIGN_ROWS = 5_000
CAMPAIGN_KILLS = 30
CAMPAIGN_SEED = 20_261_130
CAMPAIGN_BUDGET_S = 60.0  # past it no new kill starts, once MIN_KILLS are done
MIN_KILLS = 20
DELTAS = 3


def _edit(db: psycopg.Connection, rng: random.Random) -> None:
    names = [f"cmd.{rng.randint(1, CAMPAIGN_ROWS):07d}" for _ in range(2)]
    db.execute("UPDATE obex_dapl_functions SET code = code || '#' WHERE name = ANY(%s)", [names])
    db.commit()


def _check_folder(folder: Path, checked: set[str]) -> None:
    """Every file under a snapshot or delta name is whole and what its name says; the folder serves its newest."""
    for name in sorted(os.listdir(folder)):
        version = parse_version(name)
        if name in checked or (version is None and not name.endswith(DELTA_SUFFIX)):
            continue
        if version is not None:
            assert verify_file(folder / name).version == version, name  # raises on a partial file
        else:
            made = delta.decode_delta((folder / name).read_bytes())  # raises on a partial file
            assert name == delta_name(made.base_version, made.target.catalog_version)
            target = read_header(folder / snapshot_name(made.target.catalog_version))
            assert made.target.content_hash == target.content_hash, name
        checked.add(name)
    versions = [version for version, _ in list_snapshots(folder)]
    if versions:
        assert read_newest(folder).snapshot.info.version == versions[-1]  # what a server would serve
    if (folder / unchanged.STATE_NAME).exists():
        assert unchanged.read_state(folder) is not None


def _phase(folder: Path, versions_before: list[int]) -> str:
    """Where a kill struck, told from what it left in the folder."""
    temps = [name for name in os.listdir(folder) if name.startswith(TEMP_PREFIX)]
    if any(SNAPSHOT_SUFFIX in name for name in temps):
        return "writing the snapshot"
    if any(DELTA_SUFFIX in name for name in temps):
        return "writing a delta"
    versions = [version for version, _ in list_snapshots(folder)]
    if versions == versions_before:
        return "before the snapshot's temp file"
    bases = [version for version in versions if version < versions[-1]][-DELTAS:]
    made = {base for base, target, _ in list_deltas(folder) if target == versions[-1]}
    return "published, deltas missing" if made < set(bases) else "after the deltas"


def test_sigkill_at_random_moments_never_shows_a_partial_file(
    db: psycopg.Connection, pg_dsn: str, folder: Path
) -> None:
    rng = random.Random(CAMPAIGN_SEED)
    insert_generated(db, CAMPAIGN_ROWS, code_bytes=256)
    assert run_export(pg_dsn, folder) == 0
    checked: set[str] = set()
    # One whole run, timed from its "writing version" line to its end: the span the kills are drawn from.
    _edit(db, rng)
    with ExporterProcess(pg_dsn, folder) as exporter:
        assert exporter.wait_for("writing version", 30)
        started = time.monotonic()
        assert exporter.wait(60) == 0
        span_s = time.monotonic() - started
    _check_folder(folder, checked)
    phases: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + CAMPAIGN_BUDGET_S
    for kill in range(CAMPAIGN_KILLS):
        if kill >= MIN_KILLS and time.monotonic() > deadline:
            break
        _edit(db, rng)
        versions_before = [version for version, _ in list_snapshots(folder)]
        with ExporterProcess(pg_dsn, folder) as exporter:
            assert exporter.wait_for("writing version", 30), exporter.lines
            try:
                exporter.wait(rng.uniform(0, span_s))  # the moment to strike; the run may end first
            except subprocess.TimeoutExpired:
                exporter.kill()
        phases[_phase(folder, versions_before)] += 1
        _check_folder(folder, checked)
    print(f"{sum(phases.values())} kills (seed {CAMPAIGN_SEED}, span {span_s:.2f} s): {dict(phases)}")
    assert phases["writing the snapshot"] and phases["published, deltas missing"], phases
    # The next run removes the temp files, publishes, and leaves the newest version all its deltas.
    assert run_export(pg_dsn, folder) == 0
    assert [name for name in os.listdir(folder) if name.startswith(TEMP_PREFIX)] == []
    _check_folder(folder, checked)
    assert _phase(folder, []) == "after the deltas"
    newest = read_newest(folder).snapshot.info.version
    with running_server(folder) as server, stub_for(server) as stub:
        assert stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=10).version == newest
