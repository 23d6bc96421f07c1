"""Helpers for tests that talk to a real server on 127.0.0.1.

Start one in this process (or as a process of its own and read its log), make
catalogs, follow a WatchCatalog stream, wait for a log line.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from avapdefs.folder import atomic_file, snapshot_name
from avapdefs.format import snapshot
from avapdefs.v1.definitions_pb2 import Command, WatchCatalogResponse
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from server.config import Settings
from server.launch import ServerProcess
from tests.helpers import sample_command

CHUNK_BYTES = 256 * 1024
ROOT = Path(__file__).parents[2]

# The catalog of the ``served`` fixture: short, accented and very long names.
SERVED_NAMES = ["addVar", "addParam", "addResult", "end", "if", "RequestGet", "ñandú.cálculo", "x" * 200]

# The catalog of versioned_commands.
VERSIONED_NAMES = [f"cmd.{index:03d}" for index in range(40)]


def free_port() -> int:
    """A loopback port free now, for a server that needs a fixed one (``--processes`` above 1)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RunningServer:
    """A real server process (Envoy and the application) on 127.0.0.1, its log read as it comes.

    Attributes:
        process: the process handle (``server.launch.ServerProcess``).
        port: the port it listens on.
        loaded: what it reported once loaded.
        lines: every line it has logged so far.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.folder = settings.snapshots_dir
        self.process = ServerProcess(settings, log_level="DEBUG", stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._waiters: list[LogWaiter] = []
        self._lock = threading.Lock()
        self.loaded = self.process.start()
        self.port = self.process.port
        assert self.process.process is not None and self.process.process.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.process.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace")
            sys.stderr.write(line)  # shown by pytest when a test fails
            with self._lock:
                self.lines.append(line)
                for waiter in self._waiters:
                    waiter.offer(line)

    def add_waiter(self, waiter: LogWaiter) -> None:
        with self._lock:
            self._waiters.append(waiter)
            for line in self.lines if waiter.past else ():
                waiter.offer(line)

    def remove_waiter(self, waiter: LogWaiter) -> None:
        with self._lock:
            self._waiters.remove(waiter)

    def stop(self, grace_s: float = 0.0) -> int:
        code = self.process.stop(grace_s)
        self._reader.join(10)
        assert self.process.process is not None and self.process.process.stderr is not None
        self.process.process.stderr.close()
        return code


@dataclass
class Served:
    """A running server, the file it serves, a stub and the raw channel."""

    server: RunningServer
    path: Path
    stub: DefinitionServiceStub
    channel: grpc.Channel


@contextlib.contextmanager
def running_server(folder: Path, **overrides: Any) -> Iterator[RunningServer]:
    """A real server on 127.0.0.1, a free port, serving ``folder``; stopped afterwards.

    ``overrides`` are Settings fields; the chunk size defaults to 256 KiB.
    """
    fields: dict[str, Any] = {"snapshots_dir": folder, "port": 0, "chunk_bytes": CHUNK_BYTES}
    fields.update(overrides)
    server = RunningServer(Settings(**fields))
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def stub_for(server: RunningServer) -> Iterator[DefinitionServiceStub]:
    """A real grpcio stub connected to ``server``."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield DefinitionServiceStub(channel)


@contextlib.contextmanager
def live_server(folder: Path, **overrides: Any) -> Iterator[tuple[RunningServer, DefinitionServiceStub]]:
    """``running_server`` once its reloader watches ``folder``, with a stub; heartbeats every 30 s unless overridden."""
    with running_server(folder, **{"heartbeat_s": 30.0, **overrides}) as server:
        wait_until_watching(server)
        with stub_for(server) as stub:
            yield server, stub


def wait_until_watching(server: RunningServer) -> None:
    """Return once ``server``'s hot reload watches its folder (it says so in its log)."""
    with LogWaiter(server, "server.reload", "watch in place", past=True) as waiter:
        assert waiter.seen.wait(10)


