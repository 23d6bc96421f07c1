"""``avap-server``'s main loop: one or more serving processes on one port, supervised.

Each serving process is an Envoy process running the application
(``launch.ServerProcess``). Python answers on one event loop under one GIL,
so one process uses about one core: ``--processes N`` (by default one per CPU
this process may run on) starts N of them on the same port, each pinned to its
own CPU; Envoy listens with SO_REUSEPORT within the group and the kernel
spreads new connections over them. Measured on 2 cores with h2load (-c8 -m50):
1 process 13,935 GetCommand/s, 2 processes 31,622/s, against the Node.js
peer's 15,567-16,767/s in the same runs (docs/server.md).

The processes share nothing but the snapshot folder: each loads, watches and
serves on its own, so one dying does not take the others down. This
supervisor starts them (all at once, so they load in parallel), restarts one
that dies (with backoff), and on SIGTERM/SIGINT drains and stops them all,
each with the grace period.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING

from server.config import Settings
from server.launch import EXIT_CANNOT_LISTEN, EXIT_OK, Loaded, ServerProcess, StartError
from server.metrics import MetricsEndpoint

if TYPE_CHECKING:
    from avapdefs.remote import Follower

logger = logging.getLogger(__name__)

_RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_POLL_S = 0.2  # how often the supervisor looks at its processes
_STABLE_S = 60.0  # a process that ran this long resets its restart backoff


def default_processes(port: int) -> int:
    """One process per CPU this process may run on; 1 when the port is picked at start (0)."""
    return 1 if port == 0 else len(os.sched_getaffinity(0))


def port_is_free(host: str, port: int) -> OSError | None:
    """None when ``host:port`` can be listened on by a process that does not share it, else the error.

    The group's processes share their port (SO_REUSEPORT); a server outside the
    group must not, so the supervisor checks the port before starting them.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Envoy does: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
            probe.listen(1)
        except OSError as exc:
            return exc
    return None


@dataclass(frozen=True)
class _Launch:
    """What every serving process of the group is started with, beside its settings."""

    log_level: str
    log_format: str
    named: bool  # whether its log lines name it (one of several processes)
    metrics: MetricsEndpoint | None  # where it writes its metrics; None when they are off


@dataclass
class _Child:
    index: int
    settings: Settings
    launch: _Launch
    server: ServerProcess | None = None
    started_at: float = 0.0
    restarts: int = 0
    not_before: float = field(default=0.0)

    def spawn(self) -> None:
        launch = self.launch
        self.server = ServerProcess(
            self.settings,
            log_level=launch.log_level,
            log_format=launch.log_format,
            process_index=self.index if launch.named else None,
            environment=launch.metrics.environment() if launch.metrics else None,
        )
        pid = self.server.spawn()
        self.started_at = time.monotonic()
        cpu = self.settings.cpu
        where = "not pinned to a CPU" if cpu is None else f"pinned to CPU {cpu}"
        logger.info("server process %s started: pid %s, %s", self.index, pid, where)

    def wait_ready(self, stop: threading.Event) -> Loaded:
        assert self.server is not None
        loaded = self.server.wait_ready(stop)
        logger.info("server process %s loaded catalog version %s (%s commands) in %.0f ms",
                    self.index, loaded.version, loaded.commands, loaded.load_ms)  # fmt: skip
        return loaded

    def check(self, stop: threading.Event) -> None:
        """Restart this process if it has died, once its backoff has passed."""
        now = time.monotonic()
        if self.server is not None:
            code = self.server.exited()
            if code is None:
                return
            ran_s = now - self.started_at
            self.restarts = 0 if ran_s > _STABLE_S else self.restarts + 1
            delay = _RESTART_BACKOFF_S[min(self.restarts, len(_RESTART_BACKOFF_S) - 1)]
            logger.error("server process %s (pid %s) exited with %s; restarting in %.1f s",
                         self.index, self.server.pid, code, delay)  # fmt: skip
            self.server.kill()
            if self.launch.metrics is not None:
                self.launch.metrics.process_ended(self.server.pid, restarted=True)
            self.server, self.not_before = None, now + delay
        if now >= self.not_before:
            self.spawn()
            try:
                loaded = self.wait_ready(stop)
                logger.info("server process %s is back, serving catalog version %s", self.index, loaded.version)
            except StartError as exc:
                if exc.exit_code != EXIT_OK:
                    logger.error("server process %s: %s", self.index, exc)

    def stop(self, grace_s: float) -> None:
        if self.server is not None:
            pid = self.server.pid
            self.server.stop(grace_s)
            if self.launch.metrics is not None:
                self.launch.metrics.process_ended(pid, restarted=False)
            logger.info("server process %s (pid %s) stopped", self.index, pid)


