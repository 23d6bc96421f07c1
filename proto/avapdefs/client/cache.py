"""The local snapshot cache a sync fills: the sync itself, installing what it received, loading the cache offline.

``sync_cache`` sends the cached version, and on the server's answer does
nothing (up to date), applies a delta, or takes the whole file; ``install_file``
and ``install_delta`` write it under a hidden temporary name, verify size,
sha256 and the whole snapshot against the header the server sent, and only
then rename it into place under the server's own file name, so
``avap-server --snapshots DEST`` can serve the copy. ``load_cached`` reads
the newest valid snapshot of the folder with no server at all, for a worker
that boots while the server is down. Nothing here speaks gRPC: the stream
arrives as a header and an iterator of chunks (``DefinitionClient.sync``
opens it).
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from avapdefs.errors import AvapDefsError, NoSnapshotError, SnapshotError, SyncError
from avapdefs.folder import VerifiedFile, atomic_file, prune, read_newest, remove_temp_files, snapshot_name
from avapdefs.format.delta import apply_delta, decode_delta
from avapdefs.format.snapshot import Snapshot, SnapshotInfo, verify
from avapdefs.v1.definitions_pb2 import SyncCatalogRequest, SyncHeader

logger = logging.getLogger(__name__)

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
    """

    path: Path
    info: SnapshotInfo
    up_to_date: bool
    bytes_received: int
    seconds: float
    delta: bool = False
    transfer_s: float = 0.0


@dataclass(frozen=True)
class SyncStream:
    """An open SyncCatalog stream: its header, then its data, and how to end it early.

    Attributes:
        header: the stream's first message.
        chunks: the data that follows; a broken stream raises SyncError.
        cancel: ends the stream (a no-op once it has ended).
    """

    header: SyncHeader
    chunks: Iterator[bytes]
    cancel: Callable[[], object]


OpenStream = Callable[[SyncCatalogRequest], SyncStream]
"""Sends a SyncCatalog request (after reaching the server, retries included) and returns its stream."""


def sync_cache(
    dest_dir: Path, open_stream: OpenStream, *, progress: Progress | None, keep: int, accept_delta: bool
) -> SyncResult:
    """Bring the cache in ``dest_dir`` up to the server's version (``DefinitionClient.sync`` documents it)."""
    started = time.perf_counter()
    dest_dir.mkdir(parents=True, exist_ok=True)
    for stale in remove_temp_files(dest_dir, dead_writers_only=True):
        logger.info("removed %s, left by a sync that was killed", stale.name)
    cached = newest_cached(dest_dir)
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
            now = time.perf_counter()
            return SyncResult(cached.path, cached.snapshot.info, True, 0, now - started, transfer_s=now - answered)
        if header.kind == SyncHeader.KIND_DELTA and cached is not None:
            try:
                path, info = install_delta(stream.chunks, header, dest_dir, cached, progress)
            except (AvapDefsError, OSError) as exc:
                logger.warning("delta from version %s failed (%s); fetching the whole file", header.base_version, exc)
                stream.cancel()
                return sync_cache(dest_dir, open_stream, progress=progress, keep=keep, accept_delta=False)
        elif header.kind == SyncHeader.KIND_FULL:
            path, info = install_file(stream.chunks, header, dest_dir, progress)
        else:
            raise SyncError("INTERNAL", f"unexpected sync header kind {SyncHeader.Kind.Name(header.kind)}")
    finally:
        stream.cancel()  # a no-op once the stream has ended; otherwise the server stops sending
    # A local avap-server reads its file once at load, so removing one it serves is harmless.
    prune(dest_dir, keep, current=info.version)
    now = time.perf_counter()
    return SyncResult(
        path, info, False, header.data_size, now - started, header.kind == SyncHeader.KIND_DELTA, now - answered
    )


def load_cached(dest_dir: Path) -> Snapshot:
    """The newest valid snapshot in a local cache folder, read with no server.

    Raises:
        NoSnapshotError: the folder holds no snapshot that verifies.
    """
    return read_newest(dest_dir).snapshot


def newest_cached(dest_dir: Path) -> VerifiedFile | None:
    """The newest valid snapshot in ``dest_dir``, or None when it holds none."""
    try:
        return read_newest(dest_dir)
    except NoSnapshotError:
        return None


def install_file(
    chunks: Iterable[bytes], header: SyncHeader, dest_dir: Path, progress: Progress | None
) -> tuple[Path, SnapshotInfo]:
    """Receive a whole snapshot file and install it in ``dest_dir`` once it verifies.

    Raises:
        SyncError: the data is short, or does not match the header; nothing is installed.
        OSError: ``dest_dir`` cannot be written.
    """
    path = dest_dir / snapshot_name(header.catalog.version)
    with atomic_file(path) as file:
        _receive(chunks, file, header, progress)
        file.seek(0)
        info = _check(file.read(), header, path)
    logger.info("installed catalog version %s at %s", info.version, path)
    return path, info


def install_delta(
    chunks: Iterable[bytes], header: SyncHeader, dest_dir: Path, cached: VerifiedFile, progress: Progress | None
) -> tuple[Path, SnapshotInfo]:
    """Receive a delta from the ``cached`` version, apply it, and install the result once it verifies.

    Raises:
        SyncError: as for ``install_file``.
        AvapDefsError: the delta does not decode or apply (the caller falls back to the whole file).
        OSError: ``dest_dir`` cannot be written.
    """
    received = io.BytesIO()  # a delta is small: the changed commands only
    _receive(chunks, received, header, progress)
    delta = decode_delta(received.getvalue())
    path = dest_dir / snapshot_name(header.catalog.version)
    with atomic_file(path) as file:
        apply_delta(cached.snapshot, delta, file)  # checks the result's content hash
        file.seek(0)
        info = _check(file.read(), header, path)
    logger.info("installed catalog version %s at %s from a delta", info.version, path)
    return path, info


def _receive(chunks: Iterable[bytes], file: BinaryIO, header: SyncHeader, progress: Progress | None) -> None:
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


def _check(data: bytes, header: SyncHeader, path: Path) -> SnapshotInfo:
    try:
        info = verify(data, path=path).info
    except SnapshotError as exc:
        raise SyncError("DATA_LOSS", f"the received snapshot does not verify: {exc.reason}") from exc
    if info.version != header.catalog.version or info.content_hash != header.catalog.content_hash:
        raise SyncError("DATA_LOSS", f"the received snapshot is version {info.version}, not the announced one")
    return info