def raw_unary(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    """DefinitionService ``method`` on ``channel``, sending and returning message bytes as they are on the wire."""
    return channel.unary_unary(f"/avapdefs.v1.DefinitionService/{method}")


def health_status(port: int, service: str = "") -> int:
    """The grpc.health.v1 status the server on ``port`` reports for ``service`` ("": the whole server)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]  # the stub lists no methods
        answer: health_pb2.HealthCheckResponse = check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return answer.status


def versioned_commands(version: int) -> list[Command]:
    """The commands VERSIONED_NAMES, whose code says ``version``, so an answer shows the version it came from."""
    return [sample_command(name, code=f"# version {version}\n") for name in VERSIONED_NAMES]


def big_commands(count: int = 24, bytecode_bytes: int = 128 * 1024) -> list[Command]:
    """Commands with incompressible bytecode: a snapshot of about count x bytecode_bytes."""
    return [
        sample_command(f"big.{index:04d}", bytecode=os.urandom(bytecode_bytes), bytecode_version=1)
        for index in range(count)
    ]


class LogWaiter:
    """Sets ``seen`` when ``server`` logs a line of ``logger_name`` containing ``text``; use with ``with``."""

    def __init__(
        self, server: RunningServer, logger_name: str, text: str, *, past: bool = False, times: int = 1
    ) -> None:
        self.server = server
        self.times = times  # how many such lines before ``seen`` is set
        self.past = past  # also lines logged before the waiter was entered
        self.marker = f" {logger_name}: "
        self.text = text
        self.seen = threading.Event()

    def offer(self, line: str) -> None:
        if self.marker in line and self.text in line:
            self.times -= 1
            if self.times <= 0:
                self.seen.set()

    def __enter__(self) -> LogWaiter:
        self.server.add_waiter(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.remove_waiter(self)


class WatchStream(Iterator[WatchCatalogResponse], Protocol):
    """What a WatchCatalog call returns: its messages, and a call that can be cancelled."""

    def cancel(self) -> bool: ...


def next_version(stream: Iterator[WatchCatalogResponse]) -> int:
    """The version of the next catalog event of a WatchCatalog stream, skipping heartbeats."""
    for message in stream:
        if message.WhichOneof("event") == "catalog":
            return message.catalog.version
    raise AssertionError("the watch stream ended")


def server_process(*argv: str) -> subprocess.Popen[str]:
    """``python -m server ARGV...`` as a process of its own, its log (stderr) on a pipe."""
    return subprocess.Popen([sys.executable, "-m", "server", *argv], stderr=subprocess.PIPE, text=True, cwd=ROOT)


def end_process(process: subprocess.Popen[str]) -> None:
    """Kill ``process`` if it still runs, wait for it and close its stderr pipe: a test's last word on it."""
    process.kill()
    process.wait()
    if process.stderr is not None:
        process.stderr.close()


def log_lines(process: subprocess.Popen[str]) -> Iterator[str]:
    """The lines ``process`` logs on stderr, as they come."""
    assert process.stderr is not None
    yield from process.stderr


def wait_for_line(lines: Iterator[str], pattern: str, seen: list[str]) -> re.Match[str]:
    """Read ``lines`` (appending each to ``seen``) up to the first that matches ``pattern``.

    Reading the server's log is the synchronisation: each line is a state it reached.

    Raises:
        AssertionError: the log ended first; the message holds all of it.
    """
    for line in lines:
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"the server ended without logging {pattern!r}:\n{''.join(seen)}")


def write_dated_snapshot(folder: Path, version: int, age_s: float) -> Path:
    """A snapshot of ``version`` in ``folder`` that the exporter created ``age_s`` seconds ago."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / snapshot_name(version)
    created = int((time.time() - age_s) * 1000)
    with atomic_file(path) as file:
        snapshot.write_snapshot(file, versioned_commands(version), version=version, source="test",
                                created_at_unix_ms=created)  # fmt: skip
    return path


# What an HTTP/2 client sends first: the preface, an empty SETTINGS frame, and the ACK of the server's SETTINGS.
_H2_CLIENT_START = (
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(3) + b"\x04\x00" + bytes(4) + bytes(3) + b"\x04\x01" + bytes(4)
)
_H2_FRAME_HEADER_BYTES = 9


def open_idle_http2(port: int, count: int, timeout_s: float = 30.0) -> list[socket.socket]:
    """``count`` HTTP/2 connections to ``port`` on 127.0.0.1 that start properly and then send nothing.

    Returns once the server has answered each with its SETTINGS (so it holds them all).
    The soft limit on open files is raised to the hard limit when ``count`` needs it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1024), hard))
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            connection = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
            opened.append(connection)
            connection.sendall(_H2_CLIENT_START)
        for connection in opened:
            header = _receive_exactly(connection, _H2_FRAME_HEADER_BYTES)
            assert header[3] == 0x04, f"the server's first frame is type {header[3]}, not SETTINGS"
    except BaseException:
        for connection in opened:
            connection.close()
        raise
    return opened


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        piece = connection.recv(size - len(data))
        if not piece:
            raise ConnectionError("the server closed an idle connection")
        data += piece
    return data
