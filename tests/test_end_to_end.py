"""End to end: rows in PostgreSQL -> exporter -> server -> client sync -> a second server on the copy."""

from __future__ import annotations

from pathlib import Path

import grpc
import psycopg

from avapdefs.client import DefinitionClient
from avapdefs.folder import list_snapshots
from avapdefs.format import snapshot
from avapdefs.v1.definitions_pb2 import GetCommandRequest, ListCommandsRequest
from exporter import cli as exporter_cli
from tests.server.helpers import raw_unary, running_server, stub_for


def test_rows_reach_a_replica_through_export_serve_and_sync(pg_dsn: str, tmp_path: Path) -> None:
    published = tmp_path / "published"
    assert exporter_cli.main(["load-sample", "--dsn", pg_dsn]) == 0
    assert exporter_cli.main(["--dsn", pg_dsn, "--snapshots", str(published)]) == 0
    [(version, path)] = list_snapshots(published)
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute('SELECT count(*), min(name COLLATE "C") FROM obex_dapl_functions').fetchone()
    assert row is not None
    rows, first_name = row

    cache = tmp_path / "cache"
    with running_server(published) as origin:
        with DefinitionClient(f"127.0.0.1:{origin.port}") as client:
            result = client.sync(cache)
        assert result.path.name == path.name and result.path.read_bytes() == path.read_bytes()
        assert result.info.version == version and snapshot.read_file(result.path).info.command_count == rows
        with running_server(cache) as replica, stub_for(replica) as stub:
            names = list(stub.ListCommands(ListCommandsRequest(page_size=1000), timeout=5).names)
            assert names[0] == first_name and len(names) == min(rows, 1000)
            for name in names[:: max(len(names) // 20, 1)]:
                request = GetCommandRequest(name=name).SerializeToString()
                assert _raw_get(replica.port, request) == _raw_get(origin.port, request)


def _raw_get(port: int, request: bytes) -> bytes:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return raw_unary(channel, "GetCommand")(request, timeout=5)
