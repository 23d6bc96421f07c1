"""``avap-export --publish`` under faults: SIGKILLed mid-upload, and two exporters racing on one bucket prefix.

The store is a real SeaweedFS; the exporters reach it through a loopback proxy
(``tests.loopback``) that throttles the link, so that an upload lasts long
enough to be cut, or holds it, so that two exporters read the same
announcement before either writes. After every fault the bucket is checked as
a reader would see it: an announcement names only objects that exist with the
announced size and sha256 and verify, and no object's bytes ever change.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import obstore
import psycopg
import pytest
from obstore.store import from_url

from avapdefs.folder import list_deltas, list_snapshots, read_newest, snapshot_name
from avapdefs.format.delta import apply_delta, decode_delta, target_info
from avapdefs.format.snapshot import verify
from avapdefs.remote import ANNOUNCEMENT_KEY, Announcement, ObjectRef
from exporter.cli import EXIT_OK, EXIT_STORE, main
from exporter.sample import create_schema
from tests.exporter.helpers import ExporterProcess, run_export
from tests.loopback import LoopbackProxy
from tests.objectstore import SeaweedS3

ROWS = 2_000  # about 0.7 MB of snapshot: md5 hex compresses only about 2x
RATE_BYTES_PER_S = 1_000_000  # the proxy's cap: the snapshot's upload takes about 0.7 s
LATENCY_S = 0.05  # each request's round trip through the proxy, as to a distant store
REQUEST_BYTES = 2_048  # more than a request's line and headers
KILLS = 10
KILL_SEED = 20_261_201
KILL_BUDGET_S = 24.0  # past it no new kill starts, once MIN_KILLS are done
MIN_KILLS = 6
RACES = 4
RACE_TIMEOUT_S = 60.0
CONFLICT = "published locally only, and running again does not change that: one exporter per store URL, "


def _insert(conn: psycopg.Connection, count: int, table: str = "obex_dapl_functions") -> None:
    """``count`` commands cmd.0000001... whose code (512 hex digits of md5) compresses only about 2x."""
    conn.execute(
        psycopg.sql.SQL(
            "INSERT INTO {} (name, interface, description, type, code)"
            " SELECT 'cmd.' || lpad(i::text, 7, '0'), '[]', 'generated command ' || i, 'function',"
            " (SELECT string_agg(md5(i::text || '.' || j::text), '') FROM generate_series(1, 16) AS j)"
            " FROM generate_series(1, %s::int) AS i"
        ).format(psycopg.sql.Identifier(*table.split("."))),
        [count],
    )
    conn.commit()


def _edit(conn: psycopg.Connection, rng: random.Random, table: str = "obex_dapl_functions") -> None:
    names = [f"cmd.{rng.randint(1, ROWS):07d}" for _ in range(2)]
    conn.execute(
        psycopg.sql.SQL("UPDATE {} SET code = code || %s WHERE name = ANY(%s)").format(
            psycopg.sql.Identifier(*table.split("."))
        ),
        [f"#{rng.randint(0, 1 << 30)}", names],
    )
    conn.commit()


@dataclass
class Bucket:
    """One prefix of the store as a reader sees it, read directly (not through the proxy)."""

    url: str
    endpoint: str
    seen: dict[str, str] = field(default_factory=dict)  # key -> sha256 of the bytes it ever held
    listed: dict[str, tuple[int, str | None]] = field(default_factory=dict)  # key -> size and ETag, as read
    foreign_bases: int = 0  # announced deltas whose base version the store holds with other content

    def __post_init__(self) -> None:
        self.store = from_url(self.url, endpoint=self.endpoint, client_options={"allow_http": True})

    def listing(self) -> set[str]:
        return {meta["path"] for meta in obstore.list(self.store).collect()}

    def read(self, key: str) -> bytes:
        return bytes(obstore.get(self.store, key).bytes())

    def _check_immutable(self) -> set[str]:
        """Each key's bytes are the ones it held when first read (read again only when its size or ETag moved)."""
        metas = {meta["path"]: (meta["size"], meta.get("e_tag")) for meta in obstore.list(self.store).collect()}
        for key, meta in sorted(metas.items()):
            if key == ANNOUNCEMENT_KEY or self.listed.get(key) == meta:
                continue
            digest = hashlib.sha256(self.read(key)).hexdigest()
            assert self.seen.setdefault(key, digest) == digest, f"{key} was overwritten"
            self.listed[key] = meta
        return set(metas)

    def announcement(self) -> Announcement | None:
        if ANNOUNCEMENT_KEY not in self.listing():
            return None
        return Announcement.from_bytes(self.read(ANNOUNCEMENT_KEY))

    def _object(self, ref: ObjectRef, keys: set[str]) -> bytes:
        assert ref.key in keys, f"{ref.key} is announced but not in the store"
        data = self.read(ref.key)
        assert (len(data), hashlib.sha256(data).hexdigest()) == (ref.size, ref.sha256), f"{ref.key} differs"
        return data

    def check(self) -> Announcement | None:
        """Assert what a reader relies on; return the announcement (None when there is none).

        Every object the announcement names exists with its size and sha256; the
        snapshot verifies and holds the announced version and content; each delta
        decodes, leads to that content and, where the store holds a snapshot of
        its base's content, rebuilds it (a reader holding another base of that version falls back to the
        whole file: counted in ``foreign_bases``). No key's bytes differ from what they were.
        """
        keys = self._check_immutable()
        announcement = self.announcement()
        if announcement is None:
            return None
        snapshot = verify(self._object(announcement.snapshot, keys))
        assert snapshot.info.version == announcement.version
        assert snapshot.info.content_hash.hex() == announcement.content_hash
        for base, ref in announcement.deltas.items():
            delta = decode_delta(self._object(ref, keys))
            assert delta.base_version == base and target_info(delta).content_hash.hex() == announcement.content_hash
            if snapshot_name(base) in keys:
                base_snapshot = verify(self.read(snapshot_name(base)))
                if base_snapshot.info.content_hash == delta.base_content_hash:
                    apply_delta(base_snapshot, delta, io.BytesIO())  # checks the rebuilt content hash
                else:
                    self.foreign_bases += 1
        return announcement


