"""avap-server: exit codes, and a graceful shutdown of a real server process by signal."""

from __future__ import annotations

import logging
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from avapdefs.v1.definitions_pb2 import GetCommandRequest, SyncCatalogRequest
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from server import cli, pin
from tests.helpers import MakeSnapshot
from tests.server.helpers import big_commands, log_lines, server_process, wait_for_line

SERVING_LINE = re.compile(r"serving catalog version (\d+) \((\d+) commands, loaded in \d+ ms\) on 127\.0\.0\.1:(\d+)")


def test_no_valid_snapshot_exits_3_with_a_clear_message(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    assert cli.main(["--snapshots", str(folder), "--port", "0"]) == 3
    assert any("no valid snapshot" in record.getMessage() for record in caplog.records)


def test_environment_variables_configure_and_flags_win(
    make_snapshot: MakeSnapshot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AVAP_SNAPSHOTS", str(tmp_path / "nowhere"))
    monkeypatch.setenv("AVAP_PORT", "0")
    assert cli.main([]) == 3
    monkeypatch.setenv("AVAP_PORT", "not-a-port")
    assert cli.main([]) == 2
    assert cli.main(["--port", "0"]) == 3


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--port", "70000"], r"^avap-server: --port: port 70000 is not between 0 and 65535$"),
        (["--grace-s", "-1"], r"^avap-server: --grace-s: grace.s -1(\.0)? is negative$"),
        (["--no-such-flag"], r"^avap-server: error: unrecognized arguments: --no-such-flag$"),
    ],
)
def test_bad_options_exit_2_with_one_line_naming_the_problem(
    argv: list[str], problem: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    assert cli.main(argv) == 2
    # argparse prints its usage, then its error; the checks of values print their one line alone.
    printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("avap-server: ")]
    logged = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    errors = printed + logged
    assert len(errors) == 1, errors
    assert re.search(problem, errors[0]), errors[0]


def test_an_address_that_cannot_be_listened_on_exits_4(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot()
    # 192.0.2.1 (TEST-NET-1) is never an address of this machine.
    assert cli.main(["--snapshots", str(path.parent), "--host", "192.0.2.1", "--port", "0"]) == 4


def _start(folder: Path) -> subprocess.Popen[str]:
    return server_process("--snapshots", str(folder), "--port", "0", "--log-level", "DEBUG")


def test_sigterm_lets_an_in_flight_sync_finish_then_exits_0(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(commands=big_commands(count=96))  # 12 MB: more than flow control lets through unread
    expected = path.read_bytes()
    process = _start(path.parent)
    seen: list[str] = []
    try:
        lines = log_lines(process)
        port = wait_for_line(lines, SERVING_LINE.pattern, seen).group(3)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = DefinitionServiceStub(channel).SyncCatalog(SyncCatalogRequest(), timeout=30)
            first = [next(call), next(call)]
            process.send_signal(signal.SIGTERM)
            wait_for_line(lines, "shutting down", seen)
            data = b"".join(message.chunk for message in [*first, *call])
        wait_for_line(lines, "stopped", seen)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()
    assert data == expected
    log = "".join(seen)
    assert log.index("shutting down") < log.index("sent the whole file"), "the sync was not in flight"


def test_sigint_on_an_idle_server_exits_0(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(version=5)
    process = _start(path.parent)
    seen: list[str] = []
    try:
        lines = log_lines(process)
        match = wait_for_line(lines, SERVING_LINE.pattern, seen)
        assert match.group(1, 2) == ("5", "3")
        with grpc.insecure_channel(f"127.0.0.1:{match.group(3)}") as channel:
            stub = DefinitionServiceStub(channel)
            assert stub.GetCommand(GetCommandRequest(name="if"), timeout=5).command.name == "if"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize(("program", "name"), [(cli.main, "avap-server"), (pin.main, "avap-pin")])
def test_version_names_the_package_the_formats_and_the_contracts(
    program: Callable[[list[str]], int], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert program(["--version"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(rf"{name} \S+ \(avap-definition-server\)", lines[0]), lines
    assert re.fullmatch(r"snapshot format \d+, delta format \d+", lines[1]), lines
    assert "avapdefs.v1.DefinitionService" in lines[2]
