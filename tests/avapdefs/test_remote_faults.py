"""A follower and a refused announcement (a real SeaweedFS): polled on its ETag, taken again once it is whole."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import obstore
from obstore.store import from_url

from avapdefs.folder import list_snapshots, snapshot_name
from avapdefs.format.snapshot import read_file
from avapdefs.remote import ANNOUNCEMENT_KEY, Announcement, Follower, ObjectRef, Remote
from tests.helpers import export_snapshot, numbered_commands
from tests.objectstore import SeaweedS3

RETRY_S = 0.5  # the follower's REFUSED_RETRY_S in these tests (60 s in service)


def _announce_missing(url: str, endpoint: str, snapshot: Path) -> None:
    """Announce ``snapshot``'s version without uploading it: a replicated bucket that copied the announcement first."""
    info, data = read_file(snapshot).info, snapshot.read_bytes()
    ref = ObjectRef(snapshot_name(info.version), len(data), hashlib.sha256(data).hexdigest())
    announcement = Announcement(info.version, info.content_hash.hex(), info.command_count, ref)
    store = from_url(url, endpoint=endpoint, client_options={"allow_http": True})
    obstore.put(store, ANNOUNCEMENT_KEY, announcement.to_bytes())


def _follower(url: str, folder: Path) -> Follower:
    follower = Follower(Remote(url, allow_http=True, timeout_s=10), folder, poll_s=0.1)
    follower.REFUSED_RETRY_S = RETRY_S
    return follower


def test_a_refused_announcement_is_not_fetched_again_until_its_retry_and_then_taken(
    s3_url: str, seaweed: SeaweedS3, tmp_path: Path
) -> None:
    origin, cache = tmp_path / "origin", tmp_path / "cache"
    publisher = Remote(s3_url, allow_http=True, timeout_s=10)
    export_snapshot(origin, 1, numbered_commands(50))
    publisher.publish(origin)
    follower = _follower(s3_url, cache)
    assert follower.poll() is not None and [v for v, _ in list_snapshots(cache)] == [1]

    late = export_snapshot(origin, 2, numbered_commands(50, changed=7))
    _announce_missing(s3_url, seaweed.endpoint, late)
    refused_at = time.monotonic()
    assert follower.poll() is None
    assert follower.state.last_error.endswith(f"{snapshot_name(2)} is announced but not in the store")
    store = from_url(s3_url, endpoint=seaweed.endpoint, client_options={"allow_http": True})
    obstore.put(store, snapshot_name(2), late.read_bytes())  # the object arrives; the announcement is the same
    polls = 0
    while True:  # each poll is a conditional GET on the refused ETag until RETRY_S has passed
        result = follower.poll()
        polls += 1
        if result is not None and result.installed is not None:
            break
        assert result is not None and result.announcement is None, result  # not modified: nothing fetched
        assert "is announced but not in the store" in follower.state.last_error  # the refusal stands
        assert follower.state.reachable and time.monotonic() - refused_at < RETRY_S + 10
    assert time.monotonic() - refused_at >= RETRY_S and polls > 1
    assert result.installed.read_bytes() == late.read_bytes()
    assert (follower.state.last_error, follower.state.version) == ("", 2)


def test_a_new_announcement_is_taken_at_once_while_a_refused_one_waits(
    s3_url: str, seaweed: SeaweedS3, tmp_path: Path
) -> None:
    origin, cache = tmp_path / "origin", tmp_path / "cache"
    publisher = Remote(s3_url, allow_http=True, timeout_s=10)
    export_snapshot(origin, 1, numbered_commands(50))
    publisher.publish(origin)
    follower = _follower(s3_url, cache)
    follower.REFUSED_RETRY_S = 600.0  # the refused one is not tried again during this test
    assert follower.poll() is not None
    _announce_missing(s3_url, seaweed.endpoint, export_snapshot(origin, 2, numbered_commands(50, changed=7)))
    assert follower.poll() is None and follower.state.last_error
    export_snapshot(origin, 3, numbered_commands(50, changed=8), delta_from=2)
    publisher.publish(origin)
    result = follower.poll()
    assert result is not None and result.installed is not None and not result.delta  # no base 2 here: the file
    assert result.installed.read_bytes() == (origin / snapshot_name(3)).read_bytes()
    assert (follower.state.last_error, follower.state.version) == ("", 3)
