"""Exporter fixtures: a fresh database holding the legacy schema, the folder to export into, a private PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from exporter.sample import create_schema
from tests.exporter.helpers import PrivatePostgres


@pytest.fixture
def db(pg_dsn: str) -> Iterator[psycopg.Connection]:
    """A connection to a fresh database holding the two (empty) legacy tables."""
    with psycopg.connect(pg_dsn) as conn:
        with conn.transaction():
            create_schema(conn)
        yield conn


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The snapshot folder the tests export into (not created in advance)."""
    return tmp_path / "snapshots"


@pytest.fixture(scope="module")
def private_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of this module's own, which its tests may stop, start and freeze (about 2 s to start)."""
    server = PrivatePostgres(tmp_path_factory.mktemp("private-pg") / "data")
    try:
        yield server
    finally:
        server.cleanup()
