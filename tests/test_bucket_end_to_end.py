"""End to end through a bucket: rows in PostgreSQL -> avap-export --publish -> S3 (SeaweedFS) ->
avap-server --source -> a language server's in-process Replica, which answers with the server's bytes."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import psycopg

from avapdefs.client.replica import Replica
from avapdefs.folder import read_newest
from avapdefs.v1.definitions_pb2 import GetCommandRequest, GetCommandResponse, ListCommandsRequest
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from exporter import cli as exporter_cli
from tests.server.helpers import raw_unary, server_process
from tests.server.process_log import WAIT_S, ServerLog


def _export(dsn: str, folder: Path, url: str) -> None:
    assert exporter_cli.main(["--dsn", dsn, "--snapshots", str(folder), "--publish", url]) == 0


def _same_answers(port: int, replica: Replica, names: list[str]) -> None:
    """For each name: the replica's Command, serialized, is the command in GetCommand's answer, byte for byte."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        get = raw_unary(channel, "GetCommand")
        for name in names:
            answer = get(GetCommandRequest(name=name).SerializeToString(), timeout=5)
            held = replica.get(name)
            assert held is not None, name
            assert GetCommandResponse(command=held).SerializeToString() == answer, name


def test_rows_reach_a_replica_through_the_bucket_and_a_following_server(
    pg_dsn: str, s3_url: str, tmp_path: Path
) -> None:
    exported, cache, replica_cache = tmp_path / "exported", tmp_path / "server-cache", tmp_path / "replica-cache"
    assert exporter_cli.main(["load-sample", "--dsn", pg_dsn]) == 0
    _export(pg_dsn, exported, s3_url)

    log = ServerLog(server_process("--source", s3_url, "--source-poll", "0.3", "--snapshots", str(cache),
                                   "--port", "0", "--log-level", "info"))  # fmt: skip
    try:
        port = int(log.wait_for(r"serving catalog version 1 .* on 127\.0\.0\.1:(\d+)").group(1))
        assert (cache / "catalog-0000000001.avsnap").read_bytes() == read_newest(exported).data
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            names = list(DefinitionServiceStub(channel).ListCommands(ListCommandsRequest(page_size=1000)).names)
        with Replica(f"127.0.0.1:{port}", replica_cache) as replica:
            assert replica.wait_for_version(1, WAIT_S)
            assert replica.names() == sorted(names) and len(names) > 100
            _same_answers(port, replica, names)

            # A second publish: a changed row and a new one reach the replica through the bucket.
            with psycopg.connect(pg_dsn) as conn:
                changed_name = names[len(names) // 2]
                conn.execute("UPDATE obex_dapl_functions SET code = code || '\n# edited' WHERE name = %s",
                             [changed_name])  # fmt: skip
                conn.execute(
                    "INSERT INTO obex_dapl_functions (name, interface, description, type, code)"
                    " VALUES ('zz.bucketNew', '[]', 'added after the first publish', 'function', 'pass')"
                )
            start = len(log.lines)
            _export(pg_dsn, exported, s3_url)
            published_at = time.monotonic()
            log.wait_for(r"installed catalog version 2 .* from a delta", start)
            assert replica.wait_for_version(2, WAIT_S)
            print(f"version 2 reached the replica {time.monotonic() - published_at:.2f} s after it was announced")
            edited = replica.get(changed_name)
            assert edited is not None and edited.code.endswith("# edited")
            _same_answers(port, replica, [*names, "zz.bucketNew"])
            assert replica.info().content_hash == read_newest(exported).snapshot.info.content_hash
    finally:
        code = log.stop()
    assert code == 0, "".join(log.lines)
