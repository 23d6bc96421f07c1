"""The whole serving benchmark suite in one command, about 10 minutes: one table, one JSON record, PNG plots.

Phases, each our server beside the reference Node.js server (the peer) in the
same run, same catalog, same client, rounds alternating the servers' order:

serve      5,000 commands, the default --processes (one per CPU): Scenario A
           (grpcio client), SyncCatalog, Scenario B (h2load), memory.
startup    50,000 commands: seconds to the first answer, cold (our serving
           image removed) and on restart (mapped), memory, one sync.
processes  50,000 commands, --processes 1, 2, 3: h2load capacity and memory.
sizes      1,000 to 200,000 commands: h2load capacity and SyncCatalog MB/s.
replica    5,000 commands: in-process Replica.get against GetCommand over gRPC.
image      50,000 commands: writing, mapping and looking up the serving image.

Each phase is ``bench_serve.run_serving``/``run_startup``,
``bench_replica.run`` or ``bench_image.measure`` with arguments of its own;
the table shows every phase's rows with the phase in front, the median over
rounds with the min-max in brackets, and ours/peer. The record goes to
``bench/results/all-<time>.json`` and ``.md``; plots to ``bench/plots/``
when matplotlib (the ``bench`` extra) is installed.

    .venv/bin/python bench/run_all.py                  # everything, about 10 minutes
    .venv/bin/python bench/run_all.py --quick          # short phases, two sizes: about 2 minutes
    .venv/bin/python bench/run_all.py --targets ours   # our server alone: no node, no ../shared/peer

Exit status: 0, or 1 when a phase failed (it says why; the other phases' figures are still reported), or 2 for
bad arguments.

Caveats: two shared cores, with other tenants at work (the record has the load
average and the cores others used); read the ratios, not the absolutes. The
generated catalogs (and the peer's ``npm ci``) are made once into
``bench/.cache/``: the first run also spends about a minute there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import bench_image
import bench_replica
import bench_serve
import catalog
import machine
import peer
import plots
import report
import scenarios

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
ALL_TARGETS = ("ours", "peer")
# Rows of the sweeps that go into the table (all their rows go into the JSON record).
_SWEEP_ROWS = (plots.is_h2load_rps, plots.is_sync_rate, lambda name: name.endswith("server CPU per call (est.)"),
               lambda name: name.endswith("p99 latency") and name.startswith("B "),
               lambda name: name.startswith("memory after start"))  # fmt: skip


@dataclasses.dataclass
class Run:
    """One phase at one setting, with the rows it measured."""

    phase: str
    params: dict[str, Any]
    metrics: dict[str, report.Metric] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def row_name(self, metric: str) -> str:
        """``metric`` named after this run's phase and setting (start-up rows already name theirs)."""
        if self.phase == "startup":
            return metric
        setting = f"{self.params['commands']:,} cmds"
        if "processes" in self.params:
            setting += f", --processes {self.params['processes']}"
        return f"{self.phase} ({setting}): {metric}"

    def as_dict(self) -> dict[str, Any]:
        metrics = {m.name: {"unit": m.unit, "higher_is_better": m.higher_is_better, "values": m.values}
                   for m in self.metrics.values()}  # fmt: skip
        return {"phase": self.phase, "params": self.params, "metrics": metrics, **self.extra}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="ours,peer", help="servers to measure, of: ours,peer (default both)")
    p.add_argument("--peer-source", type=Path, default=peer.SOURCE, help="the reference server's folder")
    p.add_argument("--quick", action="store_true", help="1 round of short phases, sizes 1000,10000 (about 2 min)")
    p.add_argument("--commands", type=int, default=5000, help="catalog size of serve and replica (default 5000)")
    p.add_argument("--large", type=int, default=50_000, help="catalog of startup, processes, image (default 50000)")
    p.add_argument("--processes", default="1,2,3", help="--processes values to sweep (default 1,2,3)")
    p.add_argument("--sizes", default="1000,10000,50000,200000", help="catalog sizes to sweep")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the serve phase (default 3)")
    p.add_argument("--sweep-rounds", type=int, default=2, help="rounds at each sweep setting (default 2)")
    p.add_argument("--phases", default="serve,startup,processes,sizes,replica,image", help="phases to run")
    p.add_argument("--server-arg", action="append", default=[], help="extra argument for our server (repeatable)")
    p.add_argument("--json", type=Path, help="the record (default bench/results/all-<time>.json, and .md beside)")
    p.add_argument("--plots", type=Path, default=plots.PLOTS, help="folder for the PNG plots (default bench/plots)")
    p.add_argument("--no-plots", action="store_true", help="draw no plots")
    args = p.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    args.phases = [t for t in args.phases.split(",") if t]
    try:
        args.processes = [int(n) for n in args.processes.split(",") if n]
        args.sizes = [int(n) for n in args.sizes.split(",") if n]
    except ValueError:
        p.error("--processes and --sizes take comma-separated whole numbers")
    if args.quick:
        args.rounds = args.sweep_rounds = 1
        args.sizes = [size for size in args.sizes if size <= 10_000] or args.sizes[:1]
    if not args.targets or not set(args.targets) <= set(ALL_TARGETS):
        p.error(f"--targets takes {ALL_TARGETS}")
    if not set(args.phases) <= set(PHASES):
        p.error(f"--phases takes {tuple(PHASES)}")
    if min(args.processes + args.sizes, default=1) < 1:
        p.error("--processes and --sizes must be at least 1")
    if "peer" in args.targets and not peer.available(args.peer_source):
        p.error(f"the reference server is not in {args.peer_source}: measure ours alone with --targets ours")
    return args


