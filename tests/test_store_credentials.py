"""The store options against a SeaweedFS that checks credentials: publish, pull and serve with a credentials
file; wrong credentials refused by each tool in one line; flags over variables; no secret in any output.

The store of this module accepts one identity only (``-s3.config``). Every
tool runs as a process of its own, with the standard variables pointing at
a port where nothing listens and holding other keys: so a run that works
took its endpoint from the flag and its keys from the file.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from avapdefs.client import cli as sync_cli
from avapdefs.folder import read_newest, snapshot_name
from avapdefs.remote import Remote
from avapdefs.v1.definitions_pb2 import GetCatalogInfoRequest, GetCommandRequest
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from exporter import cli as export_cli
from server import cli as server_cli
from tests.helpers import export_snapshot, numbered_commands
from tests.objectstore import Identity, SeaweedS3, seaweed_s3
from tests.server.helpers import free_port
from tests.server.process_log import ServerLog

_BUCKET = "avap-locked"
_RUN_S = 60
# The standard variables every tool here starts with: an endpoint where nothing listens, keys the store refuses.
_ENV_SECRET = f"env-secret-{secrets.token_hex(8)}"
_MISLEADING = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_ACCESS_KEY_ID": "env-key",
    "AWS_SECRET_ACCESS_KEY": _ENV_SECRET,
    "AWS_REGION": "us-east-1",
}
_SYNC = [sys.executable, "-c", "from avapdefs.client.cli import sync_main; raise SystemExit(sync_main())"]
_EXPORT = [sys.executable, "-m", "exporter"]


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A SeaweedFS of this module's own that serves only requests signed with its one identity."""
    identity = Identity(f"AKID{secrets.token_hex(6).upper()}", f"store-secret-{secrets.token_urlsafe(24)}")
    with seaweed_s3(tmp_path_factory.mktemp("seaweed-locked"), identity) as store:
        store.create_bucket(_BUCKET)
        yield store


@pytest.fixture
def env() -> dict[str, str]:
    """The environment of the tools' processes: this one's, less any AWS_* or AVAP_*, plus ``_MISLEADING``."""
    kept = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "AVAP_"))}
    return {**kept, **_MISLEADING}


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    return f"s3://{_BUCKET}/{request.node.name[:60]}"


def _credentials(folder: Path, identity: Identity, secret: str | None = None, name: str = "store.env") -> Path:
    path = folder / name
    secret_line = f"AWS_SECRET_ACCESS_KEY={secret or identity.secret_key}"
    path.write_text(f"# the bucket's credentials\nAWS_ACCESS_KEY_ID={identity.access_key}\n{secret_line}\n")
    path.chmod(0o600)
    return path


def _identity(store: SeaweedS3) -> Identity:
    assert store.identity is not None
    return store.identity


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=_RUN_S, check=False)


def _server(args: list[str], env: dict[str, str]) -> ServerLog:
    """``avap-server ARGS`` started with ``env``, its log read as it comes."""
    command = [sys.executable, "-m", "server", *args]
    return ServerLog(subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True))


def _served(log: ServerLog) -> int:
    return int(log.wait_for(r"serving catalog version 1 .* on 127\.0\.0\.1:(\d+)").group(1))


def test_publish_pull_and_serve_with_a_credentials_file_and_no_secret_in_any_output(
    locked: SeaweedS3, env: dict[str, str], url: str, pg_dsn: str, tmp_path: Path
) -> None:
    identity = _identity(locked)
    store = ["--store-endpoint", locked.endpoint, "--store-credentials", str(_credentials(tmp_path, identity))]
    origin, cache, served = tmp_path / "origin", tmp_path / "cache", tmp_path / "served"
    assert export_cli.main(["load-sample", "--dsn", pg_dsn]) == 0
    outputs: list[str] = []

    exported = _run([*_EXPORT, "--dsn", pg_dsn, "--snapshots", str(origin), "--publish", url, *store,
                     "--log-level", "debug"], env)  # fmt: skip
    outputs += [exported.stdout, exported.stderr]
    assert exported.returncode == 0, exported.stderr
    assert f"announced version 1 in {url} (1 object uploaded)" in exported.stdout

    synced = _run([*_SYNC, "--from", url, "--dest", str(cache), *store, "--log-level", "debug"], env)
    outputs += [synced.stdout, synced.stderr]
    assert synced.returncode == 0, synced.stderr
    assert (cache / snapshot_name(1)).read_bytes() == read_newest(origin).data

    metrics_port = free_port()
    args = ["--source", url, "--snapshots", str(served), "--port", "0", "--metrics-port", str(metrics_port), *store,
            "--log-level", "debug"]  # fmt: skip
    log = _server(args, env)
    try:
        port = _served(log)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = DefinitionServiceStub(channel)
            assert stub.GetCommand(GetCommandRequest(name="addVar"), timeout=5).command.name == "addVar"
            info = stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=5)
        assert (info.store.url, info.store.reachable, info.store.last_error) == (url, True, "")
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert "avap_source_up 1.0" in scraped
        outputs += [str(info), info.SerializeToString().decode("latin-1"), scraped]
    finally:
        assert log.stop() == 0
    outputs += log.lines
    helps = [export_cli._export_parser().format_help(), sync_cli._sync_parser().format_help(),
             server_cli._parser().format_help()]  # fmt: skip
    assert all("--store-credentials" in text for text in helps)
    everything = "".join(outputs + helps)
    assert "DEBUG" in everything and "installed catalog version 1" in everything  # the logs were read
    for secret in (identity.secret_key, _ENV_SECRET):
        assert secret not in everything


