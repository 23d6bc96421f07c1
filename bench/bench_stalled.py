"""Stalled SyncCatalog readers: what they cost the server, and whether GetCommand still answers beside them.

Clients open SyncCatalog streams of a catalog that does not compress and stop
reading after the header (no BDP probing, so their window stays at 64 KiB,
as a reader that really stopped). Printed: the server's RSS (all its
processes) idle, with the streams stalled, and after the stream idle timeout
has reset them; GetCommand latency while they are stalled.

    .venv/bin/python bench/bench_stalled.py                  # 50 stalled streams of a 20 MiB file
    .venv/bin/python bench/bench_stalled.py --streams 10 --mib 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import procs
from catalog import publish

from avapdefs.v1.definitions_pb2 import Command, GetCommandRequest, SyncCatalogRequest
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub

ROOT = Path(__file__).resolve().parents[1]


def _commands(mib: int) -> list[Command]:
    # 256 KiB of random bytecode each: the snapshot is about ``mib`` MiB, compressed or not.
    return [Command(name=f"big.{index:04d}", bytecode=os.urandom(256 << 10)) for index in range(mib * 4)]


def _latencies_ms(stub: DefinitionServiceStub, calls: int = 300) -> tuple[float, float]:
    seen = []
    for _ in range(calls):
        started = time.perf_counter()
        stub.GetCommand(GetCommandRequest(name="big.0001"), timeout=5)
        seen.append((time.perf_counter() - started) * 1000)
    seen.sort()
    return statistics.median(seen), seen[int(len(seen) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--mib", type=int, default=20, help="snapshot size in MiB")
    parser.add_argument("--idle-timeout-s", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        publish(folder, _commands(args.mib), 1)
        port = procs.free_port()
        log = folder / "server.log"
        argv = [sys.executable, "-m", "server", "--snapshots", str(folder), "--port", str(port), "--processes", "1",
                "--max-sync-streams", str(args.streams), "--heartbeat-s", "1",
                "--stream-idle-timeout-s", str(args.idle_timeout_s)]  # fmt: skip
        server = procs.start("ours", argv, log_path=log, ready_text="serving catalog version", timeout_s=60, cwd=ROOT)
        try:
            idle_mb = procs.memory_bytes(server.popen.pid)[0] / 1e6
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = DefinitionServiceStub(channel)
                p50, p99 = _latencies_ms(stub)
                print(f"idle: RSS {idle_mb:.0f} MB; GetCommand p50 {p50:.2f} ms, p99 {p99:.2f} ms")
                stalled_channels = [
                    grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.http2.bdp_probe", 0)])
                    for _ in range(args.streams)
                ]
                calls = [
                    DefinitionServiceStub(c).SyncCatalog(SyncCatalogRequest(), timeout=600) for c in stalled_channels
                ]
                for call in calls:
                    next(call)  # the header; then nothing more is read
                time.sleep(3)  # let every stream fill its windows and buffers
                stalled_mb = procs.memory_bytes(server.popen.pid)[0] / 1e6
                p50, p99 = _latencies_ms(stub)
                print(f"{args.streams} stalled streams of {args.mib} MiB: RSS {stalled_mb:.0f} MB "
                      f"({(stalled_mb - idle_mb) / args.streams:.2f} MB per stream); "
                      f"GetCommand p50 {p50:.2f} ms, p99 {p99:.2f} ms")  # fmt: skip
                time.sleep(args.idle_timeout_s + 2)
                after_mb = procs.memory_bytes(server.popen.pid)[0] / 1e6
                ended = 0
                for call in calls:
                    try:
                        for _ in call:
                            pass
                    except grpc.RpcError:
                        ended += 1
                print(f"after the {args.idle_timeout_s:g} s idle timeout: {ended} of {args.streams} streams reset, "
                      f"RSS {after_mb:.0f} MB")  # fmt: skip
                for stalled_channel in stalled_channels:
                    stalled_channel.close()
        finally:
            procs.stop(server)


if __name__ == "__main__":
    main()
