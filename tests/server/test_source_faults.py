"""``avap-server --source`` under store faults: the store cut off while the server runs, and damaged objects.

A real SeaweedFS holds the bucket; the server reaches it through a loopback
proxy (``tests.loopback``) that the test cuts (every connection reset, as a
store that is down) and restores. Objects are damaged by writing other bytes
under an announced key, as bit rot or a broken publisher would.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import obstore
import pytest
from obstore.store import from_url

from avapdefs.folder import delta_name, list_snapshots, snapshot_name
from avapdefs.format.snapshot import read_file
from avapdefs.remote import ANNOUNCEMENT_KEY, Announcement, ObjectRef, Remote
from avapdefs.v1.definitions_pb2 import CatalogInfo, GetCatalogInfoRequest, GetCommandRequest
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from server.health import NOT_SERVING, SERVING
from server.service import SERVICE_NAME
from tests.helpers import export_snapshot, numbered_commands
from tests.loopback import LoopbackProxy
from tests.objectstore import SeaweedS3
from tests.server.helpers import health_status, raw_unary, server_process
from tests.server.process_log import WAIT_S, ServerLog

POLL_S = 0.3
REFUSED_POLLS = 5  # polls watched while a refused announcement stands
MAX_AGE_S = 8.0  # the version served when the store goes away is 1-2 s old: fresh, then stale while cut off


Serve = Callable[..., ServerLog]


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Serve]:
    """Start ``avap-server ARGS`` (with AWS_ENDPOINT_URL as given) and return its log; stopped at the end."""
    started: list[ServerLog] = []

    def start(*argv: str, endpoint: str) -> ServerLog:
        with monkeypatch.context() as env:
            env.setenv("AWS_ENDPOINT_URL", endpoint)
            log = ServerLog(server_process(*argv, "--log-level", "info"))
        started.append(log)
        return log

    yield start
    for log in started:
        assert log.stop() == 0, "".join(log.lines)


def _until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """Wait until ``condition()`` is true, looking every 50 ms, for at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not true within {timeout_s} s: {condition}"
        time.sleep(0.05)  # polling a condition, bounded by the deadline above


def _info(port: int) -> CatalogInfo:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return DefinitionServiceStub(channel).GetCatalogInfo(GetCatalogInfoRequest(), timeout=5)


