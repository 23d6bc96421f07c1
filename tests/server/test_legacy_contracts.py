"""Every known version of the legacy avap.DefinitionEngine contract, each called by a client generated from its file.

The older contract (definition_engine_older.proto beside this file) declares
GetCommand only and carries the source text in a ``string code``; the newer
one (the bundled proto/avap/definition_engine.proto) adds SyncCatalog and
carries the signed package in a ``bytes code``. As in test_legacy.py, each
client is compiled from its own copy of a contract and runs as a separate
process, sharing nothing with the project's modules.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from grpc_tools import protoc

from avapdefs.v1.definitions_pb2 import GetCommandRequest
from exporter import cli as exporter_cli
from server import cli
from tests.server.helpers import ROOT, LogWaiter, RunningServer, running_server, stub_for

SIGNING_KEY = "test signing key, 32 bytes long!"
API_KEY = "test-api-key"
OLDER_PROTO = Path(__file__).with_name("definition_engine_older.proto")
NEWER_PROTO = ROOT / "proto" / "avap" / "definition_engine.proto"

# Rows added to the sample catalog: names and sources beyond ASCII, and a body over 1 MB.
UNICODE_ROWS = {
    "ñandú.cálculo": "def cálculo(self, año):\n    return f'{año} ñandúes'  # ¿por qué no?\r\n",
    "計算.合計": "# 合計を返す\nresult = '日本語のテキスト'\n\tindent = '→'\n",
    "emoji.🚀": "rocket = '🚀'  # a character outside the BMP, two UTF-16 units\nreturn rocket * 3\n",
    "Ωμέγα": "# Ελληνικά\nvalue = 'ω' * 10\n",
}
BIG_NAME = "big.body"
BIG_SOURCE = "".join(f"línea_{index:06d} = '{'ñ€🚀' * 10}'  # cuerpo grande\n" for index in range(12_000))

# A contract of our own making: other message names, a bytes code, fields the server does not know,
# a method it does not serve. Nothing but the methods' declared types may tell the server what to fill.
RENAMED_PROTO = """
syntax = "proto3";
package avap;
service DefinitionEngine {
  rpc GetCommand (Lookup) returns (Definition);
  rpc SyncCatalog (Nothing) returns (Everything);
  rpc ListCommands (Nothing) returns (Everything);
}
message Lookup { string name = 3; }
message Nothing {}
message Definition { bytes code = 1; string name = 2; int64 updated_at = 3; bytes hash = 4; string notes = 5; }
message Everything { int64 total_count = 1; repeated Definition commands = 2; string origin = 3; }
"""

SYNC_ONLY_PROTO = """
syntax = "proto3";
package avap;
service DefinitionEngine { rpc SyncCatalog (Empty) returns (Catalog); }
message Empty {}
message Command { string name = 1; string code = 2; }
message Catalog { repeated Command commands = 1; uint32 total_count = 2; string version_hash = 3; }
"""

# A client of any contract: each argument METHOD[:NAME] is one call; a method the file does not
# declare is called with an empty request body, to see what the server answers it.
CLIENT = """
import importlib, json, sys
import grpc
from google.protobuf import json_format, message_factory

target, api_key, calls = sys.argv[1], sys.argv[2], sys.argv[3:]
pb, rpc = importlib.import_module("engine_pb2"), importlib.import_module("engine_pb2_grpc")
service = pb.DESCRIPTOR.services_by_name["DefinitionEngine"]
metadata = [("x-avap-auth", api_key)] if api_key else []
channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
stub = rpc.DefinitionEngineStub(channel)
out = []
for call in calls:
    method, _, name = call.partition(":")
    try:
        if method in service.methods_by_name:
            request = message_factory.GetMessageClass(service.methods_by_name[method].input_type)()
            if name:
                request.name = name
            answer = getattr(stub, method)(request, metadata=metadata, timeout=20)
            fields = json_format.MessageToDict(answer, always_print_fields_with_no_presence=True,
                                               preserving_proto_field_name=True)
            out.append({"status": "OK", "message": fields})
        else:
            channel.unary_unary(f"/avap.DefinitionEngine/{method}")(b"", metadata=metadata, timeout=20)
            out.append({"status": "OK"})
    except grpc.RpcError as error:
        out.append({"status": error.code().name, "details": error.details()})
