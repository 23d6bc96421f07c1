"""avap-get and avap-sync against a real server: the API key, addresses, one-line errors, --version, output."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from avapdefs.client import DefinitionClient, SyncResult, cli
from avapdefs.format.snapshot import SnapshotInfo
from tests.helpers import MakeSnapshot, sample_command
from tests.server.helpers import RunningServer, running_server

KEY = "cli-key"
Main = Callable[[Sequence[str] | None], int]


@pytest.fixture
def keyed(make_snapshot: MakeSnapshot) -> Iterator[RunningServer]:
    """A server started with an API key, on a one-command catalog."""
    path = make_snapshot(version=5, commands=[sample_command("only")])
    with running_server(path.parent, api_key=KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def _no_inherited_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("AVAP_SERVER", "AVAP_API_KEY", "AVAP_API_KEY_FILE", "AVAP_DEST", "AVAP_LOG_LEVEL"):
        monkeypatch.delenv(variable, raising=False)


def _own(err: str) -> str:
    """The tool's own lines of ``err``: a server running in this process logs to the same stderr."""
    return "".join(
        line for line in err.splitlines(keepends=True) if line.startswith(("avap-get:", "avap-sync:", "avapctl:"))
    )


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    return _own(capsys.readouterr().err)


def _address(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


def _dead_address() -> str:
    with socket.socket() as probe:  # a port the kernel handed out and got back: nothing listens there
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def _key_file(tmp_path: Path, text: str = KEY, mode: int = 0o600) -> Path:
    path = tmp_path / "api-key"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_avap_get_takes_the_key_from_the_variable_or_a_file(
    keyed: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["only", "--server", _address(keyed)]
    assert cli.get_main(argv) == 4
    assert _err(capsys) == (
        "avap-get: the server refused the call: UNAUTHENTICATED: missing x-avap-auth metadata; "
        "give the key with --api-key-file or AVAP_API_KEY\n"
    )
    assert cli.get_main([*argv, "--api-key-file", str(_key_file(tmp_path, f"{KEY}\n"))]) == 0
    assert capsys.readouterr().out.startswith("only (function)")
    monkeypatch.setenv("AVAP_API_KEY", f" {KEY} ")
    assert cli.get_main(argv) == 0
    monkeypatch.setenv("AVAP_API_KEY", "wrong")
    assert cli.get_main(argv) == 4
    assert "UNAUTHENTICATED: wrong x-avap-auth key" in _err(capsys)
    monkeypatch.setenv("AVAP_API_KEY_FILE", str(_key_file(tmp_path)))  # the file wins over the key
    assert cli.get_main(argv) == 0


def test_a_blank_key_is_a_usage_error_and_an_open_key_file_a_warning(
    keyed: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["only", "--server", _address(keyed)]
    assert cli.get_main([*argv, "--api-key-file", str(_key_file(tmp_path, " \n"))]) == 2
    assert _err(capsys) == f"avap-get: the API key file {tmp_path / 'api-key'}: the API key is blank\n"
    assert cli.get_main([*argv, "--api-key-file", str(tmp_path / "missing")]) == 2
    assert "cannot read the API key file" in _err(capsys)
    open_file = _key_file(tmp_path, mode=0o644)
    assert cli.get_main([*argv, "--api-key-file", str(open_file)]) == 0
    err = _err(capsys)
    warning = f"the API key file {open_file} may be read by group or others (mode -rw-r--r--); chmod 600 it"
    assert err == f"avap-get: WARNING: {warning}\n"
    monkeypatch.setenv("AVAP_API_KEY", "")
    assert cli.get_main(argv) == 2
    assert _err(capsys) == ("avap-get: AVAP_API_KEY is set, but the API key is blank; give a key, or unset it\n")


def test_avap_sync_takes_the_key_and_refuses_without_it(
    keyed: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--server", _address(keyed), "--dest", str(tmp_path / "cache")]
    assert cli.sync_main(argv) == 4
    assert "UNAUTHENTICATED" in _err(capsys)
    assert cli.sync_main([*argv, "--watch"]) == 4  # a refusal ends --watch at once: no retry would change it
    assert "UNAUTHENTICATED" in _err(capsys)
    monkeypatch.setenv("AVAP_API_KEY", KEY)
    assert cli.sync_main(argv) == 0
    assert capsys.readouterr().out.startswith("synced catalog version 5 (1 command): ")


@pytest.mark.parametrize("main", [cli.get_main, cli.sync_main])
def test_a_malformed_server_is_refused_at_once(
    main: Main, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = main
    rest = ["addVar"] if run is cli.get_main else ["--dest", str(tmp_path)]
    for address in ("not an address", "127.0.0.1"):
        assert run([*rest, "--server", address]) == 2
        assert f"argument --server: {address!r} is not HOST:PORT (no port)" in _err(capsys)
    monkeypatch.setenv("AVAP_SERVER", "127.0.0.1")
    assert run(rest) == 2
    assert "AVAP_SERVER='127.0.0.1': '127.0.0.1' is not HOST:PORT (no port)" in _err(capsys)


def test_an_unreachable_server_is_named_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    address = _dead_address()
    assert cli.get_main(["addVar", "--server", address, "--timeout-s", "0.5"]) == 3
    assert _err(capsys) == f"avap-get: cannot reach {address} (connection refused)\n"
    argv = ["--server", address, "--dest", str(tmp_path / "cache"), "--connect-timeout-s", "0.5"]
    assert cli.sync_main(argv) == 3
    assert _err(capsys) == f"avap-sync: cannot reach {address} (connection refused)\n"


def test_bad_options_and_variables_are_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.get_main(["addVar", "--timeout-s", "0"]) == 2
    assert "'0' is not a number of seconds above 0" in _err(capsys)
    monkeypatch.setenv("AVAP_LOG_LEVEL", "bogus")
    assert cli.get_main(["addVar"]) == 2
    assert _err(capsys).count("\n") == 1
    assert cli.sync_main([]) == 2
    assert _err(capsys).startswith("avap-sync: AVAP_LOG_LEVEL='bogus'")
    monkeypatch.setenv("AVAP_LOG_LEVEL", "INFO")
    assert cli.sync_main([]) == 2
    assert _err(capsys) == "avap-sync: give the cache folder: --dest DIR or AVAP_DEST\n"


@pytest.mark.parametrize(("main", "prog"), [(cli.get_main, "avap-get"), (cli.sync_main, "avap-sync")])
def test_version_and_help(main: Main, prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith(f"{prog} ")
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for expected in ("examples:", "exit codes:", " 130  interrupted", "[AVAP_SERVER;", "AVAP_API_KEY"):
        assert expected in text


def test_avap_get_json_shows_the_content_hash_in_hex(
    keyed: RunningServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AVAP_API_KEY", KEY)
    assert cli.get_main(["only", "--server", _address(keyed), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    with DefinitionClient(_address(keyed), api_key=KEY) as client:
        command = client.get_command("only")
    assert shown["content_hash"] == command.content_hash.hex() and len(shown["content_hash"]) == 64
    assert shown["source_id"] == command.source_id and shown["logic"] is False  # numbers as numbers, every field


def test_the_sync_summary_counts_the_transfer_only() -> None:
    info = SnapshotInfo(
        version=8,
        content_hash=b"\0" * 32,
        compressed_size=0,
        uncompressed_size=0,
        command_count=1,
        created_at_unix_ms=0,
        source="",
        header_size=0,
    )
    waited = SyncResult(Path("c/x"), info, False, 2_000_000, seconds=10.5, delta=True, transfer_s=0.5)
    assert cli.summary(waited, Path("c")) == (
        "synced catalog version 8 (1 command, as a delta): 2.00 MB in 0.50 s, 4.0 MB/s, "
        "after 10.0 s reaching the server -> c/x"
    )
    prompt = SyncResult(Path("c/x"), info, False, 1_000_000, seconds=0.25, transfer_s=0.25)
    assert cli.summary(prompt, Path("c")).endswith("(1 command): 1.00 MB in 0.25 s, 4.0 MB/s -> c/x")
