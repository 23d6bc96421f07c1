"""Idle connections: what thousands of them cost the server, and GetCommand latency beside them.

Clients open HTTP/2 connections that start properly (preface, SETTINGS and
its ACK) and then send nothing, as idle language servers or a slow trickle
of hostile ones would. Printed: the server's RSS (all its processes) and
GetCommand p50/p99 from one Python client, idle and with the connections
open, in interleaved rounds (the machine is noisy; compare within a run).
The server is one process with its default connection cap (20,000).

    .venv/bin/python bench/bench_idle.py                       # 2,000 idle connections, 3 rounds
    .venv/bin/python bench/bench_idle.py --connections 10000 --rounds 5

Caveats: one Python client measures latency (it saturates long before the
server does); loopback only; the file limit of this process is raised to its
hard limit when the connections need it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import procs
from catalog import publish

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/server/helpers.py: the same idle connections as the test's
from avapdefs.v1.definitions_pb2 import Command, GetCommandRequest  # noqa: E402
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub  # noqa: E402
from tests.server.helpers import open_idle_http2  # noqa: E402


def _latencies_ms(stub: DefinitionServiceStub, calls: int) -> list[float]:
    seen: list[float] = []
    for _ in range(calls):
        started = time.perf_counter()
        stub.GetCommand(GetCommandRequest(name="cmd.0001"), timeout=5)
        seen.append((time.perf_counter() - started) * 1000)
    return seen


def _summary(seen: list[float]) -> tuple[float, float]:
    ordered = sorted(seen)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="idle / loaded rounds, interleaved")
    parser.add_argument("--calls", type=int, default=2000, help="GetCommand calls per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        publish(folder, [Command(name=f"cmd.{i:04d}", code=f"x = {i}\n") for i in range(5000)], 1)
        port = procs.free_port()
        argv = [sys.executable, "-m", "server", "--snapshots", str(folder), "--port", str(port), "--processes", "1"]
        server = procs.start("ours", argv, log_path=folder / "server.log", ready_text="serving catalog version",
                             timeout_s=60, cwd=ROOT)  # fmt: skip
        seen: dict[str, list[float]] = {"idle": [], "loaded": []}
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = DefinitionServiceStub(channel)
                _latencies_ms(stub, 200)  # warm-up
                rss_idle = procs.memory_bytes(server.pid)[0]
                rss_loaded = 0
                for _ in range(args.rounds):
                    seen["idle"] += _latencies_ms(stub, args.calls)
                    started = time.perf_counter()
                    connections = open_idle_http2(port, args.connections)
                    opened_s = time.perf_counter() - started
                    rss_loaded = max(rss_loaded, procs.memory_bytes(server.pid)[0])
                    seen["loaded"] += _latencies_ms(stub, args.calls)
                    for connection in connections:
                        connection.close()
                    time.sleep(1)  # let Envoy count them out before the next idle round
        finally:
            procs.stop(server)
    grown = rss_loaded - rss_idle
    print(f"{args.connections} idle connections opened in {opened_s:.2f} s (last round); "
          f"server RSS {rss_idle / 1e6:.0f} MB idle, {rss_loaded / 1e6:.0f} MB with them "
          f"({grown / args.connections / 1024:.1f} KiB each)")  # fmt: skip
    print("| GetCommand | p50 ms | p99 ms |\n| --- | --- | --- |")
    for label, latencies in seen.items():
        p50, p99 = _summary(latencies)
        print(f"| {label} ({len(latencies)} calls) | {p50:.3f} | {p99:.3f} |")
    ratio = _summary(seen["loaded"])[1] / _summary(seen["idle"])[1]
    print(f"p99 with {args.connections} idle connections / p99 idle: {ratio:.2f}")


if __name__ == "__main__":
    main()