def test_wrong_credentials_are_one_line_naming_the_store_with_each_tools_exit_code(
    locked: SeaweedS3, env: dict[str, str], url: str, pg_dsn: str, tmp_path: Path
) -> None:
    identity = _identity(locked)
    wrong_secret = f"wrong-secret-{secrets.token_urlsafe(16)}"
    store = ["--store-endpoint", locked.endpoint,
             "--store-credentials", str(_credentials(tmp_path, identity, wrong_secret))]  # fmt: skip
    assert export_cli.main(["load-sample", "--dsn", pg_dsn]) == 0
    origin = tmp_path / "origin"

    exported = _run([*_EXPORT, "--dsn", pg_dsn, "--snapshots", str(origin), "--publish", url, *store], env)
    assert exported.returncode == export_cli.EXIT_STORE
    [line] = exported.stderr.splitlines()
    assert line.startswith(f"avap-export: {url}: reading announcement.json: refused by the store (403 Forbidden: ")
    assert "published locally only, and running again does not change that until the store accepts" in line
    assert (origin / snapshot_name(1)).exists()  # the local publication stands

    synced = _run([*_SYNC, "--from", url, "--dest", str(tmp_path / "cache"), *store], env)
    assert synced.returncode == 4 and synced.stdout == ""
    [line] = synced.stderr.splitlines()
    assert line.startswith(f"avap-sync: {url}: reading announcement.json: refused by the store (403 Forbidden: ")
    assert line.endswith("check the store's credentials (--store-credentials, or AWS_* and the like)")

    served = _run([sys.executable, "-m", "server", "--source", url, "--snapshots", str(tmp_path / "served"),
                   "--port", "0", *store], env)  # fmt: skip
    assert served.returncode == 3
    last = served.stderr.strip().splitlines()[-1]
    assert last.startswith("avap-server: ") and "nothing to serve" in last
    assert f"(and {url}: reading announcement.json: refused by the store (403 Forbidden: " in last

    everything = exported.stdout + exported.stderr + synced.stderr + served.stdout + served.stderr
    for secret in (wrong_secret, identity.secret_key, _ENV_SECRET):
        assert secret not in everything


def test_a_server_refused_by_its_store_serves_its_cache_and_says_why(
    locked: SeaweedS3, env: dict[str, str], url: str, tmp_path: Path
) -> None:
    identity = _identity(locked)
    origin, cache = tmp_path / "origin", tmp_path / "cache"
    export_snapshot(origin, 1, numbered_commands(20))
    export_snapshot(cache, 1, numbered_commands(20))  # an earlier run's copy
    wrong_secret = f"wrong-secret-{secrets.token_urlsafe(16)}"
    store = ["--store-endpoint", locked.endpoint,
             "--store-credentials", str(_credentials(tmp_path, identity, wrong_secret))]  # fmt: skip
    args = ["--source", url, "--snapshots", str(cache), "--port", "0", "--log-level", "debug", *store]
    log = _server(args, env)
    try:
        port = _served(log)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = DefinitionServiceStub(channel)
            assert stub.GetCommand(GetCommandRequest(name="cmd0003"), timeout=5).command.name == "cmd0003"
            status = stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=5).store
        assert status.url == url and "refused by the store (403 Forbidden: " in status.last_error
        assert wrong_secret not in str(status)
    finally:
        assert log.stop() == 0
    refused = [line for line in log.lines if "refused by the store" in line]
    assert len(refused) == 1 and "the folder keeps what it has" in refused[0]
    assert wrong_secret not in "".join(log.lines)


def test_the_flags_win_over_their_variables_and_the_file_over_the_standard_ones(
    locked: SeaweedS3, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    identity = _identity(locked)
    origin = tmp_path / "origin"
    export_snapshot(origin, 1, numbered_commands(20))
    config = {name: value for name, value in locked.env().items() if name != "AWS_ALLOW_HTTP"}
    Remote(url, allow_http=True, config=config).publish(origin)
    good = _credentials(tmp_path, identity)
    bad = _credentials(tmp_path, identity, f"wrong-secret-{secrets.token_urlsafe(16)}", name="bad.env")
    for name in [name for name in os.environ if name.startswith(("AWS_", "AVAP_"))]:
        monkeypatch.delenv(name)

    def sync(*flags: str) -> int:
        cache = tmp_path / f"cache-{secrets.token_hex(4)}"
        return sync_cli.sync_main(["--from", url, "--dest", str(cache), *flags])

    # The variables alone.
    monkeypatch.setenv("AVAP_STORE_ENDPOINT", locked.endpoint)
    monkeypatch.setenv("AVAP_STORE_CREDENTIALS", str(good))
    assert sync() == 0
    # Each flag over its variable: a dead endpoint and refused keys in the variables, good ones in the flags.
    monkeypatch.setenv("AVAP_STORE_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("AVAP_STORE_CREDENTIALS", str(bad))
    assert sync("--store-endpoint", locked.endpoint, "--store-credentials", str(good)) == 0
    assert sync("--store-endpoint", locked.endpoint) == 4  # the variable's file, with its wrong secret
    monkeypatch.delenv("AVAP_STORE_ENDPOINT")
    monkeypatch.delenv("AVAP_STORE_CREDENTIALS")
    # The standard variables alone still work, and a credentials file wins over them.
    for name, value in locked.env().items():
        monkeypatch.setenv(name, value)
    assert sync() == 0
    assert sync("--store-credentials", str(bad)) == 4
    capsys.readouterr()
