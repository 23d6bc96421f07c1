"""The local snapshot cache a sync fills: the sync itself, installing what it received, loading the cache offline.

``sync_cache`` sends the cached version, and on the server's answer does
nothing (up to date), applies a delta, or takes the whole file; ``install_file``
and ``install_delta`` write it under a hidden temporary name, verify size,
sha256 and the whole snapshot against the header the server sent, and only
then rename it into place under the server's own file name, so
``avap-server --snapshots DEST`` can serve the copy. ``load_cached`` reads
the cache's current snapshot with no server at all, for a worker that boots
while the server is down.

The cache serves what its server serves, rollbacks included: when a sync
brings a version older than the newest one cached (the server was pinned
back), the cache pins it (the folder's ``PIN`` file, which ``avap-server``
honours too, so a server on the cache follows); when a sync brings the newest,
the pin goes. A pinned cache asks the server from its pinned version, so an
unchanged pin costs nothing. Nothing here speaks gRPC: the stream
arrives as a header and an iterator of chunks (``DefinitionClient.sync``
opens it).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from avapdefs.errors import AvapDefsError, NoSnapshotError, SnapshotError, SyncError, TruncatedSnapshotError
from avapdefs.folder import (
    VerifiedFile,
    atomic_file,
    list_snapshots,
    prune,
    read_newest,
    read_pin,
    read_verified,
    remove_pin,
    remove_temp_files,
    snapshot_name,
    write_pin,
)
from avapdefs.format.delta import apply_delta, decode_delta
from avapdefs.format.snapshot import Snapshot, SnapshotInfo, verify
from avapdefs.format.stream import verify_stream
from avapdefs.v1.definitions_pb2 import SyncCatalogRequest, SyncHeader

logger = logging.getLogger(__name__)

CACHE_FOLDER_MODE = 0o755  # a folder avap-sync creates: listed and read by any user, written by the syncing one
_DELTA_SLACK_BYTES = 1 << 20  # a delta's own header and framing, beyond the commands and names it carries

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
        seconds: wall time of the sync, waiting for the server included.
        delta: True when a delta from the cached version was applied instead of a full download.
        transfer_s: wall time from the server's first answer to the installed file: ``seconds``
            without the time spent reaching the server (the figure a rate is computed from).
        snapshot: the cached snapshot, verified, payload included, so that a caller (a Replica)
            need not read the file back and verify it again; holding the result holds it.
    """

    path: Path
    info: SnapshotInfo
    up_to_date: bool
    bytes_received: int
    seconds: float
    delta: bool = False
    transfer_s: float = 0.0
    snapshot: Snapshot | None = None


@dataclass(frozen=True)
class SyncStream:
    """An open SyncCatalog stream: its header, then its data, and how to end it early.

    Attributes:
        header: the stream's first message.
        chunks: the data that follows; a broken stream raises SyncError.
        cancel: ends the stream (a no-op once it has ended).
    """

    header: SyncHeader
    chunks: Iterator[bytes | memoryview]
    cancel: Callable[[], object]


OpenStream = Callable[[SyncCatalogRequest], SyncStream]
"""Sends a SyncCatalog request (after reaching the server, retries included) and returns its stream."""


