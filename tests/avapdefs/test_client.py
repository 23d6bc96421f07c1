"""The client against a real server: get_command, retries, sync into a cache, offline load, the CLIs."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from avapdefs.client import DefinitionClient, Replica, cli, load_cached
from avapdefs.errors import CommandNotFoundError, NoSnapshotError, ServerError, ServerUnavailableError
from avapdefs.folder import TEMP_PREFIX, list_snapshots, snapshot_name
from avapdefs.format import snapshot
from avapdefs.v1.definitions_pb2 import GetCatalogInfoRequest, GetCommandRequest
from tests.helpers import MakeSnapshot
from tests.server.helpers import RunningServer, big_commands, running_server, stub_for


class Interrupted(Exception):
    """Raised from a progress callback to stop a sync mid-way."""


@pytest.fixture
def served(make_snapshot: MakeSnapshot) -> Iterator[tuple[RunningServer, Path]]:
    """A server on a 3 MB catalog (several sync chunks), and its file."""
    path = make_snapshot(version=4, commands=big_commands(count=24))
    with running_server(path.parent) as server:
        yield server, path


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A local cache folder (not yet created)."""
    return tmp_path / "cache"


def _client(server: RunningServer, **kwargs: object) -> DefinitionClient:
    return DefinitionClient(f"127.0.0.1:{server.port}", **kwargs)  # type: ignore[arg-type]


def _free_port() -> int:
    # A port the kernel handed out and got back: nothing listens there now.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _dead_address() -> str:
    return f"127.0.0.1:{_free_port()}"


def test_get_command_and_its_errors(served: tuple[RunningServer, Path]) -> None:
    server, _ = served
    with _client(server) as client:
        assert client.get_command("big.0002").bytecode_version == 1
        with pytest.raises(CommandNotFoundError) as missing:
            client.get_command("nope")
        assert missing.value.name == "nope" and "nope" in missing.value.details
        with pytest.raises(ServerError) as invalid:
            client.get_command("")
        assert invalid.value.code == "INVALID_ARGUMENT"
        assert client.catalog_info().version == 4


