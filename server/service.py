"""DefinitionService over the live snapshot; the only place errors become gRPC status codes.

Every method is registered without serializers: answers are
bytes prepared when the snapshot was loaded (``store.LoadedSnapshot``), so no
protobuf message is built or serialized per call on the paths that matter
(GetCommand, GetCatalogInfo, SyncCatalog). GetCommand also reads the request
bytes itself when they take the usual shape, so a hit is one dict lookup.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError

from avapdefs.format import wire
from avapdefs.v1.definitions_pb2 import (
    BatchGetCommandsRequest,
    BatchGetCommandsResponse,
    CatalogInfo,
    GetCatalogInfoRequest,
    GetCommandRequest,
    ListCommandsRequest,
    ListCommandsResponse,
    SyncCatalogRequest,
    WatchCatalogRequest,
    WatchCatalogResponse,
)
from server.store import LoadedSnapshot, SnapshotStore

logger = logging.getLogger(__name__)

SERVICE_NAME = "avapdefs.v1.DefinitionService"
MAX_NAME_CHARS = 256
MAX_BATCH_NAMES = 1000
MAX_BATCH_BYTES = 32 << 20
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

# A GetCommandRequest holding only a name of under 128 bytes is 0x0A, one
# length byte, the name: the name's UTF-8 bytes are then the index key as they stand.
_NAME_TAG = wire.tag(GetCommandRequest.NAME_FIELD_NUMBER)[0]
# A stored answer is a Command framed as field 1; as field 2 it is one entry of
# ListCommandsResponse.commands. Both tags are one byte, so only that byte changes.
_LIST_COMMANDS_TAG = wire.tag(ListCommandsResponse.COMMANDS_FIELD_NUMBER)

_Request = TypeVar("_Request")
_Unary = Callable[[Any, grpc.ServicerContext], bytes]
_Stream = Callable[[Any, grpc.ServicerContext], Iterator[bytes]]


class StatusError(Exception):
    """Ends a call with ``code``; raised by handlers, turned into a status by ``unary``/``stream``."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _abort(context: grpc.ServicerContext, exc: Exception, method: str) -> NoReturn:
    # The one place an error becomes a status: a StatusError says which; anything else is a bug.
    if isinstance(exc, StatusError):
        context.abort(exc.code, exc.details)
    logger.error("%s failed", method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, "internal error")


def unary(method: _Unary) -> _Unary:
    """``method`` as a unary handler: a StatusError becomes its status, anything else INTERNAL (logged)."""

    @functools.wraps(method)
    def call(request: Any, context: grpc.ServicerContext) -> bytes:
        try:
            return method(request, context)
        except Exception as exc:
            _abort(context, exc, method.__name__)

    return call


def stream(method: _Stream) -> _Stream:
    """``method`` as a streaming handler, its errors ending the stream as ``unary`` ends a call."""

    @functools.wraps(method)
    def call(request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        try:
            yield from method(request, context)
        except Exception as exc:
            _abort(context, exc, method.__name__)

    return call


def check_name(name: str) -> None:
    """Refuse an empty or overlong command name (INVALID_ARGUMENT)."""
    if not name:
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, "command name is empty")
    if len(name) > MAX_NAME_CHARS:
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, f"command name is over {MAX_NAME_CHARS} characters")


def parse(message_type: Callable[[bytes], _Request], request: bytes) -> _Request:
    """``request`` parsed with ``message_type``, or INVALID_ARGUMENT saying why it does not parse."""
    try:
        return message_type(request)
    except DecodeError as exc:
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, f"request does not parse: {exc}") from exc


def require_snapshot(store: SnapshotStore) -> LoadedSnapshot:
    """The live snapshot, read once; UNAVAILABLE before the first load."""
    snap = store.current
    if snap is None:
        raise StatusError(grpc.StatusCode.UNAVAILABLE, "no catalog loaded yet")
    return snap


def _page_start(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (UnicodeError, binascii.Error, ValueError) as exc:
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, "page_token is not one this server gave") from exc