print(json.dumps(out))
"""

# The seed benchmark's call pattern: 50 threads share 10,000 GetCommand('if'), then one SyncCatalog(Empty),
# every call with x-avap-auth. SyncCatalog goes through the stub where the contract declares it.
PATTERN_CLIENT = """
import collections, concurrent.futures, json, sys
import grpc
from google.protobuf import json_format
import engine_pb2 as pb, engine_pb2_grpc as rpc

target, api_key = sys.argv[1], sys.argv[2]
metadata = [("x-avap-auth", api_key)]
channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
stub = rpc.DefinitionEngineStub(channel)
request = pb.CommandRequest(name="if")

def get(_):
    try:
        return "OK", stub.GetCommand(request, metadata=metadata, timeout=30)
    except grpc.RpcError as error:
        return error.code().name, None

with concurrent.futures.ThreadPoolExecutor(50) as pool:
    results = list(pool.map(get, range(10_000)))
statuses = collections.Counter(status for status, _ in results)
answers = [answer for status, answer in results if status == "OK"]
distinct = {answer.SerializeToString() for answer in answers}
first = json_format.MessageToDict(answers[0], preserving_proto_field_name=True) if answers else None
try:
    if hasattr(stub, "SyncCatalog"):
        catalog = stub.SyncCatalog(pb.Empty(), metadata=metadata, timeout=30)
        sync = {"status": "OK", "total_count": catalog.total_count, "commands": len(catalog.commands)}
    else:
        channel.unary_unary("/avap.DefinitionEngine/SyncCatalog")(b"", metadata=metadata, timeout=30)
        sync = {"status": "OK"}
except grpc.RpcError as error:
    sync = {"status": error.code().name, "details": error.details()}
print(json.dumps({"get": dict(statuses), "distinct_answers": len(distinct), "first": first, "sync": sync}))
"""


@dataclass
class ContractClient:
    """A client compiled from one contract file, run as a separate process."""

    folder: Path

    def run(self, script: str, *args: str) -> Any:
        done = subprocess.run(
            [sys.executable, script, *args], cwd=self.folder, capture_output=True, text=True, timeout=90, check=True
        )
        return json.loads(done.stdout)

    def call(self, port: int, api_key: str, *calls: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.run("client.py", f"127.0.0.1:{port}", api_key, *calls)
        return result


def _compile_client(folder: Path, proto_text: str) -> ContractClient:
    folder.mkdir()
    (folder / "engine.proto").write_text(proto_text)
    args = ["protoc", f"-I{folder}", f"--python_out={folder}", f"--grpc_python_out={folder}", "engine.proto"]
    assert protoc.main(args) == 0
    (folder / "client.py").write_text(textwrap.dedent(CLIENT))
    (folder / "pattern.py").write_text(textwrap.dedent(PATTERN_CLIENT))
    return ContractClient(folder)


@dataclass
class Exported:
    folder: Path
    sources: dict[str, str]  # name -> obex_dapl_functions.code


@pytest.fixture
def exported(pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Exported:
    """The sample catalog plus UNICODE_ROWS and BIG_NAME in PostgreSQL, exported with a signing key."""
    assert exporter_cli.main(["load-sample", "--dsn", pg_dsn]) == 0
    with psycopg.connect(pg_dsn) as conn:
        for name, code in {**UNICODE_ROWS, BIG_NAME: BIG_SOURCE}.items():
            conn.execute(
                "INSERT INTO obex_dapl_functions (name, type, interface, code) VALUES (%s, 'function', '[]', %s)",
                (name, code),
            )
        rows = conn.execute("SELECT name, code FROM obex_dapl_functions").fetchall()
    monkeypatch.setenv("AVAP_SIGNING_KEY", SIGNING_KEY)
    folder = tmp_path / "snapshots"
    assert exporter_cli.main(["--dsn", pg_dsn, "--snapshots", str(folder)]) == 0
    return Exported(folder, dict(rows))


@pytest.fixture
def older_client(tmp_path: Path) -> ContractClient:
    return _compile_client(tmp_path / "older_client", OLDER_PROTO.read_text())


def _open_package(package: bytes) -> str:
    """The source in a signed package, checked as a client of the contract checks it (docs/legacy.md)."""
    head, mac, payload = package[:10], package[10:42], package[42:]
    assert head[:4] == b"AVAP" and int.from_bytes(head[4:6], "big") == 1
    assert int.from_bytes(head[6:10], "big") == len(payload)
    assert hmac.compare_digest(mac, hmac.new(SIGNING_KEY.encode(), head + payload, hashlib.sha256).digest())
    return payload.decode("utf-8")


def _v1_hashes(server: RunningServer, names: list[str], api_key: str) -> dict[str, str]:
    """The content hash of each command as the avapdefs.v1 service gives it."""
    metadata = (("x-avap-auth", api_key),) if api_key else ()
    with stub_for(server) as stub:
        answers = {name: stub.GetCommand(GetCommandRequest(name=name), metadata=metadata, timeout=10) for name in names}
    return {name: answer.command.content_hash.hex() for name, answer in answers.items()}


def _log_line(server: RunningServer, text: str) -> str:
    """The first line of the legacy codec's start-up log that contains ``text`` (read as the log comes)."""
    with LogWaiter(server, "server.legacy.codec", text, past=True) as waiter:
        assert waiter.seen.wait(10), f"no log line with {text!r}"
    return next(line for line in server.lines if text in line).rstrip("\n")


