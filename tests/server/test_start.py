"""Starting avap-server and avap-pin the wrong way: one line, a documented exit code, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from avapdefs.folder import write_pin
from avapdefs.v1.definitions_pb2 import GetCatalogInfoRequest, GetCommandRequest
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from server import cli, config, launch, pin, sample
from server.config import Settings
from server.launch import ServerProcess, StartError
from tests.helpers import MakeSnapshot
from tests.server.helpers import ROOT, end_process, log_lines, wait_for_line

SERVING = r"serving catalog version (\d+) \((\d+) commands.*\) on 127\.0\.0\.1:(\d+)"


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("level", ["info", "WARNING", "Debug", " error "])
def test_the_log_level_variable_takes_any_case(
    level: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AVAP_LOG_LEVEL", level)
    # Past the options (exit 3 for the missing folder, not 2 for the level).
    assert cli.main(["--snapshots", str(tmp_path / "missing"), "--port", "0"]) == 3


@pytest.mark.parametrize("program", [cli.main, pin.main])
def test_a_bad_log_level_is_one_line_and_exit_2(
    program: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AVAP_LOG_LEVEL", "bogus")
    assert callable(program)
    assert program(["--unpin"] if program is pin.main else []) == 2
    line = _one_line(capsys)
    assert "AVAP_LOG_LEVEL='bogus'" in line and "debug, info, warning, error" in line


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [("AVAP_PORT", "abc", "not a whole number"), ("AVAP_PORT", "70000", "not between 0 and 65535")],
)
def test_a_bad_variable_is_named_not_its_flag(
    variable: str, value: str, problem: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, value)
    assert cli.main([]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"avap-server: {variable}={value!r}: ") and problem in line
    assert "--port" not in line
    monkeypatch.delenv(variable)
    assert cli.main(["--port", "70000"]) == 2
    assert _one_line(capsys).startswith("avap-server: --port: ")


def test_a_regular_file_as_the_snapshot_folder_is_one_line_and_exit_3(
    make_snapshot: MakeSnapshot, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_snapshot()
    assert cli.main(["--snapshots", str(path), "--port", "0"]) == 3
    line = _one_line(capsys)
    assert line.startswith(f"avap-server: {path}: ") and "is not a folder" in line


def test_a_missing_snapshot_folder_is_said_to_be_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "nowhere"
    assert cli.main(["--snapshots", str(folder), "--port", "0"]) == 3
    assert "the snapshot folder does not exist" in _one_line(capsys)


def test_a_failure_inside_a_starting_process_is_one_line_from_the_supervisor(
    make_snapshot: MakeSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A settings message the application cannot take: a fault of the program, not of the input.
    real = config.settings_to_json
    monkeypatch.setattr(launch, "settings_to_json", lambda settings: {**real(settings), "no_such_setting": 1})
    process = ServerProcess(Settings(snapshots_dir=make_snapshot().parent, port=0), stderr=subprocess.PIPE)
    try:
        with pytest.raises(StartError) as raised:
            process.start()
    finally:
        process.kill()
    assert raised.value.exit_code == 1
    assert str(raised.value).startswith("starting failed: TypeError: ") and "no_such_setting" in str(raised.value)
    assert process.process is not None and process.process.stderr is not None
    printed = process.process.stderr.read().decode()
    process.process.stderr.close()
    # Neither a traceback nor Envoy's account of the failed start (its JSON config).
    assert "Traceback" not in printed and "static_resources" not in printed and "dynamic module" not in printed


@pytest.mark.parametrize("how", ["flag", "pin file"])
def test_a_pinned_version_that_is_not_in_the_folder_stops_the_start_with_exit_3(
    how: str, make_snapshot: MakeSnapshot, caplog: pytest.LogCaptureFixture
) -> None:
    folder = make_snapshot(version=1).parent
    make_snapshot(folder=folder, version=2)
    if how == "pin file":
        write_pin(folder, 1)
        (folder / "catalog-0000000001.avsnap").unlink()  # retention, or an operator, removed it since
    argv = ["--snapshots", str(folder), "--port", "0", *(["--pin", "99"] if how == "flag" else [])]
    assert cli.main(argv) == 3  # as avap-pin 99 is refused with 3; the newest is never served instead
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert f"pinned version {99 if how == 'flag' else 1} is not in the folder" in errors[0]
    assert pin.main(["--snapshots", str(folder), "99"]) == 3


def test_the_built_in_sample_ships_with_the_package_as_the_repository_has_it() -> None:
    shipped = sorted(path.name for path in sample.SAMPLE_FOLDER.glob("*.avsnap"))
    assert shipped == ["catalog-0000000001.avsnap"]
    repository = ROOT / "snapshots" / shipped[0]
    assert (sample.SAMPLE_FOLDER / shipped[0]).read_bytes() == repository.read_bytes()


def test_with_no_folder_given_the_server_serves_the_sample_from_any_directory(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("AVAP_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", "0", "--log-level", "info"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,  # no ./snapshots here
        env={**env, "PYTHONPATH": f"{ROOT / 'proto'}{os.pathsep}{ROOT}"},
    )
    seen: list[str] = []
    try:
        lines = log_lines(process)
        started = wait_for_line(lines, r"server process 0 started: pid \d+, (.*)", seen)
        assert started.group(1) == "not pinned to a CPU"
        version, _, port = wait_for_line(lines, SERVING, seen).groups()
        assert version == "1"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = DefinitionServiceStub(channel)
            assert stub.GetCommand(GetCommandRequest(name="addVar"), timeout=5).command.name == "addVar"
            assert stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=5).version == 1
        process.terminate()
        assert process.wait(timeout=30) == 0
    finally:
        end_process(process)
    assert any("serving the built-in sample catalog" in line for line in seen)
    assert list(tmp_path.iterdir()) == []  # nothing written where it was started


def test_file_events_are_not_logged_at_info(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(version=1)
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--snapshots", str(path.parent), "--port", "0", "--log-level", "INFO"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    seen: list[str] = []
    try:
        lines = log_lines(process)
        wait_for_line(lines, SERVING, seen)
        make_snapshot(folder=path.parent, version=2)
        # Version 2 may be found by the catch-up once the watch is in place; 3 is then a file event.
        wait_for_line(lines, "loaded catalog version 2", seen)
        make_snapshot(folder=path.parent, version=3)
        wait_for_line(lines, "loaded catalog version 3", seen)
        process.terminate()
        assert process.wait(timeout=30) == 0
        seen.extend(lines)
    finally:
        end_process(process)
    assert not [line for line in seen if "watchfiles" in line]


def test_the_environment_given_to_envoy_is_the_one_pyvoy_would_give() -> None:
    # launch works it out faster than pyvoy (it stops at the first libpython); the answer must be the same.
    from pyvoy._server import get_envoy_environ

    assert launch._envoy_environ() == get_envoy_environ()
    assert Path(launch._envoy_environ()["LD_PRELOAD"]).is_file()