def _install_signal_handlers(stop: threading.Event) -> dict[int, object]:
    def request_stop(signum: int, frame: FrameType | None) -> None:
        # Only set the event: logging here could deadlock on a lock the main thread holds.
        stop.set()

    return {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}


def run(
    settings: Settings,
    *,
    processes: int = 1,
    log_level: str = "INFO",
    log_format: str = "plain",
    follower: Follower | None = None,
) -> int:
    """Serve with ``processes`` processes until SIGTERM or SIGINT, then shut down gracefully (main thread only).

    Args:
        settings: what to serve; with more than one process, each is pinned to CPU i modulo the
            CPUs available (``settings.cpu`` pins a single process).
        processes: how many serving processes share the port.
        log_level: the processes' logging level.
        log_format: the processes' log format (``logs.LOG_FORMATS``).
        follower: keeps the snapshot folder at an object store's version (``--source``), on a
            thread of the supervisor, so N processes share one download.

    Returns:
        An exit code: 0 after a graceful shutdown, 2 for a bad ``--legacy-proto``, 3 when no
        valid snapshot can be loaded, 4 when the address cannot be listened on, 1 when a
        process failed otherwise at start.
    """
    if not settings.is_loopback and not settings.api_key and settings.tls_client_ca is None:
        logger.warning("listening on %s with no API key: anyone who can reach it reads every definition", settings.host)
    if not settings.reuse_port:
        busy = port_is_free(settings.host, settings.port)
        if busy is not None:
            logger.error("cannot listen on %s: %s", settings.address, busy.strerror or busy)
            return EXIT_CANNOT_LISTEN
    try:
        metrics = _metrics_endpoint(settings, follower)
    except OSError as exc:
        logger.error("cannot serve metrics on %s:%s: %s", settings.host, settings.metrics_port, exc.strerror or exc)
        return EXIT_CANNOT_LISTEN
    cpus = sorted(os.sched_getaffinity(0))
    group = processes > 1
    launch = _Launch(log_level, log_format, group, metrics)
    children = [
        _Child(index, dataclasses.replace(settings, cpu=cpus[index % len(cpus)], reuse_port=True), launch)
        if group
        else _Child(index, settings, launch)
        for index in range(processes)
    ]
    stop = threading.Event()
    # Installed first, so a signal during a long load still ends in a clean stop.
    previous = _install_signal_handlers(stop)
    source = _follow_source(follower, stop)
    try:
        return _serve(children, stop, settings.grace_s)
    finally:
        stop.set()
        if source is not None:
            source.join(timeout=settings.grace_s + 5)
        for child in children:
            if child.server is not None:
                child.server.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        if metrics is not None:
            metrics.close()


def _follow_source(follower: Follower | None, stop: threading.Event) -> threading.Thread | None:
    """Start the thread that polls the object store (``--source``) until ``stop``; None without one."""
    if follower is None:
        return None
    thread = threading.Thread(target=follower.run, args=(stop,), name="source", daemon=True)
    thread.start()
    return thread


def _metrics_endpoint(settings: Settings, follower: Follower | None) -> MetricsEndpoint | None:
    """The supervisor's /metrics, when asked for (raises OSError when its port cannot be listened on)."""
    if settings.metrics_port is None:
        return None
    endpoint = MetricsEndpoint(settings.host, settings.metrics_port)
    if follower is not None:
        endpoint.follow_source(follower)
    logger.info("serving metrics on http://%s:%s/metrics", settings.host, endpoint.port)
    return endpoint


def _serve(children: list[_Child], stop: threading.Event, grace_s: float) -> int:
    for child in children:
        child.spawn()  # all at once: they load in parallel
    for child in children:
        try:
            loaded = child.wait_ready(stop)
        except StartError as exc:
            if exc.exit_code != EXIT_OK:
                logger.error("%s", exc)
            _stop_all(children, 0.0)
            return exc.exit_code
    # Said once every process is ready: SO_REUSEPORT hands connections to a process whose
    # port is open while it still loads, and those wait for its load to finish.
    settings = children[0].settings
    port = children[0].server.port if children[0].server is not None else settings.port
    logger.info("serving catalog version %s (%s commands, loaded in %.0f ms) on %s:%s with %s process(es), %s",
                loaded.version, loaded.commands, loaded.load_ms, settings.host, port, len(children),
                settings.tls)  # fmt: skip
    while not stop.wait(_POLL_S):
        for child in children:
            child.check(stop)
    logger.info("shutting down: in-flight calls have %.1f s to finish", grace_s)
    _stop_all(children, grace_s)
    logger.info("stopped")
    return EXIT_OK


def _stop_all(children: list[_Child], grace_s: float) -> None:
    # In parallel, so N processes take one grace period, not N.
    threads = [threading.Thread(target=child.stop, args=(grace_s,)) for child in children]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
