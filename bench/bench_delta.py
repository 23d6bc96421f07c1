"""Delta benchmark: full snapshot vs record-level delta when 1% of the commands change.

For each size (default 5,000 and 50,000 commands of about 2 KB, generated from
the same kind of template as bench_export.py's rows) it writes two snapshot
versions with ``avapdefs.format.snapshot`` (no PostgreSQL), where every 100th command's
code was edited, then measures:

- the full file's bytes against the delta file's bytes (what a syncing client
  downloads either way);
- building the delta from the two files, streamed (``make_delta_files`` +
  ``encode_delta``), in a child process: wall time and peak RSS (the child's ``VmHWM``);
- the same build with both payloads in memory (``read_file`` + ``make_delta``),
  and the exporter's whole step (``exporter.deltas.write_delta``: build, verify
  by applying, publish), each in its own child, against the baseline of a child
  that only imports the modules;
- applying the delta to the base into a new snapshot file, as a client does.

    .venv/bin/python bench/bench_delta.py                       # 5,000 and 50,000 commands
    .venv/bin/python bench/bench_delta.py --commands 5000 --changed-percent 5

Caveats: one run per size on a shared, noisy 2-core machine; the page cache is
warm (the files were just written); generated code compresses like real
definitions but is not real. Goal (issue 4): a delta of at most 3% of the full
file at 1% changed, at both sizes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "proto"))

from avapdefs.folder import delta_name, snapshot_name  # noqa: E402
from avapdefs.format.delta import apply_delta_file, decode_delta, encode_delta, make_delta, make_delta_files  # noqa: E402
from avapdefs.format.snapshot import SnapshotInfo, SnapshotWriter, read_file  # noqa: E402
from avapdefs.v1.definitions_pb2 import Command  # noqa: E402

_DOMAINS = ("billing", "orders", "crm", "payments", "shipping", "auth", "reporting", "ledger")
_ENTITIES = ("invoice", "customer", "order", "payment", "refund", "product", "account", "ticket", "user")
_CREATED_AT_UNIX_MS = 1_700_000_000_000
_CODE = """def cmd_{i}(self, connectorId, {e}Id, filters, limit, offset, fields, {e}Status, targetVarName):
    # Generated command {i} for {e} in {d}.
    client = self.connectors.client({d!r}, self.resolve(connectorId))
    query = dict(self.resolve(filters) or {{}}, limit=int(self.resolve(limit) or {limit}))
    query["offset"] = int(self.resolve(offset) or 0)
    if self.resolve({e}Status):
        query["status"] = self.resolve({e}Status)
    response = client.request("GET", f"/{e}s/{{self.resolve({e}Id)}}", params=query, timeout={timeout})
    if response.status_code == 404:
        self.variables[targetVarName] = None
        return
    response.raise_for_status()
    rows = response.json().get("data", [])
    wanted = [f.strip() for f in (self.resolve(fields) or "").split(",") if f.strip()]
    if wanted:
        rows = [{{k: row.get(k) for k in wanted}} for row in rows]
    self.metrics.increment("{d}_{e}_reads_total", len(rows))
    self.audit.log(self.context, "{d}.{e}.read", {{"id": self.resolve({e}Id), "n": len(rows)}})
    # token {token}
    self.cache.set("{d}:{e}:{token}", rows, ttl={ttl})
    for position, row in enumerate(rows):
        row["_position"] = position + int(self.resolve(offset) or 0)
        row["_source"] = "{d}"
    if len(rows) > {limit}:
        raise AvapError("cmd_{i}: more rows than the limit")
    self.variables[targetVarName] = rows
    self.variables["_count"] = len(rows)
