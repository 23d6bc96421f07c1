"""Fixtures: a real server on 127.0.0.1 serving a small catalog, with a real stub."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from tests.helpers import MakeSnapshot, sample_command
from tests.server.helpers import SERVED_NAMES, Served, running_server


@pytest.fixture
def served(make_snapshot: MakeSnapshot) -> Iterator[Served]:
    """A server serving a snapshot of SERVED_NAMES (version 3)."""
    path = make_snapshot(version=3, commands=[sample_command(name) for name in SERVED_NAMES])
    with (
        running_server(path.parent) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield Served(server, path, DefinitionServiceStub(channel), channel)