def sync_cache(
    dest_dir: Path, open_stream: OpenStream, *, progress: Progress | None, keep: int, accept_delta: bool
) -> SyncResult:
    """Bring the cache in ``dest_dir`` up to the server's version (``DefinitionClient.sync`` documents it)."""
    started = time.perf_counter()
    _make_cache_folder(dest_dir)
    for stale in remove_temp_files(dest_dir, dead_writers_only=True):
        logger.info("removed %s, left by a sync that was killed", stale.name)
    cached = current_cached(dest_dir)
    request = SyncCatalogRequest()
    if cached is not None:
        request.have_version = cached.snapshot.info.version
        request.have_content_hash = cached.snapshot.info.content_hash
        request.accept_delta = accept_delta
    stream = open_stream(request)
    answered = time.perf_counter()  # what came before was reaching the server
    header = stream.header
    try:
        if header.kind == SyncHeader.KIND_UP_TO_DATE and cached is not None:
            _follow_pin(dest_dir, cached.snapshot.info.version)
            now = time.perf_counter()
            return SyncResult(
                cached.path, cached.snapshot.info, True, 0, now - started, transfer_s=now - answered,
                snapshot=cached.snapshot,
            )  # fmt: skip
        if header.kind == SyncHeader.KIND_DELTA and cached is not None:
            try:
                path, snapshot = install_delta(stream.chunks, header, dest_dir, cached, progress)
            except (AvapDefsError, OSError) as exc:
                logger.warning("delta from version %s failed (%s); fetching the whole file", header.base_version, exc)
                stream.cancel()
                return sync_cache(dest_dir, open_stream, progress=progress, keep=keep, accept_delta=False)
        elif header.kind == SyncHeader.KIND_FULL:
            path, snapshot = install_file(stream.chunks, header, dest_dir, progress)
        else:
            raise SyncError("INTERNAL", f"unexpected sync header kind {SyncHeader.Kind.Name(header.kind)}")
    finally:
        stream.cancel()  # a no-op once the stream has ended; otherwise the server stops sending
    info = snapshot.info
    _follow_pin(dest_dir, info.version)
    # A local avap-server reads its file once at load, so removing one it serves is harmless.
    prune(dest_dir, keep, current=info.version)
    now = time.perf_counter()
    return SyncResult(
        path, info, False, header.data_size, now - started, header.kind == SyncHeader.KIND_DELTA, now - answered,
        snapshot,
    )  # fmt: skip


def _make_cache_folder(dest_dir: Path) -> None:
    """Create the cache folder when missing, ``CACHE_FOLDER_MODE`` whatever the umask; an existing one is left as it is.

    The cache is a snapshot folder like the server's (``avap-server --snapshots DEST`` may serve it,
    as another user too), so it is readable like one; its files are ``folder.FILE_MODE`` (0644).
    """
    if dest_dir.is_dir():
        return
    dest_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(dest_dir, CACHE_FOLDER_MODE)


def load_cached(dest_dir: Path) -> Snapshot:
    """The current snapshot of a cache folder (its pinned version, else its newest valid one), read with no server.

    Raises:
        NoSnapshotError: the folder holds no snapshot that verifies.
    """
    current = current_cached(dest_dir)
    if current is None:
        return read_newest(dest_dir).snapshot  # raises NoSnapshotError, naming what was refused
    return current.snapshot


def current_cached(dest_dir: Path) -> VerifiedFile | None:
    """The version the cache serves: the pinned one when it is there and verifies, else the newest valid one."""
    pinned = read_pin(dest_dir)
    if pinned is not None:
        try:
            return read_verified(dest_dir / snapshot_name(pinned))
        except SnapshotError as exc:
            logger.warning("the cache's pinned version %s cannot be used (%s); using the newest", pinned, exc.reason)
    return newest_cached(dest_dir)


def _follow_pin(dest_dir: Path, version: int) -> None:
    """Pin the cache to ``version`` when a newer one is cached (the server rolled back), unpin it otherwise."""
    newest = max((cached for cached, _ in list_snapshots(dest_dir)), default=0)
    if version < newest:
        if read_pin(dest_dir) != version:
            write_pin(dest_dir, version)
            logger.info(
                "the server serves version %s, older than the cached %s: the cache is pinned to it", version, newest
            )
    elif remove_pin(dest_dir):
        logger.info("the server serves the newest cached version %s: the cache's pin is removed", version)


def newest_cached(dest_dir: Path) -> VerifiedFile | None:
    """The newest valid snapshot in ``dest_dir``, or None when it holds none."""
    try:
        return read_newest(dest_dir)
    except NoSnapshotError:
        return None


