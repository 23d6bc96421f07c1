"""Replica against a real server on 127.0.0.1: offline boot, sync, new versions, atomic swaps, a restart."""

from __future__ import annotations

import queue
import socket
import threading
import time
from pathlib import Path

from avapdefs.client import Replica, ReplicaInfo
from avapdefs.folder import list_snapshots
from avapdefs.v1.definitions_pb2 import Command, WatchCatalogRequest
from tests.helpers import MakeSnapshot, sample_command
from tests.server.helpers import VERSIONED_NAMES, live_server, next_version, running_server, versioned_commands

ACCENTED = ["addParam", "addResult", "addVar", "end", "if", "ñandú.cálculo", "ñandú.zeta"]


def _dead_address() -> str:
    # A loopback port just given back by the kernel: nothing listens there.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def _version_of(command: Command | None) -> int:
    assert command is not None
    assert command.code.startswith("# version ")
    return int(command.code.removeprefix("# version ").strip())


def test_it_boots_from_the_cache_with_the_server_down(make_snapshot: MakeSnapshot, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    make_snapshot(folder=cache, version=3, commands=[sample_command(name) for name in reversed(ACCENTED)])
    started = time.monotonic()
    with Replica(_dead_address(), cache) as replica:
        assert replica.info().version == 3 and replica.info().command_count == len(ACCENTED)
        assert len(replica.info().content_hash) == 32
        command = replica.get("addVar")
        assert command is not None and command.name == "addVar" and command.type == "function"
        assert replica.get("nope") is None and replica.get("") is None
        assert replica.names() == ACCENTED
        assert replica.names("add") == ["addParam", "addResult", "addVar"]
        assert replica.names("ñandú.") == ["ñandú.cálculo", "ñandú.zeta"]
        assert replica.names("zz") == [] and replica.names("addVarX") == []
        assert not replica.wait_for_version(4, timeout_s=0.2)  # nothing newer while the server is down
        assert not replica.synced.is_set()
    assert time.monotonic() - started < 5, "close() waited out the retries against a dead server"
    assert replica.get("if") is not None  # lookups outlive close()


def test_with_no_cache_and_no_server_it_is_empty(tmp_path: Path) -> None:
    with Replica(_dead_address(), tmp_path / "cache") as replica:
        assert replica.info() == ReplicaInfo(0, b"", 0)
        assert replica.get("addVar") is None and replica.names() == []


def test_it_syncs_then_answers(make_snapshot: MakeSnapshot, tmp_path: Path) -> None:
    folder = make_snapshot(version=2, commands=versioned_commands(2)).parent
    cache = tmp_path / "cache"
    with running_server(folder) as server, Replica(f"127.0.0.1:{server.port}", cache) as replica:
        assert replica.synced.wait(10) and replica.info().version == 2
        info = replica.info()
        assert (info.version, info.command_count) == (2, len(VERSIONED_NAMES))
        assert _version_of(replica.get("cmd.017")) == 2
        assert replica.names("cmd.00") == [f"cmd.00{digit}" for digit in range(10)]
        assert replica.names() == sorted(VERSIONED_NAMES)
    assert [version for version, _ in list_snapshots(cache)] == [2]  # the cache avap-sync would have


def test_a_published_version_reaches_it_within_a_second(make_snapshot: MakeSnapshot, tmp_path: Path) -> None:
    folder = make_snapshot(version=1, commands=versioned_commands(1)).parent
    changes: queue.Queue[ReplicaInfo] = queue.Queue()
    with (
        live_server(folder) as (server, stub),
        Replica(f"127.0.0.1:{server.port}", tmp_path / "cache", on_change=changes.put) as replica,
    ):
        assert replica.wait_for_version(1, timeout_s=10)
        assert changes.get(timeout=1).version == 1
        watch = stub.WatchCatalog(WatchCatalogRequest(have_version=1))
        try:
            make_snapshot(folder=folder, version=2, commands=versioned_commands(2))
            assert next_version(watch) == 2  # the server has loaded it: the clock starts
            assert replica.wait_for_version(2, timeout_s=1.0)
        finally:
            watch.cancel()
        assert changes.get(timeout=1).version == 2
        assert {_version_of(replica.get(name)) for name in VERSIONED_NAMES} == {2}


def test_readers_never_see_two_versions_at_once(make_snapshot: MakeSnapshot, tmp_path: Path) -> None:
    folder = make_snapshot(version=1, commands=versioned_commands(1)).parent
    problems: list[str] = []
    seen: set[int] = set()
    done = threading.Event()

    def read(replica: Replica) -> None:
        last = 0
        while not done.is_set():
            view = replica.view
            versions = {_version_of(view.get(name)) for name in view.names}
            if versions != {view.info.version} or len(view.names) != view.info.command_count:
                problems.append(f"view of version {view.info.version} holds commands of {sorted(versions)}")
            now = _version_of(replica.get(VERSIONED_NAMES[-1]))
            if now < last:
                problems.append(f"get() went back from version {last} to {now}")
            last = now
            seen.add(now)

    with (
        live_server(folder) as (server, _),
        Replica(f"127.0.0.1:{server.port}", tmp_path / "cache") as replica,
    ):
        assert replica.wait_for_version(1, timeout_s=10)
        reader = threading.Thread(target=read, args=(replica,))
        reader.start()
        try:
            for version in range(2, 7):
                make_snapshot(folder=folder, version=version, commands=versioned_commands(version))
                assert replica.wait_for_version(version, timeout_s=10)
        finally:
            done.set()
            reader.join(10)
    assert not reader.is_alive()
    assert problems == []
    assert len(seen) >= 2, "the reader never overlapped a swap"


def test_it_reconnects_after_the_server_restarts(make_snapshot: MakeSnapshot, tmp_path: Path) -> None:
    folder = make_snapshot(version=1, commands=versioned_commands(1)).parent
    with running_server(folder) as first:
        port = first.port
        replica = Replica(f"127.0.0.1:{port}", tmp_path / "cache")
        ready = replica.wait_for_version(1, timeout_s=10)
    try:
        assert ready
        make_snapshot(folder=folder, version=2, commands=versioned_commands(2))  # published while the server is down
        assert _version_of(replica.get("cmd.000")) == 1  # still answering from memory
        with running_server(folder, port=port):
            assert replica.wait_for_version(2, timeout_s=30)
        assert _version_of(replica.get("cmd.000")) == 2
    finally:
        replica.close()


def test_a_failing_callback_does_not_stop_it(make_snapshot: MakeSnapshot, tmp_path: Path) -> None:
    folder = make_snapshot(version=1, commands=versioned_commands(1)).parent

    def explode(info: ReplicaInfo) -> None:
        raise RuntimeError(f"callback failed at {info.version}")

    with (
        live_server(folder) as (server, _),
        Replica(f"127.0.0.1:{server.port}", tmp_path / "cache", on_change=explode) as replica,
    ):
        assert replica.wait_for_version(1, timeout_s=10)
        make_snapshot(folder=folder, version=2, commands=versioned_commands(2))
        assert replica.wait_for_version(2, timeout_s=10)
