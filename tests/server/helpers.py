"""Helpers for tests that talk to a real server on 127.0.0.1.

Start one in this process (or as a process of its own and read its log), make
catalogs, follow a WatchCatalog stream, wait for a log line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from avapdefs.v1.definitions_pb2 import Command, WatchCatalogResponse
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from server.app import DefinitionServer
from server.config import Settings
from tests.helpers import sample_command

CHUNK_BYTES = 256 * 1024
ROOT = Path(__file__).parents[2]

# The catalog of the ``served`` fixture: short, accented and very long names.
SERVED_NAMES = ["addVar", "addParam", "addResult", "end", "if", "RequestGet", "ñandú.cálculo", "x" * 200]

# The catalog of versioned_commands.
VERSIONED_NAMES = [f"cmd.{index:03d}" for index in range(40)]


@dataclass
class Served:
    """A running server, the file it serves, a stub and the raw channel."""

    server: DefinitionServer
    path: Path
    stub: DefinitionServiceStub
    channel: grpc.Channel


@contextlib.contextmanager
def running_server(folder: Path, *, load: bool = True, **overrides: Any) -> Iterator[DefinitionServer]:
    """A real server on 127.0.0.1, a free port, serving ``folder``; stopped afterwards.

    ``overrides`` are Settings fields; the chunk size defaults to 256 KiB.
    """
    fields: dict[str, Any] = {"snapshots_dir": folder, "port": 0, "chunk_bytes": CHUNK_BYTES}
    fields.update(overrides)
    server = DefinitionServer(Settings(**fields))
    server.start()
    try:
        if load:
            server.load()
        yield server
    finally:
        server.stop(0)


@contextlib.contextmanager
def stub_for(server: DefinitionServer) -> Iterator[DefinitionServiceStub]:
    """A real grpcio stub connected to ``server``."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield DefinitionServiceStub(channel)


@contextlib.contextmanager
def live_server(folder: Path, **overrides: Any) -> Iterator[tuple[DefinitionServer, DefinitionServiceStub]]:
    """``running_server`` once its reloader watches ``folder``, with a stub; heartbeats every 30 s unless overridden."""
    with running_server(folder, **{"heartbeat_s": 30.0, **overrides}) as server:
        assert server.reloader is not None and server.reloader.ready.wait(10)
        with stub_for(server) as stub:
            yield server, stub


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


class LogWaiter(logging.Handler):
    """Sets ``seen`` when a record containing ``text`` is logged by ``logger_name``; use with ``with``."""

    def __init__(self, logger_name: str, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = threading.Event()
        self._logger = logging.getLogger(logger_name)

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()

    def __enter__(self) -> LogWaiter:
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._logger.removeHandler(self)


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
