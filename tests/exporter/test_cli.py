"""The command line: settings precedence (flag > AVAP_* variable > default), exit codes, help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from avapdefs.folder import list_snapshots
from exporter import cli
from exporter.cli import EXIT_BAD_SNAPSHOT, EXIT_OK, EXIT_USAGE, main
from tests.exporter.helpers import insert_rows, row

_ENV = (
    "AVAP_PG_DSN", "AVAP_SNAPSHOTS", "AVAP_EXPORT_KEEP", "AVAP_EXPORT_LEVEL", "AVAP_EXPORT_ALLOW_EMPTY",
    "AVAP_EXPORT_TABLE", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGSERVICE",
)  # fmt: skip


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)


def test_environment_supplies_what_flags_leave_out(
    db: psycopg.Connection, pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert_rows(db, [row("addVar")])
    monkeypatch.setenv("AVAP_PG_DSN", pg_dsn)
    monkeypatch.setenv("AVAP_SNAPSHOTS", str(tmp_path / "from-env"))
    assert main([]) == EXIT_OK
    assert [v for v, _ in list_snapshots(tmp_path / "from-env")] == [1]


def test_flags_win_over_the_environment(
    db: psycopg.Connection, pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert_rows(db, [row("addVar")])
    monkeypatch.setenv("AVAP_PG_DSN", "host=/nonexistent port=1")
    monkeypatch.setenv("AVAP_SNAPSHOTS", str(tmp_path / "from-env"))
    assert main(["--dsn", pg_dsn, "--snapshots", str(tmp_path / "from-flag")]) == EXIT_OK
    assert list_snapshots(tmp_path / "from-flag") and not (tmp_path / "from-env").exists()


def test_libpq_variables_are_used_without_a_dsn(
    db: psycopg.Connection, pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert_rows(db, [row("addVar")])
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    for key, variable in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"), ("dbname", "PGDATABASE")):
        if params.get(key):
            monkeypatch.setenv(variable, str(params[key]))
    assert main(["--snapshots", str(tmp_path)]) == EXIT_OK


@pytest.mark.parametrize(
    ("variable", "value"),
    [("AVAP_EXPORT_KEEP", "ten"), ("AVAP_EXPORT_LEVEL", "99"), ("AVAP_EXPORT_ALLOW_EMPTY", "maybe")],
)
def test_a_bad_variable_is_a_usage_error_naming_it(
    variable: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["--snapshots", str(tmp_path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("level" in err or variable in err)


def test_unknown_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-such-flag"]) == EXIT_USAGE
    assert "usage: avap-export" in capsys.readouterr().err


def test_help_names_every_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == EXIT_OK
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for option in cli._EXPORT_OPTIONS:
        assert option.flag in text and option.env in text
    assert main(["inspect", "--help"]) == EXIT_OK
    assert main(["load-sample", "--help"]) == EXIT_OK


def test_inspect_of_a_missing_or_bad_file_exits_9(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "absent.avsnap")]) == EXIT_BAD_SNAPSHOT
    bad = tmp_path / "bad.avsnap"
    bad.write_bytes(b"not a snapshot at all")
    assert main(["inspect", str(bad)]) == EXIT_BAD_SNAPSHOT
    assert "bad magic" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "exporter", "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "avap-export" in done.stdout


def test_every_exit_code_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "exporter.md").read_text(encoding="utf-8")
    for name in dir(cli):
        if name.startswith("EXIT_"):
            assert f"| {getattr(cli, name)} |" in doc, f"{name} is missing from docs/exporter.md"
