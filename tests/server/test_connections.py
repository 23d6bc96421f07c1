"""Hostile clients by numbers: thousands of idle connections, and thousands of watch streams opened and cancelled.

Against a real server process: 2,000 HTTP/2 connections that start properly
and then send nothing must neither stop GetCommand nor cost the server more
than a bounded amount each; watch streams (WatchCatalog and health Watch)
opened and cancelled in a loop while versions are published must give back
every slot, keep memory flat and log nothing at ERROR. Latency figures are
bench/bench_idle.py's; here only correctness and bounds are asserted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from avapdefs.v1.definitions_pb2 import GetCatalogInfoRequest, GetCommandRequest, WatchCatalogRequest
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from server import launch
from tests.helpers import export_snapshot
from tests.server.helpers import (
    RunningServer,
    live_server,
    open_idle_http2,
    running_server,
    stub_for,
    versioned_commands,
)

IDLE_CONNECTIONS = 2000
# A generous bound of what one idle HTTP/2 connection may cost the server (Envoy's buffers and codec).
MAX_BYTES_PER_IDLE_CONNECTION = 64 << 10
WATCH_SLOTS = 16
CHURN_ROUNDS = 60  # x WATCH_SLOTS streams of each kind: 960 WatchCatalog and 960 health Watch streams
# RSS growth allowed across the churn, after a warm-up: allocator noise, not a leak of ~2,000 streams.
MAX_CHURN_GROWTH_BYTES = 16 << 20


def _own_connection(server: RunningServer) -> grpc.Channel:
    # A channel of its own: grpcio otherwise shares one connection among the channels to an address.
    return grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.use_local_subchannel_pool", 1)])


def _rss_bytes(server: RunningServer) -> int:
    assert server.process.process is not None
    return int(psutil.Process(server.process.process.pid).memory_info().rss)


def _answers(stub: DefinitionServiceStub, calls: int, version: int) -> None:
    for _ in range(calls):
        answer = stub.GetCommand(GetCommandRequest(name="cmd.000"), timeout=10)
        assert answer.command.code == f"# version {version}\n"


def _wait_for_version(stub: DefinitionServiceStub, version: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=10).version != version:
        assert time.monotonic() < deadline, f"version {version} did not go live"
        time.sleep(0.05)


def _errors_logged(server: RunningServer) -> list[str]:
    return [line for line in server.lines if " ERROR " in line or "Traceback" in line]


def test_thousands_of_idle_connections_leave_calls_answered_at_a_bounded_cost(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder = tmp_path_factory.mktemp("idle") / "snapshots"
    export_snapshot(folder, 1, versioned_commands(1))
    with running_server(folder) as server, stub_for(server) as stub:
        _answers(stub, 50, 1)
        before = _rss_bytes(server)
        idle = open_idle_http2(server.port, IDLE_CONNECTIONS)
        try:
            _answers(stub, 200, 1)  # beside them, on a connection of its own
            grown = _rss_bytes(server) - before
            print(f"{IDLE_CONNECTIONS} idle connections: server RSS +{grown / 1e6:.1f} MB, "
                  f"{grown / IDLE_CONNECTIONS / 1024:.1f} KiB each")  # fmt: skip
            assert grown < IDLE_CONNECTIONS * MAX_BYTES_PER_IDLE_CONNECTION
            with _own_connection(server) as fresh:
                _answers(DefinitionServiceStub(fresh), 20, 1)  # a new client is still accepted
        finally:
            for connection in idle:
                connection.close()
        _answers(stub, 20, 1)
        assert server.process.process is not None and server.process.process.poll() is None
        assert _errors_logged(server) == []


def test_connections_past_the_cap_are_closed_and_the_open_ones_keep_working(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cap itself (20,000) is measured down to a size a test can reach: Envoy's config is built here.
    monkeypatch.setattr(launch, "MAX_CONNECTIONS", 50)
    folder = tmp_path_factory.mktemp("cap") / "snapshots"
    export_snapshot(folder, 1, versioned_commands(1))
    with running_server(folder) as server, stub_for(server) as stub:
        _answers(stub, 5, 1)  # one connection of the 50
        idle = open_idle_http2(server.port, 49)
        try:
            with _own_connection(server) as over:
                with pytest.raises(grpc.RpcError) as refused:
                    DefinitionServiceStub(over).GetCommand(GetCommandRequest(name="cmd.000"), timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            _answers(stub, 5, 1)  # the connections already open go on
        finally:
            for connection in idle:
                connection.close()
        _wait_for_room(server)
        assert _errors_logged(server) == []


def _wait_for_room(server: RunningServer, timeout_s: float = 20.0) -> None:
    # Once the idle connections are closed, a new client is accepted again (as soon as Envoy has counted them out).
    deadline = time.monotonic() + timeout_s
    while True:
        with _own_connection(server) as channel:
            try:
                _answers(DefinitionServiceStub(channel), 1, 1)
                return
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, exc
        time.sleep(0.1)


@pytest.fixture
def churned(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, DefinitionServiceStub, grpc.Channel]]:
    folder = tmp_path_factory.mktemp("churn") / "snapshots"
    export_snapshot(folder, 1, versioned_commands(1))
    settings = {"max_watch_streams": WATCH_SLOTS, "heartbeat_s": 60.0, "stream_idle_timeout_s": 120.0}
    with (
        live_server(folder, **settings) as (server, stub),
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield server, stub, channel


def _open_all(open_one: object, count: int, deadline_s: float = 10.0) -> list[tuple[object, object]]:
    """``count`` streams from ``open_one()`` with their first messages; a refusal (a slot not yet back) is retried."""
    opened: list[tuple[object, object]] = []
    deadline = time.monotonic() + deadline_s
    while len(opened) < count:
        stream = open_one()  # type: ignore[operator]
        try:
            opened.append((stream, next(stream)))
        except grpc.RpcError as exc:
            stream.cancel()
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline, exc
    return opened


def test_watch_churn_gives_every_slot_back_with_flat_memory(
    churned: tuple[RunningServer, DefinitionServiceStub, grpc.Channel],
) -> None:
    server, stub, channel = churned
    health = health_pb2_grpc.HealthStub(channel)
    folder = server.folder
    version = 1

    def watch() -> object:
        return stub.WatchCatalog(WatchCatalogRequest(), timeout=60)

    def health_watch() -> object:
        return health.Watch(health_pb2.HealthCheckRequest(), timeout=60)  # type: ignore[attr-defined]

    baseline = 0
    for round_index in range(CHURN_ROUNDS):
        if round_index % 10 == 5:  # a new version goes live while streams are open and being cancelled
            version += 1
            export_snapshot(folder, version, versioned_commands(version))
        streams = _open_all(watch, WATCH_SLOTS) + _open_all(health_watch, WATCH_SLOTS)
        for stream, _ in streams:
            stream.cancel()  # type: ignore[attr-defined]
        if round_index == 10:
            baseline = _rss_bytes(server)  # after the allocator's warm-up
    grown = _rss_bytes(server) - baseline
    print(f"{CHURN_ROUNDS * WATCH_SLOTS * 2} watch streams opened and cancelled: RSS {grown / 1e6:+.1f} MB "
          f"after the first {10 * WATCH_SLOTS * 2}")  # fmt: skip
    assert grown < MAX_CHURN_GROWTH_BYTES
    # Every slot is back: the cap's worth of watches is accepted at once, and each sees the live version.
    _wait_for_version(stub, version)
    last = _open_all(watch, WATCH_SLOTS)
    assert [first.catalog.version for _, first in last] == [version] * WATCH_SLOTS  # type: ignore[attr-defined]
    for stream, _ in last:
        stream.cancel()  # type: ignore[attr-defined]
    _answers(stub, 10, version)
    assert _errors_logged(server) == []


def test_health_watches_past_the_cap_are_refused_and_their_slots_come_back(
    churned: tuple[RunningServer, DefinitionServiceStub, grpc.Channel],
) -> None:
    # Before: health Watch streams had no cap, and no idle timeout ends a quiet one, so a client
    # could hold any number of them (about 25 KiB each: 5,000 took 129 MB).
    _, _, channel = churned
    health = health_pb2_grpc.HealthStub(channel)

    def health_watch() -> object:
        return health.Watch(health_pb2.HealthCheckRequest(), timeout=60)  # type: ignore[attr-defined]

    full = _open_all(health_watch, WATCH_SLOTS)
    over = health_watch()
    with pytest.raises(grpc.RpcError) as refused:
        next(over)  # type: ignore[call-overload]
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for stream, _ in full:
        stream.cancel()  # type: ignore[attr-defined]
    again = _open_all(health_watch, WATCH_SLOTS)  # the cancelled ones' slots came back
    assert [first.status for _, first in again] == [health_pb2.HealthCheckResponse.SERVING] * WATCH_SLOTS  # type: ignore[attr-defined]
    for stream, _ in again:
        stream.cancel()  # type: ignore[attr-defined]