def _serve_args(args: argparse.Namespace, extra: Sequence[str]) -> argparse.Namespace:
    """bench_serve's arguments for one phase: ours and the targets, then the phase's own."""
    argv = ["--targets", ",".join(args.targets), f"--peer-source={args.peer_source}"]
    argv += [f"--server-arg={arg}" for arg in args.server_arg]
    argv += ["--warmup", "1", "--duration", "2" if args.quick else "5", "--h2load-duration", "2" if args.quick else "5"]
    argv += ["--sync-duration", "1" if args.quick else "3"]
    return bench_serve.parse_args([*argv, *extra])


def phase_serve(args: argparse.Namespace, notes: list[str]) -> list[Run]:
    run = Run("serve", {"commands": args.commands})
    extra = ["--commands", str(args.commands), "--scenarios", "a,sync,b", "--rounds", str(args.rounds)]
    serve = _serve_args(args, extra)
    bench_serve.run_serving(serve, run.metrics, notes)
    return [run]


def phase_startup(args: argparse.Namespace, notes: list[str]) -> list[Run]:
    run = Run("startup", {"commands": args.large})
    extra = ["--scenarios", "startup", "--startup-commands", str(args.large), "--startup-runs", "2"]
    startup = _serve_args(args, extra)
    bench_serve.run_startup(startup, run.metrics)
    return [run]


def phase_processes(args: argparse.Namespace, notes: list[str]) -> list[Run]:
    runs = []
    for processes in args.processes:
        run = Run("processes", {"commands": args.large, "processes": processes})
        extra = ["--commands", str(args.large), "--scenarios", "b", "--rounds", str(args.sweep_rounds)]
        serve = _serve_args(args, [*extra, "--server-arg=--processes", f"--server-arg={processes}"])
        print(f"--processes {processes}:")
        bench_serve.run_serving(serve, run.metrics, notes)
        runs.append(run)
    return runs


def phase_sizes(args: argparse.Namespace, notes: list[str]) -> list[Run]:
    runs = []
    for size in args.sizes:
        run = Run("sizes", {"commands": size})
        print(f"{size:,} commands:")
        extra = ["--commands", str(size), "--scenarios", "sync,b", "--rounds", str(args.sweep_rounds)]
        bench_serve.run_serving(_serve_args(args, extra), run.metrics, notes)
        runs.append(run)
    return runs


def phase_replica(args: argparse.Namespace, notes: list[str]) -> list[Run]:
    argv = [
        "--commands",
        str(args.commands),
        f"--peer-source={args.peer_source}",
        "--rounds",
        "1" if args.quick else "3",
    ]
    argv += ["--calls", "300000" if args.quick else "1000000", "--grpc-s", "1" if args.quick else "2"]
    result = bench_replica.run(bench_replica.parse_args([*argv, *([] if "peer" in args.targets else ["--no-peer"])]))
    run = Run("replica", {"commands": result.commands}, extra={"rates": result.rates})
    rate = "lookups/s, one thread"
    for label, key in (("ours", "replica"), ("peer", "grpc_peer")):
        for value in result.rates[key]:
            scenarios.metric(run.metrics, f"{rate}: our Replica.get vs peer GetCommand", "1/s", True).add(label, value)
    for label, key in (("ours", "grpc_ours"), ("peer", "grpc_peer")):
        for value in result.rates[key]:
            scenarios.metric(run.metrics, f"{rate}: GetCommand over gRPC", "1/s", True).add(label, value)
    for seconds in result.swap_s:
        scenarios.metric(run.metrics, "new version: announced -> swapped in", "ms", None).add("ours", seconds * 1e3)
    held = result.replica_bytes / result.payload_bytes
    scenarios.metric(run.metrics, "memory of a Replica / uncompressed payload", "x", None).add("ours", held)
    return [run]