def _page_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode("utf-8")).decode("ascii")


class DefinitionService:
    """Answers DefinitionService calls from ``store.current``.

    Thread safety: each call reads ``store.current`` once and uses only that
    immutable snapshot, so calls run on any number of threads without locks.
    """

    def __init__(
        self,
        store: SnapshotStore,
        *,
        max_send_bytes: int,
        heartbeat_s: float = 15.0,
        max_watch_streams: int = 64,
        watch_pool: futures.ThreadPoolExecutor | None = None,
    ) -> None:
        self._store = store
        self._max_send_bytes = max_send_bytes
        self._heartbeat_s = heartbeat_s
        self._max_watch_streams = max_watch_streams
        # Each open watch stream holds a thread; the cap bounds how many.
        self._watch_slots = threading.BoundedSemaphore(max_watch_streams)
        self._watch_pool = watch_pool
        self._closing = threading.Event()

    def get_command(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """GetCommand: the stored GetCommandResponse bytes; ``request`` is the raw request."""
        snap = self._store.current
        if snap is not None and len(request) > 2 and request[0] == _NAME_TAG and request[1] == len(request) - 2:
            found = snap.responses.get(request[2:])
            if found is not None:
                return found
        return self._get_command_by_parsing(request)

    def _get_command_by_parsing(self, request: bytes) -> bytes:
        # Every request the fast path did not answer: odd encodings, long names, misses, errors.
        name = parse(GetCommandRequest.FromString, request).name
        check_name(name)
        found = require_snapshot(self._store).responses.get(name.encode("utf-8"))
        if found is None:
            raise StatusError(grpc.StatusCode.NOT_FOUND, f"command {name!r} not found")
        return found

    def batch_get_commands(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        """BatchGetCommands: found commands in request order, missing names reported."""
        request = parse(BatchGetCommandsRequest.FromString, data)
        if len(request.names) > MAX_BATCH_NAMES:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, f"over {MAX_BATCH_NAMES} names in one batch")
        snap = require_snapshot(self._store)
        found: list[bytes] = []
        missing: list[str] = []
        for name in request.names:
            check_name(name)
            response = snap.responses.get(name.encode("utf-8"))
            if response is None:
                missing.append(name)
            else:
                found.append(response)
        if sum(map(len, found)) > min(self._max_send_bytes // 2, MAX_BATCH_BYTES):
            raise StatusError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "the answer is too large: ask for fewer names at once"
            )
        # Serialized messages concatenate into one; the stored answers are already `commands` entries.
        tail = BatchGetCommandsResponse(missing_names=missing, catalog_version=snap.info.version)
        return b"".join(found) + tail.SerializeToString()

    def list_commands(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        """ListCommands: one page of the ascending names starting with ``prefix``."""
        request = parse(ListCommandsRequest.FromString, data)
        snap = require_snapshot(self._store)
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        start = bisect_left(snap.names, max(request.prefix, _page_start(request.page_token)))
        page: list[str] = []
        for name in snap.names[start : start + page_size + 1]:
            if not name.startswith(request.prefix):
                break  # names with a prefix are contiguous in sorted order
            page.append(name)
        next_token = _page_token(page.pop()) if len(page) > page_size else ""
        head = ListCommandsResponse(names=page, next_page_token=next_token, catalog_version=snap.info.version)
        if not request.include_definitions:
            return head.SerializeToString()
        entries = (_LIST_COMMANDS_TAG + snap.responses[name.encode("utf-8")][1:] for name in page)
        return head.SerializeToString() + b"".join(entries)

    def get_catalog_info(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        """GetCatalogInfo: the stored CatalogInfo bytes."""
        parse(GetCatalogInfoRequest.FromString, data)
        info = require_snapshot(self._store).catalog_info
        pinned = self._store.pinned_version
        # Serialized messages concatenate: the appended field sets pinned_version.
        return info + CatalogInfo(pinned_version=pinned).SerializeToString() if pinned else info

    def sync_catalog(self, data: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        """SyncCatalog: a header, then the file in pre-framed chunks (or only an up-to-date header)."""
        request = parse(SyncCatalogRequest.FromString, data)
        snap = require_snapshot(self._store)  # this version to the end of the stream, whatever is swapped in meanwhile
        if request.have_version == snap.info.version and request.have_content_hash == snap.info.content_hash:
            logger.debug("sync: client already holds version %s", snap.info.version)
            yield snap.sync_up_to_date
            return
        delta = snap.deltas.get(request.have_version) if request.accept_delta else None
        if delta is not None and delta.base_content_hash == request.have_content_hash:
            header, chunks, what = delta.header, delta.chunks, f"the delta from version {request.have_version}"
        else:
            header, chunks, what = snap.sync_full_header, snap.sync_chunks, "the whole file"
        yield header
        for chunk in chunks:
            # grpc stops pulling when the client goes away; the check also ends the
            # stream when the server is stopping past its grace period.
            if not context.is_active():
                logger.debug("sync of version %s cancelled by the client", snap.info.version)
                return
            yield chunk
        logger.debug("sync of version %s: sent %s", snap.info.version, what)

    def watch_catalog(self, data: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        """WatchCatalog: the live version when it differs from the client's, then each new one, with heartbeats."""
        request = parse(WatchCatalogRequest.FromString, data)
        if not self._watch_slots.acquire(blocking=False):
            raise StatusError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"over {self._max_watch_streams} watch streams open here; retry later (with backoff)",
            )
        try:
            # A client that goes away wakes its stream at once, so its slot (and its
            # thread) is free now, not at the next heartbeat.
            context.add_callback(self._wake_watchers)
            yield from self._watch(request.have_version, context)
        finally:
            self._watch_slots.release()

    def _wake_watchers(self) -> None:
        with self._store.swapped:
            self._store.swapped.notify_all()

    def _watch(self, seen: int, context: grpc.ServicerContext) -> Iterator[bytes]:
        store = self._store
        while context.is_active() and not self._closing.is_set():
            snap = require_snapshot(store)
            if snap.info.version != seen:
                seen = snap.info.version
                yield wire.encode_entry(snap.catalog_info)  # field 1: WatchCatalogResponse.catalog
                continue
            with store.swapped:
                swapped = store.swapped.wait_for(
                    lambda live=snap: (  # type: ignore[misc]
                        store.current is not live or self._closing.is_set() or not context.is_active()
                    ),
                    timeout=self._heartbeat_s,
                )
            if not swapped:
                yield WatchCatalogResponse(heartbeat_unix_ms=int(time.time() * 1000)).SerializeToString()

    def close(self) -> None:
        """End every watch stream (the server is shutting down)."""
        self._closing.set()
        self._wake_watchers()

    def handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        """The method handlers, by method name, ready for ``add_registered_method_handlers``."""
        # No (de)serializers at all: handlers take the raw request bytes (so a request
        # that does not parse is INVALID_ARGUMENT here, not grpc's INTERNAL) and return bytes.
        as_unary = grpc.unary_unary_rpc_method_handler
        as_stream = grpc.unary_stream_rpc_method_handler
        watch = stream(self.watch_catalog)
        if self._watch_pool is not None:
            # grpcio runs a handler whose function carries `experimental_thread_pool`
            # on that pool instead of the server's: parked watch streams then never
            # take (or grow) the threads that answer GetCommand. test_live checks it.
            watch.__dict__["experimental_thread_pool"] = self._watch_pool
        return {
            "GetCommand": as_unary(unary(self.get_command)),
            "BatchGetCommands": as_unary(unary(self.batch_get_commands)),
            "ListCommands": as_unary(unary(self.list_commands)),
            "GetCatalogInfo": as_unary(unary(self.get_catalog_info)),
            "SyncCatalog": as_stream(stream(self.sync_catalog)),
            "WatchCatalog": as_stream(watch),
        }
