"""Load generators: a threaded grpcio unary load, repeated streaming syncs, and h2load.

Each works on raw bytes (request and response serializers are None), so the
same code drives any server whose request messages have the same bytes.
Every loop is bounded by a deadline and a call count, and stops by itself.
"""

from __future__ import annotations

import queue
import random
import re
import shutil
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20)]
_MAX_CALLS_PER_THREAD = 2_000_000
_MAX_SYNCS = 10_000


@dataclass
class UnaryResult:
    """What one timed round of unary load measured."""

    seconds: float
    latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    all_calls: int = 0  # warm-up included

    @property
    def ok(self) -> int:
        return len(self.latencies_ns)

    @property
    def rps(self) -> float:
        return (self.ok + sum(self.errors.values())) / self.seconds

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies_ns:
            return float("nan")
        ordered = sorted(self.latencies_ns)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6


def raw_unary(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    """A unary call on ``channel`` that sends and returns message bytes as they are on the wire."""
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


def raw_stream(channel: grpc.Channel, method: str) -> grpc.UnaryStreamMultiCallable[bytes, bytes]:
    """A server-streaming call on ``channel`` that sends and yields message bytes as they are."""
    return channel.unary_stream(method, request_serializer=None, response_deserializer=None)


def open_channels(address: str, count: int) -> list[grpc.Channel]:
    """``count`` channels to ``address``, each on its own connection, ready to use."""
    # A local subchannel pool stops grpcio from sharing one connection between channels.
    options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)] if count > 1 else CHANNEL_OPTIONS
    channels = [grpc.insecure_channel(address, options=options) for _ in range(count)]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=10)
    return channels


def run_unary(
    address: str,
    method: str,
    requests: Sequence[bytes],
    *,
    threads: int,
    channels: int,
    duration_s: float,
    warmup_s: float,
    seed: int = 1,
    timeout_s: float = 5.0,
) -> UnaryResult:
    """``threads`` threads call ``method`` with random ``requests`` for ``warmup_s + duration_s``.

    Threads are spread round-robin over ``channels`` channels. Only calls that
    start after the warm-up are counted.
    """
    opened = open_channels(address, channels)
    try:
        calls = [raw_unary(ch, method) for ch in opened]
        start_ns = time.perf_counter_ns()
        measure_ns = start_ns + int(warmup_s * 1e9)
        end_ns = measure_ns + int(duration_s * 1e9)
        results: list[UnaryResult] = []
        workers = []
        for i in range(threads):
            rng = random.Random(seed * 1000 + i)
            work = (calls[i % channels], requests, rng, measure_ns, end_ns, timeout_s, results)
            workers.append(threading.Thread(target=_unary_worker, args=work, daemon=True))
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(warmup_s + duration_s + timeout_s + 10)
    finally:
        for channel in opened:
            channel.close()
    total = UnaryResult(seconds=duration_s)
    for part in results:
        total.latencies_ns += part.latencies_ns
        total.errors += part.errors
        total.all_calls += part.all_calls
    return total


def _unary_worker(
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes],
    requests: Sequence[bytes],
    rng: random.Random,
    measure_ns: int,
    end_ns: int,
    timeout_s: float,
    results: list[UnaryResult],
) -> None:
    mine = UnaryResult(seconds=0.0)
    latencies, errors, clock, choice = mine.latencies_ns, mine.errors, time.perf_counter_ns, rng.choice
    for calls in range(_MAX_CALLS_PER_THREAD):
        t0 = clock()
        if t0 >= end_ns:
            mine.all_calls = calls
            break
        try:
            call(choice(requests), timeout=timeout_s)
        except grpc.RpcError as exc:
            if t0 >= measure_ns:
                errors[exc.code().name] += 1
            continue
        if t0 >= measure_ns:
            latencies.append(clock() - t0)
    else:
        mine.all_calls = _MAX_CALLS_PER_THREAD
    results.append(mine)  # list.append is atomic under the GIL


@dataclass(frozen=True)
class Synced:
    """A received catalog, decoded and checked by a server-specific decoder."""

    catalog_bytes: int  # the uncompressed serialized catalog
    commands: int


@dataclass(frozen=True)
class SyncSample:
    wire_bytes: int  # gRPC message bytes received
    wire_s: float  # first request byte to last response message
    total_s: float  # wire_s plus decompress, verify and parse
    catalog_bytes: int
    commands: int

    @property
    def wire_mb_s(self) -> float:
        return self.wire_bytes / self.wire_s / 1e6

    @property
    def catalog_mb_s(self) -> float:
        return self.catalog_bytes / self.total_s / 1e6

    @property
    def commands_per_s(self) -> float:
        return self.commands / self.total_s


def run_sync(
    address: str, method: str, request: bytes, decode: Callable[[Iterator[bytes]], Synced], *, duration_s: float
) -> list[SyncSample]:
    """Full syncs one after another for ``duration_s`` (at least one, after one untimed warm-up sync).

    Each sync's messages go to ``decode`` as they arrive, so a decoder may work while the rest come.

    Raises:
        Exception: whatever ``decode`` raises when a received catalog does not check out.
    """
    (channel,) = open_channels(address, 1)
    try:
        call = raw_stream(channel, method)
        _sync_once(call, request, decode)
        samples: list[SyncSample] = []
        deadline = time.perf_counter() + duration_s
        while not samples or (time.perf_counter() < deadline and len(samples) < _MAX_SYNCS):
            samples.append(_sync_once(call, request, decode))
        return samples
    finally:
        channel.close()