def phase_image(args: argparse.Namespace, notes: list[str]) -> list[Run]:
    jsonl = catalog.jsonl_for(args.large, args.peer_source)
    folder = catalog.snapshot_folder(jsonl)
    result = bench_image.measure(catalog.build(jsonl, folder), rounds=3, lookups=100_000)
    run = Run("image", {"commands": result.commands}, extra={"image": dataclasses.asdict(result)})
    scenarios.metric(run.metrics, "write (verify, inflate, index, fsync)", "ms", None).add("ours", result.write_ms)
    scenarios.metric(run.metrics, "map and check", "ms", None).add("ours", result.open_ms)
    lookups = result.lookups_per_s["image hash table in the map"]
    scenarios.metric(run.metrics, "lookups in the map, one thread", "1/s", None).add("ours", lookups)
    return [run]


PHASES: dict[str, Callable[[argparse.Namespace, list[str]], list[Run]]] = {
    "serve": phase_serve,
    "startup": phase_startup,
    "processes": phase_processes,
    "sizes": phase_sizes,
    "replica": phase_replica,
    "image": phase_image,
}


def table(runs: Sequence[Run], targets: Sequence[str]) -> str:
    """All phases' rows in one table, each row named after its phase; sweeps show their key rows only."""
    rows = []
    for run in runs:
        for metric in run.metrics.values():
            if run.phase in ("processes", "sizes") and not any(keep(metric.name) for keep in _SWEEP_ROWS):
                continue
            rows.append(dataclasses.replace(metric, name=run.row_name(metric.name)))
    return report.table(rows, targets)


def _merged(notes: Sequence[str]) -> list[str]:
    """The phases' notes once each (the h2load body checks as one count per server), then the caveats."""
    checked = [note.split(":")[0] for note in notes if "h2load request body was checked" in note]
    kept = [note for note in dict.fromkeys(notes) if "h2load request body was checked" not in note]
    for label in dict.fromkeys(checked):
        kept.append(f"{label}: the h2load request body was checked before B at each of its {checked.count(label)} "
                    "settings (a grpcio call, and the grpc-status trailer through nghttp if it is there).")  # fmt: skip
    return [*kept, *scenarios.CAVEATS]


def _command(argv: Sequence[str] | None) -> str:
    given = sys.argv[1:] if argv is None else list(argv)
    return shlex.join([".venv/bin/python", "bench/run_all.py", *given])


def _commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def _markdown(record: dict[str, Any], table_text: str, notes: Sequence[str]) -> str:
    info = record["machine"]
    lines = [
        f"Run {record['date']} on commit {record['commit']}, {record['elapsed_s'] / 60:.1f} minutes: "
        f"`{record['command']}`",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB RAM, Linux {info['kernel']}, "
        f"Python {info['python']}, node {info['node']}, {info['h2load']}. The machine is shared with other "
        f"tenants; during the run (its own processes included in the load average): {record['load']['summary']}.",
        "",
        table_text,
        "",
        *(f"- {note}" for note in notes),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    notes: list[str] = []
    runs: list[Run] = []
    began = time.perf_counter()
    stamp = time.strftime("%Y-%m-%d %H:%M %Z")
    failed: list[str] = []
    with machine.Load() as load:
        for name in args.phases:
            started = time.perf_counter()
            print(f"== {name}")
            try:
                runs += PHASES[name](args, notes)
            except Exception as exc:  # a benchmark phase that fails leaves the others' figures standing
                print(f"error: phase {name} failed: {exc}", file=sys.stderr)
                failed.append(f"Phase {name} failed, its rows are missing: {str(exc).splitlines()[0]}")
            print(f"== {name} took {time.perf_counter() - started:.0f} s")
    notes = [*failed, *_merged(notes)]
    if not peer.available(args.peer_source):
        notes.insert(0, f"No reference server in {args.peer_source}: catalogs are bench/catalog.py's generated ones.")
    text = table(runs, args.targets)
    record = {
        "date": stamp, "commit": _commit(), "command": _command(argv), "targets": args.targets,
        "machine": machine.describe(), "load": load.as_dict(), "elapsed_s": time.perf_counter() - began,
        "notes": notes, "runs": [run.as_dict() for run in runs],
    }  # fmt: skip
    out = args.json or BENCH / "results" / time.strftime("all-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    markdown = _markdown(record, text, notes)
    out.with_suffix(".md").write_text(markdown)
    print()
    print(markdown)
    print(f"results: {out} and {out.with_suffix('.md')}")
    if not args.no_plots:
        try:
            for path in plots.draw(record, args.plots):
                print(f"plot: {path}")
        except ImportError:
            print("plots skipped: matplotlib is not installed (pip install -e '.[bench]')")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
