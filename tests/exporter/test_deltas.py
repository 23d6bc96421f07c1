"""Deltas: from earlier versions, verified, size-limited, pruned with their snapshots; missing ones backfilled."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import psycopg
import pytest

from avapdefs.folder import delta_name, list_deltas, list_snapshots, snapshot_name
from avapdefs.format import delta, snapshot
from exporter import unchanged
from exporter.cli import EXIT_BAD_SNAPSHOT, EXIT_OK, main
from tests.exporter.helpers import insert_generated, run_export

ROWS = 200


def _change(db: psycopg.Connection, *numbers: int) -> None:
    """Append to the code of the generated rows cmd.<number>: a real edit of a few commands."""
    names = [f"cmd.{number:07d}" for number in numbers]
    db.execute("UPDATE obex_dapl_functions SET code = code || '# edited' WHERE name = ANY(%s)", [names])
    db.commit()


def _pairs(folder: Path) -> list[tuple[int, int]]:
    return [(base, target) for base, target, _ in list_deltas(folder)]


def _rebuilt(folder: Path, base: int, target: int) -> bytes:
    """The snapshot a client rebuilds from ``base`` and the delta to ``target``."""
    made = delta.decode_delta((folder / delta_name(base, target)).read_bytes())
    out = io.BytesIO()
    delta.apply_delta_file(folder / snapshot_name(base), made, out)
    return out.getvalue()


def test_changed_table_gets_verified_deltas_from_the_previous_versions(
    db: psycopg.Connection, pg_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    insert_generated(db, ROWS)
    assert run_export(pg_dsn, folder) == EXIT_OK
    for version in range(2, 6):
        _change(db, version, 100 + version)
        assert run_export(pg_dsn, folder) == EXIT_OK
    assert "3 deltas" in capsys.readouterr().out.splitlines()[-1]
    assert [(base, 5) for base in (2, 3, 4)] == [pair for pair in _pairs(folder) if pair[1] == 5]
    assert (1, 5) not in _pairs(folder)  # only the 3 previous versions
    for base, target in _pairs(folder):
        # Same level, same header fields: the client's rebuilt file is the published one, byte for byte.
        assert _rebuilt(folder, base, target) == (folder / snapshot_name(target)).read_bytes()
    full = (folder / snapshot_name(5)).stat().st_size
    assert (folder / delta_name(4, 5)).stat().st_size < 0.5 * full


def test_deltas_zero_writes_none(db: psycopg.Connection, pg_dsn: str, folder: Path) -> None:
    insert_generated(db, ROWS)
    assert run_export(pg_dsn, folder, "--deltas", "0") == EXIT_OK
    _change(db, 1)
    assert run_export(pg_dsn, folder, "--deltas", "0") == EXIT_OK
    assert [version for version, _ in list_snapshots(folder)] == [1, 2]
    assert _pairs(folder) == []


def test_deltas_variable_and_negative_count(
    db: psycopg.Connection, pg_dsn: str, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert_generated(db, ROWS)
    assert run_export(pg_dsn, folder) == EXIT_OK
    _change(db, 1)
    monkeypatch.setenv("AVAP_DELTAS", "0")
    assert run_export(pg_dsn, folder) == EXIT_OK
    assert _pairs(folder) == []
    assert run_export(pg_dsn, folder, "--deltas", "-1") == 2


def test_delta_with_most_rows_changed_is_not_kept(
    db: psycopg.Connection, pg_dsn: str, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    insert_generated(db, ROWS)
    assert run_export(pg_dsn, folder) == EXIT_OK
    _change(db, *range(1, ROWS + 1, 2), *range(2, ROWS, 4))  # three rows in four
    with caplog.at_level(logging.INFO, logger="exporter.deltas"):
        assert run_export(pg_dsn, folder) == EXIT_OK
    assert [version for version, _ in list_snapshots(folder)] == [1, 2]
    assert _pairs(folder) == []
    assert [r.getMessage() for r in caplog.records if r.name == "exporter.deltas"] == [
        f"no delta from {snapshot_name(1)} to {snapshot_name(2)}: not under 50% of its "
        f"{(folder / snapshot_name(2)).stat().st_size} bytes"
    ]


def test_delta_max_percent_sets_the_threshold(db: psycopg.Connection, pg_dsn: str, folder: Path) -> None:
    insert_generated(db, ROWS)
    assert run_export(pg_dsn, folder) == EXIT_OK
    _change(db, 7)
    assert run_export(pg_dsn, folder, "--delta-max-percent", "0.5") == EXIT_OK
    assert _pairs(folder) == []  # one command in 200 is still more than 0.5% of the file
    _change(db, 8)
    assert run_export(pg_dsn, folder, "--delta-max-percent", "50") == EXIT_OK
    assert _pairs(folder) == [(1, 3), (2, 3)]


def test_retention_deletes_deltas_whose_snapshot_is_gone(db: psycopg.Connection, pg_dsn: str, folder: Path) -> None:
    insert_generated(db, ROWS)
    assert run_export(pg_dsn, folder, "--keep", "3") == EXIT_OK
    for version in range(2, 5):
        _change(db, version)
        assert run_export(pg_dsn, folder, "--keep", "3") == EXIT_OK
    assert [version for version, _ in list_snapshots(folder)] == [2, 3, 4]
    assert _pairs(folder) == [(2, 3), (2, 4), (3, 4)]
    _change(db, 5)
    assert run_export(pg_dsn, folder, "--keep", "1") == EXIT_OK
    assert [version for version, _ in list_snapshots(folder)] == [5]
    assert _pairs(folder) == []  # every base went, and no delta was made from a deleted version


def test_a_failed_delta_does_not_fail_the_export(
    db: psycopg.Connection, pg_dsn: str, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    insert_generated(db, ROWS)
    assert run_export(pg_dsn, folder) == EXIT_OK
    _change(db, 1)
    assert run_export(pg_dsn, folder) == EXIT_OK
    old = folder / snapshot_name(1)
    damaged = bytearray(old.read_bytes())
    damaged[-6] ^= 0x01  # inside the zstd frame: found only by reading the payload
    old.write_bytes(bytes(damaged))
    _change(db, 2)
    with caplog.at_level(logging.WARNING, logger="exporter.deltas"):
        assert run_export(pg_dsn, folder) == EXIT_OK
    assert [version for version, _ in list_snapshots(folder)] == [1, 2, 3]
    assert (2, 3) in _pairs(folder) and (1, 3) not in _pairs(folder)
    assert any(snapshot_name(1) in record.getMessage() for record in caplog.records)


def test_inspect_describes_a_delta(
    db: psycopg.Connection, pg_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    insert_generated(db, ROWS)
    assert run_export(pg_dsn, folder) == EXIT_OK
    _change(db, 3, 4)
    db.execute("DELETE FROM obex_dapl_functions WHERE name = 'cmd.0000009'")
    db.commit()
    assert run_export(pg_dsn, folder) == EXIT_OK
    capsys.readouterr()
    assert main(["inspect", str(folder / delta_name(1, 2))]) == EXIT_OK
    out = capsys.readouterr().out
    target = snapshot.read_file(folder / snapshot_name(2)).info
    assert "base version      1 (content hash" in out
    assert f"target version    2 (content hash {target.content_hash.hex()})" in out
    assert f"target commands   {ROWS - 1}" in out
    assert "removed           1" in out and "upserted          2" in out
    (folder / "bad.avdelta").write_bytes(delta.MAGIC + b"\0\1garbage")
    assert main(["inspect", str(folder / "bad.avdelta")]) == EXIT_BAD_SNAPSHOT


def _three_versions(db: psycopg.Connection, pg_dsn: str, folder: Path) -> None:
    insert_generated(db, ROWS)
    for version in (1, 2, 3):
        if version > 1:
            _change(db, version)
        assert run_export(pg_dsn, folder) == EXIT_OK
    assert _pairs(folder) == [(1, 2), (1, 3), (2, 3)]


def test_deltas_a_killed_run_left_unwritten_are_written_by_the_next_unchanged_run(
    db: psycopg.Connection, pg_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _three_versions(db, pg_dsn, folder)
    # What a run killed between its rename and its deltas leaves: version 3 without them.
    for base in (1, 2):
        (folder / delta_name(base, 3)).unlink()
    capsys.readouterr()
    assert run_export(pg_dsn, folder) == EXIT_OK
    assert capsys.readouterr().out.startswith("unchanged at version 3: 200 commands, 2 missing deltas written")
    assert _pairs(folder) == [(1, 2), (1, 3), (2, 3)]
    for base in (1, 2):
        assert _rebuilt(folder, base, 3) == (folder / snapshot_name(3)).read_bytes()
    assert run_export(pg_dsn, folder) == EXIT_OK
    assert "missing" not in capsys.readouterr().out  # nothing left to write


def test_deltas_are_written_when_the_run_was_killed_before_it_recorded_its_state(
    db: psycopg.Connection, pg_dsn: str, folder: Path
) -> None:
    insert_generated(db, ROWS)
    assert run_export(pg_dsn, folder) == EXIT_OK
    _change(db, 1)
    assert run_export(pg_dsn, folder) == EXIT_OK
    state_of_2 = (folder / unchanged.STATE_NAME).read_bytes()
    _change(db, 2)
    assert run_export(pg_dsn, folder) == EXIT_OK
    # Killed right after the rename of version 3: the state still speaks of version 2, and no delta leads to 3.
    (folder / unchanged.STATE_NAME).write_bytes(state_of_2)
    for base in (1, 2):
        (folder / delta_name(base, 3)).unlink()
    assert run_export(pg_dsn, folder) == EXIT_OK  # the long way: the same content hash, so unchanged
    assert [version for version, _ in list_snapshots(folder)] == [1, 2, 3]
    assert _pairs(folder) == [(1, 2), (1, 3), (2, 3)]
    state = unchanged.read_state(folder)
    assert state is not None and state.version == 3


def test_a_declined_delta_is_recorded_and_not_tried_again(
    db: psycopg.Connection, pg_dsn: str, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    insert_generated(db, ROWS)
    assert run_export(pg_dsn, folder) == EXIT_OK
    _change(db, *range(1, ROWS + 1, 2), *range(2, ROWS, 4))  # three rows in four: too large a delta
    assert run_export(pg_dsn, folder) == EXIT_OK
    state = unchanged.read_state(folder)
    assert state is not None and (state.version, state.declined_deltas) == (2, (1,))
    with caplog.at_level(logging.INFO, logger="exporter"):
        assert run_export(pg_dsn, folder) == EXIT_OK
        assert run_export(pg_dsn, folder, "--deltas", "2") == EXIT_OK
    assert "no delta from" not in caplog.text  # not made again to be refused again
    assert _pairs(folder) == []
    # A state written before declines were recorded reads as "none declined": one more try, then recorded.
    fields = json.loads((folder / unchanged.STATE_NAME).read_text())
    del fields["declined_deltas"]
    (folder / unchanged.STATE_NAME).write_text(json.dumps(fields))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="exporter"):
        assert run_export(pg_dsn, folder) == EXIT_OK
    assert f"no delta from {snapshot_name(1)}" in caplog.text
    state = unchanged.read_state(folder)
    assert state is not None and state.declined_deltas == (1,)
