"""Helpers for tests that talk to a real server on 127.0.0.1: start one in-process, make big catalogs."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc

from avapdefs.v1.definitions_pb2 import Command
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from server.app import DefinitionServer
from server.config import Settings
from tests.factories import sample_command

CHUNK_BYTES = 256 * 1024


@contextlib.contextmanager
def running_server(folder: Path, *, load: bool = True, **overrides: object) -> Iterator[DefinitionServer]:
    """A real server on 127.0.0.1, a free port, serving ``folder``; stopped afterwards.

    ``overrides`` are Settings fields; the chunk size defaults to 256 KiB.
    """
    fields: dict[str, object] = {"snapshots_dir": folder, "port": 0, "chunk_bytes": CHUNK_BYTES}
    fields.update(overrides)
    server = DefinitionServer(Settings(**fields))  # type: ignore[arg-type]
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
