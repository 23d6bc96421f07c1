"""What workers and language servers use: get_command, sync to a local cache, load the cache offline.

``DefinitionClient.get_command`` asks a definition server for one command,
within a deadline, retrying with backoff while the server is UNAVAILABLE.
``DefinitionClient.sync`` brings a local snapshot folder up to date: it sends
the version it holds, streams a newer file to a hidden temporary file,
verifies size, hash and the whole snapshot, then installs it under the
server's own file name, so ``avap-server --snapshots DEST`` can serve the copy.
``load_cached`` reads the newest valid snapshot of that folder with no server
at all, for a worker that boots while the server is down.

grpc's RpcError is translated here, once, into ``avapdefs.errors.ServerError``
and its subclasses. A client is thread safe (one grpc channel, shared).
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import grpc

from avapdefs.errors import (
    AvapDefsError,
    CommandNotFoundError,
    NoSnapshotError,
    ServerError,
    ServerUnavailableError,
    SnapshotError,
    SyncError,
)
from avapdefs.folder import VerifiedFile, atomic_file, prune, read_newest, remove_temp_files, snapshot_name
from avapdefs.format.delta import apply_delta, decode_delta
from avapdefs.format.snapshot import Snapshot, SnapshotInfo, verify
from avapdefs.v1.definitions_pb2 import (
    CatalogInfo,
    Command,
    GetCatalogInfoRequest,
    GetCommandRequest,
    SyncCatalogRequest,
    SyncCatalogResponse,
    SyncHeader,
)
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub

logger = logging.getLogger(__name__)

DEFAULT_SERVER = "127.0.0.1:50051"
MAX_RECEIVE_BYTES = 64 << 20  # the server's own send limit
CHANNEL_OPTIONS: list[tuple[str, int]] = [
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
_T = TypeVar("_T")

Progress = Callable[[int, int], None]
"""Called as ``progress(bytes_received, bytes_total)`` after each chunk of a sync."""


@dataclass(frozen=True)
class SyncResult:
    """What a sync did.

    Attributes:
        path: the cached snapshot file now current.
        info: its header.
        up_to_date: True when the cache already held the server's version and nothing was sent.
        bytes_received: data bytes streamed (0 when up to date).
        seconds: wall time of the sync.
        delta: True when a delta from the cached version was applied instead of a full download.
    """

    path: Path
    info: SnapshotInfo
    up_to_date: bool
    bytes_received: int
    seconds: float
    delta: bool = False


def _translate(exc: grpc.RpcError, name: str | None = None) -> ServerError:
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    if code == grpc.StatusCode.NOT_FOUND and name is not None:
        return CommandNotFoundError(name, details)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ServerUnavailableError(code.name, details)
    return ServerError(code.name, details)


def load_cached(dest_dir: Path) -> Snapshot:
    """The newest valid snapshot in a local cache folder, read with no server.

    Raises:
        NoSnapshotError: the folder holds no snapshot that verifies.
    """
    return read_newest(dest_dir).snapshot


def _newest_cached(dest_dir: Path) -> VerifiedFile | None:
    try:
        return read_newest(dest_dir)
    except NoSnapshotError:
        return None


class DefinitionClient:
    """A connection to one definition server.

    Args:
        server: ``host:port`` of the server.
        timeout_s: the deadline of one ``get_command`` or ``catalog_info``, retries included.
        retries: how many times a call is retried while the server is UNAVAILABLE.
        backoff_s: the first retry's delay; it doubles each retry, with jitter.
        sleep: how to wait between retries (``time.sleep``).
    """

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.server = server
        self._timeout_s = timeout_s
        self._retries = retries
        self._backoff_s = backoff_s
        self._sleep = sleep
        self._channel = grpc.insecure_channel(server, options=CHANNEL_OPTIONS)
        self._stub = DefinitionServiceStub(self._channel)

    @property
    def stub(self) -> DefinitionServiceStub:
        """The raw stub on this client's channel, for calls the client does not wrap."""
        return self._stub

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> DefinitionClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _retrying(self, call: Callable[[float, bool], _T], name: str | None = None) -> _T:
        # `call(seconds_left, wait_for_ready)`. The first attempt fails fast; a
        # retry waits, within the deadline, for the channel to reconnect, so a
        # restarting server is reached as soon as it is back instead of each
        # retry failing at once while grpc waits out its own reconnect backoff.
        deadline = time.monotonic() + self._timeout_s
        delay = self._backoff_s
        for attempt in range(self._retries + 1):
            try:
                return call(max(deadline - time.monotonic(), 0.0), attempt > 0)
            except grpc.RpcError as exc:
                error = _translate(exc, name)
                code = exc.code() if isinstance(exc, grpc.Call) else None
                pause = delay * random.uniform(0.5, 1.0)
                if code not in _RETRYABLE or attempt == self._retries or time.monotonic() + pause >= deadline:
                    raise error from exc
            logger.debug("%s is unavailable; retrying in %.2f s", self.server, pause)
            self._sleep(pause)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def get_command(self, name: str) -> Command:
        """The definition of the command ``name``.

        Raises:
            CommandNotFoundError: the server's catalog has no such command.
            ServerUnavailableError: the server could not be reached within the deadline.
            ServerError: the server refused the call (e.g. INVALID_ARGUMENT for an empty name).
        """
        request = GetCommandRequest(name=name)
        response = self._retrying(
            lambda left, wait: self._stub.GetCommand(request, timeout=left, wait_for_ready=wait), name
        )
        return response.command

    def catalog_info(self) -> CatalogInfo:
        """What the server says about the catalog it serves.

        Raises:
            ServerError: as for ``get_command``.
        """
        request = GetCatalogInfoRequest()
        return self._retrying(lambda left, wait: self._stub.GetCatalogInfo(request, timeout=left, wait_for_ready=wait))

    def _open_sync(
        self, request: SyncCatalogRequest, timeout_s: float
    ) -> tuple[grpc._CallIterator[SyncCatalogResponse], SyncHeader]:
        def start(left: float, wait: bool) -> tuple[grpc._CallIterator[SyncCatalogResponse], SyncHeader]:
            if wait:
                # The stream's deadline is the whole transfer's, too long to wait for a
                # reconnect: a small call waits for the server within the retry deadline.
                self._stub.GetCatalogInfo(GetCatalogInfoRequest(), timeout=left, wait_for_ready=True)
            call = self._stub.SyncCatalog(request, timeout=timeout_s)
            first = next(call, None)
            if first is None or first.WhichOneof("message") != "header":
                call.cancel()
                raise SyncError("INTERNAL", "the sync stream did not start with a header")
            return call, first.header

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
        started = time.perf_counter()
        dest_dir.mkdir(parents=True, exist_ok=True)
        for stale in remove_temp_files(dest_dir, dead_writers_only=True):
            logger.info("removed %s, left by a sync that was killed", stale.name)
        cached = _newest_cached(dest_dir)
        request = SyncCatalogRequest()
        if cached is not None:
            request.have_version = cached.snapshot.info.version
            request.have_content_hash = cached.snapshot.info.content_hash
            request.accept_delta = accept_delta
        call, header = self._open_sync(request, timeout_s)
        try:
            if header.kind == SyncHeader.KIND_UP_TO_DATE and cached is not None:
                return SyncResult(cached.path, cached.snapshot.info, True, 0, time.perf_counter() - started)
            if header.kind == SyncHeader.KIND_DELTA and cached is not None:
                try:
                    path, info = self._install_delta(call, header, dest_dir, cached, progress)
                except (AvapDefsError, OSError) as exc:
                    logger.warning(
                        "delta from version %s failed (%s); fetching the whole file", header.base_version, exc
                    )
                    call.cancel()
                    return self.sync(dest_dir, progress=progress, timeout_s=timeout_s, keep=keep, accept_delta=False)
            elif header.kind == SyncHeader.KIND_FULL:
                path, info = self._install(call, header, dest_dir, progress)
            else:
                raise SyncError("INTERNAL", f"unexpected sync header kind {SyncHeader.Kind.Name(header.kind)}")
        finally:
            call.cancel()  # a no-op once the stream has ended; otherwise the server stops sending
        # A local avap-server reads its file once at load, so removing one it serves is harmless.
        prune(dest_dir, keep, current=info.version)
        delta = header.kind == SyncHeader.KIND_DELTA
        return SyncResult(path, info, False, header.data_size, time.perf_counter() - started, delta)

    def _install_delta(
        self,
        call: Iterator[SyncCatalogResponse],
        header: SyncHeader,
        dest_dir: Path,
        cached: VerifiedFile,
        progress: Progress | None,
    ) -> tuple[Path, SnapshotInfo]:
        received = io.BytesIO()  # a delta is small: the changed commands only
        _receive(call, received, header, progress)
        delta = decode_delta(received.getvalue())
        path = dest_dir / snapshot_name(header.catalog.version)
        with atomic_file(path) as file:
            apply_delta(cached.snapshot, delta, file)  # checks the result's content hash
            file.seek(0)
            info = _check(file.read(), header, path)
        logger.info("installed catalog version %s at %s from a delta", info.version, path)
        return path, info

    def _install(
        self, call: Iterator[SyncCatalogResponse], header: SyncHeader, dest_dir: Path, progress: Progress | None
    ) -> tuple[Path, SnapshotInfo]:
        path = dest_dir / snapshot_name(header.catalog.version)
        with atomic_file(path) as file:
            _receive(call, file, header, progress)
            file.seek(0)
            data = file.read()
            info = _check(data, header, path)
        logger.info("installed catalog version %s at %s", info.version, path)
        return path, info


