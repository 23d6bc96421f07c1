"""``avap-server --source``: servers pull the announced version from object storage (a real SeaweedFS S3 gateway)."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import grpc
import pytest

from avapdefs.folder import SOURCE_STATE_NAME, list_snapshots, write_source_state
from avapdefs.remote import Remote
from avapdefs.v1.definitions_pb2 import CatalogInfo, GetCatalogInfoRequest, GetCommandRequest
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from server.service import StoreStatusFile
from tests.helpers import export_snapshot, numbered_commands
from tests.objectstore import SeaweedS3
from tests.server.helpers import free_port, log_lines, server_process, wait_for_line

_STOP_S = 30


def _publish(url: str, origin: Path) -> None:
    Remote(url, allow_http=True, timeout_s=10).publish(origin)


def test_servers_pull_from_the_store_once_for_all_processes_and_follow_it(s3_url: str, tmp_path: Path) -> None:
    origin, cache = tmp_path / "origin", tmp_path / "cache"
    export_snapshot(origin, 1, numbered_commands(100))
    _publish(s3_url, origin)
    port, metrics_port = free_port(), free_port()
    args = ["--source", s3_url, "--source-poll", "0.2", "--snapshots", str(cache), "--port", str(port),
            "--metrics-port", str(metrics_port)]  # fmt: skip
    process = server_process(*args, "--processes", "2", "--log-level", "info")
    seen: list[str] = []
    lines = log_lines(process)
    try:
        wait_for_line(lines, r"serving catalog version 1 .* with 2 process", seen)
        export_snapshot(origin, 2, numbered_commands(100, changed=3), delta_from=1)
        _publish(s3_url, origin)
        wait_for_line(lines, r"installed catalog version 2 .* from a delta", seen)
        wait_for_line(lines, r"process [01]\].*loaded catalog version 2", seen)
        wait_for_line(lines, r"process [01]\].*loaded catalog version 2", seen)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = DefinitionServiceStub(channel)
            info = stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=5)
            assert info.version == 2
            assert (info.store.url, info.store.reachable, info.store.announced_version) == (s3_url, True, 2)
            assert info.store.last_success_unix_ms > 0 and info.store.last_error == ""
            assert stub.GetCommand(GetCommandRequest(name="cmd0003"), timeout=5).command.code.endswith("# changed")
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert "avap_source_up 1.0" in scraped and "avap_source_announced_version 2.0" in scraped
    finally:
        process.send_signal(signal.SIGTERM)
        _, _ = process.communicate(timeout=_STOP_S)
    assert process.returncode == 0
    # One download per version for the whole group: the supervisor pulls, the processes read the folder.
    assert sum("installed catalog version" in line for line in seen) == 2
    assert [version for version, _ in list_snapshots(cache)] == [1, 2]


def test_a_server_boots_from_its_cache_while_the_store_is_down(
    s3_url: str, seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    origin, cache = tmp_path / "origin", tmp_path / "cache"
    export_snapshot(origin, 1, numbered_commands(10))
    _publish(s3_url, origin)
    Remote(s3_url, allow_http=True).pull(cache)  # an earlier run's copy
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the store is unreachable from now on
    args = ["--source", s3_url, "--snapshots", str(cache), "--port", "0", "--log-level", "info"]
    process = server_process(*args)
    seen: list[str] = []
    try:
        serving = wait_for_line(log_lines(process), r"serving catalog version 1 .* on 127\.0\.0\.1:(\d+)", seen)
        with grpc.insecure_channel(f"127.0.0.1:{serving.group(1)}") as channel:
            store = DefinitionServiceStub(channel).GetCatalogInfo(GetCatalogInfoRequest(), timeout=5).store
        assert store.url == s3_url and not store.reachable and "127.0.0.1:9" in store.last_error
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=_STOP_S)
    assert process.returncode == 0
    said = [line for line in seen if "cannot reach the store" in line]
    assert len(said) == 1 and "the folder keeps what it has" in said[0]


def test_an_unreachable_store_and_an_empty_cache_is_nothing_to_serve(
    s3_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    process = server_process("--source", s3_url, "--snapshots", str(tmp_path / "cache"), "--port", "0")
    _, err = process.communicate(timeout=_STOP_S)
    assert process.returncode == 3
    last = err.strip().splitlines()[-1]
    assert last.startswith("avap-server: ") and "nothing to serve" in last and s3_url in last


def test_source_needs_a_snapshots_folder_and_a_store_url(tmp_path: Path) -> None:
    process = server_process("--source", "s3://bucket/prefix", "--port", "0")
    _, err = process.communicate(timeout=_STOP_S)
    assert process.returncode == 2 and "--source needs --snapshots DIR" in err
    process = server_process("--source", "nosuchscheme://x", "--snapshots", str(tmp_path), "--port", "0")
    _, err = process.communicate(timeout=_STOP_S)
    assert process.returncode == 2 and "not a store URL" in err


@pytest.mark.parametrize(
    "text",
    ["not json", "[1, 2]", "{}", '{"url": 7}', '{"url": "s3://b/p", "announced_version": -1}', ""],
)
def test_a_foreign_source_record_reports_no_store_and_never_fails_the_call(tmp_path: Path, text: str) -> None:
    status = StoreStatusFile(tmp_path)
    assert status.current() == b""  # no record: no store
    (tmp_path / SOURCE_STATE_NAME).write_text(text)
    assert CatalogInfo.FromString(status.current()).HasField("store") is False


def test_a_source_record_is_read_again_when_it_changes(tmp_path: Path) -> None:
    status = StoreStatusFile(tmp_path)
    write_source_state(tmp_path, {"url": "s3://b/p", "reachable": True, "announced_version": 4})
    assert CatalogInfo.FromString(status.current()).store.announced_version == 4
    write_source_state(tmp_path, {"url": "s3://b/p", "reachable": False, "last_error": "down", "announced_version": 44})
    store = CatalogInfo.FromString(status.current()).store
    assert (store.reachable, store.last_error, store.announced_version) == (False, "down", 44)
