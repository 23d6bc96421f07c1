"""In-process Replica.get against DefinitionClient.get_command over gRPC, on a 5,000-command catalog.

Starts ``python -m server`` on 127.0.0.1 serving a temporary folder with the
bench catalog (``catalog.jsonl_for``: the peer's generated catalog when
``../shared/peer`` is there, else one generated in the same shape), starts a
``Replica`` on it, then per round:

- ``replica.get(name)`` on random names, one thread, ``--calls`` calls;
- ``DefinitionClient.get_command(name)`` over gRPC, one thread, ``--grpc-s`` seconds;
- the reference Node.js server's GetCommand over gRPC, the same way, when
  ``../shared/peer`` and ``node`` are there (``--no-peer`` skips it);
- a new version (1% of the commands changed) is published into the server's
  folder: the time until WatchCatalog announces it, and from that until the
  replica has swapped it in.

Then, in a child process of its own, the memory of a replica booted from the
synced cache: resident memory after minus before (glibc's free memory handed
back first), for the view alone (commands held as bytes, parsed on their
first lookup), the view once every command was looked up, and the whole
Replica (view, channel, thread), against the uncompressed payload.

    .venv/bin/python bench/bench_replica.py                 # 5 rounds, about 30 s
    .venv/bin/python bench/bench_replica.py --rounds 3 --no-peer

``run`` is what ``run_all.py`` calls.

Caveats: two shared, noisy cores; the gRPC figures are for one client thread
(latency bound, not server capacity: see bench_serve.py); the replica loop's
own overhead (a Python for loop) is included in its figure.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import catalog
import grpc
import peer
import procs
import psutil
from targets import PEER_SERVICE, request_bytes

from avapdefs.client import DefinitionClient, Replica, ReplicaInfo
from avapdefs.client.replica import build_view
from avapdefs.folder import read_header, read_newest
from avapdefs.v1.definitions_pb2 import Command, WatchCatalogRequest, WatchCatalogResponse

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
_SEED = 20261130


def _edited(commands: list[Command], version: int) -> list[Command]:
    """``commands`` with every 100th command's code edited for ``version``."""
    out = []
    for index, command in enumerate(commands):
        if index % 100 == 0:
            command = Command(name=command.name, type=command.type, interface_json=command.interface_json,
                              code=f"{command.code}\n# edited for version {version}\n")  # fmt: skip
        out.append(command)
    return out


def _replica_rate(replica: Replica, names: list[str]) -> float:
    started = time.perf_counter()
    for name in names:
        replica.get(name)
    return len(names) / (time.perf_counter() - started)


def _grpc_rate(get: Callable[[str], object], names: list[str], seconds: float) -> float:
    calls, started = 0, time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        get(names[calls % len(names)])
        calls += 1
    return calls / (time.perf_counter() - started)


def _next_version(stream: grpc._CallIterator[WatchCatalogResponse]) -> int:
    for message in stream:
        if message.WhichOneof("event") == "catalog":
            return message.catalog.version
    raise RuntimeError("the watch stream ended")


