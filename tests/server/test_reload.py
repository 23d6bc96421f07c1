"""Hot reload edge cases and the watch streams' own thread pool, on a real server."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from avapdefs.folder import atomic_file, snapshot_name, write_pin
from avapdefs.v1.definitions_pb2 import (
    GetCatalogInfoRequest,
    GetCommandRequest,
    WatchCatalogRequest,
)
from tests.helpers import MakeSnapshot
from tests.server.helpers import LogWaiter, live_server, next_version, versioned_commands


@pytest.fixture
def two_versions(make_snapshot: MakeSnapshot) -> Path:
    """A folder holding versions 1 and 2."""
    path = make_snapshot(version=1, commands=versioned_commands(1))
    make_snapshot(folder=path.parent, version=2, commands=versioned_commands(2))
    return path.parent


def test_open_watch_streams_leave_get_command_answering(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(version=1, commands=versioned_commands(1))
    with live_server(path.parent, max_watch_streams=200) as (_, stub):
        # Each parked stream is a coroutine on the one event loop, not a thread: GetCommand still answers.
        streams = [stub.WatchCatalog(WatchCatalogRequest(), timeout=30) for _ in range(200)]
        assert [next_version(stream) for stream in streams] == [1] * 200
        for _ in range(20):
            answer = stub.GetCommand(GetCommandRequest(name="cmd.003"), timeout=5)
            assert answer.command.code == "# version 1\n"
        with pytest.raises(grpc.RpcError) as refused:  # one past the cap
            next(stub.WatchCatalog(WatchCatalogRequest(), timeout=10))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for stream in streams:
            stream.cancel()


def test_deleting_the_live_file_keeps_it_serving_and_a_newer_one_still_goes_live(
    two_versions: Path, make_snapshot: MakeSnapshot
) -> None:
    with live_server(two_versions) as (server, stub):
        stream = stub.WatchCatalog(WatchCatalogRequest(have_version=2), timeout=30)
        with LogWaiter(server, "server.store", "file of live version 2 is gone") as waiter:
            (two_versions / snapshot_name(2)).unlink()
            assert waiter.seen.wait(10)
        assert stub.GetCommand(GetCommandRequest(name="cmd.001"), timeout=5).command.code == "# version 2\n"
        make_snapshot(folder=two_versions, version=3, commands=versioned_commands(3))
        assert next_version(stream) == 3  # not a fall back to version 1 on the way
        stream.cancel()


def test_a_pin_to_a_version_that_does_not_verify_is_refused_and_the_live_one_keeps_serving(two_versions: Path) -> None:
    with live_server(two_versions) as (server, stub):
        with atomic_file(two_versions / snapshot_name(1)) as file:
            file.write(b"AVAPSNAP damaged in place")
        with LogWaiter(server, "server.store", "refused snapshot") as waiter:
            write_pin(two_versions, 1)
            assert waiter.seen.wait(10)
        with LogWaiter(server, "server.store", "pinned version 9 is not in") as waiter:
            write_pin(two_versions, 9)
            assert waiter.seen.wait(10)
        info = stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=5)
        # The pin in force is reported beside the version actually served, so the mismatch shows.
        assert (info.version, info.pinned_version) == (2, 9)
        assert stub.GetCommand(GetCommandRequest(name="cmd.000"), timeout=5).command.code == "# version 2\n"


def test_the_pin_setting_serves_an_older_version_and_the_pin_file_wins(two_versions: Path) -> None:
    with live_server(two_versions, pin=1) as (_, stub):
        info = stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=5)
        assert (info.version, info.pinned_version) == (1, 1)
        stream = stub.WatchCatalog(WatchCatalogRequest(have_version=1), timeout=30)
        write_pin(two_versions, 2)
        assert next_version(stream) == 2
        stream.cancel()
