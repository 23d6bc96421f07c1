"""Idle WatchCatalog streams: what they cost a thread-pool server and a grpc.aio server.

For each server kind and each count of open streams, starts the server on
127.0.0.1 pinned to CPU 0, opens that many WatchCatalog streams from a
separate grpc.aio client process (over 50 connections, like a fleet of
workers), and then measures, with the streams open:

- the server's threads (idle, and after the load below) and resident memory (psutil),
- its CPU use over a few idle seconds (parked streams should cost none),
- GetCommand req/s under h2load (``-c8 -m50 -t1`` on CPU 1) beside the streams,
- fan-out: from publishing a new snapshot to the last stream announcing it.

Kinds: ``threads`` is ``python -m server`` as shipped (``--max-workers 8``,
``--max-watch-streams 1000``); ``aio`` is a grpc.aio server defined here,
answering GetCommand and WatchCatalog from the same ``SnapshotStore`` and
reload thread with the same raw-bytes handlers; ``baseline`` (with
``--baseline-root``) is ``python -m server`` from another checkout.

    .venv/bin/python bench/bench_watch.py                        # 0 and 1000 streams, both kinds
    .venv/bin/python bench/bench_watch.py --streams 0,250,1000 --h2load-s 5
    git archive fecf4a5 | tar -x -C /tmp/old && .venv/bin/python bench/bench_watch.py --baseline-root /tmp/old

Caveats: 2 noisy cores; h2load and the watch client share CPU 1. Read ratios
within a run, not absolute figures. Loopback only; every process is stopped by
its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import catalog
import grpc
import procs
import psutil
from loads import grpc_frame, run_h2load

from avapdefs.format.wire import encode_entry
from avapdefs.v1.definitions_pb2 import Command, GetCommandRequest, WatchCatalogRequest, WatchCatalogResponse
from server.reload import Reloader
from server.store import SnapshotStore

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVICE = "/avapdefs.v1.DefinitionService/"
HEARTBEAT_S = 15.0
CONNECTIONS = 50


def _publish(folder: Path, version: int, count: int) -> None:
    commands = [
        Command(name=f"bench.cmd.{index:05d}", type="function", code=f"# version {version}\ndef cmd_{index}(): pass\n")
        for index in range(count)
    ]
    catalog.publish(folder, commands, version)


# --- the grpc.aio server (kind "aio") -------------------------------------------------


def _serve_aio(folder: Path, port: int) -> None:
    os.sched_setaffinity(0, {0})
    store = SnapshotStore(folder, chunk_bytes=1 << 20)
    store.load_newest()
    asyncio.run(_aio_main(store, port))


async def _aio_main(store: SnapshotStore, port: int) -> None:
    loop = asyncio.get_running_loop()
    swapped = [asyncio.Event()]

    def announce() -> None:  # on the loop: wake every watcher, then arm a fresh event
        event, swapped[0] = swapped[0], asyncio.Event()
        event.set()

    def bridge() -> None:  # the store notifies a threading.Condition; the loop needs an asyncio event
        while True:
            with store.swapped:
                store.swapped.wait()
            loop.call_soon_threadsafe(announce)

    async def get_command(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        snap = store.current
        assert snap is not None
        found = snap.responses.get(GetCommandRequest.FromString(request).name.encode())
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "not found")
        return found

    async def watch(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        seen = WatchCatalogRequest.FromString(request).have_version
        while True:
            event = swapped[0]  # taken before reading current, so a swap in between is not missed
            snap = store.current
            assert snap is not None
            if snap.info.version != seen:
                seen = snap.info.version
                yield encode_entry(snap.catalog_info)
                continue
            try:
                await asyncio.wait_for(event.wait(), HEARTBEAT_S)
            except TimeoutError:
                yield WatchCatalogResponse(heartbeat_unix_ms=int(time.time() * 1000)).SerializeToString()

    threading.Thread(target=bridge, daemon=True).start()
    Reloader(store).start()
    server = grpc.aio.server()
    handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        "GetCommand": grpc.unary_unary_rpc_method_handler(get_command),
        "WatchCatalog": grpc.unary_stream_rpc_method_handler(watch),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.strip("/"), handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"serving catalog on {port}", flush=True)
    await server.wait_for_termination()


# --- the watch client (a process of its own) -------------------------------------------


def _hold_watches(port: int, streams: int) -> None:
    os.sched_setaffinity(0, {1})
    asyncio.run(_hold_main(port, streams))


async def _hold_main(port: int, streams: int) -> None:
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(CONNECTIONS)]
    counts: dict[int, int] = {}
    request = WatchCatalogRequest(have_version=0).SerializeToString()

    async def one(channel: grpc.aio.Channel) -> None:
        watch: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(SERVICE + "WatchCatalog")
        call = watch(request)
        async for data in call:
            message = WatchCatalogResponse.FromString(data)
            if message.WhichOneof("event") == "catalog":
                version = message.catalog.version
                counts[version] = counts.get(version, 0) + 1
                if counts[version] == streams:
                    print(f"all {version} {time.time():.6f}", flush=True)

    tasks = [asyncio.create_task(one(channels[index % CONNECTIONS])) for index in range(streams)]
    if not tasks:
        print(f"all 1 {time.time():.6f}", flush=True)
    await asyncio.gather(*tasks)


# --- the measuring run -------------------------------------------------------------------


def _start_server(kind: str, folder: Path, port: int, args: argparse.Namespace, logs: Path) -> procs.Process:
    root = ROOT
    if kind == "aio":
        argv = [sys.executable, str(HERE / "bench_watch.py"), "_aio", str(folder), str(port)]
    else:
        argv = [
            sys.executable, "-m", "server", "--snapshots", str(folder), "--port", str(port), "--cpu", "0",
            "--no-legacy", "--max-workers", "8", "--max-watch-streams", str(args.max_watch_streams),
        ]  # fmt: skip
    if kind == "baseline":  # the same server from another checkout (e.g. `git archive` of an older commit)
        root = args.baseline_root.resolve()
        argv = ["env", f"PYTHONPATH={root}:{root / 'proto'}", *argv]
    return procs.start(kind, argv, log_path=logs / f"{kind}.log", ready_text="serving catalog", timeout_s=60, cwd=root)


def _threads(pid: int) -> int:
    return int(psutil.Process(pid).num_threads())


def _wait_for_line(path: Path, text: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines():
            if line.startswith(text):
                return line
        time.sleep(0.01)
    raise RuntimeError(f"no {text!r} in {path} within {timeout_s} s:\n{procs.tail(path)}")


def _measure(kind: str, streams: int, args: argparse.Namespace, scratch: Path) -> dict[str, float]:
    folder = scratch / f"{kind}-{streams}"
    folder.mkdir()
    _publish(folder, 1, args.commands)
    port = procs.free_port()
    server = _start_server(kind, folder, port, args, scratch)
    holder: procs.Process | None = None
    try:
        argv = [sys.executable, str(HERE / "bench_watch.py"), "_hold", str(port), str(streams)]
        holder = procs.start("holder", argv, log_path=scratch / "hold.log", ready_text="all 1 ", timeout_s=120)
        idle_cpu = procs.cpu_s(server.pid)
        time.sleep(args.idle_s)  # nothing to wait for: this is the idle window being measured
        idle_cpu = procs.cpu_s(server.pid) - idle_cpu
        threads = _threads(server.pid)
        rss, _ = procs.memory_bytes(server.pid)
        body = scratch / "get.bin"
        body.write_bytes(grpc_frame(GetCommandRequest(name="bench.cmd.00042").SerializeToString()))
        url = f"http://127.0.0.1:{port}{SERVICE}GetCommand"
        h2 = run_h2load(url, body, clients=8, streams=50, threads=1, duration_s=args.h2load_s, warmup_s=1)
        loaded_threads = _threads(server.pid)  # a pool that grew under load shows here
        fan_out_s = float("nan")
        if streams:
            published = time.time()
            _publish(folder, 2, args.commands)
            fan_out_s = float(_wait_for_line(holder.log_path, "all 2 ", 60).split()[2]) - published
    finally:
        if holder is not None:
            procs.stop(holder)
        procs.stop(server)
    return {
        "threads": threads,
        "loaded_threads": loaded_threads,
        "rss_mb": rss / 2**20,
        "idle_cpu_pct": 100 * idle_cpu / args.idle_s,
        "rps": h2.rps,
        "failed": h2.failed + h2.errored,
        "fan_out_ms": fan_out_s * 1000,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", default="0,1000", help="counts of idle watch streams, comma-separated")
    parser.add_argument("--kinds", default="threads,aio")
    parser.add_argument("--commands", type=int, default=5000)
    parser.add_argument("--h2load-s", type=float, default=5.0)
    parser.add_argument("--idle-s", type=float, default=3.0)
    parser.add_argument("--max-watch-streams", type=int, default=1000, help="the threads server's watch cap")
    parser.add_argument("--baseline-root", type=Path, help="also run kind 'baseline': python -m server from here")
    args = parser.parse_args(argv)
    rows: list[tuple[str, int, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for streams in (int(text) for text in args.streams.split(",")):
            for kind in args.kinds.split(",") + (["baseline"] if args.baseline_root else []):
                rows.append((kind, streams, _measure(kind, streams, args, Path(scratch))))
                print(f"{kind} {streams}: {rows[-1][2]}", file=sys.stderr)
    heads = ("streams", "threads", "loaded", "RSS MB", "idle CPU%", "req/s", "fail", "fan-out ms")
    print(f"{'kind':8} " + " ".join(f"{head:>9}" for head in heads))
    keys = ("threads", "loaded_threads", "rss_mb", "idle_cpu_pct", "rps", "failed", "fan_out_ms")
    for kind, streams, row in rows:
        print(f"{kind:8} {streams:9d} " + " ".join(f"{row[key]:9.{1 if key == 'rss_mb' else 0}f}" for key in keys))
    print("threads: idle with the streams open; loaded: after GetCommand under h2load -c8 -m50 -t1 (CPU 1; the")
    print("server on CPU 0). fan-out: from publishing a snapshot to the last stream announcing it.")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_aio":
        _serve_aio(Path(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_hold":
        _hold_watches(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(main())