class _Received:
    """A response stream's messages, read by a thread of their own as fast as they come, counted and timed.

    grpc asks the server for the next message only when the one before has been taken, so a decoder
    that pulled the stream itself would stall it while it works; with the reader thread, the next
    messages arrive meanwhile. The same for every server measured.
    """

    def __init__(self, call: grpc._CallIterator[bytes]) -> None:
        self._call = call
        self._queue: queue.SimpleQueue[bytes | BaseException | None] = queue.SimpleQueue()
        self.wire_bytes = 0
        self.ended = 0.0  # perf_counter() when the last message arrived
        self.drained = False  # the decoder took every message
        self._thread = threading.Thread(target=self._read, name="sync-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self._call:
                self.wire_bytes += len(message)
                self._queue.put(message)
            self.ended = time.perf_counter()
            self._queue.put(None)
        except BaseException as exc:  # handed to the decoder, which raises it
            self._queue.put(exc)

    def __iter__(self) -> Iterator[bytes]:
        while (item := self._queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
        self.drained = True

    def close(self) -> None:
        """Cancel the stream (a no-op once it has ended) and wait for the reader thread."""
        self._call.cancel()
        self._thread.join()


def _sync_once(
    call: grpc.UnaryStreamMultiCallable[bytes, bytes], request: bytes, decode: Callable[[Iterator[bytes]], Synced]
) -> SyncSample:
    t0 = time.perf_counter()
    received = _Received(call(request, timeout=120))
    try:
        synced = decode(iter(received))
        t2 = time.perf_counter()
    finally:
        received.close()
    if not received.drained:
        raise RuntimeError("the decoder returned before the SyncCatalog stream ended")
    return SyncSample(received.wire_bytes, received.ended - t0, t2 - t0, synced.catalog_bytes, synced.commands)


def grpc_frame(message: bytes) -> bytes:
    """``message`` as one length-prefixed gRPC frame (uncompressed), the body of a unary POST."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass(frozen=True)
class H2Result:
    rps: float
    succeeded: int
    failed: int
    errored: int
    mean_ms: float
    output: str
    p50_ms: float = float("nan")  # from h2load's per-request log, when one was asked for
    p99_ms: float = float("nan")


def h2load_path() -> str | None:
    return shutil.which("h2load")


def run_h2load(
    url: str,
    body: Path,
    *,
    clients: int,
    streams: int,
    threads: int,
    duration_s: float,
    warmup_s: float,
    log_path: Path | None = None,
) -> H2Result:
    """POST ``body`` to ``url`` with h2load as a gRPC call, for ``duration_s`` after ``warmup_s``.

    With ``log_path``, h2load logs every measured request there (start, status,
    latency in microseconds: the warm-up is not logged), which gives p50 and p99.
    """
    argv = [
        "h2load", "-c", str(clients), "-m", str(streams), "-t", str(threads),
        "-D", f"{round(duration_s * 1000)}ms", "--warm-up-time", f"{round(warmup_s * 1000)}ms", "-d", str(body),
        "-H", "content-type: application/grpc", "-H", "te: trailers", url,
    ]  # fmt: skip
    if log_path is not None:
        argv[1:1] = ["--log-file", str(log_path)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + warmup_s + 60)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"h2load did not finish within {exc.timeout:.0f} s against {url}") from None
    out = done.stdout
    rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    counts = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if not rps or not counts:
        raise RuntimeError(f"cannot read h2load output (exit {done.returncode}):\n{out}{done.stderr}")
    succeeded, failed, errored = (int(group) for group in counts.groups())
    mean_ms = _ms(mean.group(1)) if mean else float("nan")
    p50_ms, p99_ms = _log_percentiles_ms(log_path) if log_path is not None else (float("nan"), float("nan"))
    return H2Result(float(rps.group(1)), succeeded, failed, errored, mean_ms, out, p50_ms, p99_ms)


def _log_percentiles_ms(log_path: Path) -> tuple[float, float]:
    """p50 and p99 of the latencies (third column, microseconds) of an h2load ``--log-file``."""
    with open(log_path, encoding="ascii") as log:
        latencies = sorted(int(line.split("\t")[2]) for line in log if line.count("\t") == 2)
    if not latencies:
        return float("nan"), float("nan")
    count = len(latencies)
    return latencies[int(0.50 * count)] / 1e3, latencies[min(count - 1, int(0.99 * count))] / 1e3


def _ms(text: str) -> float:
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float("nan")


def raw_grpc_status(url: str, body: Path) -> str | None:
    """The grpc-status trailer of one POST of ``body`` with nghttp, or None without nghttp."""
    if shutil.which("nghttp") is None:
        return None
    argv = ["nghttp", "-v", "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers", url]
    out = subprocess.run(argv, capture_output=True, timeout=20).stdout.decode(errors="replace")
    found = re.findall(r"grpc-status: (\d+)", out)
    return found[-1] if found else "missing"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
