"""avapctl against a real server: info, ls, get, watch and health, as text and as JSON, with their exit codes."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator

import pytest

from avapdefs.client import ctl
from avapdefs.format import snapshot
from tests.helpers import MakeSnapshot, sample_command
from tests.server.helpers import RunningServer, running_server

NAMES = ["addParam", "addResult", "addVar", "end", "if", "ñandú"]
KEY = "ctl-key"


@pytest.fixture(autouse=True)
def _no_inherited_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("AVAP_SERVER", "AVAP_API_KEY", "AVAP_API_KEY_FILE", "AVAP_TIMEOUT_S", "AVAP_LOG_LEVEL"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def served(make_snapshot: MakeSnapshot, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    """A server with an API key, pinned to version 2 of 3, found through AVAP_SERVER and AVAP_API_KEY."""
    for version in (1, 2, 3):
        path = make_snapshot(version=version, commands=[sample_command(name) for name in NAMES])
    with running_server(path.parent, api_key=KEY, pin=2) as server:
        monkeypatch.setenv("AVAP_SERVER", f"127.0.0.1:{server.port}")
        monkeypatch.setenv("AVAP_API_KEY", KEY)
        yield server


def _own(err: str) -> str:
    """The tool's own lines of ``err``: a server running in this process logs to the same stderr."""
    return "".join(
        line for line in err.splitlines(keepends=True) if line.startswith(("avap-get:", "avap-sync:", "avapctl:"))
    )


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    return _own(capsys.readouterr().err)


def _out(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out


def test_info(served: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    server = served
    info = snapshot.read_file(server.folder / "catalog-0000000002.avsnap").info
    assert ctl.main(["info"]) == 0
    rows = dict((line[:13].strip(), line[14:]) for line in _out(capsys).splitlines())
    assert rows["version"] == "2" and rows["pinned"] == "version 2" and rows["commands"] == "6"
    assert rows["server"] == f"127.0.0.1:{server.port}" and rows["content hash"] == info.content_hash.hex()
    assert rows["age"].endswith(" UTC)") and rows["source"] == "test"
    assert ctl.main(["info", "--json"]) == 0
    shown = json.loads(_out(capsys))
    assert shown["version"] == 2 and shown["pinned_version"] == 2 and shown["command_count"] == 6
    assert 0 <= shown["age_s"] < 600 and shown["server"] == f"127.0.0.1:{server.port}"
    assert shown["content_hash"] == info.content_hash.hex()


def test_ls_pages_through_every_name(served: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["ls"]) == 0
    assert _out(capsys).splitlines() == NAMES
    assert ctl.main(["ls", "add", "--page-size", "2"]) == 0  # two pages
    assert _out(capsys).splitlines() == ["addParam", "addResult", "addVar"]
    assert ctl.main(["ls", "--json", "--page-size", "4"]) == 0
    assert json.loads(_out(capsys)) == {"catalog_version": 2, "names": NAMES}
    assert ctl.main(["ls", "zz"]) == 0
    assert _out(capsys) == ""


def test_get_several_names(served: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["get", "if", "addVar"]) == 0
    text = _out(capsys)
    assert text.startswith("if (function)\n") and "\n\naddVar (function)\n" in text
    assert ctl.main(["get", "end", "nope", "--json"]) == 1
    captured = capsys.readouterr()
    shown = json.loads(captured.out)
    assert [command["name"] for command in shown["commands"]] == ["end"]
    assert shown["missing_names"] == ["nope"] and shown["catalog_version"] == 2
    assert len(shown["commands"][0]["content_hash"]) == 64
    assert _own(captured.err) == "avapctl: no command named 'nope' in catalog version 2\n"


def test_watch_prints_the_live_version(served: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["watch", "--count", "1"]) == 0
    assert re.match(r"version 2 live(, pinned)?: 6 commands, created ", _out(capsys))
    assert ctl.main(["watch", "--count", "1", "--json"]) == 0
    assert json.loads(_out(capsys))["version"] == 2


def test_health(make_snapshot: MakeSnapshot, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_snapshot()
    with running_server(path.parent) as server:
        address = f"127.0.0.1:{server.port}"
        assert ctl.main(["health", "--server", address]) == 0
        assert _out(capsys) == "SERVING\n"
        server.process.drain()
        assert ctl.main(["--server", address, "health", "--json"]) == 1
        assert json.loads(_out(capsys)) == {"server": address, "service": "", "status": "NOT_SERVING"}
        assert ctl.main(["health", "--server", address, "--service", "no.such.Service"]) == 4
        assert _err(capsys) == "avapctl: the server refused the call: NOT_FOUND: unknown service\n"


def test_options_go_before_or_after_the_subcommand(
    served: RunningServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{served.port}"
    monkeypatch.setenv("AVAP_SERVER", "127.0.0.1:1")  # a flag wins over the variable, wherever it stands
    assert ctl.main(["--server", address, "ls", "end"]) == 0
    assert ctl.main(["ls", "end", "--server", address, "--timeout-s", "2"]) == 0
    assert _out(capsys) == "end\nend\n"
    monkeypatch.delenv("AVAP_API_KEY")
    assert ctl.main(["--server", address, "ls"]) == 4
    assert "UNAUTHENTICATED" in _err(capsys)


def test_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    for command in (["info"], ["ls"], ["get", "x"], ["health"]):
        assert ctl.main([*command, "--server", dead, "--timeout-s", "0.3"]) == 3
        assert _err(capsys) == f"avapctl: cannot reach {dead} (connection refused)\n"
    assert ctl.main(["info", "--server", "127.0.0.1"]) == 2
    assert "avapctl info: error: argument --server: '127.0.0.1' is not HOST:PORT (no port)" in capsys.readouterr().err
    assert ctl.main([]) == 2
    assert ctl.main(["get"]) == 2
    assert ctl.main(["ls", "--page-size", "-1"]) == 2
    assert "argument --page-size: '-1' is not a whole number above 0" in capsys.readouterr().err
    assert ctl.main(["watch", "--count", "0"]) == 2
    assert ctl.main(["info", "--timeout-s", "inf"]) == 2
    capsys.readouterr()


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["--version"]) == 0
    assert _out(capsys).startswith("avapctl ")
    for command in ("info", "ls", "get", "watch", "health"):
        assert ctl.main([command, "--help"]) == 0
        text = _out(capsys)
        assert f"examples:\n  avapctl {command}" in text and "exit codes:" in text and "--json" in text
    assert ctl.main(["--help"]) == 0
    assert " 130  interrupted" in _out(capsys)


def test_a_bad_variable_is_named(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVAP_TIMEOUT_S", "soon")
    assert ctl.main(["info"]) == 2
    assert capsys.readouterr().err == "avapctl: AVAP_TIMEOUT_S='soon': 'soon' is not a number of seconds above 0\n"
