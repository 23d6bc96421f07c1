"""DefinitionService over the live snapshot; the only place errors are chosen as gRPC status codes.

Handlers take the request message's bytes and return (or, for streams,
yield) the answer's bytes: answers are
bytes prepared when the snapshot was loaded (``store.LoadedSnapshot``), so no
protobuf message is built or serialized per call on the paths that matter
(GetCommand, GetCatalogInfo, SyncCatalog). GetCommand also reads the request
bytes itself when they take the usual shape, so a hit is one dict lookup.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from google.protobuf.message import DecodeError

from avapdefs.folder import SOURCE_STATE_NAME, read_source_state
from avapdefs.format import wire
from avapdefs.v1.definitions_pb2 import (
    BatchGetCommandsRequest,
    BatchGetCommandsResponse,
    CatalogInfo,
    GetCatalogInfoRequest,
    GetCommandRequest,
    ListCommandsRequest,
    ListCommandsResponse,
    StoreStatus,
    SyncCatalogRequest,
    WatchCatalogRequest,
    WatchCatalogResponse,
)
from server.rpc import Code, StatusError
from server.store import LoadedSnapshot, SnapshotStore, snapshot_age_s

if TYPE_CHECKING:
    from server.metrics import ServingMetrics

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
Unary = Callable[[bytes], bytes]
Stream = Callable[[bytes, "asyncio.Future[None]"], AsyncIterator[bytes]]


def check_name(name: str) -> None:
    """Refuse an empty or overlong command name (INVALID_ARGUMENT)."""
    if not name:
        raise StatusError(Code.INVALID_ARGUMENT, "command name is empty")
    if len(name) > MAX_NAME_CHARS:
        raise StatusError(Code.INVALID_ARGUMENT, f"command name is over {MAX_NAME_CHARS} characters")


def parse(message_type: Callable[[bytes], _Request], request: bytes) -> _Request:
    """``request`` parsed with ``message_type``, or INVALID_ARGUMENT saying why it does not parse."""
    try:
        return message_type(request)
    except DecodeError as exc:
        raise StatusError(Code.INVALID_ARGUMENT, f"request does not parse: {exc}") from exc


def require_snapshot(store: SnapshotStore) -> LoadedSnapshot:
    """The live snapshot, read once; UNAVAILABLE before the first load."""
    snap = store.current
    if snap is None:
        raise StatusError(Code.UNAVAILABLE, "no catalog loaded yet")
    return snap


def _page_start(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (UnicodeError, binascii.Error, ValueError) as exc:
        raise StatusError(Code.INVALID_ARGUMENT, "page_token is not one this server gave") from exc


def _page_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode("utf-8")).decode("ascii")


class Signal:
    """Wakes coroutines on the server's event loop when something changes: a version swapped in, a health status.

    ``notify`` may be called from any thread (the reload thread swaps); waiters
    run on ``loop``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._next: asyncio.Future[None] = loop.create_future()

    def notify(self) -> None:
        """Wake every waiter (thread-safe)."""
        self._loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        fired, self._next = self._next, self._loop.create_future()
        fired.set_result(None)

    async def wait(self, timeout_s: float, disconnected: asyncio.Future[None]) -> bool:
        """Wait for the next change, up to ``timeout_s``; True when one came (or the client went away)."""
        done, _ = await asyncio.wait((self._next, disconnected), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        return bool(done)


class StreamSlots:
    """A cap on the streams of one kind open at once in this process; past it, RESOURCE_EXHAUSTED.

    Args:
        limit: how many may be open at once.
        what: the refusal's words after the number, e.g. "watch streams open here".
        on_change: told +1 and -1 as slots are taken and given back (a metrics gauge).
    """

    def __init__(self, limit: int, what: str, on_change: Callable[[int], None] | None = None) -> None:
        self.limit = limit
        self.taken = 0
        self._what = what
        self._on_change = on_change

    @contextlib.contextmanager
    def take(self) -> Iterator[None]:
        """Hold one slot for the block (a stream's life), or raise StatusError(RESOURCE_EXHAUSTED)."""
        if self.taken >= self.limit:
            raise StatusError(Code.RESOURCE_EXHAUSTED, f"over {self.limit} {self._what}; retry later (with backoff)")
        self.taken += 1
        if self._on_change is not None:
            self._on_change(+1)
        try:
            yield
        finally:
            self.taken -= 1
            if self._on_change is not None:
                self._on_change(-1)


class StoreStatusFile:
    """The folder's ``.source-state`` (written by the supervisor's follower of an object store, ``--source``),
    as the serialized ``CatalogInfo.store`` field GetCatalogInfo appends; re-read only when the file changes."""

    def __init__(self, folder: Path) -> None:
        self._path = folder / SOURCE_STATE_NAME
        self._seen: tuple[int, int] | None = None
        self._field = b""

    def current(self) -> bytes:
        """``CatalogInfo(store=...)`` serialized, or nothing when the server follows no store."""
        try:
            stat = os.stat(self._path)
        except OSError:
            self._seen, self._field = None, b""
            return b""
        seen = (stat.st_mtime_ns, stat.st_size)
        if seen != self._seen:
            self._seen, self._field = seen, _store_field(read_source_state(self._path.parent))
        return self._field


def _store_field(state: dict[str, object] | None) -> bytes:
    url = state.get("url") if state is not None else None
    if state is None or not isinstance(url, str) or not url:
        return b""  # not a record the follower wrote
    try:
        status = StoreStatus(
            url=url,
            reachable=state.get("reachable") is True,
            last_success_unix_ms=_whole(state.get("last_success_unix_ms")),
            last_error=str(state.get("last_error", "")),
            announced_version=_whole(state.get("announced_version")),
        )
    except ValueError:
        return b""  # out of range: not a record this server wrote; report no store rather than fail the call
    return CatalogInfo(store=status).SerializeToString()


def _whole(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class DefinitionService:
    """Answers DefinitionService calls from ``store.current``.

    Each call reads ``store.current`` once and uses only that immutable
    snapshot, so a swap on the reload thread never mixes two versions in one
    answer. Unary handlers run on the event loop without awaiting anything.
    Streams are coroutines: an open watch or a stalled sync costs its
    buffers, never a thread.
    """

    def __init__(
        self,
        store: SnapshotStore,
        swaps: Signal,
        *,
        max_send_bytes: int,
        heartbeat_s: float = 15.0,
        max_watch_streams: int = 64,
        max_sync_streams: int = 64,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._swaps = swaps
        self._max_send_bytes = max_send_bytes
        self._heartbeat_s = heartbeat_s
        self._watch_slots = StreamSlots(
            max_watch_streams, "watch streams open here", metrics.watch_streams if metrics is not None else None
        )
        self._sync_slots = StreamSlots(max_sync_streams, "catalog syncs running here")
        self._closing = False
        self._store_status = StoreStatusFile(store.folder)

    def get_command(self, request: bytes) -> bytes:
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
            raise StatusError(Code.NOT_FOUND, f"command {name!r} not found")
        return found

    def batch_get_commands(self, data: bytes) -> bytes:
        """BatchGetCommands: found commands in request order, missing names reported."""
        request = parse(BatchGetCommandsRequest.FromString, data)
        if len(request.names) > MAX_BATCH_NAMES:
            raise StatusError(Code.INVALID_ARGUMENT, f"over {MAX_BATCH_NAMES} names in one batch")
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
            raise StatusError(Code.RESOURCE_EXHAUSTED, "the answer is too large: ask for fewer names at once")
        # Serialized messages concatenate into one; the stored answers are already `commands` entries.
        tail = BatchGetCommandsResponse(missing_names=missing, catalog_version=snap.info.version)
        return b"".join(found) + tail.SerializeToString()

    def list_commands(self, data: bytes) -> bytes:
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

    def get_catalog_info(self, data: bytes) -> bytes:
        """GetCatalogInfo: the stored CatalogInfo bytes, with the pin in force and the snapshot's age now."""
        parse(GetCatalogInfoRequest.FromString, data)
        return self._catalog_info_now(require_snapshot(self._store))

    def _catalog_info_now(self, snap: LoadedSnapshot) -> bytes:
        # Serialized messages concatenate: the appended fields set pinned_version, snapshot_age_s and store.
        now = CatalogInfo(pinned_version=self._store.pinned_version, snapshot_age_s=snapshot_age_s(snap.info))
        return snap.catalog_info + now.SerializeToString() + self._store_status.current()

    async def sync_catalog(self, data: bytes, disconnected: asyncio.Future[None]) -> AsyncIterator[bytes]:
        """SyncCatalog: a header, then the file in pre-framed chunks (or only an up-to-date header).

        Each chunk waits until the client has room for it (HTTP/2 flow
        control reaches ``send``), so a slow reader holds at most about a
        stream window and a chunk here; one that stops reading is reset by
        Envoy after the stream idle timeout.
        """
        request = parse(SyncCatalogRequest.FromString, data)
        snap = require_snapshot(self._store)  # this version to the end of the stream, whatever is swapped in meanwhile
        if request.have_version == snap.info.version and request.have_content_hash == snap.info.content_hash:
            logger.debug("sync: client already holds version %s", snap.info.version)
            if self._metrics is not None:
                self._metrics.sync("up_to_date")
            yield snap.sync_up_to_date
            return
        with self._sync_slots.take():
            delta = snap.deltas.get(request.have_version) if request.accept_delta else None
            if delta is not None and delta.base_content_hash == request.have_content_hash:
                header, chunks, kind = delta.header, delta.chunks, "delta"
                what = f"the delta from version {request.have_version}"
            else:
                header, chunks, kind, what = snap.sync_full_header, snap.sync_chunks, "full", "the whole file"
            metrics = self._metrics
            if metrics is not None:
                metrics.sync(kind)
            yield header
            for chunk in chunks:
                yield chunk
                if metrics is not None:  # as it goes, so a transfer cut short counts what it sent
                    metrics.sync_bytes(kind, len(chunk))
            if metrics is not None:
                metrics.sync_bytes(kind, len(header))
            logger.debug("sync of version %s: sent %s", snap.info.version, what)

    async def watch_catalog(self, data: bytes, disconnected: asyncio.Future[None]) -> AsyncIterator[bytes]:
        """WatchCatalog: the live version when it differs from the client's, then each new one, with heartbeats."""
        request = parse(WatchCatalogRequest.FromString, data)
        with self._watch_slots.take():
            seen = request.have_version
            while not self._closing and not disconnected.done():
                snap = require_snapshot(self._store)
                if snap.info.version != seen:
                    seen = snap.info.version
                    yield wire.encode_entry(self._catalog_info_now(snap))  # field 1: WatchCatalogResponse.catalog
                    continue
                # A client that goes away wakes its stream (within app.DISCONNECT_POLL_S), freeing its slot.
                if not await self._swaps.wait(self._heartbeat_s, disconnected):
                    yield WatchCatalogResponse(heartbeat_unix_ms=int(time.time() * 1000)).SerializeToString()

    def close(self) -> None:
        """End every watch stream (the server is shutting down)."""
        self._closing = True
        self._swaps.notify()

    def unary_methods(self) -> dict[str, Unary]:
        """The unary handlers, by method name."""
        return {
            "GetCommand": self.get_command,
            "BatchGetCommands": self.batch_get_commands,
            "ListCommands": self.list_commands,
            "GetCatalogInfo": self.get_catalog_info,
        }

    def stream_methods(self) -> dict[str, Stream]:
        """The server-streaming handlers, by method name."""
        return {"SyncCatalog": self.sync_catalog, "WatchCatalog": self.watch_catalog}
