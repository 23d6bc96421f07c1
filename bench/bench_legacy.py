"""How large a catalog the legacy unary SyncCatalog(Empty) can serve, and how fast.

Legacy workers fetch the whole catalog as one message. This builds catalogs of
realistic commands (about 2 KB of code each, plus its signed package), serves
each from a real server on 127.0.0.1, and times one SyncCatalog from a client
whose receive limit is lifted (as legacy workers must lift grpc's default 4 MB).

    .venv/bin/python bench/bench_legacy.py [--sizes 5000,50000,200000]

Caveat: server and client share one process (and the GIL) on a noisy 2-core
machine; the figures say what fits and its order of speed, not a peak.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import catalog
import grpc

from avap.definition_engine_pb2 import Catalog
from avapdefs.format.package import build_package
from avapdefs.v1.definitions_pb2 import Command
from server.config import Settings
from server.launch import ServerProcess

KEY = b"bench signing key"


def _commands(count: int) -> Iterator[Command]:
    for index in range(count):
        code = "".join(f"    value_{index}_{line} = compute(args[{line}], {index * 7 + line})\n" for line in range(36))
        code = f"def command_{index}(self, args):\n{code}    return value_{index}_0\n"
        yield Command(
            name=f"bench.command.{index:07d}",
            type="function",
            interface_json='[{"item":"targetVarName","type":"variable"}]',
            code=code,
            signed_package=build_package(code, KEY),
        )


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _measure(count: int, scratch: Path) -> tuple[int, float, float, float]:
    folder = scratch / f"n{count}"
    folder.mkdir()
    catalog.publish(folder, _commands(count), 1)
    server = ServerProcess(Settings(snapshots_dir=folder, port=0))
    try:
        loaded = server.start()
        options = [("grpc.max_receive_message_length", -1)]
        with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=options) as channel:
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/avap.DefinitionEngine/SyncCatalog")
            started = time.perf_counter()
            data: bytes = call(b"", timeout=600)
            seconds = time.perf_counter() - started
        parsed = Catalog.FromString(data)
        assert parsed.total_count == count == len(parsed.commands)
        return len(data), seconds, loaded.load_ms, _peak_rss_mb(server.pid)
    finally:
        server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,50000,200000", help="catalog sizes in commands")
    sizes = [int(size) for size in parser.parse_args().sizes.split(",")]
    print(f"{'commands':>9} {'message MB':>11} {'sync s':>7} {'MB/s':>7} {'load ms':>8} {'peak RSS MB':>12}")
    with tempfile.TemporaryDirectory() as scratch:
        for count in sizes:
            size, seconds, load_ms, rss = _measure(count, Path(scratch))
            mb = size / 1e6
            print(f"{count:>9} {mb:>11.1f} {seconds:>7.2f} {mb / seconds:>7.0f} {load_ms:>8.0f} {rss:>12.0f}")


if __name__ == "__main__":
    main()
