"""What workers and language servers use: the calls of a definition server, with deadlines, retries and the API key.

``DefinitionClient`` wraps each read RPC (``get_command``, ``batch_get``,
``list_commands``, ``catalog_info``, ``health``) in one deadline, retrying
with backoff while the server is UNAVAILABLE; ``sync`` brings a local cache
folder up to date (``cache.py`` installs what it receives); ``watch`` opens a
WatchCatalog stream. Given an API key, every call carries it (``auth.py``).

Given a ``ClientTls`` (``avapdefs.tls``), the channel speaks TLS, trusting its
CA (else the system's) and presenting its certificate to a server that wants
one (mutual TLS).

grpc's RpcError is translated here, once, into ``avapdefs.errors.ServerError``
and its subclasses. A server that cannot be reached is named, with grpc's
reason: ``cannot reach 127.0.0.1:50099 (connection refused)`` (``address.py``).
A connection that fails at TLS is a ``TlsError`` at once, saying what to do
(``no secure connection to HOST:PORT: it wants a client certificate ...``):
no retry changes a certificate.

grpc's core also writes each failed TLS handshake to stderr itself, several
lines an attempt, beside the status it returns; the error here says it once.
So, unless the program set ``GRPC_VERBOSITY`` itself, it is set to ``NONE``
before grpc is first imported (the core reads it then, and only then).

A client is thread safe (one grpc channel, shared).
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # before grpc's first import: see the module docstring
import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2

from avapdefs.client.address import (
    DEFAULT_SERVER,
    cannot_reach,
    parse_server,
    speaks_tls,
    tls_failure,
    unreachable_reason,
)
from avapdefs.client.auth import AUTH_METADATA_KEY, KeyInterceptor, check_api_key
from avapdefs.client.cache import Progress, SyncResult, SyncStream, sync_cache
from avapdefs.errors import CommandNotFoundError, ServerError, ServerUnavailableError, SyncError, TlsError
from avapdefs.format.wire import only_field
from avapdefs.tls import ClientTls
from avapdefs.v1 import definitions_pb2
from avapdefs.v1.definitions_pb2 import (
    BatchGetCommandsRequest,
    BatchGetCommandsResponse,
    CatalogInfo,
    Command,
    GetCatalogInfoRequest,
    GetCommandRequest,
    ListCommandsRequest,
    ListCommandsResponse,
    SyncCatalogRequest,
    SyncCatalogResponse,
    SyncHeader,
    WatchCatalogRequest,
    WatchCatalogResponse,
)
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub

logger = logging.getLogger(__name__)

MAX_RECEIVE_BYTES = 64 << 20  # the server's own send limit
BATCH_NAMES = 1000  # the most names the server takes in one BatchGetCommands
CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
    # Ping every 30 s, calls or not (the server permits exactly that), so a
    # dead server or a NAT that forgot the connection is noticed.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect sooner than grpc's default first backoff (1 s) after a server
    # restart, but back off to 10 s so a fleet does not hammer a server that is down.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 10_000),
]
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_SYNC_CATALOG = f"/{definitions_pb2.DESCRIPTOR.services_by_name['DefinitionService'].full_name}/SyncCatalog"
_CHUNK_FIELD = SyncCatalogResponse.DESCRIPTOR.fields_by_name["chunk"].number
_READ_AHEAD = 8  # sync messages read ahead of the one being checked
_T = TypeVar("_T")


TlsWords = Callable[[str], str | None]
"""What a connection failure's details say about TLS (``address.tls_failure`` for one client), or None."""


def _tls_error(server: str, details: str, tls_words: TlsWords) -> TlsError | None:
    """A TlsError naming ``server`` when an UNAVAILABLE's ``details`` say the connection failed at TLS."""
    why = tls_words(details)
    return None if why is None else TlsError("UNAVAILABLE", f"no secure connection to {server}: {why}")


def _translate(
    exc: grpc.RpcError, name: str | None = None, server: str | None = None, tls_words: TlsWords | None = None
) -> ServerError:
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    if code == grpc.StatusCode.NOT_FOUND and name is not None:
        return CommandNotFoundError(name, details)
    if tls_words is not None and server is not None and code == grpc.StatusCode.UNAVAILABLE:
        tls_error = _tls_error(server, details, tls_words)
        if tls_error is not None:
            return tls_error
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        reason = unreachable_reason(details) if server is not None else None
        return ServerUnavailableError(code.name, cannot_reach(server, reason) if server and reason else details)
    return ServerError(code.name, details)


