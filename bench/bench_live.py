"""Hot reload under load: new versions published while GetCommand runs, and memory after many swaps.

Starts ``python -m server`` on 127.0.0.1 serving a temporary folder, keeps
GetCommand calls going from client threads, and publishes a new snapshot
(1% of the commands changed) every ``--interval-s`` for ``--swaps`` versions,
deleting all but the newest three files as retention would. Each version is
awaited on a WatchCatalog stream, which gives the time from publishing to the
server announcing it. Prints failed calls, swap latency, and the server's
resident memory after the first load and after the last swap (from
/proc/PID/status; VmRSS).

    .venv/bin/python bench/bench_live.py                       # 60 versions, one a second, under load
    .venv/bin/python bench/bench_live.py --swaps 100 --interval-s 0   # memory after 100 swaps

Caveat: the client threads and the server share 2 noisy cores; the figures say
"no request fails" and the order of the latency, not a peak.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import catalog
import grpc

from avapdefs.folder import list_snapshots
from avapdefs.v1.definitions_pb2 import Command, GetCommandRequest, WatchCatalogRequest
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub

ROOT = Path(__file__).resolve().parent.parent


def _commands(count: int, version: int) -> list[Command]:
    body = "".join(f"    step_{line} = run(args[{line}])\n" for line in range(60))
    changed = {index for index in range(0, count, 100)}  # 1% of the commands
    return [
        Command(
            name=f"bench.cmd.{index:05d}",
            type="function",
            interface_json='[{"item":"x","type":"variable"}]',
            code=f"# version {version if index in changed else 1}\ndef cmd_{index}(args):\n{body}",
        )
        for index in range(count)
    ]


def _publish(folder: Path, version: int, count: int, keep: int = 3) -> None:
    catalog.publish(folder, _commands(count, version), version)
    for _, path in list_snapshots(folder)[:-keep]:
        path.unlink()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _load(port: int, names: list[str], stop: threading.Event, counts: dict[str, int]) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = DefinitionServiceStub(channel).GetCommand
        index = 0
        while not stop.is_set():
            index += 1
            try:
                call(GetCommandRequest(name=names[index % len(names)]), timeout=10)
                counts["ok"] += 1
            except grpc.RpcError:
                counts["failed"] += 1


def _start_server(folder: Path, port: int) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "server", "--snapshots", str(folder), "--port", str(port)]
    process = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        if "serving catalog" in line:
            return process
    raise RuntimeError("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=5000)
    parser.add_argument("--swaps", type=int, default=60)
    parser.add_argument("--interval-s", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=4, help="GetCommand client threads (0: no load)")
    parser.add_argument("--port", type=int, default=50599)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        _publish(folder, 1, args.commands)
        process = _start_server(folder, args.port)
        try:
            _run(args, folder, process)
        finally:
            process.terminate()
            process.wait(30)


def _run(args: argparse.Namespace, folder: Path, process: subprocess.Popen[str]) -> None:
    rss_first = _rss_mb(process.pid)
    names = [f"bench.cmd.{index:05d}" for index in range(args.commands)]
    stop, counts = threading.Event(), {"ok": 0, "failed": 0}
    threads = [threading.Thread(target=_load, args=(args.port, names, stop, counts)) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    latencies: list[float] = []
    with grpc.insecure_channel(f"127.0.0.1:{args.port}") as channel:
        stream = DefinitionServiceStub(channel).WatchCatalog(WatchCatalogRequest(have_version=1), timeout=3600)
        started = time.monotonic()
        for version in range(2, args.swaps + 2):
            time.sleep(max(0.0, started + (version - 1) * args.interval_s - time.monotonic()))  # the publishing pace
            published = time.monotonic()
            _publish(folder, version, args.commands)
            while (message := next(stream)).WhichOneof("event") != "catalog" or message.catalog.version != version:
                pass
            latencies.append(time.monotonic() - published)
        stream.cancel()
    stop.set()
    for thread in threads:
        thread.join()
    rss_last = _rss_mb(process.pid)
    print(f"commands {args.commands}, {args.swaps} new versions every {args.interval_s} s, {args.threads} threads")
    print(f"GetCommand calls: {counts['ok']} ok, {counts['failed']} failed")
    print(
        f"publish -> WatchCatalog announces it: median {statistics.median(latencies) * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms (includes writing the file)"
    )
    print(f"server RSS: {rss_first:.0f} MB after the first load, {rss_last:.0f} MB after {args.swaps} swaps")


if __name__ == "__main__":
    main()
