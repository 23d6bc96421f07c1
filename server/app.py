"""The ASGI application Envoy runs (through pyvoy): DefinitionService, the legacy service, health, reflection.

``avap-server`` does not answer calls itself: it starts an Envoy process
(``server/launch.py``) whose HTTP/2 is Envoy's C++ and whose calls are
answered by this application, running on one event loop inside that process.
Why not grpcio's server: it costs about 150 us of CPU per GetCommand on this
machine against about 50 us here, and each open stream held a thread
(docs/server.md, docs/serving-stack.md).

The application learns its settings over a control socket the launcher
passes down (``AVAP_CONTROL_FD``): one JSON line with the settings, before
anything is loaded. It answers with one line, ``loaded`` or ``failed``, and
later takes ``drain`` (health NOT_SERVING, watch streams end, hot reload
stops). When the launcher goes away the socket closes and the process ends
itself, so no server outlives its ``avap-server``.

Health says NOT_SERVING until a snapshot is loaded, from the moment a drain
begins, and with ``--max-age`` while the live snapshot is stale
(``health.py``); the port is only listened on once the load is done.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from avapdefs.errors import NoSnapshotError
from server import legacy, logs
from server.config import CONTROL_FD_VARIABLE, Settings, settings_from_json
from server.health import Health
from server.legacy.codec import LegacyCodec, LegacyProtoError, bundled_codec, load_codec
from server.legacy.service import LegacyService
from server.metrics import ServingMetrics
from server.reload import Reloader
from server.rpc import (
    OK_TRAILERS,
    START,
    Code,
    Disconnected,
    MessageReader,
    Receive,
    Scope,
    Send,
    StatusError,
    StreamReply,
    frame,
    header,
    is_grpc,
    read_unary,
    send_status,
    timeout_s,
)
from server.service import SERVICE_NAME, DefinitionService, Signal, Stream, Unary, parse
from server.store import LoadedSnapshot, PinnedVersionMissingError, SnapshotStore, snapshot_age_s

logger = logging.getLogger(__name__)

AUTH_METADATA_KEY = b"x-avap-auth"
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_SNAPSHOT = 3

Bidi = Callable[[bytes], Iterable[bytes]]


@dataclass(frozen=True)
class _Route:
    unary: Unary | None = None
    stream: Stream | None = None
    bidi: Bidi | None = None  # called once per request message; its answers are sent in order
    protected: bool = False  # needs the API key, when one is set
    observe: Callable[[int, float], None] | None = None  # records (status code, seconds) when metrics are on

    @property
    def grpc_type(self) -> str:
        return "unary" if self.unary else "server_stream" if self.stream else "bidi_stream"


def _reflection(service_names: list[str]) -> Bidi:
    # grpcio-reflection answers from the descriptor pool; imported on first use, so
    # a server that is never reflected on does not load grpcio at all.
    servicer: Any = None

    def answer(data: bytes) -> Iterable[bytes]:
        nonlocal servicer
        from grpc_reflection.v1alpha import reflection, reflection_pb2

        if servicer is None:
            servicer = reflection.ReflectionServicer(service_names)
        request = parse(reflection_pb2.ServerReflectionRequest.FromString, data)
        return [response.SerializeToString() for response in servicer.ServerReflectionInfo(iter([request]), None)]

    return answer


class DefinitionServer:
    """Everything that answers calls: the store, hot reload, the services, health and reflection.

    Lives on the event loop of the process it serves in; ``__call__`` is the ASGI entry point.
    """

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.loop = loop
        codec = _legacy_codec(settings)
        self.store = SnapshotStore(
            settings.snapshots_dir, chunk_bytes=settings.chunk_bytes, legacy_codec=codec, pin=settings.pin
        )
        self.reloader = Reloader(self.store, poll=settings.poll) if settings.reload else None
        swaps = Signal(loop)
        self._swaps = swaps
        self.metrics = ServingMetrics() if settings.metrics_port is not None else None
        self.store.on_swap = self._swapped
        if self.metrics is not None:
            self.store.on_refused = self.metrics.file_refused
        self.service = DefinitionService(
            self.store,
            swaps,
            max_send_bytes=settings.max_send_bytes,
            heartbeat_s=settings.heartbeat_s,
            max_watch_streams=settings.max_watch_streams,
            max_sync_streams=settings.max_sync_streams,
            metrics=self.metrics,
        )
        self.health = Health(Signal(loop), self.store, settings.max_age_s, max_watch_streams=settings.max_watch_streams)
        self._age_task: asyncio.Task[None] | None = None
        self._key = settings.api_key.encode("utf-8") if settings.api_key else None
        names = [SERVICE_NAME, HEALTH_SERVICE, REFLECTION_SERVICE]
        routes: dict[str, _Route] = {}
        for method, unary in self.service.unary_methods().items():
            routes[f"/{SERVICE_NAME}/{method}"] = _Route(unary=unary, protected=True)
        for method, stream in self.service.stream_methods().items():
            routes[f"/{SERVICE_NAME}/{method}"] = _Route(stream=stream, protected=True)
        if codec is not None:
            for method, unary in LegacyService(self.store, codec).unary_methods().items():
                routes[f"/{legacy.SERVICE_NAME}/{method}"] = _Route(unary=unary, protected=True)
            if settings.legacy_proto is None:  # reflection knows only the bundled numbering
                names.append(legacy.SERVICE_NAME)
        routes[f"/{HEALTH_SERVICE}/Check"] = _Route(unary=self.health.check)
        routes[f"/{HEALTH_SERVICE}/Watch"] = _Route(stream=self.health.watch)
        routes[f"/{REFLECTION_SERVICE}/ServerReflectionInfo"] = _Route(bidi=_reflection(names))
        if self.metrics is not None:
            metrics = self.metrics
            routes = {path: replace(route, observe=metrics.call_observer(path, route.grpc_type))
                      for path, route in routes.items()}  # fmt: skip
        self._routes = routes
        self._max_receive_bytes = settings.max_receive_bytes
        self._max_send_bytes = settings.max_send_bytes
        self._draining = False

    def load(self) -> LoadedSnapshot:
        """Load the snapshot the folder calls for, report SERVING, and start following the folder.

        Raises:
            NoSnapshotError: the snapshot folder holds no valid snapshot.
        """
        loaded = self.store.load_newest()
        self.health.set_up(True)
        if self.settings.max_age_s is not None or self.metrics is not None:
            self._age_task = self.loop.create_task(self.health.follow_age(self._each_second))
        if self.reloader is not None:
            self.reloader.start()
        return loaded

    def _swapped(self) -> None:
        # On the swapping thread, after each swap (a new version, or new deltas to the live one).
        self._swaps.notify()
        current = self.store.current
        if self.metrics is not None and current is not None:
            self.metrics.snapshot_swapped(current)
            self.metrics.age(snapshot_age_s(current.info))

    def _each_second(self) -> None:
        current = self.store.current
        if self.metrics is not None and current is not None:
            self.metrics.age(snapshot_age_s(current.info))
            self.metrics.flush()

    def drain(self) -> None:
        """Report NOT_SERVING, end every watch stream and stop following the folder (shutdown has begun).

        Calls to the definition services that arrive from now on are UNAVAILABLE, which clients
        retry (on another process of the group, or once the server is back); calls in flight finish.
        """
        self._draining = True
        self.health.set_up(False)
        if self._age_task is not None:
            self._age_task.cancel()
        if self.metrics is not None:
            self.metrics.flush()  # and again at the process's end, for the calls of the grace period
        self.service.close()
        if self.reloader is not None:
            threading.Thread(target=self.reloader.stop, name="avap-reload-stop", daemon=True).start()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._routes.get(scope["path"])
        if route is None or not is_grpc(scope):
            await self._not_a_method(scope, send)
            return
        if route.observe is None:
            await self._answer(route, scope, receive, send)
            return
        started = time.perf_counter()
        code = await self._answer(route, scope, receive, send)
        route.observe(code, time.perf_counter() - started)

    async def _answer(self, route: _Route, scope: Scope, receive: Receive, send: Send) -> Code:
        """Answer one call; the status code it ended with."""
        try:
            if route.protected:
                if self._draining:
                    raise StatusError(Code.UNAVAILABLE, "the server is shutting down; retry (with backoff)")
                if self._key is not None:
                    self._authenticate(scope)
            if route.unary is not None:
                await self._unary(route.unary, receive, send)
                return Code.OK
            if route.stream is not None:
                return await self._stream(route.stream, scope, receive, send)
            assert route.bidi is not None
            return await self._bidi(route.bidi, receive, send)
        except StatusError as exc:
            await send_status(send, exc.code, exc.details, started=False)
            return exc.code
        except (Disconnected, OSError):
            # The client went away: nobody is left to answer (OSError: pyvoy's ClientDisconnectedError).
            return Code.CANCELLED

    async def _unary(self, handler: Unary, receive: Receive, send: Send) -> None:
        request = await read_unary(receive, self._max_receive_bytes)
        try:
            answer = handler(request)
        except StatusError:
            raise
        except Exception:
            logger.exception("%s failed", getattr(handler, "__name__", handler))
            raise StatusError(Code.INTERNAL, "internal error") from None
        if len(answer) > self._max_send_bytes:
            raise StatusError(Code.RESOURCE_EXHAUSTED, f"the answer of {len(answer)} bytes is over the send limit")
        await send(START)
        await send({"type": "http.response.body", "body": frame(answer), "more_body": False})
        await send(OK_TRAILERS)

    async def _stream(self, handler: Stream, scope: Scope, receive: Receive, send: Send) -> Code:
        request = await read_unary(receive, self._max_receive_bytes)
        deadline_s = timeout_s(scope)
        # Done once the client goes away (polled: see _disconnect).
        disconnected: asyncio.Future[None] = asyncio.ensure_future(_disconnect(receive))
        messages = handler(request, disconnected)
        reply = StreamReply(send)
        try:
            async with asyncio.timeout(deadline_s):
                async for message in messages:
                    await reply.message(message)
        except StatusError as exc:
            await reply.end(exc.code, exc.details)
            return exc.code
        except TimeoutError:
            await reply.end(Code.DEADLINE_EXCEEDED, "deadline exceeded")
            return Code.DEADLINE_EXCEEDED
        except (Disconnected, OSError):
            # A reset by the client, or by Envoy once the stream moved no bytes for the idle timeout.
            logger.debug("%s ended early: the client went away or stopped reading", handler.__name__)
            return Code.CANCELLED
        except Exception:
            logger.exception("%s failed", getattr(handler, "__name__", handler))
            await reply.end(Code.INTERNAL, "internal error")
            return Code.INTERNAL
        finally:
            # Not cancelled: pyvoy answers the pending receive() with http.disconnect once the
            # stream ends, and a receive() cancelled before that makes it log an InvalidStateError.
            _pending_disconnects.add(disconnected)
            disconnected.add_done_callback(_pending_disconnects.discard)
            await messages.aclose()  # type: ignore[attr-defined]
        await reply.end()
        return Code.OK

    async def _bidi(self, handler: Bidi, receive: Receive, send: Send) -> Code:
        reader = MessageReader(receive, self._max_receive_bytes)
        reply = StreamReply(send)
        try:
            while (request := await reader.next()) is not None:
                for message in handler(request):
                    await reply.message(message)
        except StatusError as exc:
            await reply.end(exc.code, exc.details)
            return exc.code
        await reply.end()
        return Code.OK

    def _authenticate(self, scope: Scope) -> None:
        # Constant-time comparison: how long a refusal takes says nothing about how much of a guess was right.
        supplied = header(scope, AUTH_METADATA_KEY)
        if supplied is None:
            raise StatusError(Code.UNAUTHENTICATED, f"missing {AUTH_METADATA_KEY.decode()} metadata")
        assert self._key is not None
        if not hmac.compare_digest(supplied, self._key):
            raise StatusError(Code.UNAUTHENTICATED, f"wrong {AUTH_METADATA_KEY.decode()} key")

    async def _not_a_method(self, scope: Scope, send: Send) -> None:
        if is_grpc(scope):
            await send_status(send, Code.UNIMPLEMENTED, f"unknown method {scope['path']}", started=False)
            return
        body = b"this is a gRPC server: send gRPC calls (POST, content-type application/grpc)\n"
        await send({"type": "http.response.start", "status": 415, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})


# How often a stream whose request has ended asks pyvoy whether its client is still there: a
# WatchCatalog stream (or health Watch) that its client cancels gives up its slot within this.
DISCONNECT_POLL_S = 0.5

# Disconnect watchers of ended streams, held until pyvoy resolves them (the loop keeps only weak references).
_pending_disconnects: set[asyncio.Future[None]] = set()


async def _disconnect(receive: Receive) -> None:
    # pyvoy's receive() waits for the client only while the request is open. When the whole request
    # came before the app was called (a gRPC call's one small message, usually), it answers at once:
    # an empty body until the stream ends, then http.disconnect. Looping on it would take a core per
    # open stream, so an empty answer is followed by a pause (a stream's end is seen within it).
    try:
        while (message := await receive())["type"] != "http.disconnect":
            if not message.get("body") and not message.get("more_body"):
                await asyncio.sleep(DISCONNECT_POLL_S)
    except OSError:
        pass


def _legacy_codec(settings: Settings) -> LegacyCodec | None:
    if not settings.legacy:
        return None
    if settings.legacy_proto is not None:
        return load_codec(settings.legacy_proto)
    return bundled_codec()


class Application:
    """The ASGI entry point pyvoy loads (``server.app:application``).

    Startup (ASGI lifespan) reads the settings from the control socket, builds
    the server and loads the snapshot; Envoy listens only once that is done.
    A failure is reported on the socket and ends the process before it listens.
    """

    def __init__(self) -> None:
        self.server: DefinitionServer | None = None
        self._control: socket.socket | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self.server
        if server is not None and scope["type"] == "http":
            await server(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        failure = self._start()
        if failure is not None:
            # The supervisor has the reason, on the control socket. Ending here keeps Envoy from
            # printing its own account of a failed start (a traceback and its whole JSON config).
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(EXIT_FAILED)
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        if self.server is not None:
            self.server.drain()
        await send({"type": "lifespan.shutdown.complete"})

    def _start(self) -> str | None:
        control = socket.socket(fileno=int(os.environ[CONTROL_FD_VARIABLE]))
        self._control = control
        lines = control.makefile("r", encoding="utf-8")
        try:
            message = json.loads(lines.readline() or "{}")
            settings = settings_from_json(message["settings"])
            logs.configure(message["log_level"], message["log_format"], process=message["process"],
                           secrets=[settings.api_key])  # fmt: skip
            loop = asyncio.get_running_loop()
            server = DefinitionServer(settings, loop)
            loaded = server.load()
        except LegacyProtoError as exc:
            return self._report_failure(EXIT_USAGE, str(exc))
        except PinnedVersionMissingError as exc:
            text = f"{exc}; pin a version it holds (avap-pin VERSION), or unpin (avap-pin --unpin, no --pin)"
            return self._report_failure(EXIT_NO_SNAPSHOT, text)
        except NoSnapshotError as exc:
            text = f"{exc}; nothing to serve (export one, or point --snapshots at a folder that has one)"
            return self._report_failure(EXIT_NO_SNAPSHOT, text)
        except Exception as exc:
            # Anything else is a fault of this program: one line for the supervisor to show,
            # the traceback at debug level (Envoy's own log would otherwise print it, and its config).
            logger.debug("starting failed", exc_info=True)
            return self._report_failure(EXIT_FAILED, f"starting failed: {type(exc).__name__}: {exc}")
        self.server = server
        info = loaded.info
        self._tell({"event": "loaded", "version": info.version, "commands": info.command_count,
                    "load_ms": loaded.load_ms})  # fmt: skip
        threading.Thread(target=self._follow_control, args=(lines, loop), name="avap-control", daemon=True).start()
        return None

    def _report_failure(self, exit_code: int, text: str) -> str:
        self._tell({"event": "failed", "exit": exit_code, "message": text})
        return text

    def _tell(self, message: dict[str, Any]) -> None:
        assert self._control is not None
        self._control.sendall(json.dumps(message).encode("utf-8") + b"\n")

    def _follow_control(self, lines: Any, loop: asyncio.AbstractEventLoop) -> None:
        for line in lines:
            if json.loads(line).get("command") == "drain":
                done = threading.Event()
                try:
                    loop.call_soon_threadsafe(self._drain, done)
                except RuntimeError:  # the loop is closed: Envoy is already shutting down
                    return
                done.wait()
                self._tell({"event": "draining"})
        # The launcher is gone (it closed the socket, or died): a server nobody can stop must not live on.
        os.kill(os.getpid(), signal.SIGTERM)

    def _drain(self, done: threading.Event) -> None:
        try:
            assert self.server is not None
            self.server.drain()
        finally:
            done.set()  # the launcher waits for the reply; it must come even if draining failed


application = Application()
