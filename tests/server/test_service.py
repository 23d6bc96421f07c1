"""Every DefinitionService call and every status it answers with, over a real server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import grpc
import pytest

from avapdefs.format import snapshot, wire
from avapdefs.v1.definitions_pb2 import (
    BatchGetCommandsRequest,
    GetCatalogInfoRequest,
    GetCommandRequest,
    ListCommandsRequest,
    SyncCatalogRequest,
    SyncHeader,
)
from server.app import DefinitionServer
from server.config import Settings
from server.rpc import frame
from server.service import MAX_BATCH_NAMES, MAX_NAME_CHARS, SERVICE_NAME
from tests.helpers import MakeSnapshot, sample_command
from tests.server.helpers import SERVED_NAMES, Served, raw_unary, running_server, stub_for

SORTED = sorted(SERVED_NAMES, key=lambda name: name.encode("utf-8"))


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


@pytest.mark.parametrize("name", SERVED_NAMES)
def test_get_command_answers_the_stored_bytes(served: Served, name: str) -> None:
    raw = raw_unary(served.channel, "GetCommand")
    answer = raw(GetCommandRequest(name=name).SerializeToString(), timeout=5)
    stored = snapshot.verify(served.path.read_bytes()).catalog()
    expected = next(command for command in stored.commands if command.name == name)
    assert answer == wire.encode_entry(expected.SerializeToString())
    assert served.stub.GetCommand(GetCommandRequest(name=name), timeout=5).command == expected


def test_get_command_not_found_names_the_command(served: Served) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        served.stub.GetCommand(GetCommandRequest(name="noSuchCommand"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "noSuchCommand" in str(caught.value.details())


@pytest.mark.parametrize("name", ["", "y" * (MAX_NAME_CHARS + 1)])
def test_get_command_refuses_empty_and_over_long_names(served: Served, name: str) -> None:
    assert _code(lambda: served.stub.GetCommand(GetCommandRequest(name=name), timeout=5)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


@pytest.mark.parametrize("request_bytes", [b"\x0a\x05ab", b"\x0a\x02\xff\xfe", b"\xff\xff\xff"])
def test_requests_that_do_not_parse_are_invalid_arguments(served: Served, request_bytes: bytes) -> None:
    raw = raw_unary(served.channel, "GetCommand")
    assert _code(lambda: raw(request_bytes, timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
    raw_list = raw_unary(served.channel, "ListCommands")
    assert _code(lambda: raw_list(request_bytes, timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT


def test_batch_get_reports_missing_names_in_request_order(served: Served) -> None:
    request = BatchGetCommandsRequest(names=["if", "nope", "addVar", "if", "gone"])
    response = served.stub.BatchGetCommands(request, timeout=5)
    assert [command.name for command in response.commands] == ["if", "addVar", "if"]
    assert list(response.missing_names) == ["nope", "gone"]
    assert response.catalog_version == 3


def test_batch_get_refuses_bad_batches(served: Served) -> None:
    too_many = BatchGetCommandsRequest(names=["if"] * (MAX_BATCH_NAMES + 1))
    assert _code(lambda: served.stub.BatchGetCommands(too_many, timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
    empty_name = BatchGetCommandsRequest(names=["if", ""])
    assert _code(lambda: served.stub.BatchGetCommands(empty_name, timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT


def test_batch_get_refuses_an_answer_over_the_message_limit(make_snapshot: MakeSnapshot) -> None:
    commands = [sample_command(f"c{index}", code="x" * 20_000) for index in range(4)]
    path = make_snapshot(commands=commands)
    with (
        running_server(path.parent, max_send_bytes=64 * 1024, chunk_bytes=16 * 1024) as server,
        stub_for(server) as stub,
    ):
        assert len(stub.BatchGetCommands(BatchGetCommandsRequest(names=["c0"]), timeout=5).commands) == 1
        request = BatchGetCommandsRequest(names=["c0", "c1", "c2"])
        assert _code(lambda: stub.BatchGetCommands(request, timeout=5)) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_list_commands_pages_through_every_name(served: Served) -> None:
    names: list[str] = []
    token = ""
    while True:
        page = served.stub.ListCommands(ListCommandsRequest(page_size=3, page_token=token), timeout=5)
        assert len(page.names) <= 3 and page.catalog_version == 3
        names += page.names
        token = page.next_page_token
        if not token:
            break
    assert names == SORTED


def test_list_commands_by_prefix_with_definitions(served: Served) -> None:
    first = served.stub.ListCommands(ListCommandsRequest(prefix="add", page_size=2, include_definitions=True))
    assert list(first.names) == ["addParam", "addResult"]
    assert [command.name for command in first.commands] == ["addParam", "addResult"]
    assert first.commands[0].code == sample_command("addParam").code
    rest = served.stub.ListCommands(ListCommandsRequest(prefix="add", page_size=2, page_token=first.next_page_token))
    assert list(rest.names) == ["addVar"] and rest.next_page_token == ""
    assert list(served.stub.ListCommands(ListCommandsRequest(prefix="zzz")).names) == []


def test_list_commands_defaults_and_bad_token(served: Served) -> None:
    assert list(served.stub.ListCommands(ListCommandsRequest(), timeout=5).names) == SORTED
    bad = ListCommandsRequest(page_token="%%% not a token")
    assert _code(lambda: served.stub.ListCommands(bad, timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT


def test_get_catalog_info(served: Served) -> None:
    info = served.stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=5)
    header = snapshot.read_info(served.path.read_bytes())
    assert info.version == 3 and info.command_count == len(SERVED_NAMES)
    assert info.content_hash == header.content_hash
    assert (info.compressed_size, info.uncompressed_size) == (header.compressed_size, header.uncompressed_size)
    assert info.file_size == served.path.stat().st_size and info.format_version == snapshot.FORMAT_VERSION
    assert info.loaded_at_unix_ms >= info.created_at_unix_ms and info.source == "test"


def test_sync_catalog_sends_the_file_byte_for_byte(served: Served) -> None:
    messages = list(served.stub.SyncCatalog(SyncCatalogRequest(), timeout=10))
    header = messages[0].header
    data = b"".join(message.chunk for message in messages[1:])
    assert header.kind == SyncHeader.KIND_FULL and header.catalog.version == 3
    assert data == served.path.read_bytes() and header.data_size == len(data)
    assert snapshot.verify(data).info.version == 3


def test_sync_catalog_up_to_date_sends_no_data(served: Served) -> None:
    info = snapshot.read_info(served.path.read_bytes())
    request = SyncCatalogRequest(have_version=3, have_content_hash=info.content_hash)
    messages = list(served.stub.SyncCatalog(request, timeout=10))
    assert len(messages) == 1 and messages[0].header.kind == SyncHeader.KIND_UP_TO_DATE
    other_hash = SyncCatalogRequest(have_version=3, have_content_hash=bytes(32))
    first, *_ = served.stub.SyncCatalog(other_hash, timeout=10)
    assert first.header.kind == SyncHeader.KIND_FULL


def _call_in_process(server: DefinitionServer, method: str, request: bytes) -> dict[bytes, bytes]:
    """One call through the ASGI application itself, as pyvoy makes it; the trailers it ends with."""
    sent: list[MutableMapping[str, Any]] = []
    events = [{"type": "http.request", "body": frame(request), "more_body": False}]

    async def receive() -> dict[str, Any]:
        return events.pop() if events else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": f"/{SERVICE_NAME}/{method}",
             "headers": [(b"content-type", b"application/grpc")]}  # fmt: skip
    server.loop.run_until_complete(server(scope, receive, send))
    assert sent[-1]["type"] == "http.response.trailers"
    return dict(sent[-1]["headers"])


@contextlib.contextmanager
def _in_process(folder: Path) -> Iterator[DefinitionServer]:
    loop = asyncio.new_event_loop()
    try:
        yield DefinitionServer(Settings(snapshots_dir=folder, reload=False, legacy=False), loop)
    finally:
        loop.close()


def test_before_the_first_load_calls_are_unavailable(make_snapshot: MakeSnapshot) -> None:
    # The server listens only once loaded; the application still refuses rather than answer from nothing.
    request = GetCommandRequest(name="if").SerializeToString()
    with _in_process(make_snapshot().parent) as server:
        trailers = _call_in_process(server, "GetCommand", request)
        assert trailers[b"grpc-status"] == b"14" and trailers[b"grpc-message"] == b"no catalog loaded yet"
        server.load()
        assert _call_in_process(server, "GetCommand", request) == {b"grpc-status": b"0"}


def test_an_unexpected_error_is_internal_and_logged(
    make_snapshot: MakeSnapshot, caplog: pytest.LogCaptureFixture
) -> None:
    # A store whose names list a command its index lacks: a bug a call can only report.
    request = ListCommandsRequest(include_definitions=True).SerializeToString()
    with _in_process(make_snapshot(commands=[sample_command(name) for name in SERVED_NAMES]).parent) as server:
        live = server.load()
        server.store.current = dataclasses.replace(live, responses={})
        trailers = _call_in_process(server, "ListCommands", request)
    assert trailers[b"grpc-status"] == b"13" and trailers[b"grpc-message"] == b"internal error"
    assert any(record.exc_info for record in caplog.records if record.name == "server.app")
