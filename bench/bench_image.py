"""The serving image at one catalog size: build, check and map costs, and GetCommand lookups three ways.

Lookups compared, each returning the answer's bytes for a random known name:
  dict      a dict name -> bytes, as every process held before (its memory is the whole catalog again)
  image     the image's hash table in the map (no per-process index)
  bisect    binary search over the image's sorted names (no per-process index)
plus the memory a per-process dict name -> (start, end) would cost instead.

Standalone and local: it reads one snapshot file, writes its image in a
temporary folder and removes it. The machine is shared: compare the rows of
one run, not runs.

    .venv/bin/python bench/bench_image.py bench/.cache/snapshots/catalog_50000/catalog-0000000001.avsnap

``measure`` is what ``run_all.py`` calls.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from avapdefs.folder import read_header
from avapdefs.format.snapshot import read_file_bytes
from avapdefs.format.wire import command_name, encode_entry, iter_entries
from server.image import Image, image_name, open_image
from server.image_write import write_image


def _best_ms(action: Callable[[], object], rounds: int) -> float:
    return _timed_ms(action, rounds)[0]


def _timed_ms(action: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Medians of the wall time and of the process's CPU time (every thread) of ``action``."""
    times, cpu = [], []
    for _ in range(rounds):
        began, began_cpu = time.perf_counter(), time.process_time()
        action()
        times.append((time.perf_counter() - began) * 1000)
        cpu.append((time.process_time() - began_cpu) * 1000)
    return statistics.median(times), statistics.median(cpu)


def _per_second(lookup: Callable[[bytes], object], names: list[bytes], rounds: int) -> float:
    rates = []
    for _ in range(rounds):
        began = time.perf_counter()
        for name in names:
            lookup(name)
        rates.append(len(names) / (time.perf_counter() - began))
    return statistics.median(rates)


def _bisect_lookup(image: Image) -> Callable[[bytes], bytes | None]:
    names, starts, spans, buffer = image.names_view, image.name_starts, image.spans, image.buffer

    class _Keys:
        def __len__(self) -> int:
            return image.count

        def __getitem__(self, k: int) -> bytes:
            return bytes(names[starts[k] : starts[k + 1]])

    keys = _Keys()

    def lookup(name: bytes) -> bytes | None:
        k = bisect_left(keys, name)
        if k < image.count and keys[k] == name:
            return buffer[spans[2 * k] : spans[2 * k + 1]]
        return None

    return lookup


def _allocated_mb(build: Callable[[], object]) -> float:
    tracemalloc.start()
    kept = build()
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return size / 1e6


@dataclass
class ImageResult:
    """What one run measured; times are medians of rounds."""

    commands: int
    payload_mb: float
    image_mb: float
    write_ms: float  # verify + decompress + index + fsync
    write_cpu_ms: float  # the same, CPU of every thread (the writer uses two cores)
    open_ms: float  # map + check
    lookups_per_s: dict[str, float]  # by the rows' labels
    dict_bytes_mb: float  # per process: a dict name -> bytes
    dict_spans_mb: float  # per process: a dict name -> (start, end)


def measure(snapshot: Path, rounds: int = 5, lookups: int = 200_000) -> ImageResult:
    """Write ``snapshot``'s image into a temporary folder, time it, map it, and time lookups in it."""
    data = read_file_bytes(snapshot)
    info = read_header(snapshot)
    with tempfile.TemporaryDirectory(prefix="bench-image-") as folder:
        target = Path(folder) / image_name(info)
        write_ms, write_cpu_ms = _timed_ms(lambda: write_image(target, data, info, snapshot), max(rounds // 2, 1))
        open_ms = _best_ms(lambda: open_image(target, info), rounds)
        image = open_image(target, info)
        answers = image.answers
        table = {bytes(command_name(body)): encode_entry(body) for body in iter_entries(image.payload)}
        rng = random.Random(7)
        known = list(table)
        names = [rng.choice(known) for _ in range(lookups)]
        bisect_lookup = _bisect_lookup(image)
        assert all(answers.get(name) == table[name] == bisect_lookup(name) for name in names[:1000])
        rates = {
            "dict name -> bytes (before)": _per_second(table.get, names, rounds),
            "image hash table in the map": _per_second(answers.get, names, rounds),
            "bisect over the mapped names": _per_second(bisect_lookup, names, rounds),
        }
        return ImageResult(
            image.count, len(image.payload) / 1e6, len(image.buffer) / 1e6, write_ms, write_cpu_ms, open_ms, rates,
            _allocated_mb(lambda: {k: bytes(memoryview(v)) for k, v in table.items()}),
            _allocated_mb(lambda: {k: (i, i + len(v)) for i, (k, v) in enumerate(table.items())}),
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("snapshot", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lookups", type=int, default=200_000)
    args = parser.parse_args(argv)
    result = measure(args.snapshot, args.rounds, args.lookups)
    print(f"{result.commands:,} commands, payload {result.payload_mb:.0f} MB, image {result.image_mb:.0f} MB")
    print(f"write image (verify + decompress + index + fsync): {result.write_ms:.0f} ms "
          f"({result.write_cpu_ms:.0f} ms of CPU); map + check: {result.open_ms:.0f} ms")  # fmt: skip
    print(f"{'lookup':<32} {'per second':>12}")
    for label, rate in result.lookups_per_s.items():
        print(f"{label:<32} {rate:>12,.0f}")
    print(f"per-process memory: dict name -> bytes {result.dict_bytes_mb:.0f} MB, "
          f"dict name -> (start, end) {result.dict_spans_mb:.0f} MB, image table 0 MB (shared)")  # fmt: skip
    print("caveats: one thread, names already bytes; the machine is shared (medians of rounds).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
