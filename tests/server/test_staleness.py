"""Staleness: GetCatalogInfo's snapshot_age_s, and --max-age turning the service's health NOT_SERVING (a pin never)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from avapdefs.options import duration_s
from avapdefs.v1.definitions_pb2 import GetCatalogInfoRequest, GetCommandRequest, WatchCatalogRequest
from server import cli, pin
from tests.server.helpers import (
    LogWaiter,
    health_status,
    live_server,
    running_server,
    stub_for,
    write_dated_snapshot,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HOUR_S = 3600.0
SERVICE = "avapdefs.v1.DefinitionService"  # readiness; "" (liveness) ignores staleness


def test_catalog_info_and_watch_report_the_snapshot_age(tmp_path: Path) -> None:
    folder = tmp_path / "snapshots"
    write_dated_snapshot(folder, 1, age_s=HOUR_S)
    with running_server(folder) as server, stub_for(server) as stub:
        before = time.time()
        info = stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=5)
        assert HOUR_S - 5 <= info.snapshot_age_s <= HOUR_S + (time.time() - before) + 60
        assert info.snapshot_age_s == pytest.approx(before - info.created_at_unix_ms / 1000, abs=30)
        watch = stub.WatchCatalog(WatchCatalogRequest(have_version=0), timeout=10)
        assert next(watch).catalog.snapshot_age_s >= HOUR_S - 5
        watch.cancel()
        # A later answer is older: the age is of now, not of the load.
        assert stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=5).snapshot_age_s >= info.snapshot_age_s


def test_a_stale_snapshot_is_not_serving_until_a_fresh_one_loads(tmp_path: Path) -> None:
    folder = tmp_path / "snapshots"
    write_dated_snapshot(folder, 1, age_s=HOUR_S)
    with live_server(folder, max_age_s=600.0) as (server, stub):
        assert health_status(server.port, SERVICE) == NOT_SERVING
        assert health_status(server.port) == SERVING  # the process works: a liveness probe must not restart it
        # Still answered: health steers load balancers, it does not refuse calls.
        assert stub.GetCommand(GetCommandRequest(name="cmd.001"), timeout=5).command.name == "cmd.001"
        assert any("over --max-age 600 s" in line for line in server.lines)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=30)  # type: ignore[attr-defined]
            assert next(watch).status == NOT_SERVING
            write_dated_snapshot(folder, 2, age_s=0)
            assert next(watch).status == SERVING  # within a second of the swap
            watch.cancel()
        assert health_status(server.port, SERVICE) == SERVING


def test_a_pinned_version_is_never_stale(tmp_path: Path) -> None:
    folder = tmp_path / "snapshots"
    write_dated_snapshot(folder, 1, age_s=2 * HOUR_S)
    write_dated_snapshot(folder, 2, age_s=HOUR_S)
    with live_server(folder, max_age_s=60.0) as (server, stub):
        assert health_status(server.port, SERVICE) == NOT_SERVING
        with LogWaiter(server, "server.health", "health reports SERVING again") as waiter:
            assert pin.main(["--snapshots", str(folder), "1"]) == 0  # the older one: held there on purpose
            assert waiter.seen.wait(10)
        info = stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=5)
        assert (info.version, info.pinned_version) == (1, 1) and info.snapshot_age_s > 2 * HOUR_S - 5
        assert health_status(server.port, SERVICE) == SERVING
        with LogWaiter(server, "server.health", "over --max-age") as waiter:
            assert pin.main(["--snapshots", str(folder), "--unpin"]) == 0
            assert waiter.seen.wait(10)
        assert health_status(server.port, SERVICE) == NOT_SERVING


def test_without_max_age_an_old_snapshot_serves(tmp_path: Path) -> None:
    folder = tmp_path / "snapshots"
    write_dated_snapshot(folder, 1, age_s=1000 * HOUR_S)
    with running_server(folder) as server:
        assert health_status(server.port, SERVICE) == SERVING
        assert health_status(server.port) == SERVING


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("2h", 7200.0),
                                               ("1d", 86400.0), (" 1.5H ", 5400.0)])  # fmt: skip
def test_durations_take_a_unit(text: str, seconds: float) -> None:
    assert duration_s(text) == seconds


@pytest.mark.parametrize("value", ["soon", "0", "-5m", "", "nan"])
def test_a_bad_max_age_is_one_line_naming_it(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AVAP_MAX_AGE", value)
    assert cli.main(["--snapshots", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"avap-server: AVAP_MAX_AGE={value!r}: not a duration"), lines