def _get(port: int, name: str) -> bytes:
    """GetCommand's answer for ``name`` as its bytes on the wire."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return raw_unary(channel, "GetCommand")(GetCommandRequest(name=name).SerializeToString(), timeout=5)


def test_a_server_cut_off_from_its_store_keeps_serving_and_catches_up_when_it_returns(
    s3_url: str, seaweed: SeaweedS3, serve: Serve, tmp_path: Path
) -> None:
    origin, cache = tmp_path / "origin", tmp_path / "cache"
    publisher = Remote(s3_url, allow_http=True, timeout_s=10)  # straight to the store, never cut off
    export_snapshot(origin, 1, numbered_commands(100))
    publisher.publish(origin)
    proxy = LoopbackProxy(("127.0.0.1", seaweed.port))
    try:
        args = ["--source", s3_url, "--source-poll", str(POLL_S), "--snapshots", str(cache), "--port", "0",
                "--max-age", f"{MAX_AGE_S}s"]  # fmt: skip
        log = serve(*args, endpoint=f"http://127.0.0.1:{proxy.port}")
        port = int(log.wait_for(r"serving catalog version 1 .* on 127\.0\.0\.1:(\d+)").group(1))
        export_snapshot(origin, 2, numbered_commands(100, changed=2), delta_from=1)
        publisher.publish(origin)
        log.wait_for(r"loaded catalog version 2 ")
        served = _get(port, "cmd0002")

        proxy.refuse()  # the store is down
        cut_at = len(log.lines)
        log.wait_for(r"cannot reach the store \(.*\); the folder keeps what it has", cut_at)
        _until(lambda: not _info(port).store.reachable)
        info = _info(port)
        assert (info.version, info.store.url, info.store.announced_version) == (2, s3_url, 2)
        assert info.store.last_error.startswith(f"{s3_url}: reading {ANNOUNCEMENT_KEY}: ")
        assert info.store.last_success_unix_ms > 0
        # Unreachable alone is no reason to stop serving: the version is younger than --max-age.
        assert info.snapshot_age_s < MAX_AGE_S
        assert health_status(port, SERVICE_NAME) == SERVING
        assert _get(port, "cmd0002") == served

        # Staleness, and only staleness, turns the definition service NOT_SERVING.
        log.wait_for(r"catalog version 2 is \d+ s old, over --max-age", cut_at, MAX_AGE_S + WAIT_S)
        assert health_status(port, SERVICE_NAME) == NOT_SERVING
        assert health_status(port, "") == SERVING
        assert _get(port, "cmd0002") == served
        assert _info(port).version == 2
        # Published while this server cannot see it, and late in the outage: a version made before the
        # wait above could itself be older than --max-age by the time the server catches up with it.
        export_snapshot(origin, 3, numbered_commands(100, changed=3), delta_from=2)
        publisher.publish(origin)
        assert _info(port).version == 2

        proxy.restore()
        restored_at, back = time.monotonic(), len(log.lines)
        log.wait_for(r"reached .* again", back)
        log.wait_for(r"loaded catalog version 3 ", back)
        caught_up_s = time.monotonic() - restored_at
        info = _info(port)
        assert (info.version, info.store.reachable, info.store.last_error, info.store.announced_version) == (
            3,
            True,
            "",
            3,
        )
        _until(lambda: health_status(port, SERVICE_NAME) == SERVING)
        assert _get(port, "cmd0003") != _get(port, "cmd0002")
    finally:
        proxy.close()
    print(f"caught up {caught_up_s:.2f} s after the store returned (--source-poll {POLL_S} s)")
    assert caught_up_s < 10 * POLL_S + 5  # a few poll intervals, and the load
    assert log.count("cannot reach the store") == 1  # said once, not at every poll


def _put(url: str, endpoint: str, key: str, data: bytes) -> None:
    obstore.put(from_url(url, endpoint=endpoint, client_options={"allow_http": True}), key, data)


def _announce(url: str, endpoint: str, snapshot: Path, objects: dict[str, bytes], deltas: dict[int, bytes]) -> None:
    """Write an announcement of ``snapshot``'s version by hand, naming the given objects' bytes."""
    info = read_file(snapshot).info
    name = snapshot_name(info.version)

    def ref(key: str, data: bytes) -> ObjectRef:
        return ObjectRef(key, len(data), hashlib.sha256(data).hexdigest())

    announcement = Announcement(
        version=info.version,
        content_hash=info.content_hash.hex(),
        command_count=info.command_count,
        snapshot=ref(name, objects[name]),
        deltas={base: ref(delta_name(base, info.version), data) for base, data in deltas.items()},
    )
    _put(url, endpoint, ANNOUNCEMENT_KEY, announcement.to_bytes())


def _damaged(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def test_a_damaged_object_is_refused_and_the_live_version_keeps_serving(
    s3_url: str, seaweed: SeaweedS3, serve: Serve, tmp_path: Path
) -> None:
    origin, cache = tmp_path / "origin", tmp_path / "cache"
    publisher = Remote(s3_url, allow_http=True, timeout_s=10)
    export_snapshot(origin, 1, numbered_commands(300))
    publisher.publish(origin)
    proxy = LoopbackProxy(("127.0.0.1", seaweed.port))  # counts the bytes the server downloads
    try:
        args = ["--source", s3_url, "--source-poll", str(POLL_S), "--snapshots", str(cache), "--port", "0"]
        log = serve(*args, endpoint=f"http://127.0.0.1:{proxy.port}")
        port = int(log.wait_for(r"serving catalog version 1 .* on 127\.0\.0\.1:(\d+)").group(1))
        served = _get(port, "cmd0002")
        good = export_snapshot(origin, 2, numbered_commands(300, changed=2)).read_bytes()
        name = snapshot_name(2)

        # The object differs from the announced sha256: bit rot, or another object under its key.
        _put(s3_url, seaweed.endpoint, name, _damaged(good))
        start = len(log.lines)
        _announce(s3_url, seaweed.endpoint, origin / name, {name: good}, {})
        log.wait_for(rf"{name} differs from the announced size and sha256; the folder keeps what it has", start)
        _until(lambda: "differs from the announced" in _info(port).store.last_error)
        info = _info(port)
        assert (info.version, info.store.reachable, info.store.announced_version) == (1, True, 1)
        assert _get(port, "cmd0002") == served

        # The announcement agrees with the damaged bytes (a publisher that uploaded them): they do not verify.
        start = len(log.lines)
        _announce(s3_url, seaweed.endpoint, origin / name, {name: _damaged(good)}, {})
        log.wait_for(rf"{name} does not verify: .*; the folder keeps what it has", start)
        _until(lambda: "does not verify" in _info(port).store.last_error)
        assert _info(port).version == 1 and _get(port, "cmd0002") == served
        assert log.count("does not verify") == 1  # said once, not at every poll
        # While it stands, each poll is a conditional GET on its ETag: the damaged object is not fetched again.
        down, requests = proxy.bytes_down, proxy.requests
        assert proxy.wait_requests(requests + REFUSED_POLLS, WAIT_S)
        refused_bytes = proxy.bytes_down - down
        print(f"{proxy.requests - requests} polls of a refused announcement: {refused_bytes} bytes received")
        assert refused_bytes < len(good), (refused_bytes, proxy.requests - requests)

        # A good version 3 whose delta is damaged: the server falls back to the whole file.
        good3 = export_snapshot(origin, 3, numbered_commands(300, changed=3), delta_from=1)
        delta_key = delta_name(1, 3)
        delta = (origin / delta_key).read_bytes()
        _put(s3_url, seaweed.endpoint, snapshot_name(3), good3.read_bytes())
        _put(s3_url, seaweed.endpoint, delta_key, _damaged(delta))
        start = len(log.lines)
        _announce(s3_url, seaweed.endpoint, good3, {snapshot_name(3): good3.read_bytes()}, {1: _damaged(delta)})
        log.wait_for(rf"delta {delta_key} failed .*; fetching the whole file", start)
        log.wait_for(r"loaded catalog version 3 ", start)
        assert (cache / snapshot_name(3)).read_bytes() == good3.read_bytes()
        info = _info(port)
        assert (info.version, info.store.last_error, info.store.announced_version) == (3, "", 3)

        # The publisher's next version is taken, from its delta.
        export_snapshot(origin, 4, numbered_commands(300, changed=4), delta_from=3)
        start = len(log.lines)
        publisher.publish(origin)
        log.wait_for(r"installed catalog version 4 .* from a delta against version 3", start)
        log.wait_for(r"loaded catalog version 4 ", start)
        assert _get(port, "cmd0004") != _get(port, "cmd0003")
        assert [version for version, _ in list_snapshots(cache)][-1] == 4
    finally:
        proxy.close()