@pytest.fixture
def bucket(s3_url: str, seaweed: SeaweedS3) -> Bucket:
    return Bucket(s3_url, seaweed.endpoint)


@pytest.fixture
def throttled(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch, s3_url: str) -> Iterator[LoopbackProxy]:
    """A proxy to the store's S3 port, capped at RATE_BYTES_PER_S and LATENCY_S a request; the exporters'
    AWS_ENDPOINT_URL points at it."""
    proxy = LoopbackProxy(("127.0.0.1", seaweed.port), rate_bytes_per_s=RATE_BYTES_PER_S, request_latency_s=LATENCY_S)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    yield proxy
    proxy.close()


def _phase(bucket: Bucket, version: int, up_bytes: int) -> str:
    """Where a kill struck in the publication of ``version``, told from the bucket and the bytes sent."""
    announcement = bucket.announcement()
    if announcement is not None and announcement.version == version:
        return "after the announcement"
    if snapshot_name(version) in bucket.listing():
        return "snapshot uploaded, not announced"
    return "mid snapshot upload" if up_bytes > REQUEST_BYTES else "before the upload"


def _until(exporter: ExporterProcess, reached: Callable[[float], bool]) -> bool:
    """Wait until ``reached`` (given a timeout) is true: True, or False when the exporter ended first."""
    deadline = time.monotonic() + 60
    while not reached(0.05):  # looks at the process every 50 ms
        if exporter.process.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the upload did not progress"
    return True


def _strike(exporter: ExporterProcess, proxy: LoopbackProxy, requests: int, request: int, offset: int) -> None:
    """SIGKILL ``exporter`` once the proxy has forwarded the start of its ``request``-th request (counted from
    ``requests``) and ``offset`` bytes more, unless it ends first."""
    if not _until(exporter, lambda timeout_s: proxy.wait_requests(requests + request, timeout_s)):
        return
    target = proxy.bytes_up + offset
    if _until(exporter, lambda timeout_s: proxy.wait_bytes_up(target, timeout_s)):
        exporter.kill()


def test_sigkill_during_the_upload_never_announces_a_missing_or_partial_object(
    db: psycopg.Connection, pg_dsn: str, folder: Path, bucket: Bucket, throttled: LoopbackProxy
) -> None:
    rng = random.Random(KILL_SEED)
    _insert(db, ROWS)
    publish = ("--publish", bucket.url)
    assert run_export(pg_dsn, folder, *publish) == EXIT_OK
    assert bucket.check() is not None
    phases: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    deadline = started + KILL_BUDGET_S
    for kill in range(KILLS):
        if kill >= MIN_KILLS and time.monotonic() > deadline:
            break
        _edit(db, rng)
        version = read_newest(folder).snapshot.info.version + 1
        # The publication's requests: the announcement read (1), the snapshot (2), the deltas (3 to 2 + n),
        # the announcement (3 + n), the listing for retention. Even kills strike at a random byte of the
        # snapshot's upload, odd ones as a delta or the announcement starts.
        requests, up_before = throttled.requests, throttled.bytes_up
        with ExporterProcess(pg_dsn, folder, *publish, merge_stdout=True) as exporter:
            assert exporter.wait_for(f"published version {version}", 60), exporter.lines
            newest = read_newest(folder).snapshot.info
            deltas = sum(target == version for _, target, _ in list_deltas(folder))
            if kill % 2 == 0:
                _strike(exporter, throttled, requests, 2, rng.randrange(newest.file_size))
            else:
                _strike(exporter, throttled, requests, rng.randint(3, 3 + deltas), 0)
        phases[_phase(bucket, version, throttled.bytes_up - up_before)] += 1
        bucket.check()
        # The next run, the table unchanged, repairs the bucket: this version, all its objects.
        assert run_export(pg_dsn, folder, *publish) == EXIT_OK
        announcement = bucket.check()
        assert announcement is not None and announcement.version == version
        assert set(announcement.deltas) == {base for base, target, _ in list_deltas(folder) if target == version}
    print(f"{sum(phases.values())} kills (seed {KILL_SEED}, {RATE_BYTES_PER_S} bytes/s, {LATENCY_S} s a request, "
          f"{time.monotonic() - started:.1f} s): {dict(phases)}")  # fmt: skip
    assert phases["mid snapshot upload"] and phases["snapshot uploaded, not announced"], phases
    # Retention followed the folder: no snapshot the folder no longer holds, whatever the kills left.
    local = {snapshot_name(version) for version, _ in list_snapshots(folder)}
    assert {key for key in bucket.listing() if key.endswith(".avsnap")} <= local


