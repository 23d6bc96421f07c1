"""A cache serves what its server serves: a server pinned back pins the cache, and unpinned, unpins it."""

from __future__ import annotations

from pathlib import Path

from avapdefs.client import DefinitionClient
from avapdefs.client.cache import load_cached
from avapdefs.folder import choose, read_pin
from server import pin
from tests.helpers import MakeSnapshot
from tests.server.helpers import LogWaiter, running_server, versioned_commands


def test_a_cache_follows_its_server_back_to_a_pinned_version_and_forward_again(
    make_snapshot: MakeSnapshot, tmp_path: Path
) -> None:
    path = make_snapshot(version=1, commands=versioned_commands(1))
    make_snapshot(folder=path.parent, version=2, commands=versioned_commands(2))
    folder, cache = path.parent, tmp_path / "cache"
    with running_server(folder) as server, DefinitionClient(f"127.0.0.1:{server.port}") as client:
        assert client.sync(cache).info.version == 2
        with LogWaiter(server, "server.store", "loaded catalog version 1") as loaded:
            assert pin.main(["--snapshots", str(folder), "1"]) == 0
            assert loaded.seen.wait(30)
        rolled_back = client.sync(cache)
        assert rolled_back.info.version == 1
        assert read_pin(cache) == 1
        assert choose(cache).candidates[0][0] == 1  # so an avap-server on the cache serves version 1 too
        assert load_cached(cache).info.version == 1
        again = client.sync(cache)
        assert again.up_to_date and again.bytes_received == 0  # asked from the pinned version: nothing to send

        with LogWaiter(server, "server.store", "loaded catalog version 2") as loaded:
            assert pin.main(["--snapshots", str(folder), "--unpin"]) == 0
            assert loaded.seen.wait(30)
        forward = client.sync(cache)
        assert forward.info.version == 2
        assert read_pin(cache) is None
        assert load_cached(cache).info.version == 2
