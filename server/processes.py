"""Several independent server processes on one port, each pinned to its own CPU.

A Python gRPC server spends most of each call in grpcio and under the GIL, so
one process uses about one core. ``avap-server --processes N`` starts N copies
of itself on the same address (grpc listens with SO_REUSEPORT, and the kernel
spreads new connections over the listeners), each pinned to one CPU: unpinned,
a process pays for GIL hand-offs between grpc's threads on different cores.
Measured on 2 cores: 1 process with 32 threads 4,177 GetCommand/s, with 1
thread 5,252/s (h2load -c8 -m50; see docs/server.md for the multi-process figures).

The copies share nothing but the snapshot folder (no IPC): each loads, watches
and serves on its own, so one dying does not take the others down. This
supervisor only starts them, restarts one that dies (with backoff), and on
SIGTERM/SIGINT passes the signal on and waits for each to finish gracefully.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

_RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_POLL_S = 0.2  # how often the supervisor looks at its children
_STABLE_S = 60.0  # a child that ran this long resets its restart backoff


@dataclass
class _Child:
    index: int
    cpu: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    not_before: float = field(default=0.0)


def _command(args: Sequence[str], cpu: int) -> list[str]:
    return [sys.executable, "-m", "server", *args, "--processes", "1", "--cpu", str(cpu), "--reuse-port"]


def port_is_free(host: str, port: int) -> OSError | None:
    """None when ``host:port`` can be listened on by a process that does not share it, else the error.

    The group's processes share their port (SO_REUSEPORT); a server outside the
    group must not, so the supervisor checks the port before starting them.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc does: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
            probe.listen(1)
        except OSError as exc:
            return exc
    return None


def _start(child: _Child, args: Sequence[str]) -> None:
    child.process = subprocess.Popen(_command(args, child.cpu))
    child.started_at = time.monotonic()
    logger.info("server process %s started: pid %s on cpu %s", child.index, child.process.pid, child.cpu)


def _check(child: _Child, args: Sequence[str]) -> None:
    """Restart ``child`` if it has died, once its backoff has passed."""
    now = time.monotonic()
    if child.process is not None:
        code = child.process.poll()
        if code is None:
            return
        ran_s = now - child.started_at
        child.restarts = 0 if ran_s > _STABLE_S else child.restarts + 1
        delay = _RESTART_BACKOFF_S[min(child.restarts, len(_RESTART_BACKOFF_S) - 1)]
        logger.error("server process %s (pid %s) exited with %s; restarting in %.1f s", child.index,
                     child.process.pid, code, delay)  # fmt: skip
        child.process, child.not_before = None, now + delay
    if now >= child.not_before:
        _start(child, args)


def _stop_all(children: list[_Child], grace_s: float) -> int:
    running = [child.process for child in children if child.process is not None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s + 5.0
    worst = 0
    for process in running:
        try:
            code = process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            logger.error("server process pid %s did not stop in time; killing it", process.pid)
            process.kill()
            code = process.wait()
        worst = worst or code
    return 0 if worst == 0 else 1


def run(args: Sequence[str], *, processes: int, grace_s: float) -> int:
    """Run ``processes`` server processes with ``args`` until SIGTERM or SIGINT.

    Args:
        args: the command-line arguments each process gets (no ``--processes``).
        processes: how many to run; process i is pinned to CPU i modulo the CPUs available.
        grace_s: each process's shutdown grace, to bound the wait for them.

    Returns:
        0 when every process stopped cleanly, else 1.
    """
    cpus = sorted(os.sched_getaffinity(0))
    children = [_Child(index, cpus[index % len(cpus)]) for index in range(processes)]
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for child in children:
            _start(child, args)
        while not stop.wait(_POLL_S):
            for child in children:
                _check(child, args)
        logger.info("stopping %s server processes", processes)
        return _stop_all(children, grace_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
