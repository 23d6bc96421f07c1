"""follow(): a cache kept current through WatchCatalog, across a server restart."""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from avapdefs.client import DefinitionClient, SyncResult
from avapdefs.client.follow import backoff_s, follow
from avapdefs.folder import list_snapshots
from tests.helpers import MakeSnapshot
from tests.server.helpers import running_server, wait_until_watching


def test_backoff_is_jittered_under_a_growing_cap() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        cap = min(30.0, 0.5 * 2**attempt)
        waits = [backoff_s(attempt, rng=rng) for _ in range(50)]
        assert all(0 <= wait <= cap for wait in waits)
        assert max(waits) - min(waits) > cap / 4  # spread out, so a fleet does not retry in step


class _Follower:
    def __init__(self, server: str, cache: Path) -> None:
        self.synced: queue.Queue[SyncResult] = queue.Queue()
        self.stop = threading.Event()
        self._client = DefinitionClient(server, timeout_s=10)
        self._thread = threading.Thread(
            target=follow, args=(self._client, cache, self.stop), kwargs={"on_sync": self.synced.put}
        )

    def next_version(self) -> int:
        return self.synced.get(timeout=30).info.version

    def __enter__(self) -> _Follower:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(10)
        self._client.close()
        assert not self._thread.is_alive(), "follow() did not return after stop was set"


@pytest.fixture
def folder(make_snapshot: MakeSnapshot) -> Iterator[Path]:
    yield make_snapshot(version=1).parent


def test_each_new_version_reaches_the_cache(folder: Path, make_snapshot: MakeSnapshot, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with running_server(folder) as server, _Follower(f"127.0.0.1:{server.port}", cache) as follower:
        wait_until_watching(server)
        assert follower.next_version() == 1
        for version in (2, 3):
            make_snapshot(folder=folder, version=version)
            assert follower.next_version() == version
    assert [version for version, _ in list_snapshots(cache)][-1] == 3


def test_it_reconnects_after_the_server_restarts(folder: Path, make_snapshot: MakeSnapshot, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with running_server(folder) as first:
        port = first.port
        follower = _Follower(f"127.0.0.1:{port}", cache).__enter__()
        try:
            assert follower.next_version() == 1
        except BaseException:
            follower.__exit__()
            raise
    try:
        make_snapshot(folder=folder, version=2)  # published while the server is down
        with running_server(folder, port=port):
            assert follower.next_version() == 2
    finally:
        follower.__exit__()
