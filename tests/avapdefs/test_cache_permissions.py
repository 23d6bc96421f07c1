"""The permissions of what a sync and a server write, whatever the umask (docs/reliability.md, "Permissions").

avap-sync's cache (the folder it creates, its snapshots, its PIN), the
server's serving images and a follower's ``.source-state`` are synced and
written under umasks 000, 022 and 077 by real processes: a real server
process, a real client, the real writers.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from avapdefs.client import DefinitionClient
from avapdefs.folder import PIN_NAME, SOURCE_STATE_NAME, snapshot_name, write_pin, write_source_state
from server.image import CACHE_NAME
from tests.helpers import export_snapshot
from tests.server.helpers import running_server, versioned_commands


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o000, 0o022, 0o077], ids=["umask000", "umask022", "umask077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Every file of the test written (and every process started) under this umask."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def test_a_sync_cache_and_a_servers_images_have_their_chosen_modes(tmp_path: Path, umask: int) -> None:
    folder = tmp_path / "snapshots"
    export_snapshot(folder, 1, versioned_commands(1))
    export_snapshot(folder, 2, versioned_commands(2), delta_from=1)
    cache = tmp_path / "worker" / "cache"
    with running_server(folder) as server:
        with DefinitionClient(f"127.0.0.1:{server.port}") as client:
            client.sync(cache)
        images = list((folder / CACHE_NAME).glob("*.avimg"))
    assert _mode(cache) == 0o755  # created by the sync: a snapshot folder any user may read
    assert _mode(cache / snapshot_name(2)) == 0o644
    assert images and all(_mode(image) == 0o444 for image in images)  # the server's, never written again
    assert _mode(folder / CACHE_NAME) == 0o755
    write_pin(cache, 2)
    assert _mode(cache / PIN_NAME) == 0o644
    write_source_state(folder, {"url": "file:///bucket", "reachable": True})
    assert _mode(folder / SOURCE_STATE_NAME) == 0o644


def test_an_existing_cache_folder_keeps_the_mode_its_operator_gave_it(tmp_path: Path, umask: int) -> None:
    folder = tmp_path / "snapshots"
    export_snapshot(folder, 1, versioned_commands(1))
    cache = tmp_path / "private"
    cache.mkdir()
    cache.chmod(0o700)
    with running_server(folder) as server, DefinitionClient(f"127.0.0.1:{server.port}") as client:
        client.sync(cache)
    assert _mode(cache) == 0o700
    assert _mode(cache / snapshot_name(1)) == 0o644
