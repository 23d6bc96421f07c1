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
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from avapdefs.errors import SnapshotError
from avapdefs.folder import VerifiedFile, choose, first_valid, no_snapshot_error, read_verified
from avapdefs.format.snapshot import FORMAT_VERSION, SnapshotInfo
from avapdefs.format.wire import command_name, encode_entry, iter_entries
from avapdefs.v1.definitions_pb2 import CatalogInfo, SyncCatalogResponse, SyncHeader
from server.legacy.answers import LazyLegacyAnswers
from server.legacy.codec import LegacyCodec
from server.sync import DeltaAnswer, frame_chunks, load_deltas

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
        deltas: deltas to this version, by the base version they apply to.
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
    legacy: LazyLegacyAnswers | None = None
    deltas: Mapping[int, DeltaAnswer] = field(default_factory=dict)

    def file_bytes(self) -> bytes:
        """The whole snapshot file as it was verified."""
        return b"".join(SyncCatalogResponse.FromString(chunk).chunk for chunk in self.sync_chunks)


def _index(file: VerifiedFile) -> tuple[dict[bytes, bytes], tuple[str, ...]]:
    responses: dict[bytes, bytes] = {}
    for command in iter_entries(file.snapshot.payload, path=file.path):
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
    legacy = LazyLegacyAnswers(legacy_codec, file.snapshot.payload, file.snapshot.info) if legacy_codec else None
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
        sync_chunks=frame_chunks(file.data, chunk_bytes),
        file_sha256=file_sha256,
        loaded_at_unix_ms=loaded_at,
        load_ms=(time.perf_counter() - began) * 1000,
        legacy=legacy,
        deltas=load_deltas(file.path.parent, file.snapshot.info, info, chunk_bytes),
    )


class SnapshotStore:
    """Holds the live snapshot; ``current`` is None until the first load.

    Which snapshot is live: the pinned version while the folder has a pin file
    (``avapdefs.folder.choose``), else the one ``pin`` names, else the newest that
    verifies. A file that does not verify is refused with a warning and the
    live one keeps serving.

    Thread safety: ``current`` is replaced by one reference assignment and
    never mutated, so readers need no lock. ``refresh`` must not run
    concurrently with itself (the server calls it at start-up, then from the
    one reload thread).
    """

    def __init__(
        self, folder: Path, *, chunk_bytes: int, legacy_codec: LegacyCodec | None = None, pin: int | None = None
    ) -> None:
        self.folder = folder
        self.chunk_bytes = chunk_bytes
        self.legacy_codec = legacy_codec
        self.pin = pin
        self.pinned_version = 0  # the pin in force at the last refresh; 0 for none
        self.current: LoadedSnapshot | None = None
        self._missing_noted: Path | None = None
        self._refused_files: dict[Path, tuple[tuple[int, int, int], SnapshotError]] = {}
        self.on_swap: Callable[[], None] = _nothing  # called on the swapping thread after each swap

    def load_newest(self) -> LoadedSnapshot:
        """Make the snapshot the folder calls for live (see the class docstring).

        Raises:
            NoSnapshotError: no snapshot in the folder verifies; ``current`` is unchanged.
        """
        loaded = self.refresh()
        if loaded is None:
            raise no_snapshot_error(self.folder)
        return loaded

    def refresh(self) -> LoadedSnapshot | None:
        """Swap in the snapshot the folder now calls for, and any new deltas to it.

        Returns:
            The live snapshot (None only while nothing could ever be loaded).
        """
        current = self.current
        choice = choose(self.folder, pin=self.pin, live=current.info.version if current else None)
        self.pinned_version = choice.pinned
        self._refused_files = {path: known for path, known in self._refused_files.items() if path.exists()}
        if choice.missing_pin is not None:
            instead = f"still serving {current.info.version}" if current else "serving the newest instead"
            logger.error("pinned version %s is not in %s; %s", choice.missing_pin, self.folder, instead)
        loaded, _ = first_valid(choice.candidates, self._build, self._refused)
        if loaded is None:
            self._note_missing_file()
            return self._refresh_deltas()
        self._swap(loaded)
        logger.info(
            "loaded catalog version %s from %s: %s commands, %s deltas, in %.0f ms",
            loaded.info.version, loaded.path, loaded.info.command_count, len(loaded.deltas), loaded.load_ms,
        )  # fmt: skip
        return loaded

    def _build(self, path: Path) -> LoadedSnapshot:
        # A file refused once is not read again until it changes: every later folder
        # event would otherwise read (and log) the same bad file again.
        seen = _identity(path)
        known = self._refused_files.get(path)
        if known is not None and seen is not None and known[0] == seen:
            raise _RefusedBefore(known[1].reason, path=path)
        try:
            return build(read_verified(path), chunk_bytes=self.chunk_bytes, legacy_codec=self.legacy_codec)
        except SnapshotError as exc:
            if seen is not None:
                self._refused_files[path] = (seen, exc)
            raise

    def _refused(self, path: Path, exc: SnapshotError) -> None:
        if isinstance(exc, _RefusedBefore):
            return  # said when it was first refused
        current = self.current
        still = f"still serving version {current.info.version}" if current else "nothing served yet"
        logger.warning("refused snapshot %s: %s; %s", path, exc.reason, still)

    def _note_missing_file(self) -> None:
        # Retention or an operator may delete the live file: it was read into memory
        # when it loaded, so it keeps serving; say so once per version, not per event.
        current = self.current
        if current is not None and current.path != self._missing_noted and not current.path.exists():
            self._missing_noted = current.path
            logger.warning("the file of live version %s is gone; still serving it from memory", current.info.version)

    def _swap(self, loaded: LoadedSnapshot) -> None:
        self.current = loaded  # the one assignment that makes a version live
        self.on_swap()

    def _refresh_deltas(self) -> LoadedSnapshot | None:
        # Deltas are written after their snapshot is published: pick up new ones.
        current = self.current
        if current is None:
            return None
        catalog = CatalogInfo.FromString(current.catalog_info)
        deltas = load_deltas(self.folder, current.info, catalog, self.chunk_bytes)
        if deltas.keys() != current.deltas.keys():
            self._swap(current := replace(current, deltas=deltas))
            logger.info("catalog version %s: deltas from %s", current.info.version, sorted(deltas) or "none")
        return current


def _nothing() -> None:
    pass


class _RefusedBefore(SnapshotError):
    """A file refused earlier and unchanged since (same inode, size and mtime): not read again."""


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What tells a changed file from the same one: inode, size, mtime (None when it cannot be seen)."""
    try:
        seen = os.lstat(path)
    except OSError:
        return None
    return seen.st_ino, seen.st_size, seen.st_mtime_ns
