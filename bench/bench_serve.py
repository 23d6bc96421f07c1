"""Serving benchmarks: our server and the reference Node.js server, side by side, same catalog, same client.

Scenario A   grpcio client, N threads on one (or more) channel(s), GetCommand on random names:
             RPS, p50/p99 latency, errors.
SyncCatalog  repeated full syncs: wire MB/s, and catalog MB/s after decompress + verify + parse.
Scenario B   h2load (-c 8 -m 50) POSTing one pre-framed GetCommand request: server capacity.
Start-up     time to ready and memory with a large catalog (50,000 commands).

Rounds alternate the order of the servers and the table shows medians over
rounds, because the machine is shared and noisy: read the ratios, not the
absolute figures. Everything runs on 127.0.0.1; every process started here is
stopped here, by pid.

    .venv/bin/python bench/bench_serve.py            # full run, about 4-5 minutes
    .venv/bin/python bench/bench_serve.py --quick    # about a minute
    .venv/bin/python bench/bench_serve.py --targets ours   # our server alone: no node, no ../shared/peer needed

``run_serving`` and ``run_startup`` are also what ``run_all.py`` calls for each
of its configurations, with arguments built by ``parse_args``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import catalog
import grpc
import loads
import peer
import procs
import report
import scenarios
import targets

from server.image import CACHE_NAME as IMAGE_CACHE

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = BENCH / ".cache"
ALL_TARGETS = ("ours", "peer")
ALL_SCENARIOS = ("a", "sync", "b", "startup")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 round, short phases, one start-up run (about a minute)")
    p.add_argument("--targets", default="ours,peer", help="servers to measure, of: ours,peer (default both)")
    p.add_argument("--scenarios", default=",".join(ALL_SCENARIOS), help="of: a,sync,b,startup (default all)")
    p.add_argument("--ours-address", help="measure an already running server of ours at HOST:PORT")
    p.add_argument("--peer-address", help="measure an already running reference server at HOST:PORT")
    p.add_argument("--server-arg", action="append", default=[], help="extra argument for our server (repeatable)")
    p.add_argument("--commands", type=int, default=5000, help="catalog size for A, sync and B (default 5000)")
    p.add_argument("--startup-commands", type=int, default=50_000, help="catalog size for start-up (default 50000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per scenario, servers alternating (default 3)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per round of A (default 10)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring (default 1)")
    p.add_argument("--threads", type=int, default=50, help="client threads in A (default 50)")
    p.add_argument("--channels", default="1", help="comma list of channel counts for A, e.g. 1,4 (default 1)")
    p.add_argument("--sync-duration", type=float, default=4.0, help="seconds of repeated syncs per round (default 4)")
    p.add_argument("--h2load-duration", type=float, default=10.0, help="seconds per h2load round (default 10)")
    p.add_argument("--h2load-clients", type=int, default=8, help="h2load -c (default 8)")
    p.add_argument("--h2load-streams", type=int, default=50, help="h2load -m (default 50)")
    p.add_argument("--h2load-threads", type=int, default=1, help="h2load -t (default 1)")
    p.add_argument("--startup-runs", type=int, default=2, help="start-ups per server (default 2)")
    p.add_argument("--no-cold-start", action="store_true", help="keep our serving image for every start-up run")
    p.add_argument("--peer-source", type=Path, default=peer.SOURCE, help="the reference server's folder")
    p.add_argument("--json", type=Path, help="write the results here (default bench/results/serve-<time>.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.sync_duration, args.h2load_duration, args.startup_runs = 1, 3.0, 2.0, 3.0, 1
    args.targets = [t for t in args.targets.split(",") if t]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.channels = [int(c) for c in args.channels.split(",") if c]
    if not set(args.targets) <= set(ALL_TARGETS) or not set(args.scenarios) <= set(ALL_SCENARIOS):
        p.error(f"--targets takes {ALL_TARGETS}, --scenarios takes {ALL_SCENARIOS}")
    if "peer" in args.targets and not args.peer_address and not peer.available(args.peer_source):
        p.error(f"the reference server is not in {args.peer_source}: measure ours alone with --targets ours")
    return args


def prepare_catalog(commands: int, args: argparse.Namespace) -> tuple[Path, Path, list[str]]:
    """The JSON lines for the peer, the snapshot folder for ours, and the command names.

    The peer's packages are installed only when it is started here.
    """
    jsonl = catalog.jsonl_for(commands, args.peer_source)
    if "peer" in args.targets and not args.peer_address:
        peer.prepare(args.peer_source, install=True)
    folder = catalog.snapshot_folder(jsonl)
    catalog.build(jsonl, folder)
    return jsonl, folder, catalog.read_names(jsonl)


def start_server(label: str, jsonl: Path, folder: Path, args: argparse.Namespace) -> tuple[procs.Process, str]:
    """Start one server on a free loopback port; return it and its address."""
    port = procs.free_port()
    if label == "peer":
        return peer.start(jsonl, port), f"127.0.0.1:{port}"
    argv = [sys.executable, "-m", "server", "--snapshots", str(folder), "--host", "127.0.0.1", "--port", str(port)]
    log = CACHE / "logs" / f"ours-{port}.log"
    process = procs.start(
        "ours", argv + args.server_arg, log_path=log, ready_text="serving catalog version", timeout_s=120, cwd=ROOT
    )
    return process, f"127.0.0.1:{port}"


def make_target(label: str, address: str, commands: int) -> targets.Target:
    if label == "ours":
        return targets.ours(address, commands)
    return targets.peer(address, commands, peer.messages())


def check_target(target: targets.Target, names: list[str]) -> None:
    """A few real GetCommand calls with the benchmark's own request bytes, and one unknown name."""
    (channel,) = loads.open_channels(target.address, 1)
    try:
        call = loads.raw_unary(channel, target.method("GetCommand"))
        targets.check_get_command(call, target, random.Random(7).sample(names, min(20, len(names))))
        try:
            call(targets.request_bytes("no.such.command"), timeout=10)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
        else:
            raise targets.CheckError(f"{target.label}: an unknown name was answered")
    finally:
        channel.close()


