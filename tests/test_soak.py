"""Soak: a real avap-server under GetCommand load, syncs and watches while a new version goes live every few seconds.

Marked ``soak``, so the suite leaves it out; run it on demand (10 minutes, or
``AVAP_SOAK_S`` seconds)::

    .venv/bin/python -m pytest -m soak tests/test_soak.py
    AVAP_SOAK_S=60 .venv/bin/python -m pytest -m soak tests/test_soak.py

``avap-server`` runs as deployed (its default ``--processes``, one per CPU, on
a fixed port of 127.0.0.1) over a folder of 5,000 commands. For the whole run:
grpcio threads call GetCommand and check every answer's bytes against the
versions published; one client syncs the whole file into an empty cache again
and again; watchers follow WatchCatalog, and two of them sync their caches
(a delta each time) on every new version; every few seconds a new version, with
a delta from the one before, is published as the exporter publishes (atomic,
older ones pruned to 10). It asserts no error anywhere (calls, syncs, streams,
the server's log), every watcher at the newest version at the end, the server
stopping cleanly, and its process tree's RSS at the end within
``max(25 %, 50 MB)`` of its RSS after the warm-up. The bound is meant to
catch a leak of versions: a version's serving image is 1.26 MB here, mapped
into each of the serving processes, so an old version kept on every publish
(about 2.5 MB of RSS on 2 CPUs, one every 3 s) passes it within about a
minute, and the 10-minute run publishes 200.
A table goes to the terminal; the figures to ``bench/results/soak-*.json``.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import random
import shutil
import signal
import threading
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from avapdefs.client import DefinitionClient
from avapdefs.folder import prune
from avapdefs.format import snapshot, wire
from avapdefs.v1.definitions_pb2 import CatalogInfo, Command, GetCommandRequest
from tests.helpers import export_snapshot, numbered_commands, sample_command
from tests.server.helpers import ROOT, free_port, log_lines, raw_unary, server_process, wait_for_line

DURATION_S = float(os.environ.get("AVAP_SOAK_S", "600"))
PUBLISH_S = 3.0  # a new version this often
WINDOW_S = 30.0  # p99 and memory per window
WARMUP_S = min(60.0, DURATION_S / 2)  # memory is compared from here
COMMANDS = 5000
CHANGED = 20  # commands rewritten in each version, beside the marker
MARKER = "soak.version"  # a command whose code names its version
KEEP = 10  # versions left in the folder, as the exporter's default --keep
CALLERS = 3
WATCHERS = 4  # watchers that only watch
SYNCERS = 2  # watchers that also sync their cache on each new version
FULL_SYNC_S = 2.0
STALE_S = 10.0  # an answer may come from a version replaced at most this long before the call began
CATCH_UP_S = 60.0
RSS_GROWTH = 0.25
RSS_SLACK_BYTES = 50 << 20

pytestmark = [pytest.mark.soak, pytest.mark.timeout(DURATION_S + 300)]


class Errors:
    """Every failure of every thread: counted, the first ones kept in words."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.first: list[str] = []

    def add(self, where: str, what: object) -> None:
        with self._lock:
            self.count += 1
            if len(self.first) < 20:
                self.first.append(f"{where}: {what!r}")


