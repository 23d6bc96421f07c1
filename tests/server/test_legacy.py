"""The legacy avap.DefinitionEngine contract, as the existing AVAP clients call it.

The client here is written only from the contract: its own copy of the legacy
.proto, compiled in the test and run as a separate process (so it shares
nothing with the project's modules, not even the protobuf descriptor pool).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2
from grpc_tools import protoc

from avapdefs.format.package import build_package
from avapdefs.v1.definitions_pb2 import GetCommandRequest
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from exporter import cli as exporter_cli
from tests.server.helpers import health_status, running_server

SIGNING_KEY = "test signing key, 32 bytes long!"
API_KEY = "test-api-key"
PREBUILT_SOURCE = "# precompiled package, stored in avap_bytecode\nresult = 42\n"

# Field numbers as the known clients use them, and a deployment's renumbered copy.
STANDARD = {"request": 1, "name": 1, "type": 2, "interface_json": 3, "code": 4, "avbc_code": 5, "hash": 6,
            "commands": 1, "total_count": 2, "version_hash": 3}  # fmt: skip
RENUMBERED = {"request": 4, "name": 7, "type": 3, "interface_json": 11, "code": 2, "avbc_code": 9, "hash": 1,
              "commands": 5, "total_count": 1, "version_hash": 9}  # fmt: skip

LEGACY_PROTO = """
syntax = "proto3";
package avap;
message CommandRequest {{ string name = {request}; }}
message Command {{
  string name = {name}; string type = {type}; string interface_json = {interface_json};
  bytes code = {code}; bytes avbc_code = {avbc_code}; string hash = {hash};
}}
message Empty {{}}
message Catalog {{
  repeated Command commands = {commands}; int32 total_count = {total_count}; string version_hash = {version_hash};
}}
service DefinitionEngine {{
  rpc GetCommand(CommandRequest) returns (Command);
  rpc SyncCatalog(Empty) returns (Catalog);
}}
"""

CLIENT = """
import hashlib, hmac, json, struct, sys
import grpc
import engine_pb2 as pb, engine_pb2_grpc as rpc

target, api_key, secret, names = sys.argv[1], sys.argv[2], sys.argv[3].encode(), sys.argv[4:]
metadata = [("x-avap-auth", api_key)] if api_key else []
channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 256 << 20)])
stub = rpc.DefinitionEngineStub(channel)

def open_package(package):
    magic, version, length = struct.unpack(">4sHI", package[:10])
    payload = package[42:]
    mac = hmac.new(secret, package[:10] + payload, hashlib.sha256).digest()
    verified = magic == b"AVAP" and version == 1 and length == len(payload) and hmac.compare_digest(mac, package[10:42])
    return verified, payload.decode("utf-8", "replace")

out = {}
for name in names:
    try:
        command = stub.GetCommand(pb.CommandRequest(name=name), metadata=metadata, timeout=10)
    except grpc.RpcError as error:
        out[name] = {"status": error.code().name, "details": error.details()}
        continue
    verified, source = open_package(command.code)
    out[name] = {"status": "OK", "name": command.name, "verified": verified, "source": source,
                 "interface_json": command.interface_json, "avbc_code": command.avbc_code.hex(), "hash": command.hash}
try:
    catalog = stub.SyncCatalog(pb.Empty(), metadata=metadata, timeout=30)
    out["<catalog>"] = {"status": "OK", "total_count": catalog.total_count, "version_hash": catalog.version_hash,
                        "names": [command.name for command in catalog.commands]}
except grpc.RpcError as error:
    out["<catalog>"] = {"status": error.code().name, "details": error.details()}