def test_unavailable_is_retried_with_growing_backoff_then_raised(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot()
    pauses: list[float] = []
    # A server that has begun to shut down answers UNAVAILABLE.
    with running_server(path.parent) as server:
        server.process.drain()
        with (
            _client(server, retries=3, backoff_s=0.01, sleep=pauses.append) as client,
            pytest.raises(ServerUnavailableError) as caught,
        ):
            client.get_command("if")
    assert caught.value.code == "UNAVAILABLE" and "shutting down" in caught.value.details
    assert len(pauses) == 3 and pauses[0] <= 0.01 < pauses[2] <= 0.04


def test_a_retry_reaches_a_server_once_it_serves(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot()
    port = _free_port()
    with contextlib.ExitStack() as servers:

        def start_instead_of_sleeping(pause: float) -> None:
            servers.enter_context(running_server(path.parent, port=port))

        with DefinitionClient(
            f"127.0.0.1:{port}", retries=1, backoff_s=0.01, sleep=start_instead_of_sleeping
        ) as client:
            assert client.get_command("if").name == "if"


def test_an_unreachable_server_is_unavailable_within_the_deadline() -> None:
    with DefinitionClient(_dead_address(), timeout_s=0.5, retries=5, backoff_s=0.01) as client:
        started = time.monotonic()
        with pytest.raises(ServerUnavailableError):
            client.get_command("if")
    assert time.monotonic() - started < 3


def test_sync_round_trip_is_byte_identical_and_servable(served: tuple[RunningServer, Path], cache: Path) -> None:
    server, path = served
    seen: list[tuple[int, int]] = []
    with _client(server) as client:
        result = client.sync(cache, progress=lambda got, total: seen.append((got, total)))
    assert not result.up_to_date and result.path == cache / path.name
    assert result.path.read_bytes() == path.read_bytes()
    assert snapshot.read_file(result.path).info.version == 4
    assert len(seen) > 1 and seen[-1] == (path.stat().st_size, path.stat().st_size)
    with running_server(cache) as replica, stub_for(server) as original, stub_for(replica) as copy:
        request = GetCommandRequest(name="big.0007")
        assert copy.GetCommand(request, timeout=5) == original.GetCommand(request, timeout=5)


def test_a_second_sync_is_up_to_date(served: tuple[RunningServer, Path], cache: Path) -> None:
    server, path = served
    with _client(server) as client:
        client.sync(cache)
        again = client.sync(cache, progress=lambda got, total: pytest.fail("no data expected"))
    assert again.up_to_date and again.bytes_received == 0 and again.path == cache / path.name


def test_an_interrupted_sync_leaves_nothing_and_the_next_one_succeeds(
    served: tuple[RunningServer, Path], cache: Path
) -> None:
    server, path = served

    def stop_after_first_chunk(got: int, total: int) -> None:
        raise Interrupted

    with _client(server) as client:
        with pytest.raises(Interrupted):
            client.sync(cache, progress=stop_after_first_chunk)
        assert os.listdir(cache) == []
        result = client.sync(cache)
    assert result.path.read_bytes() == path.read_bytes()
    assert not [name for name in os.listdir(cache) if name.startswith(TEMP_PREFIX)]


def test_a_sync_stopped_mid_way_ends_the_thread_that_reads_ahead(
    served: tuple[RunningServer, Path], cache: Path
) -> None:
    server, _ = served

    def stop_after_first_chunk(got: int, total: int) -> None:
        raise Interrupted

    with _client(server) as client:
        with pytest.raises(Interrupted):
            client.sync(cache, progress=stop_after_first_chunk)
        readers = [thread for thread in threading.enumerate() if thread.name == "avap-sync-reader"]
        for reader in readers:
            reader.join(timeout=10)
        assert not [reader for reader in readers if reader.is_alive()]
        assert client.sync(cache).bytes_received


def test_sync_replaces_an_older_cache_and_prunes_it(
    served: tuple[RunningServer, Path], make_snapshot: MakeSnapshot, cache: Path
) -> None:
    server, _ = served
    for version in (1, 2, 3):
        make_snapshot(folder=cache, version=version)
    (cache / snapshot_name(9)).write_bytes(b"a damaged newer file is ignored")
    with _client(server) as client:
        result = client.sync(cache, keep=2)
    assert result.info.version == 4 and not result.up_to_date
    assert [version for version, _ in list_snapshots(cache)] == [3, 4, 9]


def test_load_cached_works_offline(served: tuple[RunningServer, Path], cache: Path) -> None:
    server, _ = served
    with pytest.raises(NoSnapshotError):
        load_cached(cache)
    with _client(server) as client:
        client.sync(cache)
    server.stop(0)
    cached = load_cached(cache)
    assert cached.info.version == 4 and len(cached.catalog().commands) == 24


def test_sync_from_a_dead_server_raises_unavailable(cache: Path) -> None:
    with (
        DefinitionClient(_dead_address(), timeout_s=0.5, backoff_s=0.01) as client,
        pytest.raises(ServerUnavailableError),
    ):
        client.sync(cache)
    assert os.listdir(cache) == []


def test_avap_sync_cli(served: tuple[RunningServer, Path], cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server, path = served
    argv = ["--server", f"127.0.0.1:{server.port}", "--dest", str(cache)]
    assert cli.sync_main(argv) == 0
    summary = capsys.readouterr().out
    assert summary.startswith("synced catalog version 4") and "MB/s" in summary
    assert (cache / path.name).read_bytes() == path.read_bytes()
    assert cli.sync_main(argv) == 0
    assert "is up to date" in capsys.readouterr().out
    dead = ["--server", _dead_address(), "--dest", str(cache), "--connect-timeout-s", "0.3"]
    assert cli.sync_main(dead) == 3
    assert cli.sync_main([]) == 2


def test_avap_get_cli(served: tuple[RunningServer, Path], capsys: pytest.CaptureFixture[str]) -> None:
    server, _ = served
    address = f"127.0.0.1:{server.port}"
    assert cli.get_main(["big.0001", "--server", address]) == 0
    assert capsys.readouterr().out.startswith("big.0001 (function)")
    assert cli.get_main(["big.0001", "--server", address, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "big.0001"
    assert cli.get_main(["nope", "--server", address]) == 1
    assert cli.get_main(["", "--server", address]) == 4
    assert cli.get_main(["if", "--server", _dead_address(), "--timeout-s", "0.3"]) == 3


KEY = "s3cret-key"


@pytest.fixture
def keyed(make_snapshot: MakeSnapshot) -> Iterator[RunningServer]:
    """A server started with an API key, on a small catalog."""
    path = make_snapshot(version=2)
    with running_server(path.parent, api_key=KEY) as server:
        yield server


def test_the_api_key_reaches_every_call(keyed: RunningServer, cache: Path) -> None:
    with _client(keyed, api_key=f"  {KEY}\n") as client:  # surrounding white space is not part of it
        assert client.get_command("if").name == "if"
        assert client.catalog_info().version == 2
        assert client.stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=5).version == 2  # the stub handed out
        assert [command.name for command in client.batch_get(["end"]).commands] == ["end"]
        assert next(client.list_commands()).names == ["addVar", "end", "if"]
        assert client.sync(cache).info.version == 2  # the stream calls carry it too
        watch = client.watch()
        assert next(iter(watch)).catalog.version == 2
        watch.cancel()
    for key in (None, "wrong"):
        with _client(keyed, api_key=key) as client, pytest.raises(ServerError) as refused:
            client.get_command("if")
        assert refused.value.code == "UNAUTHENTICATED"


def test_a_blank_or_non_ascii_key_is_refused_before_any_call() -> None:
    for key in ("", " \n", "clé"):
        with pytest.raises(ValueError, match="API key"):
            DefinitionClient("127.0.0.1:1", api_key=key)


@pytest.mark.parametrize("address", ["not an address", "127.0.0.1", ":50051", "host:0", "host:x", "::1:50051", ""])
def test_a_malformed_address_is_refused_at_once(address: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        DefinitionClient(address)


def test_an_unreachable_server_is_named_with_the_reason(cache: Path) -> None:
    address = _dead_address()
    started = time.monotonic()
    with DefinitionClient(address, timeout_s=0.5, backoff_s=0.01) as client:
        for call in (lambda: client.get_command("if"), client.catalog_info, lambda: client.sync(cache)):
            with pytest.raises(ServerUnavailableError) as caught:
                call()
            assert caught.value.details == f"cannot reach {address} (connection refused)"
        with pytest.raises(ServerUnavailableError) as stream:
            next(iter(client.watch()))
        assert stream.value.details == f"cannot reach {address} (connection refused)"
    assert time.monotonic() - started < 5


def test_a_listener_that_never_answers_is_named(cache: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        with DefinitionClient(address, timeout_s=0.5) as client, pytest.raises(ServerUnavailableError) as caught:
            client.get_command("if")
    assert caught.value.details == f"{address} did not answer within 0.5 s"


def test_batch_get_splits_the_names_and_keeps_their_order(served: tuple[RunningServer, Path]) -> None:
    server, _ = served
    names = [f"big.{index:04d}" for index in reversed(range(24))] + ["nope"]
    with _client(server) as client:
        answer = client.batch_get(names * 50)  # 1,250 names: two calls; 3 MB each answer over the send limit splits
    assert [command.name for command in answer.commands] == [name for name in names * 50 if name != "nope"]
    assert list(answer.missing_names) == ["nope"] * 50 and answer.catalog_version == 4


def test_list_commands_pages_through_every_name(served: tuple[RunningServer, Path]) -> None:
    server, _ = served
    with _client(server) as client:
        pages = list(client.list_commands("big.00", page_size=7))
        assert [len(page.names) for page in pages] == [7, 7, 7, 3]
        assert [name for page in pages for name in page.names] == [f"big.{index:04d}" for index in range(24)]
        assert [page.names for page in client.list_commands("zz")] == [[]]


def test_health_is_serving_then_not_when_draining(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot()
    with running_server(path.parent) as server, _client(server) as client:
        assert client.health() == 1  # SERVING
        server.process.drain()
        assert client.health() == 2  # NOT_SERVING
        with pytest.raises(ServerError) as unknown:
            client.health("no.such.Service")
        assert unknown.value.code == "NOT_FOUND"


def test_a_sync_rate_leaves_out_the_wait_for_the_server(make_snapshot: MakeSnapshot, cache: Path) -> None:
    path = make_snapshot(version=3)
    port = _free_port()
    with contextlib.ExitStack() as servers:
        waited: list[float] = []

        def start_instead_of_sleeping(pause: float) -> None:
            started = time.perf_counter()
            servers.enter_context(running_server(path.parent, port=port))
            waited.append(time.perf_counter() - started)

        with DefinitionClient(f"127.0.0.1:{port}", retries=1, sleep=start_instead_of_sleeping) as client:
            result = client.sync(cache)
    assert result.info.version == 3 and waited
    assert result.seconds >= waited[0] and result.transfer_s <= result.seconds - waited[0]


def test_a_replica_follows_a_server_that_wants_a_key(keyed: RunningServer, cache: Path) -> None:
    with Replica(f"127.0.0.1:{keyed.port}", cache, api_key=KEY) as replica:
        assert replica.wait_for_version(2, timeout_s=30)
        assert replica.get("if") is not None
    with pytest.raises(ValueError, match="HOST:PORT"):
        Replica("127.0.0.1", cache)
