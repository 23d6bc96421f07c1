"""``avap-sync --from``: a worker pulls from object storage (a real SeaweedFS S3 gateway) with no server at all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avapdefs.client import cli
from avapdefs.folder import list_snapshots, snapshot_name
from avapdefs.remote import Remote
from tests.helpers import export_snapshot as _export
from tests.helpers import numbered_commands as _commands
from tests.objectstore import SeaweedS3

_WAIT_S = 30.0


def _publish(url: str, origin: Path) -> None:
    Remote(url, allow_http=True, timeout_s=10).publish(origin)


def test_sync_from_a_store_installs_the_announced_version(
    s3_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    origin, cache = tmp_path / "origin", tmp_path / "cache"
    published = _export(origin, 1, _commands(25))
    _publish(s3_url, origin)
    assert cli.sync_main(["--from", s3_url, "--dest", str(cache)]) == 0
    assert (cache / snapshot_name(1)).read_bytes() == published.read_bytes()
    assert "synced catalog version 1 (25 commands)" in capsys.readouterr().out
    assert cli.sync_main(["--from", s3_url, "--dest", str(cache)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_sync_from_an_empty_or_unreachable_store_is_one_line(
    s3_url: str, seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.sync_main(["--from", s3_url, "--dest", str(tmp_path / "cache")]) == cli.EXIT_SYNC_FAILED
    assert "nothing has been published here yet" in capsys.readouterr().err
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    args = ["--from", "s3://gone/catalog", "--dest", str(tmp_path / "cache"), "--timeout-s", "2"]
    assert cli.sync_main(args) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("avap-sync: cannot reach the store: s3://gone/catalog")
    assert cli.sync_main(["--from", "nosuchscheme://x", "--dest", str(tmp_path / "cache")]) == 2


def _wait_for(path: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _WAIT_S
    while not path.exists():
        assert process.poll() is None, "avap-sync --watch ended early"
        assert time.monotonic() < deadline, f"{path.name} did not appear within {_WAIT_S} s"
        time.sleep(0.05)  # polling for a file the child installs, bounded by the deadline


def test_sync_from_watch_follows_new_versions_until_sigterm(s3_url: str, seaweed: SeaweedS3, tmp_path: Path) -> None:
    origin, cache = tmp_path / "origin", tmp_path / "cache"
    _export(origin, 1, _commands(200))
    _publish(s3_url, origin)
    env = {**os.environ, **seaweed.env()}
    command = [sys.executable, "-c", "from avapdefs.client.cli import sync_main; raise SystemExit(sync_main())"]
    args = ["--from", s3_url, "--dest", str(cache), "--watch", "--poll-s", "0.1"]
    process = subprocess.Popen([*command, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(cache / snapshot_name(1), process)
        _export(origin, 2, _commands(200, changed=5), delta_from=1)
        _publish(s3_url, origin)
        _wait_for(cache / snapshot_name(2), process)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=_WAIT_S)
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].startswith("synced catalog version 1 (200 commands) from")
    assert lines[1].startswith("synced catalog version 2 (200 commands, as a delta) from")
    assert [version for version, _ in list_snapshots(cache)] == [1, 2]