print(json.dumps(out))
"""


@dataclass
class LegacyClient:
    """A compiled legacy client: call it with a target, a key and names."""

    folder: Path

    def call(self, port: int, api_key: str, names: list[str]) -> dict[str, dict[str, object]]:
        args = [sys.executable, "client.py", f"127.0.0.1:{port}", api_key, SIGNING_KEY, *names]
        done = subprocess.run(args, cwd=self.folder, capture_output=True, text=True, timeout=60, check=True)
        result: dict[str, dict[str, object]] = json.loads(done.stdout)
        return result


def _compile_client(folder: Path, numbers: dict[str, int]) -> LegacyClient:
    folder.mkdir()
    (folder / "engine.proto").write_text(LEGACY_PROTO.format(**numbers))
    args = ["protoc", f"-I{folder}", f"--python_out={folder}", f"--grpc_python_out={folder}", "engine.proto"]
    assert protoc.main(args) == 0
    (folder / "client.py").write_text(textwrap.dedent(CLIENT))
    return LegacyClient(folder)


@dataclass
class Exported:
    folder: Path
    rows: dict[str, tuple[str, bytes]]  # name -> (code, avap_bytecode.bytecode or b"")


@pytest.fixture
def exported(pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Exported:
    """The sample catalog in PostgreSQL, one command with a stored package, exported with a signing key."""
    assert exporter_cli.main(["load-sample", "--dsn", pg_dsn]) == 0
    prebuilt = build_package(PREBUILT_SOURCE, SIGNING_KEY.encode())
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE avap_bytecode SET bytecode = %s WHERE command_name = 'addVar'", (prebuilt,))
        rows = conn.execute(
            "SELECT f.name, f.code, coalesce(b.bytecode, ''::bytea) FROM obex_dapl_functions f"
            " LEFT JOIN avap_bytecode b ON b.command_name = f.name"
        ).fetchall()
    monkeypatch.setenv("AVAP_SIGNING_KEY", SIGNING_KEY)
    folder = tmp_path / "snapshots"
    assert exporter_cli.main(["--dsn", pg_dsn, "--snapshots", str(folder)]) == 0
    return Exported(folder, {name: (code, bytes(bytecode)) for name, code, bytecode in rows})


@pytest.fixture
def standard_client(tmp_path: Path) -> LegacyClient:
    return _compile_client(tmp_path / "standard_client", STANDARD)


@pytest.fixture
def served(exported: Exported) -> Iterator[int]:
    with running_server(exported.folder, api_key=API_KEY) as server:
        yield server.port


def test_known_client_calls_verify_and_recover_the_exact_source(
    exported: Exported, standard_client: LegacyClient, served: int
) -> None:
    names = ["if", "addVar", "RequestGet", "getDateTime", "no.such.command"]
    answers = standard_client.call(served, API_KEY, names)
    for name in ("if", "RequestGet", "getDateTime"):
        code, bytecode = exported.rows[name]
        answer = answers[name]
        assert answer["status"] == "OK" and answer["name"] == name
        assert answer["verified"] is True
        assert answer["source"] == code
        assert answer["avbc_code"] == bytecode.hex()  # a precompiled form that is not a package
        assert isinstance(answer["hash"], str) and len(answer["hash"]) == 64
    assert answers["addVar"]["verified"] is True
    assert answers["addVar"]["source"] == PREBUILT_SOURCE  # the stored package, served as is
    assert answers["addVar"]["avbc_code"] == ""
    assert answers["no.such.command"]["status"] == "NOT_FOUND"
    assert "no.such.command" in str(answers["no.such.command"]["details"])


def test_sync_catalog_returns_every_row(exported: Exported, standard_client: LegacyClient, served: int) -> None:
    catalog = standard_client.call(served, API_KEY, [])["<catalog>"]
    assert catalog["status"] == "OK"
    assert catalog["total_count"] == len(exported.rows)
    names = catalog["names"]
    assert isinstance(names, list) and sorted(names) == sorted(exported.rows)
    assert isinstance(catalog["version_hash"], str) and len(catalog["version_hash"]) == 64


@pytest.mark.parametrize("key", ["", "wrong-key", API_KEY + "x"])
def test_missing_or_wrong_key_is_unauthenticated(standard_client: LegacyClient, served: int, key: str) -> None:
    answers = standard_client.call(served, key, ["if"])
    assert answers["if"]["status"] == "UNAUTHENTICATED"
    assert answers["<catalog>"]["status"] == "UNAUTHENTICATED"


def test_new_service_needs_the_key_while_health_stays_open(served: int) -> None:
    request = GetCommandRequest(name="if")
    with grpc.insecure_channel(f"127.0.0.1:{served}") as channel:
        stub = DefinitionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetCommand(request, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.GetCommand(request, metadata=(("x-avap-auth", API_KEY),), timeout=5).command.name == "if"
    assert health_status(served) == health_pb2.HealthCheckResponse.SERVING


def test_deployment_proto_with_other_field_numbers(exported: Exported, tmp_path: Path) -> None:
    renumbered = _compile_client(tmp_path / "renumbered_client", RENUMBERED)
    with running_server(exported.folder, legacy_proto=renumbered.folder / "engine.proto") as server:
        answers = renumbered.call(server.port, "", ["if"])
    assert answers["if"]["status"] == "OK" and answers["if"]["name"] == "if"
    assert answers["if"]["verified"] is True and answers["if"]["source"] == exported.rows["if"][0]
    assert answers["<catalog>"]["total_count"] == len(exported.rows)


def test_renumbered_client_misreads_the_bundled_numbering(exported: Exported, tmp_path: Path) -> None:
    # Why --legacy-proto exists: the same answers read with other numbers are wrong.
    renumbered = _compile_client(tmp_path / "renumbered_client", RENUMBERED)
    with running_server(exported.folder) as server:
        answers = renumbered.call(server.port, "", ["if"])
    # The name goes out as field 4, which the bundled CommandRequest does not have: the server reads no name.
    # The catalog's fields come back under numbers (and wire types) the client reads as nothing: an empty catalog.
    assert answers == {
        "if": {"status": "INVALID_ARGUMENT", "details": "command name is empty"},
        "<catalog>": {"status": "OK", "total_count": 0, "version_hash": "", "names": []},
    }