NAMES = ["if", "addVar", *UNICODE_ROWS, BIG_NAME]


@pytest.mark.parametrize("api_key", [API_KEY, ""], ids=["with-x-avap-auth", "without-a-key"])
def test_older_client_gets_the_exact_source(exported: Exported, older_client: ContractClient, api_key: str) -> None:
    assert len(BIG_SOURCE.encode("utf-8")) > 1 << 20
    calls = [f"GetCommand:{name}" for name in NAMES] + ["GetCommand:no.such.command", "SyncCatalog"]
    with running_server(exported.folder, api_key=api_key or None, legacy_proto=OLDER_PROTO) as server:
        answers = older_client.call(server.port, api_key, *calls)
        hashes = _v1_hashes(server, NAMES, api_key)
    for name, answer in zip(NAMES, answers, strict=False):
        assert answer["status"] == "OK", (name, answer)
        assert answer["message"] == {"name": name, "code": exported.sources[name], "hash": hashes[name]}, name
    miss, sync = answers[len(NAMES) :]
    assert miss == {"status": "NOT_FOUND", "details": "command 'no.such.command' not found"}
    assert sync == {"status": "UNIMPLEMENTED", "details": "unknown method /avap.DefinitionEngine/SyncCatalog"}


@pytest.mark.parametrize("key", ["", "wrong-key"])
def test_older_client_without_the_key_is_unauthenticated(
    exported: Exported, older_client: ContractClient, key: str
) -> None:
    with running_server(exported.folder, api_key=API_KEY, legacy_proto=OLDER_PROTO) as server:
        [answer] = older_client.call(server.port, key, "GetCommand:if")
    assert answer["status"] == "UNAUTHENTICATED"


def test_start_up_log_says_what_each_field_carries(exported: Exported) -> None:
    with running_server(exported.folder, legacy_proto=OLDER_PROTO) as server:
        served = _log_line(server, "legacy avap.DefinitionEngine from")
        answers = _log_line(server, "legacy GetCommand answers")
    assert served.endswith(f"from {OLDER_PROTO}: serves GetCommand; UNIMPLEMENTED for SyncCatalog")
    assert answers.endswith(
        "legacy GetCommand answers avap.CommandDefinition: fills name (the command name), "
        "code (the source text as in the table), hash (hex sha256 of the definition); leaves empty: none"
    )


def test_message_names_do_not_matter_and_unknown_fields_keep_their_defaults(exported: Exported, tmp_path: Path) -> None:
    client = _compile_client(tmp_path / "renamed_client", RENAMED_PROTO)
    with running_server(exported.folder, legacy_proto=client.folder / "engine.proto") as server:
        get, emoji, catalog, listing = client.call(server.port, "", "GetCommand:if", "GetCommand:emoji.🚀",
                                                   "SyncCatalog", "ListCommands")  # fmt: skip
        served = _log_line(server, "legacy avap.DefinitionEngine from")
        get_fields = _log_line(server, "legacy GetCommand answers")
        sync_fields = _log_line(server, "legacy SyncCatalog answers")
    for answer, name in ((get, "if"), (emoji, "emoji.🚀")):
        message = dict(answer["message"])
        assert _open_package(base64.b64decode(message.pop("code"))) == exported.sources[name]
        assert message == {"name": name, "updated_at": "0", "hash": "", "notes": ""}
    commands = catalog["message"]["commands"]
    assert catalog["message"]["total_count"] == str(len(exported.sources)) and catalog["message"]["origin"] == ""
    assert sorted(command["name"] for command in commands) == sorted(exported.sources)
    assert next(command for command in commands if command["name"] == "if")["code"] == get["message"]["code"]
    assert listing == {"status": "UNIMPLEMENTED", "details": "unknown method /avap.DefinitionEngine/ListCommands"}
    assert served.endswith("serves GetCommand, SyncCatalog; UNIMPLEMENTED for ListCommands")
    assert get_fields.endswith(
        "avap.Definition: fills code (the signed code package), name (the command name); "
        "leaves empty: updated_at (int64), hash (bytes), notes (string)"
    )
    assert sync_fields.endswith(
        "avap.Everything: fills commands (every command, as avap.Definition), total_count (the number of commands); "
        "leaves empty: origin (string)"
    )