def _receive(
    call: Iterator[SyncCatalogResponse], file: BinaryIO, header: SyncHeader, progress: Progress | None
) -> None:
    received = 0
    hasher = hashlib.sha256()
    try:
        for message in call:
            if message.WhichOneof("message") != "chunk":
                raise SyncError("INTERNAL", "a second header in the sync stream")
            file.write(message.chunk)
            hasher.update(message.chunk)
            received += len(message.chunk)
            if progress is not None:
                progress(received, header.data_size)
    except grpc.RpcError as exc:
        error = _translate(exc)
        raise SyncError(error.code, f"the sync stream broke after {received} bytes: {error.details}") from exc
    if received != header.data_size:
        raise SyncError("DATA_LOSS", f"received {received} bytes, the server announced {header.data_size}")
    if header.data_sha256 and hasher.digest() != header.data_sha256:
        raise SyncError("DATA_LOSS", "the received file's sha256 differs from the one the server announced")


def _check(data: bytes, header: SyncHeader, path: Path) -> SnapshotInfo:
    try:
        info = verify(data, path=path).info
    except SnapshotError as exc:
        raise SyncError("DATA_LOSS", f"the received snapshot does not verify: {exc.reason}") from exc
    if info.version != header.catalog.version or info.content_hash != header.catalog.content_hash:
        raise SyncError("DATA_LOSS", f"the received snapshot is version {info.version}, not the announced one")
    return info
