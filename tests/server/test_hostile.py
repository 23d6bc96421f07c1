"""A hostile folder, a busy port, bad keys and vanished watchers: each refused or recovered from, serving on."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import grpc
import pytest

from avapdefs.folder import PIN_NAME, snapshot_name
from avapdefs.v1.definitions_pb2 import GetCatalogInfoRequest, GetCommandRequest, WatchCatalogRequest
from server import cli
from server.store import SnapshotStore
from tests.helpers import MakeSnapshot
from tests.server.helpers import live_server, next_version, running_server, stub_for, versioned_commands


def _two_versions(make_snapshot: MakeSnapshot) -> Path:
    make_snapshot(version=1, commands=versioned_commands(1))
    return make_snapshot(version=2, commands=versioned_commands(2)).parent


def _served_code(stub: object) -> str:
    answer = stub.GetCommand(GetCommandRequest(name="cmd.000"), timeout=5)  # type: ignore[attr-defined]
    return str(answer.command.code)


def test_a_fifo_or_a_link_to_a_device_as_the_newest_file_is_refused_at_start(make_snapshot: MakeSnapshot) -> None:
    folder = _two_versions(make_snapshot)
    os.mkfifo(folder / snapshot_name(3))  # opening it for reading would wait for a writer forever
    os.symlink("/dev/zero", folder / snapshot_name(4))  # reading it would never end
    with running_server(folder) as server, stub_for(server) as stub:
        assert server.loaded.version == 2
        assert _served_code(stub) == "# version 2\n"


def test_an_older_version_renamed_to_a_newer_name_is_not_served(make_snapshot: MakeSnapshot) -> None:
    folder = _two_versions(make_snapshot)
    shutil.copyfile(folder / snapshot_name(1), folder / snapshot_name(7))  # a silent rollback, if trusted
    with running_server(folder) as server, stub_for(server) as stub:
        assert _served_code(stub) == "# version 2\n"


def test_a_refused_file_is_not_read_again_until_it_changes(
    make_snapshot: MakeSnapshot, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _two_versions(make_snapshot)
    bad = folder / snapshot_name(3)
    bad.write_bytes(b"AVAPSNAP not really")
    store = SnapshotStore(folder, chunk_bytes=1024)
    with caplog.at_level(logging.WARNING, "server.store"):
        store.load_newest()
        assert any("refused snapshot" in r.getMessage() for r in caplog.records)  # when it loaded
        caplog.clear()
        for _ in range(3):
            store.refresh()
        refusals = [r for r in caplog.records if "refused snapshot" in r.getMessage()]
        assert len(refusals) == 0  # unchanged since: not read, not said again
        bad.write_bytes(b"AVAPSNAP changed, still not a snapshot")
        store.refresh()
        refusals = [r for r in caplog.records if "refused snapshot" in r.getMessage()]
        assert len(refusals) == 1 and "version 2" in refusals[0].getMessage()
        assert store.current is not None and store.current.info.version == 2


@pytest.mark.parametrize("pin", ["9" * 5000, str(1 << 64), "-1", "0"])
def test_a_pin_file_that_is_no_version_is_no_pin(make_snapshot: MakeSnapshot, pin: str) -> None:
    folder = _two_versions(make_snapshot)
    (folder / PIN_NAME).write_text(pin)
    with running_server(folder) as server, stub_for(server) as stub:
        info = stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=5)
        assert (info.version, info.pinned_version) == (2, 0)


def test_a_pin_flag_past_any_version_is_a_usage_error(make_snapshot: MakeSnapshot) -> None:
    folder = _two_versions(make_snapshot)
    assert cli.main(["--snapshots", str(folder), "--port", "0", "--pin", str(1 << 64)]) == 2


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_port_another_server_listens_on_is_refused_with_exit_4(
    make_snapshot: MakeSnapshot, processes: str, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _two_versions(make_snapshot)
    with running_server(folder) as first:
        argv = ["--snapshots", str(folder), "--port", str(first.port), "--processes", processes]
        assert cli.main(argv) == 4
    assert any("cannot listen on 127.0.0.1" in record.getMessage() for record in caplog.records)


def test_a_blank_api_key_is_refused_not_taken_as_none(
    make_snapshot: MakeSnapshot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _two_versions(make_snapshot)
    monkeypatch.setenv("AVAP_API_KEY", "  ")
    assert cli.main(["--snapshots", str(folder), "--port", "0"]) == 2
    monkeypatch.delenv("AVAP_API_KEY")
    blank = tmp_path / "blank.key"
    blank.write_text(" \n")
    assert cli.main(["--snapshots", str(folder), "--port", "0", "--api-key-file", str(blank)]) == 2


def test_white_space_around_a_key_in_its_file_is_not_part_of_the_key(tmp_path: Path) -> None:
    key_file = tmp_path / "server.key"
    key_file.write_text("  s3cret \n")
    assert cli._api_key(key_file, {}) == "s3cret"
    assert cli._api_key(None, {"AVAP_API_KEY": "s3cret\n"}) == "s3cret"
    assert cli._api_key(None, {}) is None


def test_a_cancelled_watch_frees_its_slot_at_once_not_at_the_next_heartbeat(make_snapshot: MakeSnapshot) -> None:
    folder = _two_versions(make_snapshot)
    with live_server(folder, max_watch_streams=2, heartbeat_s=60.0, stream_idle_timeout_s=120.0) as (_, stub):
        streams = [stub.WatchCatalog(WatchCatalogRequest(), timeout=30) for _ in range(2)]
        assert [next_version(stream) for stream in streams] == [2, 2]
        for stream in streams:
            stream.cancel()
        # The slots come back as the server hears of the cancellations: well within a second,
        # where before they came back only at the next heartbeat (60 s here).
        deadline = time.monotonic() + 5
        opened = 0
        while opened < 2:
            stream = stub.WatchCatalog(WatchCatalogRequest(), timeout=30)
            try:
                assert next_version(stream) == 2
                opened += 1
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
            finally:
                stream.cancel()


def test_unparseable_requests_are_invalid_arguments_and_log_nothing(make_snapshot: MakeSnapshot) -> None:
    # Anyone who can reach the port can send these: a line per request would let them flood the log.
    folder = _two_versions(make_snapshot)
    with live_server(folder) as (server, _), grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        logged = len(server.lines)  # start-up is over: the watch is in place
        for method in ("/grpc.health.v1.Health/Check", "/avapdefs.v1.DefinitionService/GetCommand"):
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
            for _ in range(25):
                with pytest.raises(grpc.RpcError) as refused:
                    call(b"\xff\xff\xff", timeout=5)  # parses as no message at all
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert server.lines[logged:] == []