class Catalog:
    """The versions published: their commands, content hashes and times, and the GetCommand answers each gives.

    Thread safe: the publisher adds, the callers and watchers read.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._current = {command.name: command for command in numbered_commands(COMMANDS)}
        self._current[MARKER] = sample_command(MARKER, code="version = 1")
        self._answers: dict[bytes, tuple[str, int]] = {}  # answer bytes: the name and the version it appeared in
        self._changes: dict[str, list[int]] = {}  # name: the versions its answer changed in
        self.started: list[float] = []  # started[v - 1]: when the publishing of version v began (monotonic)
        self.hashes: dict[int, bytes] = {}
        self.newest = 0  # the newest version whose publishing began
        self.recent: list[str] = [MARKER]  # the names the newest version changed
        for name in self._current:
            self._record(name, 1)

    def _record(self, name: str, version: int) -> None:
        sealed = Command()
        sealed.CopyFrom(self._current[name])
        self._answers[wire.encode_entry(snapshot.seal_command(sealed))] = (name, version)
        self._changes.setdefault(name, []).append(version)

    def begin(self, version: int) -> list[Command]:
        """The commands of ``version`` (the first, or ``CHANGED`` rewritten and the marker), its answers recorded."""
        with self._lock:
            if version > 1:
                names = [f"cmd{(version * CHANGED + j) % COMMANDS:04d}" for j in range(CHANGED)]
                for name in names:
                    self._current[name] = sample_command(name, code=f"x = {name}  # version {version}")
                self._current[MARKER] = sample_command(MARKER, code=f"version = {version}")
                for name in [*names, MARKER]:
                    self._record(name, version)
                self.recent = [*names, MARKER]
            self.started.append(time.monotonic())
            self.newest = version
            return list(self._current.values())

    def published(self, version: int, content_hash: bytes) -> None:
        with self._lock:
            self.hashes[version] = content_hash
            self._lock.notify_all()

    def content_hash(self, version: int) -> bytes | None:
        """The content hash of ``version`` once its file is in the folder (a watcher may hear of it first)."""
        with self._lock:
            self._lock.wait_for(lambda: version in self.hashes or version > self.newest, timeout=10)
            return self.hashes.get(version)

    def check(self, name: str, answer: bytes, began: float) -> str | None:
        """What is wrong with ``answer`` to GetCommand ``name`` sent at ``began``, or None.

        It must be ``name``'s answer in a version published by now, not replaced before ``began - STALE_S``.
        """
        with self._lock:
            found = self._answers.get(answer)
            if found is None or found[0] != name:
                return f"{name}: {len(answer)} bytes that no version answers"
            changes = self._changes[name]
            after = bisect.bisect_right(changes, found[1])
            oldest = max(bisect.bisect_right(self.started, began - STALE_S), 1)  # live STALE_S before
            if after < len(changes) and changes[after] <= oldest:
                replaced = changes[after]
                return f"{name}: version {found[1]}'s answer, though {replaced} was live {STALE_S:g} s before the call"
            return None


@dataclass
class Worker:
    """A thread of the soak: its name, its thread, and what it counted."""

    name: str
    thread: threading.Thread | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1


class Caller(Worker):
    """Calls GetCommand without pause on a channel of its own, timing each call by window and checking it."""

    def __init__(self, name: str, target: str, catalog: Catalog, errors: Errors, t0: float, seed: int) -> None:
        super().__init__(name)
        self.target, self.catalog, self.errors, self.t0 = target, catalog, errors, t0
        self.rng = random.Random(seed)
        self.windows: dict[int, array[float]] = {}

    def _pick(self, turn: int) -> str:
        if turn % 4 == 0:
            return MARKER
        if turn % 4 == 1:
            return self.rng.choice(self.catalog.recent)
        return f"cmd{self.rng.randrange(COMMANDS):04d}"

    def run(self, stop: threading.Event) -> None:
        with grpc.insecure_channel(self.target) as channel:
            call = raw_unary(channel, "GetCommand")
            turn = 0
            while not stop.is_set():
                name = self._pick(turn)
                turn += 1
                began = time.monotonic()
                try:
                    answer = call(GetCommandRequest(name=name).SerializeToString(), timeout=10)
                except grpc.RpcError as exc:
                    self.errors.add(self.name, exc)
                    stop.wait(0.1)
                    continue
                latency = time.monotonic() - began
                self.windows.setdefault(int((began - self.t0) // WINDOW_S), array("d")).append(latency)
                wrong = self.catalog.check(name, answer, began)
                if wrong is not None:
                    self.errors.add(self.name, wrong)


class Watcher(Worker):
    """Follows a WatchCatalog stream, checking each version it announces; a syncer syncs its cache on each."""

    def __init__(
        self, name: str, client: DefinitionClient, catalog: Catalog, errors: Errors, cache: Path | None
    ) -> None:
        super().__init__(name)
        self.client, self.catalog, self.errors, self.cache = client, catalog, errors, cache
        self.seen = 0
        self.lags_s: list[float] = []  # from the start of a publish to its announcement here (a stream's first aside)
        self.changed = threading.Condition()
        self.stream: Any = None

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.stream = self.client.watch(self.seen)
            first = True  # the version live when the stream opened, not one published meanwhile
            try:
                for message in self.stream:
                    if message.WhichOneof("event") == "catalog":
                        self._announced(message.catalog, first)
                        first = False
                    else:
                        self.count("heartbeats")
            except Exception as exc:
                if stop.is_set():
                    return
                self.errors.add(self.name, exc)
            else:
                self.errors.add(self.name, "the watch stream ended")
            stop.wait(1)  # then watch again, from the version seen

    def _announced(self, catalog: CatalogInfo, first: bool) -> None:
        self.count("versions")
        if catalog.version <= self.seen:
            self.errors.add(self.name, f"version {catalog.version} announced after {self.seen}")
        elif catalog.content_hash != self.catalog.content_hash(catalog.version):
            self.errors.add(self.name, f"version {catalog.version} announced with another content hash")
        elif not first:
            self.lags_s.append(time.monotonic() - self.catalog.started[catalog.version - 1])
        if self.cache is not None:
            self._sync(catalog.version)
        with self.changed:
            self.seen = max(self.seen, catalog.version)
            self.changed.notify_all()

    def _sync(self, version: int) -> None:
        try:
            result = self.client.sync(self.cache)  # type: ignore[arg-type]  # a syncer has a cache
        except Exception as exc:
            self.errors.add(self.name, exc)
            return
        self.count("up to date" if result.up_to_date else "delta syncs" if result.delta else "full syncs")
        if result.info.version < version:
            self.errors.add(self.name, f"synced version {result.info.version} after {version} was announced")
        elif result.info.content_hash != self.catalog.content_hash(result.info.version):
            self.errors.add(self.name, f"synced version {result.info.version} with another content hash")

    def wait_for(self, version: int, timeout_s: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.seen >= version, timeout_s)


class FullSyncer(Worker):
    """Syncs the whole file into an empty cache every FULL_SYNC_S, and checks what it got."""

    def __init__(self, client: DefinitionClient, catalog: Catalog, errors: Errors, root: Path) -> None:
        super().__init__("full sync")
        self.client, self.catalog, self.errors, self.root = client, catalog, errors, root

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(FULL_SYNC_S):
            cache = self.root / "full"
            try:
                result = self.client.sync(cache)
            except Exception as exc:
                self.errors.add(self.name, exc)
                continue
            finally:
                shutil.rmtree(cache, ignore_errors=True)
            self.count("full syncs")
            expected = self.catalog.content_hash(result.info.version)
            if result.delta or result.up_to_date or result.info.content_hash != expected:
                self.errors.add(self.name, f"version {result.info.version}: not the whole, published file")


class Publisher(Worker):
    """Publishes a new version every PUBLISH_S as the exporter does: atomically, with a delta, older ones pruned."""

    def __init__(self, folder: Path, catalog: Catalog, errors: Errors) -> None:
        super().__init__("publisher")
        self.folder, self.catalog, self.errors = folder, catalog, errors
        self.version = 0

    def publish(self) -> None:
        version = self.version + 1
        path = export_snapshot(self.folder, version, self.catalog.begin(version), delta_from=self.version or None)
        self.catalog.published(version, snapshot.read_file(path).info.content_hash)
        self.version = version
        prune(self.folder, KEEP)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(PUBLISH_S):
            try:
                self.publish()
            except Exception as exc:
                self.errors.add(self.name, exc)


class ServerLog:
    """Reads the server's log to its end on a thread of its own, keeping what is logged at WARNING and above."""

    def __init__(self, lines: Iterator[str]) -> None:
        self.lines = 0
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(lines,), daemon=True)
        self._thread.start()

    def _read(self, lines: Iterator[str]) -> None:
        for line in lines:
            self.lines += 1
            if " WARNING " in line:
                self.warnings.append(line)
            elif " ERROR " in line or " CRITICAL " in line or "Traceback" in line or " exited" in line:
                self.errors.append(line)

    def join(self) -> None:
        self._thread.join(30)


