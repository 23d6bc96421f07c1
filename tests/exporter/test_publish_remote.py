"""``avap-export --publish``: after the local publish, the version goes to object storage (a real SeaweedFS)."""

from __future__ import annotations

import os
from pathlib import Path

import obstore
import psycopg
import pytest
from obstore.store import from_url

from avapdefs.folder import delta_name, snapshot_name
from avapdefs.remote import ANNOUNCEMENT_KEY, Remote
from exporter import cli
from tests.exporter.helpers import insert_rows, row, run_export


def _keys(url: str) -> list[str]:
    return sorted(meta["path"] for meta in obstore.list(from_url(url, client_options={"allow_http": True})).collect())


def test_each_run_publishes_to_the_store_and_unchanged_runs_upload_nothing(
    db: psycopg.Connection, pg_dsn: str, folder: Path, s3_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    insert_rows(db, [row(f"cmd{i}") for i in range(20)])
    assert run_export(pg_dsn, folder, "--publish", s3_url) == 0
    assert f"announced version 1 in {s3_url} (1 object uploaded)" in capsys.readouterr().out
    assert run_export(pg_dsn, folder, "--publish", s3_url) == 0
    assert f"{s3_url} already announces version 1" in capsys.readouterr().out

    db.execute("UPDATE obex_dapl_functions SET code = 'changed' WHERE name = 'cmd3'")
    db.commit()
    assert run_export(pg_dsn, folder, "--publish", s3_url) == 0
    assert "announced version 2" in capsys.readouterr().out
    assert _keys(s3_url) == sorted([ANNOUNCEMENT_KEY, snapshot_name(1), snapshot_name(2), delta_name(1, 2)])
    # A worker anywhere gets exactly the exporter's file, rebuilt from the delta.
    cache = tmp_path / "cache"
    Remote(s3_url, allow_http=True).pull(cache)
    db.execute("UPDATE obex_dapl_functions SET code = 'changed again' WHERE name = 'cmd4'")
    db.commit()
    assert run_export(pg_dsn, folder, "--publish", s3_url) == 0
    pulled = Remote(s3_url, allow_http=True).pull(cache)
    assert pulled.delta and pulled.installed is not None
    assert pulled.installed.read_bytes() == (folder / snapshot_name(3)).read_bytes()


def test_an_unreachable_store_publishes_locally_and_the_next_run_completes_it(
    db: psycopg.Connection,
    pg_dsn: str,
    folder: Path,
    s3_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    insert_rows(db, [row("addVar"), row("if")])
    real_endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    assert run_export(pg_dsn, folder, "--publish", s3_url) == cli.EXIT_STORE
    err = capsys.readouterr().err
    assert "published locally only (the next run completes it)" in err and len(err.strip().splitlines()) == 1
    assert (folder / snapshot_name(1)).exists()
    monkeypatch.setenv("AWS_ENDPOINT_URL", real_endpoint)  # the store is back
    assert run_export(pg_dsn, folder, "--publish", s3_url) == 0  # unchanged table, but the store catches up
    assert "announced version 1" in capsys.readouterr().out
    announcement, _ = Remote(s3_url, allow_http=True).read_announcement()
    assert announcement is not None and announcement.version == 1


def test_a_bad_store_url_is_refused_before_any_work(
    pg_dsn: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_export(pg_dsn, folder, "--publish", "nosuchscheme://bucket") == cli.EXIT_USAGE
    assert "not a store URL" in capsys.readouterr().err
    assert not folder.exists() or not list(folder.iterdir())
