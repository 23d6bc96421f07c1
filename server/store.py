"""The loaded snapshot the server answers from, and the one reference that names it.

A ``LoadedSnapshot`` is immutable and holds everything a call needs already
serialized: each command's ``GetCommandResponse`` bytes, the ``CatalogInfo``
bytes, and the whole file cut into ready-made ``SyncCatalogResponse`` messages.
Calls read ``SnapshotStore.current`` once and use that object to the end, so
swapping in a new snapshot (one reference assignment, atomic under the GIL)
never mixes two versions in one answer and a stream that started on the old
version finishes on it.

Why the file is read into memory rather than served from a live mmap: an
operator may truncate or overwrite a published file in place, and touching a
mapped page past a truncated file's end raises SIGBUS, which kills the whole
process. Reading the file once, verifying those bytes and serving only them
makes any later change to the file harmless: the server keeps serving exactly
what it verified. The cost is small: the index needs the *uncompressed*
payload in memory anyway (a zstd frame cannot be mapped into command bytes),
and the file itself is the compressed, smaller copy.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from avapdefs.folder import VerifiedFile, read_newest
from avapdefs.snapshot import FORMAT_VERSION, SnapshotInfo, command_name, encode_entry, iter_command_bytes
from avapdefs.v1.definitions_pb2 import CatalogInfo, SyncCatalogResponse, SyncHeader
from server.legacy import LegacyAnswers, LegacyCodec, build_answers

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class LoadedSnapshot:
    """One verified snapshot, indexed and pre-serialized for serving.

    Attributes:
        info: the snapshot's header.
        path: the file it was read from (which may since have changed).
        responses: UTF-8 command name -> serialized ``GetCommandResponse``.
        names: every command name, ascending (UTF-8 byte order is code point order).
        catalog_info: serialized ``CatalogInfo``.
        sync_full_header: serialized ``SyncCatalogResponse`` holding a KIND_FULL header.
        sync_up_to_date: serialized ``SyncCatalogResponse`` holding a KIND_UP_TO_DATE header.
        sync_chunks: the file's bytes, in order, each piece a serialized ``SyncCatalogResponse.chunk``.
        file_sha256: sha256 of the whole file.
        loaded_at_unix_ms: when loading finished.
        load_ms: how long reading, verifying and indexing took.
        legacy: the legacy ``avap.DefinitionEngine`` answers, None when that service is off.
    """

    info: SnapshotInfo
    path: Path
    responses: Mapping[bytes, bytes]
    names: tuple[str, ...]
    catalog_info: bytes
    sync_full_header: bytes
    sync_up_to_date: bytes
    sync_chunks: tuple[bytes, ...]
    file_sha256: bytes
    loaded_at_unix_ms: int
    load_ms: float
    legacy: LegacyAnswers | None = None

    def file_bytes(self) -> bytes:
        """The whole snapshot file as it was verified."""
        return b"".join(SyncCatalogResponse.FromString(chunk).chunk for chunk in self.sync_chunks)


def _index(file: VerifiedFile) -> tuple[dict[bytes, bytes], tuple[str, ...]]:
    responses: dict[bytes, bytes] = {}
    for command in iter_command_bytes(file.snapshot.payload, path=file.path):
        # A payload entry is field 1 framing a Command: byte for byte a GetCommandResponse.
        responses[command_name(command)] = encode_entry(command)
    names = tuple(sorted(name.decode("utf-8", errors="replace") for name in responses))
    return responses, names


def _catalog_info(info: SnapshotInfo, file_size: int, loaded_at_unix_ms: int) -> CatalogInfo:
    return CatalogInfo(
        version=info.version,
        content_hash=info.content_hash,
        command_count=info.command_count,
        compressed_size=info.compressed_size,
        uncompressed_size=info.uncompressed_size,
        file_size=file_size,
        created_at_unix_ms=info.created_at_unix_ms,
        loaded_at_unix_ms=loaded_at_unix_ms,
        source=info.source,
        format_version=FORMAT_VERSION,
    )


def _chunks(data: bytes, chunk_bytes: int) -> tuple[bytes, ...]:
    view = memoryview(data)
    return tuple(
        SyncCatalogResponse(chunk=bytes(view[start : start + chunk_bytes])).SerializeToString()
        for start in range(0, len(data), chunk_bytes)
    )


def build(
    file: VerifiedFile, *, chunk_bytes: int, started: float | None = None, legacy_codec: LegacyCodec | None = None
) -> LoadedSnapshot:
    """Index a verified file and pre-serialize every answer it can give.

    Args:
        file: the verified snapshot file.
        chunk_bytes: data bytes per SyncCatalog chunk message.
        legacy_codec: also prepare the legacy service's answers, encoded with it.
        started: ``time.perf_counter()`` when loading began; now when None.
    """
    began = time.perf_counter() if started is None else started
    responses, names = _index(file)
    legacy = build_answers(legacy_codec, file.snapshot.payload, file.snapshot.info) if legacy_codec else None
    loaded_at = int(time.time() * 1000)
    info = _catalog_info(file.snapshot.info, len(file.data), loaded_at)
    file_sha256 = hashlib.sha256(file.data).digest()
    full = SyncHeader(kind=SyncHeader.KIND_FULL, catalog=info, data_size=len(file.data), data_sha256=file_sha256)
    up_to_date = SyncHeader(kind=SyncHeader.KIND_UP_TO_DATE, catalog=info)
    return LoadedSnapshot(
        info=file.snapshot.info,
        path=file.path,
        responses=responses,
        names=names,
        catalog_info=info.SerializeToString(),
        sync_full_header=SyncCatalogResponse(header=full).SerializeToString(),
        sync_up_to_date=SyncCatalogResponse(header=up_to_date).SerializeToString(),
        sync_chunks=_chunks(file.data, chunk_bytes),
        file_sha256=file_sha256,
        loaded_at_unix_ms=loaded_at,
        load_ms=(time.perf_counter() - began) * 1000,
        legacy=legacy,
    )


class SnapshotStore:
    """Holds the live snapshot; ``current`` is None until the first load.

    Thread safety: ``current`` is replaced by one reference assignment and
    never mutated, so readers need no lock. Loads must not run concurrently
    with each other (the server loads at start-up, later from one reload thread).
    """

    def __init__(self, folder: Path, *, chunk_bytes: int, legacy_codec: LegacyCodec | None = None) -> None:
        self.folder = folder
        self.chunk_bytes = chunk_bytes
        self.legacy_codec = legacy_codec
        self.current: LoadedSnapshot | None = None

    def load_newest(self) -> LoadedSnapshot:
        """Load the newest snapshot of the folder that verifies and make it live.

        Raises:
            NoSnapshotError: no snapshot in the folder verifies; ``current`` is unchanged.
        """
        started = time.perf_counter()
        loaded = build(
            read_newest(self.folder), chunk_bytes=self.chunk_bytes, started=started, legacy_codec=self.legacy_codec
        )
        self.current = loaded
        logger.info(
            "loaded catalog version %s from %s: %s commands in %.0f ms",
            loaded.info.version,
            loaded.path,
            loaded.info.command_count,
            loaded.load_ms,
        )
        return loaded