def tree_memory(pid: int) -> tuple[int, int]:
    """RSS and PSS, in bytes, of process ``pid`` and all its descendants."""
    root = psutil.Process(pid)
    rss = pss = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            info = process.memory_full_info()
            rss, pss = rss + info.rss, pss + info.pss
    return rss, pss


def start(worker: Worker, target: Any, stop: threading.Event) -> None:
    """Run ``target(stop)`` on ``worker``'s thread."""
    worker.thread = threading.Thread(target=target, args=(stop,), name=worker.name, daemon=True)
    worker.thread.start()


@dataclass
class Run:
    """Everything one soak runs: the server's process, the catalog, the threads, and the memory samples."""

    process: Any
    target: str
    catalog: Catalog
    errors: Errors
    publisher: Publisher
    callers: list[Caller] = field(default_factory=list)
    watchers: list[Watcher] = field(default_factory=list)
    full: FullSyncer | None = None
    clients: list[DefinitionClient] = field(default_factory=list)
    memory: list[tuple[int, int]] = field(default_factory=list)  # RSS and PSS at the end of each window
    ready_memory: tuple[int, int] = (0, 0)
    server_processes: int = 0  # in the tree, the supervisor included
    load_average: dict[str, list[float]] = field(default_factory=dict)
    caught_up: bool = False
    t0: float = 0.0  # when the load began (monotonic)