class WatchStream:
    """A WatchCatalog stream: iterate its messages; ``cancel()`` ends it (from any thread).

    Iterating raises ``ServerError`` when the stream breaks (CANCELLED after ``cancel``),
    ``ServerUnavailableError`` naming the server when it cannot be reached.
    """

    def __init__(
        self, call: grpc._CallIterator[WatchCatalogResponse], server: str, tls_words: TlsWords | None = None
    ) -> None:
        self._call = call
        self._server = server
        self._tls_words = tls_words

    def __iter__(self) -> Iterator[WatchCatalogResponse]:
        try:
            yield from self._call
        except grpc.RpcError as exc:
            raise _translate(exc, server=self._server, tls_words=self._tls_words) from exc

    def cancel(self) -> None:
        """End the stream; an iteration in progress raises ServerError CANCELLED."""
        self._call.cancel()


class DefinitionClient:
    """A connection to one definition server.

    Args:
        server: ``HOST:PORT`` of the server (``[IPv6]:PORT``).
        api_key: the key a server started with ``AVAP_API_KEY`` wants in ``x-avap-auth``; None for none.
        tls: speak TLS, trusting its CA and presenting its certificate (``ClientTls.from_files``); None: plaintext.
        timeout_s: the deadline of one call (a sync's reaching the server), retries included.
        retries: how many times a call is retried while the server is UNAVAILABLE.
        backoff_s: the first retry's delay; it doubles each retry, with jitter.
        sleep: how to wait between retries (``time.sleep``).

    Raises:
        ValueError: ``server`` is not ``HOST:PORT``, or ``api_key`` is blank or not printable ASCII.
    """

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        api_key: str | None = None,
        tls: ClientTls | None = None,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.server = parse_server(server)
        key = check_api_key(api_key) if api_key is not None else None
        self._timeout_s = timeout_s
        self._retries = retries
        self._backoff_s = backoff_s
        self._sleep = sleep
        self._tls = tls
        self._channel = _channel(self.server, tls)
        self._stub = DefinitionServiceStub(self._channel)
        # Our calls pass the key as metadata. The stub handed out adds it by an interceptor, which
        # costs about 180 us a call in grpcio's Python (1,980 -> 1,460 GetCommand calls/s, loopback).
        self._metadata = ((AUTH_METADATA_KEY, key),) if key is not None else None
        self._public_stub = (
            self._stub
            if key is None
            else DefinitionServiceStub(grpc.intercept_channel(self._channel, KeyInterceptor(key)))
        )
        self._health_check = self._channel.unary_unary(
            _HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        # Its messages as grpc hands them over: a chunk's data is then a view of the message, not two copies.
        self._sync_catalog: grpc.UnaryStreamMultiCallable[SyncCatalogRequest, bytes] = self._channel.unary_stream(
            _SYNC_CATALOG, request_serializer=SyncCatalogRequest.SerializeToString, response_deserializer=None
        )

    @property
    def stub(self) -> DefinitionServiceStub:
        """The raw stub on this client's channel (it carries the API key), for calls the client does not wrap."""
        return self._public_stub

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> DefinitionClient:
        return self

    def _tls_words(self, details: str) -> str | None:
        tls = self._tls
        words = tls_failure(details, tls=tls is not None, client_cert=tls is not None and tls.cert is not None)
        if words is not None and tls is None and not speaks_tls(self.server):
            return None  # closed for another reason (a connection limit, a restart): retried as unreachable
        return words

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _retrying(self, call: Callable[[float, bool], _T], name: str | None = None) -> _T:
        # `call(seconds_left, wait_for_ready)`. The first attempt fails fast; a
        # retry waits, within the deadline, for the channel to reconnect, so a
        # restarting server is reached as soon as it is back instead of each
        # retry failing at once while grpc waits out its own reconnect backoff.
        # Only a failed connection says why (the waits end in DEADLINE_EXCEEDED),
        # so its reason is kept for the error the caller sees.
        deadline = time.monotonic() + self._timeout_s
        delay = self._backoff_s
        unreachable: str | None = None
        for attempt in range(self._retries + 1):
            try:
                return call(max(deadline - time.monotonic(), 0.0), attempt > 0)
            except grpc.RpcError as exc:
                error = _translate(exc, name)
                tls_error = (
                    _tls_error(self.server, error.details, self._tls_words) if error.code == "UNAVAILABLE" else None
                )
                if tls_error is not None:
                    raise tls_error from exc
                if error.code != "DEADLINE_EXCEEDED":
                    unreachable = unreachable_reason(error.details) if error.code == "UNAVAILABLE" else None
                pause = delay * random.uniform(0.5, 1.0)
                if error.code != "UNAVAILABLE" or attempt == self._retries or time.monotonic() + pause >= deadline:
                    raise self._final(error, unreachable) from exc
            logger.debug("%s is unavailable; retrying in %.2f s", self.server, pause)
            self._sleep(pause)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _unary(self, method: Callable[..., _T], request: Message, name: str | None = None) -> _T:
        """``method(request)`` within the deadline, with the key, retried as ``_retrying`` does."""
        return self._retrying(
            lambda left, wait: method(request, timeout=left, wait_for_ready=wait, metadata=self._metadata), name
        )

    def _final(self, error: ServerError, unreachable: str | None) -> ServerError:
        if unreachable is not None:
            return ServerUnavailableError("UNAVAILABLE", cannot_reach(self.server, unreachable))
        if error.code == "DEADLINE_EXCEEDED":
            return ServerUnavailableError(error.code, f"{self.server} did not answer within {self._timeout_s:g} s")
        return error

    def get_command(self, name: str) -> Command:
        """The definition of the command ``name``.

        Raises:
            CommandNotFoundError: the server's catalog has no such command.
            ServerUnavailableError: the server could not be reached within the deadline.
            ServerError: the server refused the call (e.g. INVALID_ARGUMENT for an empty name).
        """
        request = GetCommandRequest(name=name)
        return self._unary(self._stub.GetCommand, request, name).command

    def batch_get(self, names: Sequence[str]) -> BatchGetCommandsResponse:
        """The commands ``names`` (found ones in request order, and the missing names), in as few calls as fit.

        Names go in groups of up to 1,000 (the server's limit); a group whose answer would pass the
        server's send limit is split in two. The answer's ``catalog_version`` is the last group's.

        Raises:
            ServerError: as for ``get_command`` (INVALID_ARGUMENT for an invalid name).
        """
        merged = BatchGetCommandsResponse()
        for start in range(0, len(names), BATCH_NAMES):
            self._batch_into(merged, list(names[start : start + BATCH_NAMES]))
        return merged

    def _batch_into(self, merged: BatchGetCommandsResponse, names: list[str]) -> None:
        request = BatchGetCommandsRequest(names=names)
        try:
            answer = self._unary(self._stub.BatchGetCommands, request)
        except ServerError as exc:
            if exc.code != "RESOURCE_EXHAUSTED" or len(names) < 2:
                raise
            half = len(names) // 2
            self._batch_into(merged, names[:half])
            self._batch_into(merged, names[half:])
            return
        if merged.catalog_version and answer.catalog_version != merged.catalog_version:
            logger.warning(
                "the catalog went from version %s to %s between calls", merged.catalog_version, answer.catalog_version
            )
        merged.commands.extend(answer.commands)
        merged.missing_names.extend(answer.missing_names)
        merged.catalog_version = answer.catalog_version

    def list_commands(
        self, prefix: str = "", *, page_size: int = 0, include_definitions: bool = False
    ) -> Iterator[ListCommandsResponse]:
        """Every page of the names (and, with ``include_definitions``, the commands) that start with ``prefix``.

        Each page is one call with its own deadline; paging carries on across a version change
        (a page token names the next command).

        Raises:
            ServerError: as for ``get_command`` (INVALID_ARGUMENT for a token the server did not give).
        """
        token = ""
        while True:
            request = ListCommandsRequest(
                prefix=prefix, page_size=page_size, page_token=token, include_definitions=include_definitions
            )
            page = self._list_page(request)
            yield page
            token = page.next_page_token
            if not token:
                return

    def _list_page(self, request: ListCommandsRequest) -> ListCommandsResponse:
        return self._unary(self._stub.ListCommands, request)

    def catalog_info(self) -> CatalogInfo:
        """What the server says about the catalog it serves.

        Raises:
            ServerError: as for ``get_command``.
        """
        request = GetCatalogInfoRequest()
        return self._unary(self._stub.GetCatalogInfo, request)

    def health(self, service: str = "") -> int:
        """The grpc.health.v1 status of ``service`` ("": the whole server), e.g. ``HealthCheckResponse.SERVING``.

        Raises:
            ServerError: as for ``get_command`` (NOT_FOUND for a service the server does not have).
        """
        request = health_pb2.HealthCheckRequest(service=service)
        answer = self._unary(self._health_check, request)
        return int(answer.status)

    def watch(self, have_version: int = 0) -> WatchStream:
        """A WatchCatalog stream: the live version at once when it is not ``have_version``, then each new one.

        The stream has no deadline and is not retried: a caller that wants to keep watching opens another.
        """
        call = self._stub.WatchCatalog(WatchCatalogRequest(have_version=have_version), metadata=self._metadata)
        return WatchStream(call, self.server, self._tls_words)

    def _open_sync(self, request: SyncCatalogRequest, timeout_s: float) -> SyncStream:
        def start(left: float, wait: bool) -> SyncStream:
            if wait:
                # The stream's deadline is the whole transfer's, too long to wait for a
                # reconnect: a small call waits for the server within the retry deadline.
                self._stub.GetCatalogInfo(
                    GetCatalogInfoRequest(), timeout=left, wait_for_ready=True, metadata=self._metadata
                )
            call: grpc._CallIterator[bytes] = self._sync_catalog(request, timeout=timeout_s, metadata=self._metadata)
            header = _sync_header(next(call, None))
            if header is None:
                call.cancel()
                raise SyncError("INTERNAL", "the sync stream did not start with a header")
            chunks = _ReadAhead(call)
            return SyncStream(header, iter(chunks), chunks.cancel)

        return self._retrying(start)

    def sync(
        self,
        dest_dir: Path,
        *,
        progress: Progress | None = None,
        timeout_s: float = 600.0,
        keep: int = 2,
        accept_delta: bool = True,
    ) -> SyncResult:
        """Bring the snapshot cache in ``dest_dir`` up to the server's version.

        Nothing partial is ever left in ``dest_dir``: the file is streamed
        under a hidden temporary name and installed only once it verifies; an
        error or an interruption (including one raised by ``progress``)
        removes it and cancels the stream.

        Args:
            dest_dir: the cache folder (created when missing).
            progress: called after each chunk with bytes received and total.
            timeout_s: the deadline of the whole transfer.
            keep: how many cached versions to keep, the new one included (older ones are removed).
            accept_delta: take a delta from the cached version when the server has one; any
                failure to apply it falls back to a full download.

        Raises:
            ServerUnavailableError: the server could not be reached.
            SyncError: the stream broke, or its data did not verify; the cache is unchanged.
            OSError: ``dest_dir`` cannot be written.
        """
        return sync_cache(
            dest_dir,
            lambda request: self._open_sync(request, timeout_s),
            progress=progress,
            keep=keep,
            accept_delta=accept_delta,
        )


def _channel(server: str, tls: ClientTls | None) -> grpc.Channel:
    """A plaintext channel to ``server``, or with ``tls`` a secure one."""
    if tls is None:
        return grpc.insecure_channel(server, options=CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
    named = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return grpc.secure_channel(server, credentials, options=CHANNEL_OPTIONS + named)


def _sync_header(message: bytes | None) -> SyncHeader | None:
    """The header a sync stream's first message holds, or None when it is none."""
    if message is None:
        return None
    try:
        first = SyncCatalogResponse.FromString(message)
    except DecodeError:
        return None
    return first.header if first.WhichOneof("message") == "header" else None


class _ReadAhead:
    """The data chunks of a sync stream after its header, read by a thread of their own.

    grpc asks the server for the next message only once the one before is taken, so a
    reader that checked each chunk before taking the next would stall the stream while
    it inflates; this thread keeps up to ``_READ_AHEAD`` messages coming meanwhile. Each
    chunk is a view of its message, not a copy. A break becomes a SyncError.
    """

    def __init__(self, call: grpc._CallIterator[bytes]) -> None:
        self._call = call
        self._messages: queue.SimpleQueue[bytes | grpc.RpcError | None] = queue.SimpleQueue()
        self._slots = threading.Semaphore(_READ_AHEAD)  # taken per message read, given back per message used
        self._cancelled = False
        threading.Thread(target=self._read, name="avap-sync-reader", daemon=True).start()

    def _read(self) -> None:
        try:
            while self._slots.acquire() and not self._cancelled:
                message = next(self._call, None)
                self._messages.put(message)
                if message is None:
                    return
        except grpc.RpcError as exc:
            self._messages.put(exc)

    def __iter__(self) -> Iterator[memoryview]:
        received = 0
        while (message := self._messages.get()) is not None:
            if isinstance(message, grpc.RpcError):
                error = _translate(message)
                raise SyncError(
                    error.code, f"the sync stream broke after {received} bytes: {error.details}"
                ) from message
            self._slots.release()
            chunk = only_field(message, _CHUNK_FIELD)
            if chunk is None:
                raise SyncError("INTERNAL", "a sync message after the header is not a chunk")
            received += len(chunk)
            yield chunk

    def cancel(self) -> None:
        """End the stream and the thread (a no-op once the stream has ended)."""
        self._cancelled = True
        self._call.cancel()
        self._slots.release()  # a thread waiting for a slot sees the cancel
