"""The permissions of what the exporter publishes: 0644 by default whatever the umask, or ``--file-mode``."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from avapdefs.folder import list_deltas, list_snapshots
from exporter import unchanged
from exporter.cli import EXIT_OK, EXIT_USAGE
from tests.exporter.helpers import insert_rows, row, run_export


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under the umask it is parametrized with (restored afterwards)."""
    value: int = request.param
    old = os.umask(value)
    try:
        yield value
    finally:
        os.umask(old)


def _modes(folder: Path, *, target: int = 0) -> set[int]:
    """The permission bits of every snapshot and delta at or after version ``target``, and of the state file."""
    paths = [path for version, path in list_snapshots(folder) if version >= target]
    paths += [path for _, version, path in list_deltas(folder) if version >= target]
    paths.append(folder / unchanged.STATE_NAME)
    assert len(paths) >= 3  # a snapshot, a delta, the state
    return {stat.S_IMODE(path.stat().st_mode) for path in paths}


def _two_versions(db: psycopg.Connection, pg_dsn: str, folder: Path, *extra: str) -> None:
    insert_rows(db, [row("addVar"), row("if")])
    assert run_export(pg_dsn, folder, *extra) == EXIT_OK
    insert_rows(db, [row("else")])
    assert run_export(pg_dsn, folder, "--delta-max-percent", "100", *extra) == EXIT_OK


@pytest.mark.parametrize("umask", [0o077, 0o000, 0o022], indirect=True)
def test_published_files_are_0644_whatever_the_umask(
    db: psycopg.Connection, pg_dsn: str, folder: Path, umask: int
) -> None:
    _two_versions(db, pg_dsn, folder)
    assert _modes(folder) == {0o644}


@pytest.mark.parametrize("umask", [0o022], indirect=True)
def test_the_file_mode_is_chosen_by_flag_or_variable(
    db: psycopg.Connection, pg_dsn: str, folder: Path, umask: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _two_versions(db, pg_dsn, folder, "--file-mode", "0640")
    assert _modes(folder) == {0o640}
    monkeypatch.setenv("AVAP_EXPORT_FILE_MODE", "600")
    insert_rows(db, [row("end")])
    assert run_export(pg_dsn, folder, "--delta-max-percent", "100") == EXIT_OK
    assert _modes(folder, target=3) == {0o600}
    assert _modes(folder, target=2) == {0o600, 0o640}  # files once published are left as they are


@pytest.mark.parametrize("mode", ["0999", "rw-r--r--", "0200", "1777", "-1"])
def test_a_file_mode_that_is_not_a_readable_permission_is_a_usage_error(
    pg_dsn: str, folder: Path, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_export(pg_dsn, folder, "--file-mode", mode) == EXIT_USAGE
    assert "mode" in capsys.readouterr().err
