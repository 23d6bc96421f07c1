"""Prometheus metrics: what each serving process counts, and the one endpoint the supervisor serves.

Off unless ``--metrics-port`` is given. The processes of a ``--processes``
group share one port for gRPC and are picked by the kernel per connection, so
a scraper could not reach a chosen one: the supervisor aggregates instead,
with prometheus-client's multiprocess mode. It gives every serving process
the same private folder (``PROMETHEUS_MULTIPROC_DIR``, set only in their
environment), each process writes its values into memory-mapped files there,
and the supervisor serves ``/metrics`` on ``--host:--metrics-port`` by
reading them all: counters and histograms are summed over the processes
(those of a process that has died included, so a counter never goes back),
and the gauges say in their help how they combine. The supervisor's own
counter (process restarts) is served beside them. The folder is removed when
the supervisor exits.

Cost: a call pays two ``perf_counter`` reads and three list increments in a
tally of its method; once a second the tallies are added to the shared
values (each a write to the mapped file under a lock, about 1 us, which a
call paid three times over when it wrote them itself: 4-5 us a call
against under 1 us). A process that dies loses at most its last second of
calls. Measured in docs/server.md, "Metrics".

Names follow the usual gRPC server metrics (``grpc_server_handled_total``,
``grpc_server_handling_seconds``), so existing dashboards apply; the
catalog's own are ``avap_*``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from server.rpc import Code

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

    from avapdefs.remote import Follower
    from server.store import LoadedSnapshot

logger = logging.getLogger(__name__)

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# From 0.1 ms (a GetCommand answered from the map) to a minute (a large sync to a slow reader).
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # fmt: skip
LOAD_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_CODE_NAMES = tuple(code.name for code in Code)  # index = the status code's number
SWAP_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class ServingMetrics:
    """The metrics of one serving process (prometheus-client imported only when metrics are on).

    Thread safety: prometheus-client's values are; calls are tallied and flushed on the event loop,
    ``snapshot_swapped`` and ``file_refused`` on the reload thread.
    """

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self._handled = Counter("grpc_server_handled", "Calls answered, by method and gRPC status code",
                                ["grpc_type", "grpc_service", "grpc_method", "grpc_code"])  # fmt: skip
        self._handling = Histogram("grpc_server_handling_seconds", "Time from a call's arrival to its last byte "
                                   "handed to Envoy (a stream: its whole life)",
                                   ["grpc_type", "grpc_service", "grpc_method"], buckets=LATENCY_BUCKETS_S)  # fmt: skip
        self._version = Gauge("avap_snapshot_version", "Catalog version live in each serving process (pid label)",
                              multiprocess_mode="liveall")  # fmt: skip
        self._age = Gauge("avap_snapshot_age_seconds", "Seconds since the live catalog version was created "
                          "(the oldest over the serving processes)", multiprocess_mode="livemax")  # fmt: skip
        self._load = Histogram("avap_snapshot_load_seconds", "Reading, verifying and indexing (or mapping and "
                               "checking) a snapshot, per load in each process", buckets=LOAD_BUCKETS_S)  # fmt: skip
        self._swap = Histogram("avap_snapshot_swap_seconds", "From a snapshot file's publication (its modification "
                               "time) to its version going live, per hot swap", buckets=SWAP_BUCKETS_S)  # fmt: skip
        self._refused = Counter("avap_refused_files", "Snapshot files refused (corrupt, truncated, foreign), "
                                "each counted once per process until it changes")  # fmt: skip
        self._syncs = Counter("avap_syncs", "SyncCatalog answers by kind", ["kind"])
        self._sync_bytes = Counter("avap_sync_bytes", "SyncCatalog bytes sent (its messages, as serialized), "
                                   "by kind (full or delta)", ["kind"])  # fmt: skip
        self._watch_streams = Gauge("avap_watch_streams", "WatchCatalog streams open (summed over the processes)",
                                    multiprocess_mode="livesum")  # fmt: skip
        self._tallies: list[_Tally] = []
        self._loaded_at: int | None = None

    def call_observer(self, path: str, grpc_type: str) -> Callable[[int, float], None]:
        """The function that records one call to ``path`` (``/package.Service/Method``): ``(code, seconds)``.

        It only adds to this process's tally of the method (a few list increments, no lock, no
        file write); ``flush`` moves the tallies into the shared metrics. Both run on the event loop.
        """
        service, _, method = path.lstrip("/").rpartition("/")
        tally = _Tally((grpc_type, service, method))
        self._tallies.append(tally)
        codes, buckets, seconds_sum = tally.codes, tally.buckets, tally.seconds
        bounds = LATENCY_BUCKETS_S

        def observe(code: int, seconds: float) -> None:
            codes[code] += 1
            buckets[bisect_left(bounds, seconds)] += 1  # the first bucket whose bound is >= seconds (le)
            seconds_sum[0] += seconds

        return observe

    def flush(self) -> None:
        """Add every method's calls since the last flush to the shared counters and histograms."""
        for tally in self._tallies:
            if not any(tally.buckets):
                continue
            for code, count in enumerate(tally.codes):
                if count:
                    self._handled.labels(*tally.labels, _CODE_NAMES[code]).inc(count)
                    tally.codes[code] = 0
            # prometheus-client has no call that adds n observations at once: its child's bucket and
            # sum values take them (tests/server/test_metrics.py checks the result stays right).
            timer = self._handling.labels(*tally.labels)
            for index, count in enumerate(tally.buckets):
                if count:
                    timer._buckets[index].inc(count)
                    tally.buckets[index] = 0
            timer._sum.inc(tally.seconds[0])
            tally.seconds[0] = 0.0

    def snapshot_swapped(self, snap: LoadedSnapshot) -> None:
        """A version went live (or the live one gained deltas, which is not a load)."""
        if snap.loaded_at_unix_ms == self._loaded_at:
            return
        first = self._loaded_at is None
        self._loaded_at = snap.loaded_at_unix_ms
        self._load.observe(snap.load_ms / 1000)
        self._version.set(snap.info.version)
        if not first:  # the first load is the process starting, not a publication going live
            with contextlib.suppress(OSError):  # a file already gone has no publication time to measure from
                self._swap.observe(max(0.0, time.time() - snap.path.stat().st_mtime))

    def age(self, seconds: float) -> None:
        """The live version's age now."""
        self._age.set(seconds)

    def file_refused(self) -> None:
        """A snapshot file was refused."""
        self._refused.inc()

    def sync(self, kind: str) -> None:
        """A SyncCatalog answer of ``kind`` (full, delta, up_to_date) began."""
        self._syncs.labels(kind).inc()

    def sync_bytes(self, kind: str, count: int) -> None:
        """``count`` bytes of a ``kind`` (full or delta) sync's messages were sent."""
        self._sync_bytes.labels(kind).inc(count)

    def watch_streams(self, change: int) -> None:
        """A WatchCatalog stream opened (+1) or ended (-1)."""
        self._watch_streams.inc(change)