class _Swaps:
    """When the replica swapped in each version (perf_counter), from its on_change callback."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}

    def __call__(self, info: ReplicaInfo) -> None:
        self.at[info.version] = time.perf_counter()


def _publish_and_time(folder: Path, commands: list[Command], version: int, client: DefinitionClient,
                      replica: Replica, swaps: _Swaps) -> tuple[float, float]:  # fmt: skip
    """Publish ``version``; seconds to the server's announcement, and from it to the replica's swap."""
    stream = client.stub.WatchCatalog(WatchCatalogRequest(have_version=version - 1), timeout=60)
    try:
        catalog.publish(folder, _edited(commands, version), version)
        published = time.perf_counter()
        while _next_version(stream) != version:
            pass
        announced = time.perf_counter()
    finally:
        stream.cancel()
    if not replica.wait_for_version(version, timeout_s=30):
        raise RuntimeError(f"the replica did not reach version {version}")
    return announced - published, swaps.at[version] - announced


def _rss_bytes() -> int:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: RSS may then include freed memory
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory back, so RSS shows what is held
    return int(psutil.Process().memory_info().rss)


def _memory_child(server: str, cache: Path, version: int) -> int:
    """In a process of its own: RSS held by a view, then by a whole Replica, booted from ``cache``; JSON out."""
    base = _rss_bytes()
    view = build_view(read_newest(cache).snapshot)
    view_bytes = _rss_bytes() - base
    for name in view.names:  # each command is parsed on its first lookup: the most a view can hold
        view.get(name)
    touched_bytes = _rss_bytes() - base
    del view
    base = _rss_bytes()
    with Replica(server, cache) as replica:
        if not replica.synced.wait(60) or replica.info().version != version:
            raise RuntimeError(f"the replica is at version {replica.info().version}, not {version}")
        replica_bytes = _rss_bytes() - base
    print(json.dumps({"view_bytes": view_bytes, "touched_bytes": touched_bytes, "replica_bytes": replica_bytes}))
    return 0


def _memory(server: str, cache: Path, version: int) -> dict[str, int]:
    argv = [sys.executable, __file__, "--memory-child", str(cache), "--server", server, "--version", str(version)]
    done = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120)
    result: dict[str, int] = json.loads(done.stdout.splitlines()[-1])
    return result


def _start_peer(stack: contextlib.ExitStack, jsonl: Path, peer_source: Path) -> Callable[[str], object] | None:
    """GetCommand on the reference server serving ``jsonl``, one call at a time; None (and why) when unavailable."""
    if shutil.which("node") is None or not peer.available(peer_source):
        print(f"note: the peer is skipped (no node, or no peer in {peer_source})")
        return None
    port = procs.free_port()
    try:
        peer.prepare(peer_source)
        messages = peer.messages()
        process = peer.start(jsonl, port)
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        print(f"note: the peer is skipped ({exc})")
        return None
    stack.callback(procs.stop, process)
    channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{port}"))
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"/{PEER_SERVICE}/GetCommand")

    def get(name: str) -> object:
        return messages.Command.FromString(call(request_bytes(name), timeout=10))

    return get


def _start_ours(stack: contextlib.ExitStack, folder: Path) -> str:
    port = procs.free_port()
    argv = [sys.executable, "-m", "server", "--snapshots", str(folder), "--host", "127.0.0.1", "--port", str(port)]
    log = BENCH / ".cache" / "logs" / f"replica-ours-{port}.log"
    stack.callback(
        procs.stop,
        procs.start("ours", argv, log_path=log, ready_text="serving catalog version", timeout_s=60, cwd=ROOT),
    )
    return f"127.0.0.1:{port}"


def _median(values: Sequence[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


@dataclass
class Result:
    """What one run measured; rates are calls per second, one per round."""

    commands: int
    catalog: str
    payload_bytes: int
    rates: dict[str, list[float]]
    announce_s: list[float]
    swap_s: list[float]
    view_bytes: int
    replica_bytes: int
    touched_bytes: int = 0  # a view once every command was looked up


def run(args: argparse.Namespace) -> Result:
    """Start our server (and the peer), a Replica and a client; measure ``args.rounds`` rounds; stop them all."""
    with tempfile.TemporaryDirectory(prefix="bench-replica-") as scratch, contextlib.ExitStack() as stack:
        return _run(args, Path(scratch), stack)


def _run(args: argparse.Namespace, scratch: Path, stack: contextlib.ExitStack) -> Result:
    jsonl = catalog.jsonl_for(args.commands, args.peer_source)
    commands = list(catalog.read_commands(jsonl))
    folder, cache = scratch / "served", scratch / "cache"
    folder.mkdir()
    payload_bytes = read_header(catalog.publish(folder, commands, 1)).uncompressed_size
    server = _start_ours(stack, folder)
    peer_get = None if args.no_peer else _start_peer(stack, jsonl, args.peer_source)
    swaps = _Swaps()
    replica = stack.enter_context(Replica(server, cache, on_change=swaps))
    client = stack.enter_context(DefinitionClient(server, timeout_s=30))
    if not replica.wait_for_version(1, timeout_s=60):
        raise RuntimeError("the replica did not sync version 1")
    rng = random.Random(_SEED)
    names = [command.name for command in commands]
    calls = [rng.choice(names) for _ in range(args.calls)]
    rates: dict[str, list[float]] = {"replica": [], "grpc_ours": [], "grpc_peer": []}
    announce_s: list[float] = []
    swap_s: list[float] = []
    for round_ in range(args.rounds):
        rates["replica"].append(_replica_rate(replica, calls))
        rates["grpc_ours"].append(_grpc_rate(client.get_command, calls, args.grpc_s))
        if peer_get is not None:
            rates["grpc_peer"].append(_grpc_rate(peer_get, calls, args.grpc_s))
        announced, swapped = _publish_and_time(folder, commands, round_ + 2, client, replica, swaps)
        announce_s.append(announced)
        swap_s.append(swapped)
    memory = _memory(server, cache, args.rounds + 1)
    return Result(len(commands), str(jsonl.relative_to(ROOT)), payload_bytes, rates, announce_s, swap_s, **memory)


def _print(result: Result, rounds: int) -> None:
    rates, payload = result.rates, result.payload_bytes
    replica = statistics.median(rates["replica"])
    print(f"\n{result.commands} commands ({result.catalog}), payload {payload / 1e6:.1f} MB, {rounds} rounds")
    print("| lookup | per second, median (min-max) | replica / this |")
    print("| --- | --- | --- |")
    rows = (("Replica.get, in process", "replica"), ("DefinitionClient.get_command, gRPC", "grpc_ours"),
            ("peer GetCommand, gRPC", "grpc_peer"))  # fmt: skip
    for label, key in rows:
        if rates[key]:
            print(f"| {label} | {_median(rates[key])} | {replica / statistics.median(rates[key]):,.0f}x |")
    for values, what in ((result.announce_s, "publish -> WatchCatalog announces it"),
                         (result.swap_s, "announced -> the replica has swapped it in")):  # fmt: skip
        print(f"{what}: median {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms")
    for held, what in ((result.view_bytes, "a view alone"), (result.touched_bytes, "a view, every command looked up"),
                       (result.replica_bytes, "a whole Replica")):  # fmt: skip
        print(f"memory of {what}: {held / 1e6:.1f} MB, {held / payload:.2f}x the uncompressed payload")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--commands", type=int, default=5000, help="catalog size (default 5000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--calls", type=int, default=2_000_000, help="Replica.get calls per round")
    parser.add_argument("--grpc-s", type=float, default=2.0, help="seconds of gRPC calls per round and server")
    parser.add_argument("--no-peer", action="store_true", help="leave out the reference Node.js server")
    parser.add_argument("--peer-source", type=Path, default=peer.SOURCE, help="the reference server's folder")
    parser.add_argument("--json", type=Path, help="write the results here (default bench/results/replica-<time>.json)")
    parser.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--server", help=argparse.SUPPRESS)
    parser.add_argument("--version", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child is not None:
        return _memory_child(args.server, args.memory_child, args.version)
    result = run(args)
    _print(result, args.rounds)
    out = args.json or BENCH / "results" / time.strftime("replica-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dataclasses.asdict(result), indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
