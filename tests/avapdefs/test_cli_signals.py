"""The client tools as real processes: Ctrl-C is one line and exit 130, SIGTERM ends a watch with 0,
and a watch whose server is away says so once."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import MakeSnapshot
from tests.server.helpers import running_server

BIN = Path(sys.executable).parent
WAIT_S = 30


def _tool(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("AVAP_")}
    return subprocess.Popen(
        [str(BIN / argv[0]), *argv[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**clean, **(env or {})},
    )


@contextlib.contextmanager
def _silent_listener() -> Iterator[socket.socket]:
    """A loopback port that accepts connections and never answers: a call to it waits."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(WAIT_S)
        yield listener


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=WAIT_S)
    return process.returncode, out, err


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["avap-get", "addVar", "--timeout-s", "60"], "avap-get: interrupted\n"),
        (["avap-sync", "--connect-timeout-s", "60"], "avap-sync: interrupted; nothing partial is left in the cache\n"),
        (["avap-sync", "--watch"], "avap-sync: interrupted; nothing partial is left in the cache\n"),
        (["avapctl", "info", "--timeout-s", "60"], "avapctl: interrupted\n"),
        (["avapctl", "watch"], "avapctl: interrupted\n"),
    ],
)
def test_ctrl_c_is_one_line_and_exit_130(argv: list[str], line: str, tmp_path: Path) -> None:
    with _silent_listener() as listener:
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        process = _tool(*argv, "--server", address, env={"AVAP_DEST": str(tmp_path / "cache")})
        connection, _ = listener.accept()  # the tool is now waiting in its call
        with connection:
            process.send_signal(signal.SIGINT)
            code, out, err = _finish(process)
    assert (code, out, err) == (130, "", line)
    assert not list((tmp_path / "cache").glob(".tmp-*"))


@pytest.mark.parametrize(
    "argv",
    [["avap-sync", "--watch"], ["avapctl", "watch"]],
)
def test_sigterm_ends_a_watch_normally(argv: list[str], make_snapshot: MakeSnapshot, tmp_path: Path) -> None:
    path = make_snapshot(version=3)
    with running_server(path.parent) as server:
        process = _tool(*argv, "--server", f"127.0.0.1:{server.port}", env={"AVAP_DEST": str(tmp_path / "cache")})
        assert process.stdout is not None
        first = process.stdout.readline()  # the first sync, or the live version: it is following
        process.send_signal(signal.SIGTERM)
        code, out, err = _finish(process)
    assert "catalog version 3" in first or first.startswith("version 3 live")
    assert (code, out, err) == (0, "", "")


@pytest.mark.parametrize(
    ("argv", "warning"),
    [
        (["avap-sync", "--watch", "--connect-timeout-s", "0.3"], "avap-sync: WARNING: keeping "),
        (["avapctl", "watch", "--timeout-s", "0.3"], "avapctl: cannot reach "),
    ],
)
def test_a_watch_says_once_that_the_server_is_away(
    argv: list[str], warning: str, make_snapshot: MakeSnapshot, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port the kernel handed out and got back: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"AVAP_DEST": str(tmp_path / "cache"), "AVAP_LOG_LEVEL": "debug"}
    process = _tool(*argv, "--server", f"127.0.0.1:{port}", env=env)
    assert process.stderr is not None
    seen: list[str] = []
    try:
        for line in process.stderr:  # until three retries have failed, each one logged at DEBUG
            seen.append(line)
            if "retry 3 in" in line:
                break
    finally:
        process.send_signal(signal.SIGINT)
        code, _, rest = _finish(process)
    said = [line for line in [*seen, *rest.splitlines(keepends=True)] if line.startswith(warning)]
    assert code == 130 and len(said) == 1, "".join(seen) + rest
    assert f"cannot reach 127.0.0.1:{port} (connection refused)" in said[0]
    assert "backoff of 0.5 s doubling to 30 s" in said[0]
