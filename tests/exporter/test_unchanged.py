"""The cron case: an unchanged table is told from the rows' digest, never from a hint alone."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from avapdefs.errors import CorruptSnapshotError
from avapdefs.folder import list_snapshots, snapshot_name
from avapdefs.format import snapshot, wire
from exporter import unchanged
from exporter.source import connect, open_source
from tests.exporter.helpers import insert_rows, row, run_export

_CHECKED = "its file verifies: unchanged"


def _counters(dsn: str) -> tuple[int, ...]:
    with (
        connect(dsn, connect_timeout_s=5) as conn,
        open_source(conn, table="obex_dapl_functions", bytecode_table="avap_bytecode") as source,
    ):
        return source.write_counters()


def _versions(folder: Path) -> list[int]:
    return [version for version, _ in list_snapshots(folder)]


def test_an_unchanged_table_is_told_from_its_digest(
    db: psycopg.Connection, pg_dsn: str, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    insert_rows(db, [row("addVar"), row("if")])
    assert run_export(pg_dsn, folder) == 0
    state = unchanged.read_state(folder)
    assert state is not None and state.version == 1
    assert state.content_hash == snapshot.read_file(folder / snapshot_name(1)).info.content_hash
    with caplog.at_level(logging.INFO, logger="exporter.unchanged"):
        assert run_export(pg_dsn, folder) == 0
    assert _CHECKED in caplog.text
    assert _versions(folder) == [1]


def _hide_the_writes(folder: Path, dsn: str) -> None:
    """Record the tables' write counters as they are now, as if the last export had seen every write."""
    state = unchanged.read_state(folder)
    assert state is not None
    unchanged.write_state(folder, replace(state, write_counters=_counters(dsn)))


def test_a_change_the_write_counters_missed_is_still_found(db: psycopg.Connection, pg_dsn: str, folder: Path) -> None:
    insert_rows(db, [row("addVar"), row("if")])
    assert run_export(pg_dsn, folder) == 0
    db.execute("UPDATE obex_dapl_functions SET description = 'changed' WHERE name = 'if'")
    db.commit()
    # As if the statistics had not caught up (or been reset): only the digest can tell.
    _hide_the_writes(folder, pg_dsn)
    assert run_export(pg_dsn, folder) == 0
    assert _versions(folder) == [1, 2]
    commands = {c.name: c for c in snapshot.read_file(folder / snapshot_name(2)).catalog().commands}
    assert commands["if"].description == "changed"


def test_a_bytecode_change_is_found(db: psycopg.Connection, pg_dsn: str, folder: Path) -> None:
    insert_rows(db, [row("addVar")])
    assert run_export(pg_dsn, folder) == 0
    db.execute("INSERT INTO avap_bytecode (command_name, bytecode, version) VALUES ('addVar', '\\x01', 1)")
    db.commit()
    _hide_the_writes(folder, pg_dsn)
    assert run_export(pg_dsn, folder) == 0
    assert _versions(folder) == [1, 2]


def test_written_tables_are_exported_without_the_check(
    db: psycopg.Connection, pg_dsn: str, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    insert_rows(db, [row("addVar")])
    assert run_export(pg_dsn, folder) == 0
    before = _counters(pg_dsn)
    db.execute("UPDATE obex_dapl_functions SET code = code")  # a write that changes nothing
    db.commit()
    # An idle session publishes its counters only after 10 s unless told to at once (PostgreSQL 15+).
    db.execute("SELECT pg_stat_force_next_flush()")
    db.commit()
    deadline = time.monotonic() + 10
    while _counters(pg_dsn) == before:  # PostgreSQL publishes its counters within about a second
        assert time.monotonic() < deadline, "the write counters did not move"
        time.sleep(0.1)
    with caplog.at_level(logging.INFO, logger="exporter"):
        assert run_export(pg_dsn, folder) == 0
    assert "were written since version 1" in caplog.text
    assert _CHECKED not in caplog.text
    assert _versions(folder) == [1]  # the content hash still finds it unchanged, the long way


def test_another_signing_key_changes_the_digest(db: psycopg.Connection, pg_dsn: str, folder: Path) -> None:
    insert_rows(db, [row("addVar")])
    with (
        connect(pg_dsn, connect_timeout_s=5) as conn,
        open_source(conn, table="obex_dapl_functions", bytecode_table="avap_bytecode") as source,
    ):
        stream = source.drain()
        digests = {unchanged.source_digest(source, stream, key) for key in (None, b"a", b"b")}
        again = unchanged.source_digest(source, source.drain(), None)
    assert len(digests) == 3
    assert again in digests


@pytest.mark.parametrize("text", ["garbage", '{"version": 1}', ""])
def test_an_unreadable_state_is_ignored_and_rewritten(
    db: psycopg.Connection, pg_dsn: str, folder: Path, text: str
) -> None:
    insert_rows(db, [row("addVar")])
    assert run_export(pg_dsn, folder) == 0
    (folder / unchanged.STATE_NAME).write_text(text)
    assert run_export(pg_dsn, folder) == 0
    assert _versions(folder) == [1]
    assert unchanged.read_state(folder) is not None


def test_a_state_about_an_older_version_is_not_used(
    db: psycopg.Connection, pg_dsn: str, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    insert_rows(db, [row("addVar")])
    assert run_export(pg_dsn, folder) == 0
    state = unchanged.read_state(folder)
    insert_rows(db, [row("if")])
    assert run_export(pg_dsn, folder) == 0
    assert state is not None
    unchanged.write_state(folder, replace(state, write_counters=_counters(pg_dsn)))  # about version 1
    with caplog.at_level(logging.INFO, logger="exporter.unchanged"):
        assert run_export(pg_dsn, folder) == 0
    assert _CHECKED not in caplog.text
    assert _versions(folder) == [1, 2]


def test_the_entry_counter_of_the_verification_counts_in_any_cut() -> None:
    # wire.EntryCounter lets verify_file (run by every unchanged check) count without copying commands.
    bodies = [b"x" * size for size in (0, 1, 127, 128, 300, 16_383, 16_384, 70_000)]
    payload = b"".join(wire.encode_entry(body) for body in bodies)
    for size in (1, 2, 3, 5, 11, 128, 1000, len(payload)):
        counter = wire.EntryCounter()
        for start in range(0, len(payload), size):
            counter.feed(payload[start : start + size])
        assert counter.finish() == len(bodies)
    cut = wire.EntryCounter()
    cut.feed(payload[:-1])
    with pytest.raises(CorruptSnapshotError, match="past the end"):
        cut.finish()
    with pytest.raises(CorruptSnapshotError, match="unexpected field tag"):
        wire.EntryCounter().feed(b"\x12\x00")
