"""Several server processes on one port: all serve, one dying is restarted, SIGTERM stops them all."""

from __future__ import annotations

import os
import re
import signal

import grpc
import pytest

from avapdefs.v1.definitions_pb2 import GetCommandRequest
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from server import cli
from tests.helpers import MakeSnapshot
from tests.server.helpers import end_process, free_port, log_lines, server_process, wait_for_line

STARTED = r"server process (\d) started: pid (\d+), pinned to CPU (\d+)"


def _get(port: int, name: str) -> str:
    # A new channel is a new connection, which the kernel may give to any of the processes.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = DefinitionServiceStub(channel).GetCommand(
            GetCommandRequest(name=name), timeout=10, wait_for_ready=True
        )
        return answer.command.name


def test_processes_share_the_port_and_one_dying_is_restarted(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(version=4)
    port = free_port()
    process = server_process("--snapshots", str(path.parent), "--port", str(port), "--processes", "2")
    seen: list[str] = []
    try:
        lines = log_lines(process)
        children = {}
        for _ in range(2):
            index, pid, _ = wait_for_line(lines, STARTED, seen).groups()
            children[index] = int(pid)
        wait_for_line(lines, "serving catalog version 4", seen)  # once both are ready
        assert os.sched_getaffinity(children["0"]) != os.sched_getaffinity(0) or len(os.sched_getaffinity(0)) == 1
        assert all(_get(port, "if") == "if" for _ in range(8))

        os.kill(children["1"], signal.SIGKILL)
        wait_for_line(lines, r"server process 1 \(pid \d+\) exited", seen)
        assert _get(port, "addVar") == "addVar"  # the other process keeps serving meanwhile
        restarted = int(wait_for_line(lines, STARTED, seen).group(2))
        wait_for_line(lines, "server process 1 is back, serving catalog version 4", seen)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        seen.extend(lines)  # the rest of the log, up to the end
    finally:
        end_process(process)
    # Both live processes (the first and the restarted one) shut down gracefully, and none is left.
    assert len(re.findall(r"server process \d \(pid \d+\) stopped", "".join(seen))) == 2
    for pid in (children["0"], restarted):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("argv", [["--processes", "2", "--port", "0"], ["--processes", "0", "--port", "5"]])
def test_bad_process_counts_exit_2(argv: list[str]) -> None:
    assert cli.main(argv) == 2