"""


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _command(i: int, edited: bool) -> Command:
    d, e = _DOMAINS[i % 8], _ENTITIES[i % 9]
    code = _CODE.format(
        i=i, d=d, e=e, limit=10 + i % 990, timeout=1 + i % 30, token=_md5(f"{i}x"), ttl=60 * (1 + i % 60)
    )
    if edited:  # a realistic edit: a new limit and an extra line
        code = code.replace(f"or {10 + i % 990}))", f"or {11 + i % 990}))") + "    self.variables['_edited'] = True\n"
    interface = ",".join(f'{{"item":"{item}","type":"value"}}' for item in ("connectorId", f"{e}Id", "filters",
                         "limit", "offset", "fields", f"{e}Status"))  # fmt: skip
    return Command(
        name=f"{d}.{e}.cmd{i:08d}",
        type=("function", "connector", "control")[i % 3],
        interface_json=f'[{interface},{{"item":"targetVarName","type":"variable"}}]',
        code=code,
        description=f"Reads the {e} records of the {d} domain that match the filters (command {i}); at most "
        f"limit rows, starting at offset. Checksum {_md5(str(i))[:12]}.",
        logic=i % 7 == 0,
        component_type=d,
        service="bench",
        command=f"cmd{i}",
        source_id=i,
    )


def _write(path: Path, count: int, version: int, edited_every: int | None) -> SnapshotInfo:
    """Stream a generated catalog into a snapshot file, in name order, one command at a time."""
    order = sorted(range(count), key=lambda i: f"{_DOMAINS[i % 8]}.{_ENTITIES[i % 9]}.cmd{i:08d}")
    with open(path, "wb") as file:
        writer = SnapshotWriter(file, version=version, source="bench", created_at_unix_ms=_CREATED_AT_UNIX_MS)
        for i in order:
            writer.add(_command(i, edited_every is not None and i % edited_every == 0))
        return writer.finish()


def _child(mode: str, folder: Path) -> dict[str, float]:
    """One measured step, run in a fresh process so that its peak RSS is its own."""
    base, target = folder / snapshot_name(1), folder / snapshot_name(2)
    started = time.perf_counter()
    size = 0
    if mode == "stream":
        made = make_delta_files(base, target)
        assert made is not None
        size = len(encode_delta(made))
    elif mode == "memory":
        size = len(encode_delta(make_delta(read_file(base), read_file(target))))
    elif mode == "exporter":
        from exporter.deltas import write_delta

        path = write_delta(base, target, max_percent=50.0)
        size = path.stat().st_size if path else 0
    return {"seconds": time.perf_counter() - started, "bytes": size, "rss": _peak_rss()}


def _peak_rss() -> int:
    """This process's peak resident memory, in bytes.

    VmHWM belongs to the address space, which exec replaces; ``ru_maxrss`` would
    carry over the parent's peak from before the exec (Linux keeps the larger).
    """
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _run_child(mode: str, folder: Path) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", mode, str(folder)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert child.stdout is not None
    output = child.stdout.read()
    if child.wait() != 0:
        raise SystemExit(f"child {mode} failed")
    result: dict[str, float] = json.loads(output)
    return result


def _apply(folder: Path) -> float:
    made = decode_delta((folder / delta_name(1, 2)).read_bytes())
    started = time.perf_counter()
    with open(folder / "rebuilt.avsnap", "wb") as out:
        apply_delta_file(folder / snapshot_name(1), made, out)
    seconds = time.perf_counter() - started
    assert (folder / "rebuilt.avsnap").read_bytes() == (folder / snapshot_name(2)).read_bytes()
    return seconds


def _measure(count: int, changed_percent: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-delta-") as name:
        folder = Path(name)
        _write(folder / snapshot_name(1), count, 1, None)
        info = _write(folder / snapshot_name(2), count, 2, round(100 / changed_percent))
        runs = {mode: _run_child(mode, folder) for mode in ("idle", "stream", "memory", "exporter")}
        if not runs["exporter"]["bytes"]:
            raise SystemExit("the exporter did not keep the delta")
        return {
            "commands": count, "payload": info.uncompressed_size, "full": info.file_size,
            "delta": runs["stream"]["bytes"], "build_s": runs["stream"]["seconds"], "apply_s": _apply(folder),
            "exporter_s": runs["exporter"]["seconds"], "memory_s": runs["memory"]["seconds"],
            **{f"rss_{mode}": run["rss"] for mode, run in runs.items()},
        }  # fmt: skip


def _report(results: list[dict[str, float]], changed_percent: float) -> None:
    mb = 1e6
    print(f"\n{changed_percent:g}% of the commands changed between the two versions\n")
    print(f"{'commands':>9} {'payload MB':>10} {'full bytes':>11} {'delta bytes':>11} {'delta %':>7} "
          f"{'build s':>7} {'apply s':>7} {'export s':>8} {'in-mem s':>8}")  # fmt: skip
    for r in results:
        print(f"{int(r['commands']):>9,} {r['payload'] / mb:>10.1f} {int(r['full']):>11,} {int(r['delta']):>11,} "
              f"{100 * r['delta'] / r['full']:>7.2f} {r['build_s']:>7.2f} {r['apply_s']:>7.2f} "
              f"{r['exporter_s']:>8.2f} {r['memory_s']:>8.2f}")  # fmt: skip
    print(f"\n{'commands':>9} {'idle RSS MB':>11} {'build RSS MB':>12} {'export RSS MB':>13} {'in-mem RSS MB':>13} "
          f"{'(build-idle)/payload':>20}")  # fmt: skip
    for r in results:
        print(f"{int(r['commands']):>9,} {r['rss_idle'] / mb:>11.0f} {r['rss_stream'] / mb:>12.0f} "
              f"{r['rss_exporter'] / mb:>13.0f} {r['rss_memory'] / mb:>13.0f} "
              f"{(r['rss_stream'] - r['rss_idle']) / r['payload']:>20.3f}")  # fmt: skip
    print("\nbuild: make_delta_files + encode_delta over the two files, streamed (a child process);")
    print("export: exporter.deltas.write_delta (build, verify by applying at level 1, publish atomically);")
    print("in-mem: both payloads read whole (read_file) and make_delta, the baseline for time and RSS;")
    print("apply: apply_delta_file into a new snapshot file (level 3), checked byte-identical to the target;")
    print("idle: a child that only imports the modules. Goal: delta % at most 3 at 1% changed.")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with --child, one measured step) and print its table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", default="5000,50000", help="comma-separated catalog sizes")
    parser.add_argument("--changed-percent", type=float, default=1.0, help="share of commands edited (default 1)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child[0], Path(args.child[1]))))
        return 0
    results = []
    for count in _sizes(args.commands):
        print(f"{count:,} commands ...", flush=True)
        results.append(_measure(count, args.changed_percent))
    _report(results, args.changed_percent)
    return 0


def _sizes(text: str) -> Iterator[int]:
    return (int(part) for part in text.split(",") if part.strip())


if __name__ == "__main__":
    raise SystemExit(main())