@dataclass
class _Tally:
    """One method's calls since the last flush: by status code, by latency bucket, and their summed seconds."""

    labels: tuple[str, str, str]  # grpc_type, grpc_service, grpc_method
    codes: list[int] = field(default_factory=lambda: [0] * len(_CODE_NAMES))
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))  # the last is +Inf
    seconds: list[float] = field(default_factory=lambda: [0.0])


class MetricsEndpoint:
    """The supervisor's side: the shared folder, ``/metrics`` over it, and its own restart counter.

    Args:
        host: the address to listen on (the server's ``--host``).
        port: the port; 0 picks a free one (``port`` then tells which).

    Raises:
        OSError: the port cannot be listened on.
    """

    def __init__(self, host: str, port: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        disable_created_metrics()  # type: ignore[no-untyped-call]  # the serving processes' metrics have no _created series either

        self.folder = Path(tempfile.mkdtemp(prefix="avap-metrics-"))
        registry = self._registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.folder))  # type: ignore[no-untyped-call]
        self._restarts = Counter("avap_server_process_restarts", "Serving processes restarted by the supervisor",
                                 registry=registry)  # fmt: skip
        try:
            self._http, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self.port = int(self._http.server_address[1])

    def environment(self) -> dict[str, str]:
        """What a serving process's environment needs to write its metrics here."""
        return {MULTIPROC_VARIABLE: str(self.folder)}

    def follow_source(self, follower: Follower) -> None:
        """Serve the object-store follower's state (``--source``), read at each scrape."""
        self._registry.register(_SourceCollector(follower))

    def process_ended(self, pid: int, *, restarted: bool) -> None:
        """Forget the live gauges of a process that has ended (its counters stay in the sums)."""
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, str(self.folder))  # type: ignore[no-untyped-call]
        if restarted:
            self._restarts.inc()

    def close(self) -> None:
        """Stop serving ``/metrics`` and remove the folder."""
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(5)
        shutil.rmtree(self.folder, ignore_errors=True)


class _SourceCollector:
    """``avap_source_*``: how the supervisor's follower of an object store is doing, as of the scrape."""

    def __init__(self, follower: Follower) -> None:
        self._follower = follower

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        state = self._follower.state
        yield GaugeMetricFamily("avap_source_up", "1 when the last poll of the object store (--source) reached it",
                                value=1.0 if state.reachable else 0.0)  # fmt: skip
        yield GaugeMetricFamily("avap_source_last_success_timestamp_seconds", "Unix time of the last poll that "
                                "reached the object store (0: never)", value=state.last_success_unix)  # fmt: skip
        yield GaugeMetricFamily("avap_source_announced_version", "The version the object store announced when "
                                "last reached (0: none yet)", value=float(state.version))  # fmt: skip
