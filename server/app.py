"""Build, start, serve and stop the gRPC server: services, options, signals.

A plain thread-pool ``grpc.server`` is used, not ``grpc.aio``: with answers
pre-serialized, per-call cost is grpcio's own, and the thread-pool server
answered GetCommand about 1.36x faster per core than grpc.aio when measured
(docs/server.md). Each open stream holds one pool thread while it runs; a
SyncCatalog stream lasts as long as one file transfer, so ``max_workers``
bounds concurrent syncs and leaves the rest of the pool to unary calls.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from avapdefs.errors import NoSnapshotError
from server.config import Settings
from server.service import SERVICE_NAME, DefinitionService
from server.store import LoadedSnapshot, SnapshotStore

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_NO_SNAPSHOT = 3
EXIT_CANNOT_LISTEN = 4


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """The channel arguments the server runs with, each chosen on purpose."""
    return [
        ("grpc.max_receive_message_length", settings.max_receive_bytes),
        ("grpc.max_send_message_length", settings.max_send_bytes),
        # Clients (workers holding WatchCatalog streams, idle editor channels)
        # may ping every 30 s, calls or not, without being sent GOAWAY for it;
        # the defaults (5 min, and no pings without calls) would cut them off.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
        ("grpc.http2.max_ping_strikes", 2),
        # The server pings quiet connections itself, to drop peers that vanished.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
    ]


class DefinitionServer:
    """The gRPC server: DefinitionService, health and reflection over one store.

    Health says NOT_SERVING from start until a snapshot is loaded, SERVING
    while it serves, and NOT_SERVING again once shutdown begins.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = SnapshotStore(settings.snapshots_dir, chunk_bytes=settings.chunk_bytes)
        self.health = health.HealthServicer()
        self.port = 0
        pool = futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="avap-grpc")
        self._server = grpc.server(pool, options=server_options(settings))
        handlers = DefinitionService(self.store, max_send_bytes=settings.max_send_bytes).handlers()
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        # Registered methods are matched by grpc core without a Python lookup per call.
        self._server.add_registered_method_handlers(SERVICE_NAME, handlers)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self._server)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    def _set_health(self, status: int) -> None:
        self.health.set("", status)
        self.health.set(SERVICE_NAME, status)

    def start(self) -> int:
        """Listen on the configured address and start answering calls.

        Returns:
            The port listened on (the one picked, when the settings say 0).

        Raises:
            RuntimeError: the address cannot be listened on.
        """
        self.port = self._server.add_insecure_port(self.settings.address)
        self._server.start()
        return self.port

    def load(self) -> LoadedSnapshot:
        """Load the newest valid snapshot and report SERVING.

        Raises:
            NoSnapshotError: the snapshot folder holds no valid snapshot.
        """
        loaded = self.store.load_newest()
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        return loaded

    def stop(self, grace_s: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, and wait for in-flight calls.

        Args:
            grace_s: how long in-flight calls may run on before they are
                cancelled; the settings' ``grace_s`` when None.
        """
        grace = self.settings.grace_s if grace_s is None else grace_s
        self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait()


def _install_signal_handlers(stop: threading.Event) -> dict[int, object]:
    def request_stop(signum: int, frame: FrameType | None) -> None:
        # Only set the event: logging here could deadlock on a lock the main thread holds.
        stop.set()

    return {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}


def run(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT, then shut down gracefully (main thread only).

    Returns:
        An exit code: ``EXIT_OK`` after a graceful shutdown, ``EXIT_NO_SNAPSHOT``
        when no valid snapshot can be loaded, ``EXIT_CANNOT_LISTEN`` when the
        address cannot be listened on.
    """
    stop = threading.Event()
    # Installed first, so a signal during a long load still ends in a clean stop.
    previous = _install_signal_handlers(stop)
    try:
        return _serve(DefinitionServer(settings), stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def _serve(server: DefinitionServer, stop: threading.Event) -> int:
    settings = server.settings
    try:
        port = server.start()
    except RuntimeError as exc:
        logger.error("cannot listen on %s: %s", settings.address, exc)
        return EXIT_CANNOT_LISTEN
    try:
        loaded = server.load()
    except NoSnapshotError as exc:
        logger.error("%s; nothing to serve (export one, or point --snapshots at a folder that has one)", exc)
        server.stop(0)
        return EXIT_NO_SNAPSHOT
    logger.info(
        "serving catalog version %s (%s commands, loaded in %.0f ms) on %s:%s",
        loaded.info.version,
        loaded.info.command_count,
        loaded.load_ms,
        settings.host,
        port,
    )
    stop.wait()
    logger.info("shutting down: in-flight calls have %.1f s to finish", settings.grace_s)
    server.stop()
    logger.info("stopped")
    return EXIT_OK