def _start_threads(run: Run, cache_root: Path, stop_load: threading.Event, stop_watch: threading.Event) -> None:
    for index in range(CALLERS):
        caller = Caller(f"caller {index}", run.target, run.catalog, run.errors, run.t0, seed=index)
        run.callers.append(caller)
        start(caller, caller.run, stop_load)
    for index in range(WATCHERS + SYNCERS):
        client = DefinitionClient(run.target)
        run.clients.append(client)
        cache = cache_root / f"cache-{index}" if index >= WATCHERS else None
        kind = "syncer" if cache is not None else "watcher"
        watcher = Watcher(f"{kind} {index}", client, run.catalog, run.errors, cache)
        run.watchers.append(watcher)
        start(watcher, watcher.run, stop_watch)
    run.clients.append(DefinitionClient(run.target))
    run.full = FullSyncer(run.clients[-1], run.catalog, run.errors, cache_root)
    start(run.full, run.full.run, stop_load)
    start(run.publisher, run.publisher.run, stop_load)


def _soak(run: Run, cache_root: Path) -> None:
    """Drive the server for DURATION_S, sampling its memory at the end of each window, then let watchers catch up."""
    stop_load, stop_watch = threading.Event(), threading.Event()
    run.ready_memory = tree_memory(run.process.pid)
    run.server_processes = 1 + len(psutil.Process(run.process.pid).children(recursive=True))
    run.load_average["start"] = list(os.getloadavg())
    t0 = run.t0 = time.monotonic()
    _start_threads(run, cache_root, stop_load, stop_watch)
    try:
        for index in range(_windows()):
            time.sleep(max(0.0, t0 + min((index + 1) * WINDOW_S, DURATION_S) - time.monotonic()))  # the soak's clock
            if run.process.poll() is not None:
                run.errors.add("server", f"exited with {run.process.returncode}")
                break
            run.memory.append(tree_memory(run.process.pid))
        run.load_average["end"] = list(os.getloadavg())
    finally:
        stop_load.set()
        for worker in [*run.callers, run.full, run.publisher]:
            if worker is not None and worker.thread is not None:
                worker.thread.join(30)
        newest = run.publisher.version
        run.caught_up = all(watcher.wait_for(newest, CATCH_UP_S) for watcher in run.watchers)
        stop_watch.set()
        for watcher in run.watchers:
            while watcher.thread is not None and watcher.thread.is_alive():
                if watcher.stream is not None:
                    watcher.stream.cancel()
                watcher.thread.join(1)
        for client in run.clients:
            client.close()