def run_serving(args: argparse.Namespace, metrics: dict[str, report.Metric], notes: list[str]) -> None:
    """Scenarios A, sync and B against both servers serving the same ``--commands`` catalog.

    The memory of each server started here is taken after its first answers and again after the load.
    """
    given = {"ours": args.ours_address, "peer": args.peer_address}
    jsonl, folder, names = prepare_catalog(args.commands, args)
    started: list[procs.Process] = []
    pids: dict[str, int] = {}
    try:
        live = []
        for label in args.targets:
            address = given[label]
            if not address:
                process, address = start_server(label, jsonl, folder, args)
                started.append(process)
                pids[label] = process.pid
            target = make_target(label, address, len(names))
            check_target(target, names)
            live.append(target)
            print(f"{label}: {address} answers GetCommand correctly")
            if label in pids:
                scenarios.measure_memory(pids[label], label, "after start", metrics)
        scenarios.run_all(live, names, args, metrics, notes, pids, CACHE)
        for label, pid in pids.items():
            scenarios.measure_memory(pid, label, "after the load", metrics)
    finally:
        for process in started:
            procs.stop(process)


def run_startup(args: argparse.Namespace, metrics: dict[str, report.Metric]) -> None:
    """Start each server on the ``--startup-commands`` catalog, one at a time, and measure it.

    Our server's first run starts cold (its serving images removed) unless
    ``--no-cold-start``; the later runs map the image the first one wrote, as a
    restart does. The peer has no such cache: every start of it is cold.
    """
    jsonl, folder, names = prepare_catalog(args.startup_commands, args)
    print(f"start-up: {args.startup_runs} run(s) per server, {len(names):,} commands")
    for run in range(args.startup_runs):
        for label in args.targets if run % 2 == 0 else args.targets[::-1]:
            starts = _start_kinds(label, run, args)
            if starts == ("cold",):
                shutil.rmtree(folder / IMAGE_CACHE, ignore_errors=True)
            process, address = start_server(label, jsonl, folder, args)
            try:
                target = make_target(label, address, len(names))
                scenarios.measure_startup(process, target, names, metrics, starts)
            finally:
                procs.stop(process)


def _start_kinds(label: str, run: int, args: argparse.Namespace) -> tuple[str, ...]:
    """Which start-up rows a run of ``label`` counts in: the peer's every start is both cold and a restart."""
    if label == "peer":
        return ("cold", "restart")
    return ("cold",) if run == 0 and not args.no_cold_start else ("restart",)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    metrics: dict[str, report.Metric] = {}
    notes: list[str] = []
    began = time.perf_counter()
    if {"a", "sync", "b"} & set(args.scenarios):
        run_serving(args, metrics, notes)
    if "startup" in args.scenarios:
        run_startup(args, metrics)
    print()
    print(report.table(list(metrics.values()), args.targets))
    for note in [*notes, *scenarios.CAVEATS]:
        print(f"- {note}")
    print(f"(whole run {time.perf_counter() - began:.0f} s)")
    out = args.json or BENCH / "results" / time.strftime("serve-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"args": {k: str(v) for k, v in vars(args).items()}, "notes": notes}
    record["metrics"] = {m.name: {"unit": m.unit, "values": m.values} for m in metrics.values()}
    out.write_text(json.dumps(record, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