def install_file(
    chunks: Iterable[bytes | memoryview], header: SyncHeader, dest_dir: Path, progress: Progress | None
) -> tuple[Path, Snapshot]:
    """Receive a whole snapshot file and install it in ``dest_dir`` once it verifies.

    Each chunk is written to the temporary file and checked as it arrives, in
    one pass (``verify_stream``): the file is never read back.

    Raises:
        SyncError: the data is short, or does not match the header; nothing is installed.
        OSError: ``dest_dir`` cannot be written.
    """
    path = dest_dir / snapshot_name(header.catalog.version)
    with atomic_file(path) as file:
        written = _Written(chunks, file, header, progress)
        try:
            snapshot = verify_stream(written, file_size=header.data_size, file_sha256=header.data_sha256, path=path)
        except SnapshotError as exc:
            if isinstance(exc, TruncatedSnapshotError) and written.received < header.data_size:
                raise written.short() from exc
            raise SyncError("DATA_LOSS", f"the received snapshot does not verify: {exc.reason}") from exc
        _check_announced(snapshot.info, header)
    logger.info("installed catalog version %s at %s", snapshot.info.version, path)
    return path, snapshot


class _Written:
    """The chunks of a stream, each written to ``file`` and counted as it passes."""

    def __init__(
        self, chunks: Iterable[bytes | memoryview], file: BinaryIO, header: SyncHeader, progress: Progress | None
    ) -> None:
        self._chunks = chunks
        self._file = file
        self._header = header
        self._progress = progress
        self.received = 0

    def __iter__(self) -> Iterator[bytes | memoryview]:
        for chunk in self._chunks:
            self._file.write(chunk)
            self.received += len(chunk)
            if self._progress is not None:
                self._progress(self.received, self._header.data_size)
            yield chunk

    def short(self) -> SyncError:
        """The error for a stream that did not bring the size announced."""
        return SyncError("DATA_LOSS", f"received {self.received} bytes, the server announced {self._header.data_size}")


def install_delta(
    chunks: Iterable[bytes | memoryview],
    header: SyncHeader,
    dest_dir: Path,
    cached: VerifiedFile,
    progress: Progress | None,
) -> tuple[Path, Snapshot]:
    """Receive a delta from the ``cached`` version, apply it, and install the result once it verifies.

    Raises:
        SyncError: as for ``install_file``.
        AvapDefsError: the delta does not decode or apply (the caller falls back to the whole file).
        OSError: ``dest_dir`` cannot be written.
    """
    received = io.BytesIO()  # a delta is small: the changed commands only
    _receive(chunks, received, header, progress)
    # A delta holds at most the target's commands and the base's names: more is a damaged (or hostile) frame.
    bound = header.catalog.uncompressed_size + cached.snapshot.info.uncompressed_size + _DELTA_SLACK_BYTES
    delta = decode_delta(received.getvalue(), max_bytes=bound)
    path = dest_dir / snapshot_name(header.catalog.version)
    with atomic_file(path) as file:
        apply_delta(cached.snapshot, delta, file)  # checks the result's content hash
        file.seek(0)
        snapshot = _check(file.read(), header, path)
    logger.info("installed catalog version %s at %s from a delta", snapshot.info.version, path)
    return path, snapshot


def _receive(
    chunks: Iterable[bytes | memoryview], file: BinaryIO, header: SyncHeader, progress: Progress | None
) -> None:
    received = 0
    hasher = hashlib.sha256()
    for chunk in chunks:
        file.write(chunk)
        hasher.update(chunk)
        received += len(chunk)
        if progress is not None:
            progress(received, header.data_size)
    if received != header.data_size:
        raise SyncError("DATA_LOSS", f"received {received} bytes, the server announced {header.data_size}")
    if header.data_sha256 and hasher.digest() != header.data_sha256:
        raise SyncError("DATA_LOSS", "the received file's sha256 differs from the one the server announced")


def _check(data: bytes, header: SyncHeader, path: Path) -> Snapshot:
    try:
        snapshot = verify(data, path=path)
    except SnapshotError as exc:
        raise SyncError("DATA_LOSS", f"the received snapshot does not verify: {exc.reason}") from exc
    _check_announced(snapshot.info, header)
    return snapshot


def _check_announced(info: SnapshotInfo, header: SyncHeader) -> None:
    if info.version != header.catalog.version or info.content_hash != header.catalog.content_hash:
        raise SyncError("DATA_LOSS", f"the received snapshot is version {info.version}, not the announced one")