def _windows() -> int:
    return max(1, -int(-DURATION_S // WINDOW_S))


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def _window_rows(run: Run) -> list[dict[str, float]]:
    merged: list[list[float]] = [[] for _ in range(_windows())]
    for caller in run.callers:
        for index, latencies in caller.windows.items():
            merged[min(index, len(merged) - 1)].extend(latencies)
    rows = []
    for index, window in enumerate(merged):
        ordered = sorted(window)
        span_s = min(WINDOW_S, DURATION_S - index * WINDOW_S)
        rss, pss = run.memory[index] if index < len(run.memory) else (0, 0)
        published = sum(index * WINDOW_S <= began - run.t0 < (index + 1) * WINDOW_S for began in run.catalog.started)
        rows.append({
            "start_s": index * WINDOW_S, "versions": published, "calls": len(ordered),
            "calls_per_s": round(len(ordered) / span_s),
            "p50_ms": round(_percentile(ordered, 0.50) * 1000, 2),
            "p99_ms": round(_percentile(ordered, 0.99) * 1000, 2),
            "max_ms": round(ordered[-1] * 1000 if ordered else 0.0, 1), "rss_mb": round(rss / 2**20, 1),
            "pss_mb": round(pss / 2**20, 1),
        })  # fmt: skip
    return rows


def _counts(workers: list[Any]) -> dict[str, int]:
    total: dict[str, int] = {}
    for worker in workers:
        for what, count in worker.counts.items():
            total[what] = total.get(what, 0) + count
    return total


def _figures(run: Run, log: ServerLog, exit_code: int) -> dict[str, Any]:
    warm = run.memory[min(len(run.memory), -int(-WARMUP_S // WINDOW_S)) - 1] if run.memory else (0, 0)
    end = run.memory[-1] if run.memory else (0, 0)
    lags = sorted(lag for watcher in run.watchers for lag in watcher.lags_s)
    return {
        "duration_s": DURATION_S, "publish_every_s": PUBLISH_S, "window_s": WINDOW_S, "commands": COMMANDS + 1,
        "server_processes": run.server_processes,
        "calls": sum(len(a) for caller in run.callers for a in caller.windows.values()),
        "errors": run.errors.count, "first_errors": run.errors.first,
        "versions_published": run.publisher.version,
        "watchers": {watcher.name: {"last_version": watcher.seen, **watcher.counts} for watcher in run.watchers},
        "watch_lag_s": {"p50": round(_percentile(lags, 0.5), 3), "p99": round(_percentile(lags, 0.99), 3),
                        "max": round(lags[-1] if lags else 0.0, 3)},
        "syncs": {"full sync client": _counts([run.full]), "watching syncers": _counts(run.watchers[WATCHERS:])},
        "windows": _window_rows(run),
        "memory_mb": {kind: {"ready": round(run.ready_memory[i] / 2**20, 1), "after_warmup": round(warm[i] / 2**20, 1),
                             "end": round(end[i] / 2**20, 1)} for i, kind in enumerate(["rss", "pss"])},
        "rss_bound_mb": round(_rss_bound(warm[0]) / 2**20, 1),
        "load_average": run.load_average,
        "server_log": {"lines": log.lines, "warnings": log.warnings[:10], "errors": log.errors[:10]},
        "server_exit_code": exit_code,
    }  # fmt: skip


def _rss_bound(after_warmup: int) -> int:
    return after_warmup + max(int(after_warmup * RSS_GROWTH), RSS_SLACK_BYTES)


def _table(figures: dict[str, Any]) -> str:
    titles = ["window", "versions", "calls", "calls/s", "p50 ms", "p99 ms", "max ms", "RSS MB", "PSS MB"]
    head = " ".join(f"{title:>8}" for title in titles)
    lines = ["", f"soak: {figures['duration_s']:g} s, a version every {figures['publish_every_s']:g} s", head]
    for row in figures["windows"]:
        lines.append(
            f"{row['start_s']:>7g}s {row['versions']:>8} {row['calls']:>8} {row['calls_per_s']:>8} "
            f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['max_ms']:>8.1f} "
            f"{row['rss_mb']:>8.1f} {row['pss_mb']:>8.1f}"
        )
    memory = figures["memory_mb"]
    lines += [
        f"calls {figures['calls']}, errors {figures['errors']}, versions published {figures['versions_published']}",
        f"watchers' last versions {[w['last_version'] for w in figures['watchers'].values()]}, "
        f"watch lag p50/p99/max {figures['watch_lag_s']['p50']}/{figures['watch_lag_s']['p99']}/"
        f"{figures['watch_lag_s']['max']} s",
        f"syncs {figures['syncs']}",
        f"RSS MB ready/after warm-up/end {memory['rss']['ready']}/{memory['rss']['after_warmup']}/"
        f"{memory['rss']['end']} (bound {figures['rss_bound_mb']}); PSS {memory['pss']['ready']}/"
        f"{memory['pss']['after_warmup']}/{memory['pss']['end']}",
        f"load average {figures['load_average']}; server log: {figures['server_log']['lines']} lines, "
        f"{len(figures['server_log']['warnings'])} warnings, {len(figures['server_log']['errors'])} errors",
    ]
    return "\n".join(lines)


def _write(figures: dict[str, Any]) -> Path:
    path = ROOT / "bench" / "results" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
    return path


def test_the_server_stays_correct_and_flat_under_load_syncs_watches_and_new_versions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "snapshots"
    catalog, errors = Catalog(), Errors()
    publisher = Publisher(folder, catalog, errors)
    publisher.publish()  # version 1
    port = free_port()
    process = server_process("--snapshots", str(folder), "--port", str(port))
    run = Run(process, f"127.0.0.1:{port}", catalog, errors, publisher)
    log: ServerLog | None = None
    try:
        lines = log_lines(process)
        wait_for_line(lines, r"serving catalog version 1 ", [])
        log = ServerLog(lines)
        _soak(run, tmp_path)
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if log is not None:
            log.join()
        assert process.stderr is not None
        process.stderr.close()
    figures = _figures(run, log, exit_code)
    path = _write(figures)
    with capsys.disabled():
        print(_table(figures) + f"\nfigures: {path}")

    assert errors.count == 0, errors.first
    assert log.errors == [], log.errors
    assert run.caught_up, {watcher.name: watcher.seen for watcher in run.watchers}
    assert {watcher.seen for watcher in run.watchers} == {publisher.version}
    assert publisher.version >= DURATION_S / PUBLISH_S / 2  # publishing kept its pace, about
    assert figures["syncs"]["watching syncers"].get("delta syncs", 0) > 0
    assert all(row["calls"] > 0 for row in figures["windows"])
    assert exit_code == 0
    warm, end = figures["memory_mb"]["rss"]["after_warmup"], figures["memory_mb"]["rss"]["end"]
    assert end <= figures["rss_bound_mb"], f"RSS grew from {warm} MB after the warm-up to {end} MB"
