"""The live catalog: hot reload, WatchCatalog, delta sync and pinning, on a real server."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from avapdefs.client import DefinitionClient
from avapdefs.folder import atomic_file, delta_name, read_pin, snapshot_name
from avapdefs.format import delta, snapshot
from avapdefs.v1.definitions_pb2 import (
    GetCatalogInfoRequest,
    GetCommandRequest,
    SyncCatalogRequest,
    SyncHeader,
    WatchCatalogRequest,
)
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from server import pin
from tests.helpers import MakeSnapshot, sample_command
from tests.server.helpers import (
    VERSIONED_NAMES,
    LogWaiter,
    RunningServer,
    WatchStream,
    big_commands,
    health_status,
    live_server,
    next_version,
    running_server,
    versioned_commands,
)


def _watch(stub: DefinitionServiceStub, have: int) -> WatchStream:
    return stub.WatchCatalog(WatchCatalogRequest(have_version=have), timeout=60)


@pytest.fixture
def live(make_snapshot: MakeSnapshot) -> Iterator[tuple[RunningServer, DefinitionServiceStub]]:
    path = make_snapshot(version=1, commands=versioned_commands(1))
    with live_server(path.parent) as served:
        yield served


def test_polling_picks_up_a_published_snapshot(make_snapshot: MakeSnapshot) -> None:
    # For folders that deliver no file events (some Docker bind mounts): --poll.
    path = make_snapshot(version=1, commands=versioned_commands(1))
    with live_server(path.parent, poll=True) as (_, stub):
        stream = _watch(stub, 1)
        make_snapshot(folder=path.parent, version=2, commands=versioned_commands(2))
        assert next_version(stream) == 2
        stream.cancel()


def test_a_published_snapshot_goes_live_and_watchers_see_each_version_in_order(
    live: tuple[RunningServer, DefinitionServiceStub], make_snapshot: MakeSnapshot
) -> None:
    server, stub = live
    stream = _watch(stub, 1)
    folder = server.folder
    for version in range(2, 6):
        make_snapshot(folder=folder, version=version, commands=versioned_commands(version))
        assert next_version(stream) == version
        answer = stub.GetCommand(GetCommandRequest(name="cmd.007"), timeout=5)
        assert answer.command.code == f"# version {version}\n"
    stream.cancel()


def test_watch_sends_the_live_version_at_once_then_heartbeats(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(version=3)
    with (
        running_server(path.parent, heartbeat_s=0.05) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stream = _watch(DefinitionServiceStub(channel), 1)
        first = next(stream)
        assert first.WhichOneof("event") == "catalog" and first.catalog.version == 3
        assert next(stream).WhichOneof("event") == "heartbeat_unix_ms"
        assert next(stream).heartbeat_unix_ms > 0
        stream.cancel()


def test_watch_streams_beyond_the_cap_are_refused(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(version=1)
    with (
        running_server(path.parent, max_watch_streams=1) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = DefinitionServiceStub(channel)
        first = _watch(stub, 0)
        assert next(first).catalog.version == 1  # holds the one slot
        with pytest.raises(grpc.RpcError) as refused:
            next(_watch(stub, 0))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        first.cancel()


def test_a_bad_new_file_is_refused_and_the_live_version_keeps_serving(
    live: tuple[RunningServer, DefinitionServiceStub], make_snapshot: MakeSnapshot
) -> None:
    server, stub = live
    folder = server.folder
    with LogWaiter(server, "server.store", "refused snapshot") as waiter:
        with atomic_file(folder / snapshot_name(2)) as file:
            file.write(b"AVAPSNAP but nothing after it")
        assert waiter.seen.wait(10)
    assert stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=5).version == 1
    assert health_status(server.port) == health_pb2.HealthCheckResponse.SERVING
    stream = _watch(stub, 1)
    make_snapshot(folder=folder, version=3, commands=versioned_commands(3))
    assert next_version(stream) == 3
    stream.cancel()


def test_swaps_under_constant_load_fail_no_request(
    live: tuple[RunningServer, DefinitionServiceStub], make_snapshot: MakeSnapshot
) -> None:
    server, stub = live
    stop = threading.Event()
    failures: list[BaseException] = []
    answers: list[str] = []

    def load() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            client = DefinitionServiceStub(channel)
            index = 0
            while not stop.is_set():
                index += 1
                try:
                    name = VERSIONED_NAMES[index % len(VERSIONED_NAMES)]
                    answer = client.GetCommand(GetCommandRequest(name=name), timeout=10)
                    answers.append(answer.command.code)
                except grpc.RpcError as exc:
                    failures.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        stream = _watch(stub, 1)
        for version in range(2, 22):
            make_snapshot(folder=server.folder, version=version, commands=versioned_commands(version))
            assert next_version(stream) == version
        stream.cancel()
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert failures == []
    assert len(answers) > 100
    assert set(answers) <= {f"# version {version}\n" for version in range(1, 22)}


def test_a_sync_spanning_a_swap_and_the_deletion_of_its_file_completes_on_its_version(
    make_snapshot: MakeSnapshot,
) -> None:
    old = make_snapshot(version=1, commands=big_commands(count=24))
    expected = old.read_bytes()
    with live_server(old.parent) as (_, stub):
        call = stub.SyncCatalog(SyncCatalogRequest(), timeout=30)
        head = [next(call), next(call)]
        stream = _watch(stub, 1)
        make_snapshot(folder=old.parent, version=2, commands=versioned_commands(2))
        assert next_version(stream) == 2
        stream.cancel()
        old.unlink()
        data = b"".join(message.chunk for message in [*head, *call])
        assert head[0].header.catalog.version == 1
        assert data == expected


def _with_delta(make_snapshot: MakeSnapshot) -> tuple[Path, Path, Path]:
    base = make_snapshot(version=1, commands=versioned_commands(1))
    changed = versioned_commands(1)
    changed[5] = sample_command(VERSIONED_NAMES[5], code="# changed in version 2\n")
    target = make_snapshot(folder=base.parent, version=2, commands=[*changed, sample_command("zz.new")])
    made = delta.make_delta(snapshot.read_file(base), snapshot.read_file(target))
    delta_path = base.parent / delta_name(1, 2)
    with atomic_file(delta_path) as file:
        file.write(delta.encode_delta(made))
    return base, target, delta_path


def test_a_client_one_version_behind_gets_the_delta_and_the_same_content(
    make_snapshot: MakeSnapshot, tmp_path: Path
) -> None:
    base, target, delta_path = _with_delta(make_snapshot)
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(base, cache / base.name)
    with running_server(base.parent) as server, DefinitionClient(f"127.0.0.1:{server.port}") as client:
        result = client.sync(cache)
    assert result.delta and result.bytes_received == delta_path.stat().st_size
    assert result.bytes_received < target.stat().st_size
    assert snapshot.read_file(result.path).payload == snapshot.read_file(target).payload


@pytest.mark.parametrize("case", ["no delta accepted", "wrong base hash", "damaged delta"])
def test_full_file_when_no_usable_delta(make_snapshot: MakeSnapshot, tmp_path: Path, case: str) -> None:
    base, target, delta_path = _with_delta(make_snapshot)
    if case == "damaged delta":
        data = bytearray(delta_path.read_bytes())
        data[-10] ^= 0xFF
        delta_path.write_bytes(bytes(data))
    request = SyncCatalogRequest(
        have_version=1,
        have_content_hash=bytes(32) if case == "wrong base hash" else snapshot.read_file(base).info.content_hash,
        accept_delta=case != "no delta accepted",
    )
    with running_server(base.parent) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        messages = list(DefinitionServiceStub(channel).SyncCatalog(request, timeout=30))
    assert messages[0].header.kind == SyncHeader.KIND_FULL
    assert b"".join(message.chunk for message in messages[1:]) == target.read_bytes()


def test_a_delta_that_fails_to_apply_falls_back_to_a_full_sync(make_snapshot: MakeSnapshot, tmp_path: Path) -> None:
    base, target, delta_path = _with_delta(make_snapshot)
    # A delta whose header leads to version 2 but which lacks one of the changes:
    # the server cannot tell, the client's check of the result's content hash can.
    broken = delta.decode_delta(delta_path.read_bytes())
    del broken.upserts[0]
    delta_path.write_bytes(delta.encode_delta(broken))
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(base, cache / base.name)
    with running_server(base.parent) as server, DefinitionClient(f"127.0.0.1:{server.port}") as client:
        result = client.sync(cache)
    assert not result.delta and result.path.read_bytes() == target.read_bytes()
    assert [path.name for path in cache.iterdir() if path.name.startswith(".tmp-")] == []


def test_pin_rolls_back_survives_a_restart_and_unpin_follows_the_newest(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(version=1, commands=versioned_commands(1))
    make_snapshot(folder=path.parent, version=2, commands=versioned_commands(2))
    folder = path.parent
    with live_server(folder) as (_, stub):
        assert stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=5).version == 2
        stream = _watch(stub, 2)
        assert pin.main(["--snapshots", str(folder), "1"]) == 0
        assert next_version(stream) == 1
        info = stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=5)
        assert (info.version, info.pinned_version) == (1, 1)
        stream.cancel()
    with live_server(folder) as (_, stub):  # a restart keeps the pin
        assert stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=5).version == 1
        stream = _watch(stub, 1)
        assert pin.main(["--snapshots", str(folder), "--unpin"]) == 0
        assert next_version(stream) == 2
        assert stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=5).pinned_version == 0
        stream.cancel()


def test_pinning_a_missing_version_is_refused(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(version=1)
    assert pin.main(["--snapshots", str(path.parent), "7"]) == pin.EXIT_NO_SUCH_VERSION
    assert read_pin(path.parent) is None
