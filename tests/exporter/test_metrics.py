"""``--metrics-textfile``: after each run, its metrics in node-exporter's textfile format, replaced atomically."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import psycopg
import pytest

from exporter.cli import EXIT_DATABASE, EXIT_OK, EXIT_STORE, EXIT_USAGE, main
from tests.exporter.helpers import insert_generated, read_textfile, run_export

DOWN = "host=/nonexistent port=1"  # a database that cannot be reached: exit 3 at once


def test_the_textfile_tells_each_run_a_publish_an_unchanged_run_and_a_failure(
    db: psycopg.Connection, pg_dsn: str, folder: Path, tmp_path: Path
) -> None:
    textfile = tmp_path / "avap_export.prom"
    store = f"file://{tmp_path / 'store'}"
    (tmp_path / "store").mkdir()
    extra = ("--metrics-textfile", str(textfile), "--publish", store)

    assert run_export(DOWN, folder, *extra) == EXIT_DATABASE  # the first run of all fails
    first = read_textfile(textfile)
    assert first["avap_export_last_run_exit_code"] == EXIT_DATABASE
    assert first["avap_export_last_success_timestamp_seconds"] == 0, "none known"
    assert "avap_export_catalog_version" not in first and first["avap_export_last_run_store_success"] == 0

    insert_generated(db, 200, code_bytes=200)
    before = time.time()
    assert run_export(pg_dsn, folder, *extra) == EXIT_OK
    published = read_textfile(textfile)
    assert published["avap_export_last_run_exit_code"] == EXIT_OK
    assert published["avap_export_last_run_published"] == 1
    assert published["avap_export_catalog_version"] == 1 and published["avap_export_catalog_commands"] == 200
    assert published["avap_export_last_run_deltas_written"] == 0  # nothing to make one from
    assert published["avap_export_last_run_store_success"] == 1
    assert before <= published["avap_export_last_run_timestamp_seconds"] <= time.time()
    assert (
        published["avap_export_last_success_timestamp_seconds"] == published["avap_export_last_run_timestamp_seconds"]
    )
    assert 0 < published["avap_export_last_run_duration_seconds"] < time.time() - before

    db.execute("UPDATE obex_dapl_functions SET code = 'changed' WHERE name = 'cmd.0000007'")
    db.commit()
    assert run_export(pg_dsn, folder, *extra) == EXIT_OK
    changed = read_textfile(textfile)
    assert changed["avap_export_catalog_version"] == 2 and changed["avap_export_last_run_deltas_written"] == 1

    assert run_export(pg_dsn, folder, *extra) == EXIT_OK
    unchanged = read_textfile(textfile)
    assert unchanged["avap_export_last_run_published"] == 0 and unchanged["avap_export_last_run_exit_code"] == 0
    assert unchanged["avap_export_catalog_version"] == 2 and unchanged["avap_export_last_run_deltas_written"] == 0
    assert (
        unchanged["avap_export_last_success_timestamp_seconds"] > changed["avap_export_last_success_timestamp_seconds"]
    )

    assert run_export(DOWN, folder, *extra) == EXIT_DATABASE
    failed = read_textfile(textfile)
    assert failed["avap_export_last_run_exit_code"] == EXIT_DATABASE
    assert failed["avap_export_last_run_published"] == 0 and failed["avap_export_last_run_store_success"] == 0
    last_success = unchanged["avap_export_last_success_timestamp_seconds"]
    assert failed["avap_export_last_success_timestamp_seconds"] == last_success, "carried over"
    assert failed["avap_export_last_run_timestamp_seconds"] > last_success
    assert failed["avap_export_catalog_version"] == 2 and failed["avap_export_catalog_commands"] == 200
    assert sorted(path.name for path in tmp_path.iterdir() if path.is_file()) == ["avap_export.prom"], "no temp file"


def test_a_store_that_fails_is_exit_10_and_store_success_0(
    db: psycopg.Connection, pg_dsn: str, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert_generated(db, 3)
    textfile = tmp_path / "avap_export.prom"
    unreachable = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "avap", "AWS_SECRET_ACCESS_KEY": "x"}
    for name, value in {**unreachable, "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)  # nothing listens on port 9: the store cannot be reached
    assert run_export(pg_dsn, folder, "--metrics-textfile", str(textfile), "--publish", "s3://avap/c") == EXIT_STORE
    values = read_textfile(textfile)
    assert values["avap_export_last_run_exit_code"] == EXIT_STORE
    assert values["avap_export_last_run_published"] == 1, "published locally"
    assert values["avap_export_last_run_store_success"] == 0
    assert values["avap_export_last_success_timestamp_seconds"] == 0


def test_a_textfile_that_does_not_parse_carries_nothing(tmp_path: Path) -> None:
    textfile = tmp_path / "avap_export.prom"
    textfile.write_text("avap_export_last_success_timestamp_seconds not-a-number\n")
    assert run_export(DOWN, tmp_path / "snapshots", "--metrics-textfile", str(textfile)) == EXIT_DATABASE
    values = read_textfile(textfile)
    assert values["avap_export_last_success_timestamp_seconds"] == 0
    assert "avap_export_last_run_store_success" not in values, "only with --publish"


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--every", "soon"], {}, "--every"),
        (["--every", "0"], {}, "--every"),
        ([], {"AVAP_EXPORT_EVERY": "-5m"}, "AVAP_EXPORT_EVERY"),
        (["--metrics-textfile", "metrics.txt"], {}, ".prom"),
        (["--metrics-textfile", "/nonexistent/avap.prom"], {}, "does not exist"),
        ([], {"AVAP_EXPORT_METRICS_TEXTFILE": "x.json"}, "AVAP_EXPORT_METRICS_TEXTFILE"),
    ],
)
def test_a_bad_schedule_or_textfile_is_one_line_and_exit_2(
    argv: list[str],
    env: dict[str, str],
    named: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["--dsn", DOWN, "--snapshots", str(tmp_path / "snapshots"), *argv]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert named in err and err.strip().splitlines()[-1].startswith(("avap-export: ", "avap-export: error:"))
    assert not (tmp_path / "snapshots").exists(), "refused before any work"


def test_the_textfile_gets_the_file_mode_whatever_the_umask(tmp_path: Path) -> None:
    textfile = tmp_path / "avap_export.prom"
    previous = os.umask(0o077)  # cron's, say: node-exporter, another user, could read nothing made under it
    try:
        assert run_export(DOWN, tmp_path / "snapshots", "--metrics-textfile", str(textfile)) == EXIT_DATABASE
        assert stat.S_IMODE(textfile.stat().st_mode) == 0o644
        assert run_export(DOWN, tmp_path / "snapshots", "--metrics-textfile", str(textfile), "--file-mode", "0640") == 3
        assert stat.S_IMODE(textfile.stat().st_mode) == 0o640
    finally:
        os.umask(previous)
