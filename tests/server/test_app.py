"""The gRPC server around the service: health, reflection, cancelled streams, files changed under it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import psutil
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from avapdefs.format import snapshot
from avapdefs.v1.definitions_pb2 import GetCommandRequest, SyncCatalogRequest, WatchCatalogRequest
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from server.service import SERVICE_NAME
from tests.helpers import MakeSnapshot
from tests.server.helpers import LogWaiter, big_commands, health_status, running_server, stub_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_is_serving_once_listening_and_not_serving_once_shutdown_begins(make_snapshot: MakeSnapshot) -> None:
    # The port is only listened on once the snapshot is loaded: no client ever sees an empty server.
    path = make_snapshot()
    with running_server(path.parent) as server:
        assert health_status(server.port) == SERVING
        assert health_status(server.port, SERVICE_NAME) == SERVING
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            check: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/grpc.health.v1.Health/Check")
            unknown = health_pb2.HealthCheckRequest(service="no.such.Service").SerializeToString()
            with pytest.raises(grpc.RpcError) as refused:
                check(unknown, timeout=5)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        server.process.drain()
        assert health_status(server.port, SERVICE_NAME) == NOT_SERVING
        assert health_status(server.port) == NOT_SERVING


def test_health_watch_reports_the_change_when_shutdown_begins(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot()
    with running_server(path.parent) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=10)  # type: ignore[attr-defined]
        assert next(watch).status == SERVING
        server.process.drain()
        assert next(watch).status == NOT_SERVING
        watch.cancel()


def test_open_watch_streams_leave_the_server_idle(make_snapshot: MakeSnapshot) -> None:
    # Regression: pyvoy answers receive() at once once a request has arrived whole, and the
    # disconnect watcher looped on it, so each open stream took most of a core.
    path = make_snapshot()
    with running_server(path.parent) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert server.process.process is not None
        envoy = psutil.Process(server.process.process.pid)
        stub = DefinitionServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watches = [stub.WatchCatalog(WatchCatalogRequest(), timeout=30) for _ in range(10)]
        watches += [health.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(10)]  # type: ignore[attr-defined]
        for watch in watches:
            next(watch)  # each stream is open and has answered
        before = envoy.cpu_times()
        time.sleep(2.0)  # the window measured, not a wait for anything
        after = envoy.cpu_times()
        used_s = after.user + after.system - before.user - before.system
        for watch in watches:
            watch.cancel()
    assert used_s < 0.4, f"20 idle streams used {used_s:.2f} s of CPU in 2 s"


def test_reflection_describes_the_service(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot()
    with running_server(path.parent) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert SERVICE_NAME in database.get_services()
        service = DescriptorPool(database).FindServiceByName(SERVICE_NAME)
        assert {method.name for method in service.methods} >= {"GetCommand", "SyncCatalog", "ListCommands"}


def test_cancelled_syncs_free_their_slots(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(commands=big_commands(count=48))
    # Two sync slots: if a cancelled stream kept its slot, the third sync could never start.
    with running_server(path.parent, max_sync_streams=2) as server, stub_for(server) as stub:
        for _ in range(4):
            call = stub.SyncCatalog(SyncCatalogRequest(), timeout=30)
            assert next(call).WhichOneof("message") == "header"
            assert next(call).WhichOneof("message") == "chunk"
            call.cancel()
        full = list(stub.SyncCatalog(SyncCatalogRequest(), timeout=30))
        assert full[0].header.data_size == sum(len(message.chunk) for message in full[1:])
        assert stub.GetCommand(GetCommandRequest(name="big.0001"), timeout=10).command.name == "big.0001"


def _truncate(path: Path) -> None:
    os.truncate(path, 100)


def _overwrite(path: Path) -> None:
    with open(path, "r+b") as file:
        file.write(b"\x00" * path.stat().st_size)


def _delete(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("damage", [_truncate, _overwrite, _delete])
def test_a_served_file_changed_in_place_changes_nothing_served(make_snapshot: MakeSnapshot, damage: object) -> None:
    # The server serves the bytes it verified, held in memory: no mapped page can vanish (SIGBUS).
    path = make_snapshot(commands=big_commands(count=8))
    verified = path.read_bytes()
    with running_server(path.parent) as server, stub_for(server) as stub:
        call = stub.SyncCatalog(SyncCatalogRequest(), timeout=30)
        next(call)
        damage(path)  # type: ignore[operator]
        in_flight = b"".join(message.chunk for message in call)
        after = b"".join(message.chunk for message in stub.SyncCatalog(SyncCatalogRequest(), timeout=30))
        command = stub.GetCommand(GetCommandRequest(name="big.0003"), timeout=5).command
    assert in_flight == verified and after == verified
    expected = next(c for c in snapshot.verify(verified).catalog().commands if c.name == "big.0003")
    assert command == expected


def test_stalled_syncs_neither_block_calls_nor_outlive_the_idle_timeout(make_snapshot: MakeSnapshot) -> None:
    # Clients that open syncs and stop reading: each is a coroutine waiting on flow control, not a
    # thread, so GetCommand answers; past the cap a sync is refused; Envoy resets them after the idle timeout.
    path = make_snapshot(commands=big_commands(count=64))  # 8 MiB that does not compress: more than any window
    settings = {"max_sync_streams": 2, "heartbeat_s": 1.0, "stream_idle_timeout_s": 3.0}
    with running_server(path.parent, **settings) as server, stub_for(server) as stub:
        # No BDP probing: the client's window stays at 64 KiB, as a reader that really stopped.
        options = [("grpc.http2.bdp_probe", 0)]
        with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=options) as stalled_channel:
            stalled = DefinitionServiceStub(stalled_channel)
            with LogWaiter(server, "server.app", "sync_catalog ended early", times=2) as reset:
                calls = [stalled.SyncCatalog(SyncCatalogRequest(), timeout=60) for _ in range(2)]
                for call in calls:
                    assert next(call).WhichOneof("message") == "header"  # then nothing more is read
                with pytest.raises(grpc.RpcError) as refused:
                    next(stub.SyncCatalog(SyncCatalogRequest(), timeout=10))
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert stub.GetCommand(GetCommandRequest(name="big.0001"), timeout=5).command.name == "big.0001"
                assert reset.seen.wait(30)
            for call in calls:  # what was buffered, then the reset: never the whole file
                with pytest.raises(grpc.RpcError):
                    for _ in call:
                        pass
        full = list(stub.SyncCatalog(SyncCatalogRequest(), timeout=30))  # the slots are free again
        assert full[0].header.data_size == sum(len(message.chunk) for message in full[1:])


def test_streams_that_end_log_no_errors(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(version=1)
    with running_server(path.parent) as server, stub_for(server) as stub:
        for _ in range(3):  # whole syncs, each read to its end
            assert len(list(stub.SyncCatalog(SyncCatalogRequest(), timeout=10))) > 1
        cancelled = stub.SyncCatalog(SyncCatalogRequest(), timeout=10)
        next(cancelled)
        cancelled.cancel()  # and one the client stops
        assert stub.GetCommand(GetCommandRequest(name="addVar"), timeout=5).command.name == "addVar"
    # Stopped: every line it logged has been read.
    assert [line for line in server.lines if " ERROR " in line] == []
