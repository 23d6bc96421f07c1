"""The measured scenarios, each adding its figures to named metrics: A, sync, B, and start-up."""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import loads
import procs
import targets
from report import Metric

CAVEATS = [
    "2 shared cores: client and servers compete for them, and neighbours add noise; read ratios, not absolutes.",
    "Scenario A's Python client saturates at roughly 6-7k RPS on this machine whatever the server, so A mostly "
    "measures the client; Scenario B (h2load, native) is the one that measures server capacity.",
    "Server CPU per call = CPU seconds of the server's process tree during a round / calls in that round "
    "(for B estimated as RPS x (duration + warm-up)): less sensitive to the client than RPS.",
    "h2load counts HTTP 200 as success and gRPC errors travel in trailers, so its request bytes are first "
    "checked with a real grpcio call (and nghttp's grpc-status trailer when nghttp is present).",
    "Replies differ slightly: ours is GetCommandResponse{Command} with a 32-byte content_hash; the peer's is the "
    "bare Command with version/updated_at. Ours streams the zstd snapshot file, the peer its raw Catalog, so wire "
    "MB/s is not comparable across servers: compare catalog MB/s and commands/s.",
]


def metric(metrics: dict[str, Metric], name: str, unit: str, higher_is_better: bool | None) -> Metric:
    return metrics.setdefault(name, Metric(name, unit, higher_is_better))


def _orders(live: Sequence[targets.Target], rounds: int) -> Iterator[tuple[int, Sequence[targets.Target]]]:
    for number in range(rounds):
        yield number + 1, live if number % 2 == 0 else live[::-1]


