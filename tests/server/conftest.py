"""Fixtures: a real server on 127.0.0.1 serving a small catalog, with a real stub."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from server.app import DefinitionServer
from tests.conftest import MakeSnapshot
from tests.factories import sample_command
from tests.server.helpers import running_server

NAMES = ["addVar", "addParam", "addResult", "end", "if", "RequestGet", "ñandú.cálculo", "x" * 200]


@dataclass
class Served:
    """A running server, the file it serves, a stub and the raw channel."""

    server: DefinitionServer
    path: Path
    stub: DefinitionServiceStub
    channel: grpc.Channel


@pytest.fixture
def served(make_snapshot: MakeSnapshot) -> Iterator[Served]:
    """A server serving a snapshot of NAMES (version 3)."""
    path = make_snapshot(version=3, commands=[sample_command(name) for name in NAMES])
    with (
        running_server(path.parent) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield Served(server, path, DefinitionServiceStub(channel), channel)
