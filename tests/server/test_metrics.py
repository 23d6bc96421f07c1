"""Prometheus metrics: two serving processes counted together on the supervisor's one endpoint."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from avapdefs.folder import snapshot_name
from avapdefs.v1.definitions_pb2 import GetCommandRequest, SyncCatalogRequest, WatchCatalogRequest
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from server import cli
from tests.server.helpers import end_process, free_port, log_lines, server_process, wait_for_line, write_dated_snapshot

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
GET = frozenset({("grpc_type", "unary"), ("grpc_service", "avapdefs.v1.DefinitionService"),
                 ("grpc_method", "GetCommand")})  # fmt: skip
CALLS = 40


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (sample, have), value in samples.items() if sample == name and wanted <= have)


def _until(port: int, condition: Callable[[Samples], bool], timeout_s: float = 15.0) -> Samples:
    """Scrape until ``condition`` holds (the processes add their calls once a second), or fail."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = _scrape(port)
        if condition(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"the metrics never got there: {samples}")
        time.sleep(0.2)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, int, int, list[str], Iterator[str]]]:
    folder = tmp_path / "snapshots"
    write_dated_snapshot(folder, 1, age_s=100)
    port, metrics_port = free_port(), free_port()
    process = server_process("--snapshots", str(folder), "--port", str(port), "--processes", "2",
                             "--metrics-port", str(metrics_port))  # fmt: skip
    seen: list[str] = []
    try:
        lines = log_lines(process)
        wait_for_line(lines, f"serving metrics on http://127.0.0.1:{metrics_port}/metrics", seen)
        wait_for_line(lines, "serving catalog version 1", seen)
        yield folder, port, metrics_port, seen, lines
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        end_process(process)


def _call_each_process(port: int) -> None:
    # A new channel is a new connection, which the kernel may give to either process.
    for _ in range(CALLS // 4):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = DefinitionServiceStub(channel)
            for _ in range(4):
                stub.GetCommand(GetCommandRequest(name="cmd.001"), timeout=5, wait_for_ready=True)


def test_calls_versions_syncs_watches_and_refusals_are_counted_over_both_processes(
    served: tuple[Path, int, int, list[str], Iterator[str]],
) -> None:
    folder, port, metrics_port, _, _ = served
    _call_each_process(port)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = DefinitionServiceStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.GetCommand(GetCommandRequest(name="no.such"), timeout=5)
        synced = sum(message.ByteSize() for message in stub.SyncCatalog(SyncCatalogRequest(), timeout=10))
        watch = stub.WatchCatalog(WatchCatalogRequest(have_version=0), timeout=30)
        next(watch)
        samples = _until(metrics_port, lambda s: _value(s, "grpc_server_handled_total", grpc_code="OK") >= CALLS + 1)
        assert _value(samples, "grpc_server_handled_total", grpc_method="GetCommand", grpc_code="OK") == CALLS
        assert _value(samples, "grpc_server_handled_total", grpc_method="GetCommand", grpc_code="NOT_FOUND") == 1
        assert _value(samples, "grpc_server_handling_seconds_count", **dict(GET)) == CALLS + 1
        assert _value(samples, "grpc_server_handling_seconds_bucket", **dict(GET), le="+Inf") == CALLS + 1
        assert 0 < _value(samples, "grpc_server_handling_seconds_sum", **dict(GET)) < CALLS
        assert _value(samples, "avap_sync_bytes_total", kind="full") == synced
        assert _value(samples, "avap_syncs_total", kind="full") == 1
        assert _value(samples, "avap_watch_streams") == 1
        assert _value(samples, "avap_snapshot_load_seconds_count") == 2  # one load in each process
        assert 100 <= _value(samples, "avap_snapshot_age_seconds") < 200
        assert {value for (name, _), value in samples.items() if name == "avap_snapshot_version"} == {1.0}
        watch.cancel()
    _until(metrics_port, lambda s: _value(s, "avap_watch_streams") == 0)

    (folder / snapshot_name(5)).write_bytes(b"AVAPSNAP but not one")  # refused by each process, once
    write_dated_snapshot(folder, 2, age_s=0)
    samples = _until(metrics_port, lambda s: _value(s, "avap_snapshot_swap_seconds_count") == 2)
    assert {value for (name, _), value in samples.items() if name == "avap_snapshot_version"} == {2.0}
    assert _value(samples, "avap_refused_files_total") == 2
    assert _value(samples, "avap_snapshot_age_seconds") < 100
    assert 0 <= _value(samples, "avap_snapshot_swap_seconds_sum") < 30


def test_a_restarted_process_is_counted_and_its_calls_stay_counted(
    served: tuple[Path, int, int, list[str], Iterator[str]],
) -> None:
    _, port, metrics_port, seen, lines = served
    _call_each_process(port)
    before = _until(metrics_port, lambda s: _value(s, "grpc_server_handled_total") >= CALLS)
    pid = int(next(line for line in seen if "server process 1 started" in line).split("pid ")[1].split(",")[0])
    os.kill(pid, signal.SIGKILL)
    wait_for_line(lines, "server process 1 is back", seen)
    after = _until(metrics_port, lambda s: _value(s, "avap_server_process_restarts_total") == 1)
    # A counter never goes back: the dead process's calls stay in the sum.
    assert _value(after, "grpc_server_handled_total") >= _value(before, "grpc_server_handled_total") == CALLS
    assert len([key for key in after if key[0] == "avap_snapshot_version"]) == 2  # the dead one's gauge is gone


def test_metrics_are_off_by_default_and_a_bad_or_busy_port_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AVAP_METRICS_PORT", "abc")
    assert cli.main([]) == 2
    assert capsys.readouterr().err == "avap-server: AVAP_METRICS_PORT='abc': not a whole number: 'abc'\n"
    monkeypatch.delenv("AVAP_METRICS_PORT")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        assert cli.main(["--port", "0", "--metrics-port", str(busy.getsockname()[1])]) == 4
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("cannot serve metrics on 127.0.0.1:"), errors