def test_a_contract_with_sync_catalog_only(exported: Exported, tmp_path: Path) -> None:
    client = _compile_client(tmp_path / "sync_only_client", SYNC_ONLY_PROTO)
    with running_server(exported.folder, legacy_proto=client.folder / "engine.proto") as server:
        catalog, get = client.call(server.port, "", "SyncCatalog", "GetCommand")
        [v1_hash] = _v1_hashes(server, ["if"], "").values()
    assert get == {"status": "UNIMPLEMENTED", "details": "unknown method /avap.DefinitionEngine/GetCommand"}
    message = catalog["message"]
    assert message["total_count"] == len(exported.sources) and len(message["version_hash"]) == 64
    assert {command["name"]: command["code"] for command in message["commands"]} == exported.sources
    assert v1_hash  # the v1 service still answers beside it


@pytest.mark.parametrize(
    ("proto_text", "problem"),
    [
        ("service DefinitionEngine { rpc Lookup (R) returns (R); } message R { string name = 1; }",
         "service avap.DefinitionEngine declares neither GetCommand nor SyncCatalog"),
        ("service DefinitionEngine { rpc GetCommand (R) returns (stream R); } message R { string name = 1; }",
         "avap.DefinitionEngine.GetCommand is declared as a stream; the server answers it unary"),
        ("service DefinitionEngine { rpc GetCommand (R) returns (R); } message R { bytes name = 1; }",
         "message avap.R lacks a field 'string name'"),
        ("service DefinitionEngine { rpc GetCommand (R) returns (D); } message R { optional string name = 1; }"
         " message D { optional string name = 1; required int64 version = 2; }",
         "message avap.D requires field version (int64), which the server cannot fill"),
    ],
    ids=["neither-method", "a-stream", "no-string-name", "a-required-field"],
)  # fmt: skip
def test_a_contract_the_server_cannot_answer_exits_2_naming_why(
    exported: Exported, tmp_path: Path, caplog: pytest.LogCaptureFixture, proto_text: str, problem: str
) -> None:
    proto = tmp_path / "engine.proto"
    syntax = "proto2" if "required" in proto_text else "proto3"
    proto.write_text(f'syntax = "{syntax}";\npackage avap;\n{proto_text}\n')
    argv = ["--snapshots", str(exported.folder), "--port", "0", "--legacy-proto", str(proto)]
    assert cli.main(argv) == 2
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == [f"{proto}: {problem}"]


@pytest.fixture(params=["newer", "older"])
def contract(request: pytest.FixtureRequest) -> tuple[str, Path]:
    """A known contract version and its file."""
    return request.param, {"newer": NEWER_PROTO, "older": OLDER_PROTO}[request.param]


def test_seed_benchmark_call_pattern(exported: Exported, tmp_path: Path, contract: tuple[str, Path]) -> None:
    # The newer contract is the bundled one (no --legacy-proto); the older one comes from its file.
    version, proto = contract
    client_folder = tmp_path / f"{version}_client"
    client = _compile_client(client_folder, proto.read_text())
    legacy_proto = OLDER_PROTO if version == "older" else None
    with running_server(exported.folder, api_key=API_KEY, legacy_proto=legacy_proto) as server:
        result = client.run("pattern.py", f"127.0.0.1:{server.port}", API_KEY)
    assert result["get"] == {"OK": 10_000} and result["distinct_answers"] == 1
    first, sync = result["first"], result["sync"]
    assert first["name"] == "if"
    if version == "newer":
        assert _open_package(base64.b64decode(first["code"])) == exported.sources["if"]
        assert sync == {"status": "OK", "total_count": len(exported.sources), "commands": len(exported.sources)}
    else:
        assert first["code"] == exported.sources["if"]
        assert sync["status"] == "UNIMPLEMENTED"
