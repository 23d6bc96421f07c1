"""The server's settings: one frozen dataclass (built by ``cli.py`` only), and the option table that fills it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from avapdefs.folder import MAX_VERSION
from avapdefs.options import Option, duration_s, parse_bool, parse_log_level
from server.logs import parse_log_format

# SyncCatalog chunk size, measured on loopback with a 41 MB snapshot (best of
# three rounds, docs/server.md): 256 KiB 1,362 MB/s, 1 MiB 1,719 MB/s,
# 4 MiB 1,327 MB/s. 1 MiB is also far below the message size limits.
DEFAULT_CHUNK_BYTES = 1 << 20
MIN_CHUNK_BYTES = 1 << 10


class SettingError(ValueError):
    """A setting's value cannot be used; ``field`` names it, so the command line can name its flag or variable."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def integer(text: str) -> int:
    """A whole number (``--port 50051``).

    Raises:
        ValueError: ``text`` is not one.
    """
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"not a whole number: {text!r}") from None


def number(text: str) -> float:
    """A number, fractions allowed (``--grace-s 2.5``).

    Raises:
        ValueError: ``text`` is not one.
    """
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None


@dataclass(frozen=True)
class Settings:
    """Everything the server is told at start-up.

    Attributes:
        snapshots_dir: the folder whose newest valid snapshot is served.
        host: the address to listen on.
        port: the TCP port; 0 picks a free one.
        grace_s: how long in-flight calls may run on after SIGTERM/SIGINT.
        chunk_bytes: SyncCatalog data bytes per message.
        max_receive_bytes: the largest request message accepted.
        max_send_bytes: the largest response message sent.
        legacy: also serve the legacy ``avap.DefinitionEngine`` service.
        legacy_proto: a deployment's own legacy .proto: the methods it declares are served, its fields filled
            by name and type.
        api_key: when set, calls to the definition services must carry it in ``x-avap-auth``.
        cpu: pin the process to this CPU; None leaves it to the kernel.
        pin: serve this catalog version (a pin file in the folder wins over it).
        poll: poll the folder for new snapshots instead of waiting for file events.
        reload: follow the folder (hot reload); off, the first snapshot loaded serves until exit.
        heartbeat_s: seconds between WatchCatalog heartbeats on a quiet stream.
        max_watch_streams: WatchCatalog streams open at once.
        max_sync_streams: SyncCatalog transfers running at once; beyond it a sync gets RESOURCE_EXHAUSTED.
        stream_idle_timeout_s: a stream that moves no bytes either way for this long is reset (a
            client that stopped reading); above ``heartbeat_s``, so a quiet watch is never cut.
        reuse_port: share the port with the other processes of one ``--processes`` group (SO_REUSEPORT);
            off, a port another server listens on is refused.
        max_age_s: health is NOT_SERVING while the live, unpinned snapshot is older than this; None: never.
        metrics_port: the supervisor serves Prometheus metrics on this port (0: any free one) and the
            serving processes count them; None: no metrics, and no cost per call.
        tls_cert: the server's certificate (PEM, its chain after it): Envoy serves TLS with it; None: plaintext.
        tls_key: the private key of ``tls_cert`` (PEM, unencrypted).
        tls_client_ca: with it, mutual TLS: every client must present a certificate this CA (PEM) signed.
    """

    snapshots_dir: Path = Path("snapshots")
    host: str = "127.0.0.1"
    port: int = 50051
    grace_s: float = 10.0
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    max_receive_bytes: int = 4 << 20
    # protobuf's own limit: the legacy unary SyncCatalog sends the whole catalog as one message
    max_send_bytes: int = (2 << 30) - 1
    legacy: bool = True
    legacy_proto: Path | None = None
    api_key: str | None = field(default=None, repr=False)  # never in logs
    cpu: int | None = None
    pin: int | None = None
    poll: bool = False
    reload: bool = True
    heartbeat_s: float = 15.0
    # A parked watch stream is a coroutine and a few KB of buffers.
    max_watch_streams: int = 10_000
    # A sync that stopped reading holds about a stream window (1 MiB) and a chunk until the idle timeout.
    max_sync_streams: int = 64
    stream_idle_timeout_s: float = 60.0
    reuse_port: bool = False
    max_age_s: float | None = None
    metrics_port: int | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingError("port", f"port {self.port} is not between 0 and 65535")
        if self.grace_s < 0:
            raise SettingError("grace_s", f"grace_s {self.grace_s} is negative")
        if self.max_watch_streams < 0:
            raise SettingError("max_watch_streams", f"max_watch_streams {self.max_watch_streams} is negative")
        if self.heartbeat_s <= 0:
            raise SettingError("heartbeat_s", f"heartbeat_s {self.heartbeat_s} is not above 0")
        if self.max_sync_streams < 1:
            raise SettingError("max_sync_streams", f"max_sync_streams {self.max_sync_streams} is below 1")
        if self.stream_idle_timeout_s <= self.heartbeat_s:
            raise SettingError(
                "stream_idle_timeout_s",
                f"stream_idle_timeout_s {self.stream_idle_timeout_s} must be above heartbeat_s {self.heartbeat_s}",
            )
        if self.max_age_s is not None and not self.max_age_s > 0:
            raise SettingError("max_age_s", f"max_age_s {self.max_age_s} is not above 0")
        if self.pin is not None and not 0 < self.pin <= MAX_VERSION:
            raise SettingError("pin", f"pin {self.pin} is not a catalog version (1..{MAX_VERSION})")
        self._check_others()

    def _check_others(self) -> None:
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise SettingError("metrics_port", f"metrics port {self.metrics_port} is not between 0 and 65535")
        if self.metrics_port == self.port != 0:
            raise SettingError("metrics_port", f"metrics port {self.metrics_port} is the gRPC port")
        if self.api_key is not None and not self.api_key:
            raise SettingError("api_key", "the API key is empty")
        if not MIN_CHUNK_BYTES <= self.chunk_bytes <= self.max_send_bytes // 2:
            limit = self.max_send_bytes // 2
            raise SettingError("chunk_bytes", f"chunk_bytes {self.chunk_bytes} is outside {MIN_CHUNK_BYTES}..{limit}")
        self._check_tls()

    def _check_tls(self) -> None:
        """TLS needs a certificate and its key together; mutual TLS needs TLS (the files are ``avapdefs.tls``'s)."""
        if self.tls_key is not None and self.tls_cert is None:
            raise SettingError("tls_key", "a TLS key without a certificate; give --tls-cert too")
        if self.tls_cert is not None and self.tls_key is None:
            raise SettingError("tls_cert", "a TLS certificate without its key; give --tls-key too")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise SettingError("tls_client_ca", "mutual TLS needs TLS: give --tls-cert and --tls-key too")

    @property
    def tls(self) -> str:
        """How the port is served, in words: ``plaintext``, ``TLS`` or ``mutual TLS``."""
        if self.tls_cert is None:
            return "plaintext"
        return "TLS" if self.tls_client_ca is None else "mutual TLS"

    @property
    def address(self) -> str:
        """``host:port`` as grpc wants it (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """Whether the server listens on a loopback address only."""
        return self.host in ("localhost", "::1") or self.host.startswith("127.")


DEFAULTS = {setting.name: setting.default for setting in fields(Settings)}
SNAPSHOTS = Option(
    "--snapshots",
    "AVAP_SNAPSHOTS",
    "snapshots_dir",
    Path,
    "snapshot folder to serve (default: ./snapshots when it exists, else the built-in sample catalog)",
)
LOG_LEVEL = Option(
    "--log-level",
    "AVAP_LOG_LEVEL",
    "log_level",
    parse_log_level,
    "debug, info, warning or error, any case",
    default="info",
)
LOG_FORMAT = Option(
    "--log-format",
    "AVAP_LOG_FORMAT",
    "log_format",
    parse_log_format,
    "plain (text) or json (one object per line)",
    default="plain",
)
# Every flag of avap-server, in --help order. Fields that are not Settings' belong to the program.
OPTIONS: tuple[Option, ...] = (
    SNAPSHOTS,
    Option("--host", "AVAP_HOST", "host", str, "address to listen on"),
    Option("--port", "AVAP_PORT", "port", integer, "TCP port, 0 for any free one"),
    Option("--grace-s", "AVAP_GRACE_S", "grace_s", number, "seconds in-flight calls may run on after SIGTERM/SIGINT"),
    Option(
        "--max-watch-streams", "AVAP_MAX_WATCH_STREAMS", "max_watch_streams", integer, "WatchCatalog streams at once"
    ),
    Option("--max-sync-streams", "AVAP_MAX_SYNC_STREAMS", "max_sync_streams", integer, "SyncCatalog transfers at once"),
    Option(
        "--stream-idle-timeout-s",
        "AVAP_STREAM_IDLE_TIMEOUT_S",
        "stream_idle_timeout_s",
        number,
        "reset a stream that moves no bytes for this long (a client that stopped reading)",
    ),
    Option("--heartbeat-s", "AVAP_HEARTBEAT_S", "heartbeat_s", number, "seconds between heartbeats on a quiet watch"),
    Option(
        "--legacy-proto",
        "AVAP_LEGACY_PROTO",
        "legacy_proto",
        Path,
        "a deployment's own avap.DefinitionEngine .proto: the methods it declares are served, its fields "
        "filled by name and type "
        "(default: the bundled proto/avap/definition_engine.proto)",
    ),
    Option(
        "--no-legacy",
        "AVAP_LEGACY",
        "legacy",
        parse_bool,
        "do not serve the legacy avap.DefinitionEngine service (the variable: 0 for off)",
        switch=True,
        const=False,
    ),
    Option(
        "--api-key-file",
        "AVAP_API_KEY_FILE",
        "api_key_file",
        Path,
        "file holding the API key that calls must carry in x-avap-auth; the key itself may be given "
        "as AVAP_API_KEY (never as a flag, so it does not show in ps)",
    ),
    Option(
        "--pin",
        "AVAP_PIN",
        "pin",
        integer,
        "serve this catalog version, not the newest; a PIN file (avap-pin) wins; a version not in the "
        "folder stops the start (exit 3)",
    ),
    Option(
        "--max-age",
        "AVAP_MAX_AGE",
        "max_age_s",
        duration_s,
        "health turns NOT_SERVING while the live snapshot is older than this (90s, 15m, 2h, 1d) and not pinned",
    ),
    Option(
        "--source",
        "AVAP_SOURCE",
        "source",
        str,
        "follow an object store the exporter publishes to (s3://bucket/prefix, gs://, az://, file:///path; "
        "credentials and endpoint from the --store-* options, else AWS_* and the like): the announced version "
        "is pulled into --snapshots, which then serves it; needs the cloud extra",
    ),
    Option(
        "--source-poll",
        "AVAP_SOURCE_POLL",
        "source_poll_s",
        duration_s,
        "time between polls of the store's announcement, jittered by 20%% (default 5s)",
    ),
    Option(
        "--poll",
        "AVAP_POLL",
        "poll",
        parse_bool,
        "poll the folder for new snapshots instead of waiting for file events (Docker bind mounts)",
        switch=True,
    ),
    Option(
        "--processes",
        "AVAP_PROCESSES",
        "processes",
        integer,
        "server processes sharing the port, each pinned to its own CPU (default: one per CPU; 1 with --port 0)",
    ),
    Option("--cpu", "AVAP_CPU", "cpu", integer, "pin this process to one CPU (--processes sets it for each process)"),
    Option(
        "--reuse-port",
        "AVAP_REUSE_PORT",
        "reuse_port",
        parse_bool,
        "share the port with the other processes of a group (--processes sets it for each of them)",
        switch=True,
    ),
    Option(
        "--metrics-port",
        "AVAP_METRICS_PORT",
        "metrics_port",
        integer,
        "serve Prometheus metrics on http://HOST:PORT/metrics, all processes together (default: off; 0 for any "
        "free port)",
    ),
    Option(
        "--tls-cert",
        "AVAP_TLS_CERT",
        "tls_cert",
        Path,
        "serve TLS with this certificate (PEM, intermediates after it); needs --tls-key (default: plaintext)",
    ),
    Option("--tls-key", "AVAP_TLS_KEY", "tls_key", Path, "the certificate's private key (PEM, unencrypted, chmod 600)"),
    Option(
        "--tls-client-ca",
        "AVAP_TLS_CLIENT_CA",
        "tls_client_ca",
        Path,
        "mutual TLS: refuse every client without a certificate this CA (PEM) signed; needs --tls-cert",
    ),
    LOG_LEVEL,
    LOG_FORMAT,
)


# The variable naming the control socket's descriptor a serving process inherits (launch.py, app.py).
CONTROL_FD_VARIABLE = "AVAP_CONTROL_FD"


def settings_to_json(settings: Settings) -> dict[str, Any]:
    """``settings`` as JSON values (paths as strings), for the control socket."""
    values = {item.name: getattr(settings, item.name) for item in fields(Settings)}
    return {name: str(value) if isinstance(value, Path) else value for name, value in values.items()}


def settings_from_json(values: dict[str, Any]) -> Settings:
    """The inverse of ``settings_to_json``."""
    paths = {"snapshots_dir", "legacy_proto", "tls_cert", "tls_key", "tls_client_ca"}
    converted: dict[str, Any] = {
        name: Path(value) if name in paths and value is not None else value for name, value in values.items()
    }
    return Settings(**converted)