@dataclass(frozen=True)
class Racer:
    """One exporter of the race: its folder and the tables it reads."""

    folder: Path
    table: str

    def args(self) -> list[str]:
        schema = self.table.rpartition(".")[0]
        return ["--snapshots", str(self.folder), "--table", self.table,
                "--bytecode-table", f"{schema}.avap_bytecode" if schema else "avap_bytecode"]  # fmt: skip

    def start(self, dsn: str, url: str, endpoint: str) -> subprocess.Popen[str]:
        env = {**os.environ, "AWS_ENDPOINT_URL": endpoint}
        command = [sys.executable, "-m", "exporter", "--dsn", dsn, *self.args(), "--publish", url]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _race(racers: list[Racer], dsn: str, url: str, proxy: LoopbackProxy) -> list[tuple[int, str, str]]:
    """Start both exporters at once, let them read the announcement together, and wait for their ends."""
    proxy.hold()  # both read the same announcement before either writes
    processes = [racer.start(dsn, url, f"http://127.0.0.1:{proxy.port}") for racer in racers]
    try:
        assert proxy.wait_held(len(racers), RACE_TIMEOUT_S)
        proxy.release()
        ends = [process.communicate(timeout=RACE_TIMEOUT_S) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [(process.returncode, out, err) for process, (out, err) in zip(processes, ends, strict=True)]


def test_two_exporters_racing_on_one_prefix_never_overwrite_and_exactly_one_announces(
    db: psycopg.Connection, pg_dsn: str, tmp_path: Path, bucket: Bucket, seaweed: SeaweedS3
) -> None:
    rng = random.Random(KILL_SEED + 1)
    db.execute("CREATE SCHEMA racer")
    db.execute("SET search_path TO racer")
    create_schema(db)
    db.execute("SET search_path TO public")
    racers = [Racer(tmp_path / "a", "obex_dapl_functions"), Racer(tmp_path / "b", "racer.obex_dapl_functions")]
    for racer in racers:
        _insert(db, ROWS, racer.table)
    proxy = LoopbackProxy(("127.0.0.1", seaweed.port))
    kinds: collections.Counter[str] = collections.Counter()
    lines: list[str] = []
    try:
        for race in range(RACES):
            for racer in racers:
                _edit(db, rng, racer.table)
            if race % 2:  # every other race, B is a version ahead: the two announce different keys
                assert main(["--dsn", pg_dsn, *racers[1].args()]) == EXIT_OK
                _edit(db, rng, racers[1].table)
            ends = _race(racers, pg_dsn, bucket.url, proxy)
            winners = [index for index, (_, out, _) in enumerate(ends) if "announced version" in out]
            assert len(winners) == 1, ends
            winner, loser = winners[0], 1 - winners[0]
            code, _, err = ends[loser]
            assert ends[winner][0] == EXIT_OK and code == EXIT_STORE, ends
            [line] = err.strip().splitlines()
            assert line.startswith(f"avap-export: {bucket.url}: "), line
            kinds["object" if "is already in the store" in line else "announcement"] += 1
            announcement = bucket.check()
            newest = read_newest(racers[winner].folder).snapshot.info
            assert announcement is not None and announcement.content_hash == newest.content_hash.hex()
            # The loser's line says whether running it again helps, and it is right.
            again = main(["--dsn", pg_dsn, *racers[loser].args(), "--publish", bucket.url])
            if read_newest(racers[loser].folder).snapshot.info.version > newest.version:
                assert line.endswith("(the next run completes it)") and again == EXIT_OK, (line, again)
            else:
                assert CONFLICT in line and again == EXIT_STORE, (line, again)
            lines.append(line)
            bucket.check()
    finally:
        proxy.close()
    print(f"{RACES} races, the loser stopped at the {dict(kinds)}; {bucket.foreign_bases} announced deltas "
          "from a base the store holds with the other exporter's content:", *lines, sep="\n")  # fmt: skip
    assert kinds["object"] and kinds["announcement"], kinds