def run_all(
    live: Sequence[targets.Target],
    names: list[str],
    args: argparse.Namespace,
    metrics: dict[str, Metric],
    notes: list[str],
    pids: dict[str, int],
    cache: Path,
) -> None:
    """Scenario A, the sync benchmark and Scenario B, as ``args.scenarios`` asks."""
    if "a" in args.scenarios:
        requests = [targets.request_bytes(name) for name in names]
        for channels in args.channels:
            scenario_a(live, requests, channels, args, metrics, pids)
    if "sync" in args.scenarios:
        scenario_sync(live, args, metrics)
    if "b" in args.scenarios:
        scenario_b(live, names[len(names) // 2], args, metrics, notes, pids, cache)


def scenario_a(
    live: Sequence[targets.Target],
    requests: list[bytes],
    channels: int,
    args: argparse.Namespace,
    metrics: dict[str, Metric],
    pids: dict[str, int],
) -> None:
    tag = f"A {args.threads} thr/{channels} ch"
    print(f"{tag}: {args.rounds} x {args.warmup:g}+{args.duration:g} s per server")
    for number, order in _orders(live, args.rounds):
        for target in order:
            cpu_before = procs.cpu_s(pids[target.label]) if target.label in pids else None
            result = loads.run_unary(
                target.address, target.method("GetCommand"), requests, threads=args.threads, channels=channels,
                duration_s=args.duration, warmup_s=args.warmup, seed=number,
            )  # fmt: skip
            errors = sum(result.errors.values())
            metric(metrics, f"{tag}: GetCommand", "req/s", True).add(target.label, result.rps)
            metric(metrics, f"{tag}: p50 latency", "ms", False).add(target.label, result.percentile_ms(0.50))
            metric(metrics, f"{tag}: p99 latency", "ms", False).add(target.label, result.percentile_ms(0.99))
            metric(metrics, f"{tag}: errors", "calls", False).add(target.label, errors)
            line = f"  round {number} {target.label}: {result.rps:,.0f} RPS, p50 {result.percentile_ms(0.5):.2f} ms"
            line += f", p99 {result.percentile_ms(0.99):.2f} ms, errors {dict(result.errors) or 0}"
            if cpu_before is not None and result.all_calls:
                cpu_us = (procs.cpu_s(pids[target.label]) - cpu_before) / result.all_calls * 1e6
                metric(metrics, f"{tag}: server CPU per call", "us", False).add(target.label, cpu_us)
                line += f", server CPU {cpu_us:.0f} us/call"
            print(line)


def scenario_sync(live: Sequence[targets.Target], args: argparse.Namespace, metrics: dict[str, Metric]) -> None:
    print(f"SyncCatalog: {args.rounds} x {args.sync_duration:g} s of full syncs per server")
    for number, order in _orders(live, args.rounds):
        for target in order:
            samples = loads.run_sync(
                target.address, target.method("SyncCatalog"), target.sync_request, target.decode_sync,
                duration_s=args.sync_duration,
            )  # fmt: skip
            wire = loads.median([s.wire_mb_s for s in samples])
            cat = loads.median([s.catalog_mb_s for s in samples])
            per_s = loads.median([s.commands_per_s for s in samples])
            metric(metrics, "sync: wire", "MB/s", True).add(target.label, wire)
            metric(metrics, "sync: catalog after decompress+parse", "MB/s", True).add(target.label, cat)
            metric(metrics, "sync: commands delivered", "cmds/s", True).add(target.label, per_s)
            metric(metrics, "sync: wire bytes per sync", "MB", None).add(target.label, samples[0].wire_bytes / 1e6)
            print(
                f"  round {number} {target.label}: {len(samples)} syncs, wire {wire:.0f} MB/s, "
                f"catalog {cat:.0f} MB/s, {samples[0].wire_bytes / 1e6:.1f} MB on the wire each, verified"
            )


def scenario_b(
    live: Sequence[targets.Target],
    name: str,
    args: argparse.Namespace,
    metrics: dict[str, Metric],
    notes: list[str],
    pids: dict[str, int],
    cache: Path,
) -> None:
    if loads.h2load_path() is None:
        notes.append("h2load not found: Scenario B skipped (apt-get install nghttp2-client provides it).")
        return
    (cache / "h2load").mkdir(parents=True, exist_ok=True)
    # The body and the request logs belong to this run alone: h2load reads its body file for each
    # request, so a file shared with another benchmark run on the machine could change under it.
    with tempfile.TemporaryDirectory(prefix="run-", dir=cache / "h2load") as folder:
        body = Path(folder) / "getcommand.bin"
        body.write_bytes(loads.grpc_frame(targets.request_bytes(name)))
        for target in live:
            _check_h2load_body(target, name, body, notes)
        tag = f"B h2load -c{args.h2load_clients} -m{args.h2load_streams} -t{args.h2load_threads}"
        print(f"{tag}: {args.rounds} x {args.warmup:g}+{args.h2load_duration:g} s per server, GetCommand({name!r})")
        for number, order in _orders(live, args.rounds):
            for target in order:
                log = Path(folder) / f"requests-{target.label}.tsv"
                _b_round(target, body, log, tag, f"round {number}", args, metrics, pids)


def _b_round(
    target: targets.Target,
    body: Path,
    log: Path,
    tag: str,
    round_name: str,
    args: argparse.Namespace,
    metrics: dict[str, Metric],
    pids: dict[str, int],
) -> None:
    """One round of h2load against ``target``: req/s, latencies, failures, and the server's CPU per call."""
    cpu_before = procs.cpu_s(pids[target.label]) if target.label in pids else None
    result = loads.run_h2load(
        f"http://{target.address}{target.method('GetCommand')}", body, clients=args.h2load_clients,
        streams=args.h2load_streams, threads=args.h2load_threads, duration_s=args.h2load_duration,
        warmup_s=args.warmup, log_path=log,
    )  # fmt: skip
    metric(metrics, f"{tag}: GetCommand", "req/s", True).add(target.label, result.rps)
    metric(metrics, f"{tag}: mean latency", "ms", False).add(target.label, result.mean_ms)
    metric(metrics, f"{tag}: p50 latency", "ms", False).add(target.label, result.p50_ms)
    metric(metrics, f"{tag}: p99 latency", "ms", False).add(target.label, result.p99_ms)
    metric(metrics, f"{tag}: failed+errored", "req", False).add(target.label, result.failed + result.errored)
    line = f"  {round_name} {target.label}: {result.rps:,.0f} RPS, mean {result.mean_ms:.2f} ms"
    line += f", p99 {result.p99_ms:.2f} ms, {result.succeeded} ok, {result.failed} failed, {result.errored} errored"
    if cpu_before is not None and result.rps:
        calls = result.rps * (args.h2load_duration + args.warmup)
        cpu_us = (procs.cpu_s(pids[target.label]) - cpu_before) / calls * 1e6
        metric(metrics, f"{tag}: server CPU per call (est.)", "us", False).add(target.label, cpu_us)
        line += f", server CPU ~{cpu_us:.0f} us/call"
    print(line)


def _check_h2load_body(target: targets.Target, name: str, body: Path, notes: list[str]) -> None:
    """The exact bytes h2load sends, once through grpcio and once through nghttp."""
    (channel,) = loads.open_channels(target.address, 1)
    try:
        call = loads.raw_unary(channel, target.method("GetCommand"))
        got = target.command_name(call(body.read_bytes()[5:], timeout=10))
    finally:
        channel.close()
    if got != name:
        raise targets.CheckError(f"{target.label}: the h2load request body was answered with {got!r}")
    status = loads.raw_grpc_status(f"http://{target.address}{target.method('GetCommand')}", body)
    if status not in (None, "0"):
        raise targets.CheckError(f"{target.label}: the h2load request body gets grpc-status {status}")
    how = "grpcio OK" + (", nghttp grpc-status: 0" if status == "0" else "")
    notes.append(f"{target.label}: the h2load request body was checked ({how}, command {name!r}).")


def measure_memory(pid: int, label: str, when: str, metrics: dict[str, Metric]) -> None:
    """RSS and PSS of ``pid``'s process tree, as rows ``memory {when}: RSS`` and ``... PSS``."""
    rss, pss = procs.memory_bytes(pid)
    metric(metrics, f"memory {when}: RSS", "MB", False).add(label, rss / 1e6)
    metric(metrics, f"memory {when}: PSS", "MB", False).add(label, pss / 1e6)
    print(f"  {label} {when}: RSS {rss / 1e6:.0f} MB, PSS {pss / 1e6:.0f} MB")


def measure_startup(
    process: procs.Process,
    target: targets.Target,
    names: list[str],
    metrics: dict[str, Metric],
    starts: Sequence[str] = ("restart",),
) -> None:
    """Time to the ready line and to a first answer, memory after start and after one full sync.

    The times count in one row per kind of start in ``starts``: "cold" (no
    serving image yet) and "restart" (our image mapped).
    """
    tag = f"start-up ({len(names):,} cmds)"
    (channel,) = loads.open_channels(target.address, 1)
    try:
        call = loads.raw_unary(channel, target.method("GetCommand"))
        targets.check_get_command(call, target, [names[-1]])
        first_s = time.perf_counter() - process.started_at
        rss, pss = procs.memory_bytes(process.pid)
        count = procs.process_count(process.pid)
    finally:
        channel.close()
    samples = loads.run_sync(
        target.address, target.method("SyncCatalog"), target.sync_request, target.decode_sync, duration_s=0
    )
    rss_sync, _ = procs.memory_bytes(process.pid)
    for start in starts:
        metric(metrics, f"{tag}, {start}: ready line in log", "s", False).add(target.label, process.ready_s)
        metric(metrics, f"{tag}, {start}: first GetCommand answered", "s", False).add(target.label, first_s)
    metric(metrics, f"{tag}: RSS after start", "MB", False).add(target.label, rss / 1e6)
    metric(metrics, f"{tag}: PSS after start", "MB", False).add(target.label, pss / 1e6)
    metric(metrics, f"{tag}: RSS after 2 syncs", "MB", False).add(target.label, rss_sync / 1e6)
    metric(metrics, f"{tag}: sync catalog after decompress+parse", "MB/s", True).add(
        target.label, samples[0].catalog_mb_s
    )
    metric(metrics, f"{tag}: processes", "", None).add(target.label, count)
    print(
        f"  {target.label} ({'/'.join(starts)}): ready {process.ready_s:.2f} s, first answer {first_s:.2f} s, "
        f"RSS {rss / 1e6:.0f} MB (PSS {pss / 1e6:.0f}), {rss_sync / 1e6:.0f} MB after 2 syncs, {count} process(es)"
    )
