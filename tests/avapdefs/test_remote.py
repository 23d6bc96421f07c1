"""Publishing to and pulling from object storage, against a real SeaweedFS S3 gateway and a file:// store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import obstore
import pytest
from obstore.store import from_url

from avapdefs.folder import delta_name, list_snapshots, prune, snapshot_name
from avapdefs.remote import (
    ANNOUNCEMENT_KEY,
    Announcement,
    Follower,
    NoAnnouncementError,
    ObjectRef,
    Remote,
    RemoteError,
    StoreUnavailableError,
)
from tests.helpers import export_snapshot as _export
from tests.helpers import numbered_commands as _commands
from tests.objectstore import SeaweedS3


@pytest.fixture(params=["s3", "file"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "s3":
        return str(request.getfixturevalue("s3_url"))
    return f"file://{tmp_path / 'store'}/"


def _remote(url: str) -> Remote:
    return Remote(url, allow_http=True, timeout_s=10, retries=1)


def test_publish_then_pull_installs_the_same_bytes(store_url: str, tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    published = _export(origin, 1, _commands(50))
    result = _remote(store_url).publish(origin)
    assert result.announced
    assert result.uploaded == (snapshot_name(1),)

    cache = tmp_path / "cache"
    pulled = _remote(store_url).pull(cache)
    assert pulled.installed == cache / snapshot_name(1)
    assert pulled.installed.read_bytes() == published.read_bytes()
    assert not pulled.delta
    assert pulled.bytes_received == published.stat().st_size


def test_an_unchanged_announcement_costs_no_body_and_installs_nothing(store_url: str, tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    _export(origin, 1, _commands(10))
    remote = _remote(store_url)
    remote.publish(origin)
    first = remote.pull(tmp_path / "cache")
    second = remote.pull(tmp_path / "cache", etag=first.etag)
    assert first.etag is not None
    assert second.announcement is None
    assert second.installed is None
    # Published again with nothing new: the same announcement, not rewritten, so the ETag still holds.
    again = remote.publish(origin)
    assert not again.announced
    assert again.uploaded == ()
    assert remote.pull(tmp_path / "cache", etag=first.etag).announcement is None


def test_a_newer_version_arrives_as_a_delta(store_url: str, tmp_path: Path) -> None:
    origin, cache = tmp_path / "origin", tmp_path / "cache"
    remote = _remote(store_url)
    _export(origin, 1, _commands(400))
    remote.publish(origin)
    remote.pull(cache)
    target = _export(origin, 2, _commands(400, changed=7), delta_from=1)
    published = remote.publish(origin)
    assert set(published.uploaded) == {snapshot_name(2), delta_name(1, 2)}
    assert set(published.announcement.deltas) == {1}

    pulled = remote.pull(cache)
    assert pulled.delta
    assert pulled.installed is not None and pulled.installed.read_bytes() == target.read_bytes()
    assert pulled.bytes_received < target.stat().st_size / 10
    # A cache with no base for the delta gets the whole file.
    whole = remote.pull(tmp_path / "fresh")
    assert not whole.delta and whole.bytes_received == target.stat().st_size


def test_a_version_is_never_overwritten(s3_url: str, tmp_path: Path) -> None:
    remote = _remote(s3_url)
    first = tmp_path / "first"
    _export(first, 1, _commands(5))
    remote.publish(first)
    # Another folder numbered its own, different catalog version 1: the store keeps the first.
    other = tmp_path / "other"
    _export(other, 1, _commands(6))
    with pytest.raises(RemoteError, match="already in the store with other content"):
        remote.publish(other)
    pulled = remote.pull(tmp_path / "cache")
    assert pulled.installed is not None
    assert pulled.installed.read_bytes() == (first / snapshot_name(1)).read_bytes()


def test_an_announcement_is_written_only_after_every_object_it_names(s3_url: str, tmp_path: Path) -> None:
    remote = _remote(s3_url)
    origin = tmp_path / "origin"
    _export(origin, 1, _commands(5))
    remote.publish(origin)
    _export(origin, 2, _commands(5, changed=1), delta_from=1)
    # A different object already holds version 2's delta name: the upload fails before the announcement.
    store = from_url(s3_url, client_options={"allow_http": True})
    obstore.put(store, delta_name(1, 2), b"someone else's bytes")
    with pytest.raises(RemoteError, match="already in the store"):
        remote.publish(origin)
    announcement, _ = remote.read_announcement()
    assert announcement is not None and announcement.version == 1


def test_a_damaged_object_is_refused_and_the_folder_is_unchanged(s3_url: str, tmp_path: Path) -> None:
    remote = _remote(s3_url)
    origin, cache = tmp_path / "origin", tmp_path / "cache"
    _export(origin, 1, _commands(20))
    remote.publish(origin)
    remote.pull(cache)
    _export(origin, 2, _commands(20, changed=3))
    remote.publish(origin)
    store = from_url(s3_url, client_options={"allow_http": True})
    data = bytearray(bytes(obstore.get(store, snapshot_name(2)).bytes()))
    data[-5] ^= 0xFF
    obstore.put(store, snapshot_name(2), bytes(data))  # a store fault: the bytes change, the announcement does not
    with pytest.raises(RemoteError, match="differs from the announced size and sha256"):
        remote.pull(cache)
    assert [version for version, _ in list_snapshots(cache)] == [1]
    assert not [path for path in cache.iterdir() if path.name.startswith(".tmp-")]


def test_the_store_never_goes_back_a_version(s3_url: str, tmp_path: Path) -> None:
    remote = _remote(s3_url)
    ahead, behind = tmp_path / "ahead", tmp_path / "behind"
    _export(ahead, 1, _commands(3))
    _export(ahead, 2, _commands(3, changed=0))
    remote.publish(ahead)
    _export(behind, 1, _commands(3))
    with pytest.raises(RemoteError, match="refusing to announce an older one"):
        remote.publish(behind)


def test_retention_in_the_store_follows_the_folder(s3_url: str, tmp_path: Path) -> None:
    remote = _remote(s3_url)
    origin = tmp_path / "origin"
    _export(origin, 1, _commands(30))
    remote.publish(origin)
    for version in (2, 3, 4):
        _export(origin, version, _commands(30, changed=version), delta_from=version - 1)
        prune(origin, 2)
        remote.publish(origin)
    store = from_url(s3_url, client_options={"allow_http": True})
    keys = sorted(meta["path"] for meta in obstore.list(store).collect())
    assert keys == sorted([ANNOUNCEMENT_KEY, snapshot_name(3), snapshot_name(4), delta_name(3, 4)])


def test_no_announcement_and_a_bad_announcement_are_clear_errors(s3_url: str, tmp_path: Path) -> None:
    remote = _remote(s3_url)
    with pytest.raises(NoAnnouncementError, match="nothing has been published here yet"):
        remote.pull(tmp_path / "cache")
    store = from_url(s3_url, client_options={"allow_http": True})
    obstore.put(store, ANNOUNCEMENT_KEY, b'{"format": 1, "version": 3, "snapshot": {"key": "../../etc/passwd"}}')
    with pytest.raises(RemoteError, match="not a valid announcement"):
        remote.pull(tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


@pytest.mark.parametrize(
    "field, value",
    [("version", 0), ("version", 1 << 63), ("version", "2"), ("content_hash", "zz"), ("command_count", -1)],
)
def test_announcement_fields_are_bounded(field: str, value: object) -> None:
    good = Announcement(
        version=2,
        content_hash="ab" * 32,
        command_count=3,
        snapshot=ObjectRef(snapshot_name(2), 10, "cd" * 32),
    )
    assert Announcement.from_bytes(good.to_bytes()) == good
    document = json.loads(good.to_bytes())
    document[field] = value
    with pytest.raises(RemoteError, match="not a valid announcement"):
        Announcement.from_bytes(json.dumps(document).encode())


def test_an_unreachable_store_is_reported_within_the_timeout(
    seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: nothing listens on loopback
    remote = Remote("s3://nowhere/catalog", allow_http=True, timeout_s=2, connect_timeout_s=1, retries=1)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="nowhere"):
        remote.pull(tmp_path / "cache")
    assert time.monotonic() - started < 10


def test_a_follower_installs_each_new_version_and_polls_cheaply(s3_url: str, tmp_path: Path) -> None:
    origin, folder = tmp_path / "origin", tmp_path / "folder"
    publisher = _remote(s3_url)
    follower = Follower(_remote(s3_url), folder, poll_s=0.1)
    with pytest.raises(NoAnnouncementError):
        publisher.read_announcement()
    assert follower.poll() is None and follower.state.reachable is True
    _export(origin, 1, _commands(40))
    publisher.publish(origin)
    first = follower.poll()
    assert first is not None and first.installed == folder / snapshot_name(1)
    _export(origin, 2, _commands(40, changed=2), delta_from=1)
    publisher.publish(origin)
    second = follower.poll()
    assert second is not None and second.delta and follower.state.version == 2
    unchanged = follower.poll()
    assert unchanged is not None and unchanged.announcement is None
    assert [version for version, _ in list_snapshots(folder)] == [1, 2]


def test_a_follower_says_once_that_the_store_is_unreachable(
    seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    folder = tmp_path / "folder"
    kept = _export(folder, 1, _commands(3))
    remote = Remote("s3://nowhere/catalog", allow_http=True, timeout_s=2, connect_timeout_s=1, retries=0)
    follower = Follower(remote, folder, poll_s=0.1)
    with caplog.at_level("WARNING", logger="avapdefs.remote"):
        assert [follower.poll() for _ in range(3)] == [None, None, None]
    assert len(caplog.records) == 1  # said once, not at every poll
    assert "cannot reach the store" in caplog.records[0].getMessage()
    assert follower.state.reachable is False and "nowhere" in follower.state.last_error
    assert list_snapshots(folder) == [(1, kept)]
