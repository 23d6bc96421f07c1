"""Build, start, serve and stop the gRPC server: services, options, signals.

A plain thread-pool ``grpc.server`` is used, not ``grpc.aio``: with answers
pre-serialized, per-call cost is grpcio's own, and the thread-pool server
answered GetCommand about 1.36x faster per core than grpc.aio when measured
(docs/server.md). Each open stream holds one pool thread while it runs; a
SyncCatalog stream lasts as long as one file transfer, so ``max_workers``
bounds concurrent syncs and leaves the rest of the pool to unary calls.
WatchCatalog streams stay open for hours, so they run on a pool of their own:
1,000 parked ones cost about 50 MB and no CPU or GetCommand throughput, while a
grpc.aio server, which would hold them without threads, answered GetCommand
0.6-0.7x as fast (bench/bench_watch.py, docs/server.md).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent import futures
from types import FrameType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from avapdefs.errors import NoSnapshotError
from server import legacy, logs
from server.auth import ApiKeyInterceptor
from server.config import Settings
from server.legacy.codec import LegacyCodec, LegacyProtoError, bundled_codec, load_codec
from server.legacy.service import LegacyService
from server.reload import Reloader
from server.service import SERVICE_NAME, DefinitionService
from server.store import LoadedSnapshot, SnapshotStore

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NO_SNAPSHOT = 3
EXIT_CANNOT_LISTEN = 4
WATCH_SPARE_THREADS = 2


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """The channel arguments the server runs with, each chosen on purpose."""
    return [
        ("grpc.max_receive_message_length", settings.max_receive_bytes),
        ("grpc.max_send_message_length", settings.max_send_bytes),
        # grpc shares a port by default; only the processes of one --processes group may,
        # so a second, unrelated server on a busy port is refused (exit 4), never handed half the calls.
        ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
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
        logs.limit_client_driven_logs()  # a client must not be able to flood the log
        codec = _legacy_codec(settings)
        self.store = SnapshotStore(
            settings.snapshots_dir, chunk_bytes=settings.chunk_bytes, legacy_codec=codec, pin=settings.pin
        )
        self.reloader = Reloader(self.store, poll=settings.poll) if settings.reload else None
        self.health = health.HealthServicer()
        self.port = 0
        pool = futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="avap-grpc")
        # A watch stream holds a thread for as long as it is open: watch streams run on
        # a pool of their own, so they neither take nor grow the pool unary calls run on
        # (a bigger shared pool answered fewer GetCommand calls: docs/server.md). The
        # spare threads let a call beyond the cap run just long enough to be refused.
        self._watch_pool = futures.ThreadPoolExecutor(
            max_workers=settings.max_watch_streams + WATCH_SPARE_THREADS, thread_name_prefix="avap-watch"
        )
        services = (SERVICE_NAME, legacy.SERVICE_NAME)
        interceptors: list[grpc.ServerInterceptor] = (
            [ApiKeyInterceptor(settings.api_key, services)] if settings.api_key else []
        )
        self._server = grpc.server(pool, options=server_options(settings), interceptors=interceptors)
        self.service = DefinitionService(
            self.store,
            max_send_bytes=settings.max_send_bytes,
            heartbeat_s=settings.heartbeat_s,
            max_watch_streams=settings.max_watch_streams,
            watch_pool=self._watch_pool,
        )
        self._add(SERVICE_NAME, self.service.handlers())
        names = [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME]
        if codec is not None:
            self._add(legacy.SERVICE_NAME, LegacyService(self.store, codec.request.FromString).handlers())
            if settings.legacy_proto is None:  # reflection knows only the bundled numbering
                names.append(legacy.SERVICE_NAME)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(names, self._server)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    def _add(self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        # Registered methods are matched by grpc core without a Python lookup per call.
        self._server.add_registered_method_handlers(service, handlers)

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
        """Load the snapshot the folder calls for, report SERVING, and start following the folder.

        Raises:
            NoSnapshotError: the snapshot folder holds no valid snapshot.
        """
        loaded = self.store.load_newest()
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.reloader is not None:
            self.reloader.start()
        return loaded

    def stop(self, grace_s: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, and wait for in-flight calls.

        Args:
            grace_s: how long in-flight calls may run on before they are
                cancelled; the settings' ``grace_s`` when None.
        """
        grace = self.settings.grace_s if grace_s is None else grace_s
        self.health.enter_graceful_shutdown()
        self.service.close()  # watch streams end now rather than at the end of the grace period
        if self.reloader is not None:
            self.reloader.stop()
        self._server.stop(grace).wait()
        self._watch_pool.shutdown(wait=False)  # its threads end as soon as they are idle


def _legacy_codec(settings: Settings) -> LegacyCodec | None:
    if not settings.legacy:
        return None
    if settings.legacy_proto is not None:
        return load_codec(settings.legacy_proto)
    return bundled_codec()


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
    if not settings.is_loopback and not settings.api_key:
        logger.warning("listening on %s with no API key: anyone who can reach it reads every definition", settings.host)
    try:
        server = DefinitionServer(settings)
    except LegacyProtoError as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    if settings.cpu is not None:
        os.sched_setaffinity(0, {settings.cpu})
    stop = threading.Event()
    # Installed first, so a signal during a long load still ends in a clean stop.
    previous = _install_signal_handlers(stop)
    try:
        return _serve(server, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def _serve(server: DefinitionServer, stop: threading.Event) -> int:
    settings = server.settings
    # Load before listening: with --processes, every process listens on the same
    # port, and one still loading would be handed connections it can only refuse.
    try:
        loaded = server.load()
    except NoSnapshotError as exc:
        logger.error("%s; nothing to serve (export one, or point --snapshots at a folder that has one)", exc)
        return EXIT_NO_SNAPSHOT
    try:
        port = server.start()
    except RuntimeError as exc:
        logger.error("cannot listen on %s: %s", settings.address, exc)
        return EXIT_CANNOT_LISTEN
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
