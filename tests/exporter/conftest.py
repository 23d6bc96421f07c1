"""Exporter fixtures: a fresh database holding the legacy schema, and the folder to export into."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from exporter.sample import create_schema


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
