"""The loaded snapshot the server answers from, and the one reference that names it.

A ``LoadedSnapshot`` is immutable and holds everything a call needs already
serialized: each command's ``GetCommandResponse`` bytes, the ``CatalogInfo``
bytes, and the whole file cut into ready-made ``SyncCatalogResponse`` messages.
Calls read ``SnapshotStore.current`` once and use that object to the end, so
swapping in a new snapshot (one reference assignment, atomic under the GIL)
never mixes two versions in one answer and a stream that started on the old
version finishes on it.

Why answers come from a mapped serving image (``image.py``): every process
of a ``--processes`` group maps the same read-only file, so the catalog is in
memory once (the page cache), and a restart or process N+1 maps and checks
it instead of decompressing and indexing. The image is written once per
version, by the first process to load it, from the snapshot file read whole
into memory and verified on the way.

Why the snapshot file itself is never mapped: an operator may truncate or
overwrite a published file in place, and touching a mapped page past a
truncated file's end raises SIGBUS, which kills the whole process. The file
is read (not mapped), verified, and its bytes copied into the image, which
lives in a folder only the server writes and is never modified: any later
change to the snapshot file is harmless, and SyncCatalog streams the verified
copy. With an image present, only the snapshot file's header and size are
read, and must match the copy's.

Measured (50,000 commands, 2 processes, ``bench/run_all.py``, 2026-11-30
14:05, bench/README.md): first answer 0.58 s cold (one process writes the
image, ``image_write.py``, while the other waits for its lock) and 0.27 s on
a restart (each maps and checks the image in about 10 ms), against the
peer's 0.76 s; RSS 254 MB (PSS 174) after start and 273 MB after two full
syncs, against the peer's 315 and 411 MB. Before the image: first answer
1.28 s, RSS 803 MB (PSS 638). A restart is the supervisor's start (about
0.1 s), then each process's Envoy and Python.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from avapdefs import fileio
from avapdefs.errors import NoSnapshotError, SnapshotError
from avapdefs.folder import (
    check_folder,
    choose,
    first_valid,
    folder_lock,
    list_snapshots,
    no_snapshot_error,
    parse_version,
    read_header,
    remove_temp_files,
)
from avapdefs.format.snapshot import (
    FORMAT_VERSION,
    MAX_HEADER_BYTES,
    PREAMBLE,
    SnapshotInfo,
    check_size,
    check_version,
    read_file_bytes,
    read_info,
)
from avapdefs.v1.definitions_pb2 import CatalogInfo, SyncCatalogResponse, SyncHeader
from server.image import (
    CACHE_NAME,
    Image,
    ImageError,
    image_name,
    make_cache_folder,
    open_image,
    remove_stale,
)
from server.image_write import write_image
from server.legacy.answers import LazyLegacyAnswers
from server.legacy.codec import LegacyCodec
from server.sync import DeltaAnswer, load_deltas

logger = logging.getLogger(__name__)


class PinnedVersionMissingError(NoSnapshotError):
    """The version pinned at start-up (``--pin`` or the PIN file) is not in the folder.

    The server then refuses to start rather than serve another version, as
    ``avap-pin`` refuses to pin it: a pin is usually a rollback away from the
    newest version, so serving the newest instead would serve what the
    operator rolled back from.

    Attributes:
        version: the pinned version.
    """

    def __init__(self, version: int, folder: Path) -> None:
        super().__init__(f"pinned version {version} is not in the folder", path=folder)
        self.version = version


@dataclass(frozen=True, eq=False)
class LoadedSnapshot:
    """One verified snapshot, indexed and pre-serialized for serving.

    Attributes:
        info: the snapshot's header.
        path: the file it was read from (which may since have changed).
        image: the serving image every answer below is read from.
        responses: UTF-8 command name -> serialized ``GetCommandResponse``.
        names: every command name, ascending (UTF-8 byte order is code point order).
        catalog_info: serialized ``CatalogInfo``.
        sync_full_header: serialized ``SyncCatalogResponse`` holding a KIND_FULL header.
        sync_up_to_date: serialized ``SyncCatalogResponse`` holding a KIND_UP_TO_DATE header.
        sync_chunks: the file's bytes, in order, each piece a serialized ``SyncCatalogResponse.chunk``
            (cut from the image when asked for).
        file_sha256: sha256 of the whole file.
        loaded_at_unix_ms: when loading finished.
        load_ms: how long reading, verifying and indexing (or mapping and checking the image) took.
        legacy: the legacy ``avap.DefinitionEngine`` answers, None when that service is off.
        deltas: deltas to this version, by the base version they apply to.
    """

    info: SnapshotInfo
    path: Path
    image: Image
    responses: Mapping[bytes, bytes]
    names: Sequence[str]
    catalog_info: bytes
    sync_full_header: bytes
    sync_up_to_date: bytes
    sync_chunks: Sequence[bytes]
    file_sha256: bytes
    loaded_at_unix_ms: int
    load_ms: float
    legacy: LazyLegacyAnswers | None = None
    deltas: Mapping[int, DeltaAnswer] = field(default_factory=dict)

    def file_bytes(self) -> bytes:
        """The whole snapshot file as it was verified."""
        return bytes(self.image.file)


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
    image: Image, path: Path, *, chunk_bytes: int, started: float, legacy_codec: LegacyCodec | None = None
) -> LoadedSnapshot:
    """Pre-serialize every answer of a verified serving image that is not already in it.

    Args:
        image: the serving image of the snapshot file at ``path``.
        path: the snapshot file.
        chunk_bytes: data bytes per SyncCatalog chunk message.
        started: ``time.perf_counter()`` when loading began.
        legacy_codec: also prepare the legacy service's answers, encoded with it.
    """
    snapshot = image.info
    legacy = LazyLegacyAnswers(legacy_codec, image.payload, snapshot) if legacy_codec else None
    loaded_at = int(time.time() * 1000)
    info = _catalog_info(snapshot, len(image.file), loaded_at)
    full = SyncHeader(kind=SyncHeader.KIND_FULL, catalog=info, data_size=len(image.file), data_sha256=image.file_sha256)
    up_to_date = SyncHeader(kind=SyncHeader.KIND_UP_TO_DATE, catalog=info)
    return LoadedSnapshot(
        info=snapshot,
        path=path,
        image=image,
        responses=image.answers,
        names=image.names,
        catalog_info=info.SerializeToString(),
        sync_full_header=SyncCatalogResponse(header=full).SerializeToString(),
        sync_up_to_date=SyncCatalogResponse(header=up_to_date).SerializeToString(),
        sync_chunks=image.chunks(chunk_bytes),
        file_sha256=image.file_sha256,
        loaded_at_unix_ms=loaded_at,
        load_ms=(time.perf_counter() - started) * 1000,
        legacy=legacy,
        deltas=load_deltas(path.parent, snapshot, info, chunk_bytes),
    )


def snapshot_age_s(info: SnapshotInfo, now_s: float | None = None) -> float:
    """Seconds since ``info``'s version was created; 0 when the file records no creation time."""
    if info.created_at_unix_ms <= 0:
        return 0.0
    now = time.time() if now_s is None else now_s
    return max(0.0, now - info.created_at_unix_ms / 1000)


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
        self,
        folder: Path,
        *,
        chunk_bytes: int,
        legacy_codec: LegacyCodec | None = None,
        pin: int | None = None,
        serving_cache: Path | None = None,
    ) -> None:
        self.folder = folder
        self.serving_cache = serving_cache if serving_cache is not None else folder / CACHE_NAME
        self.chunk_bytes = chunk_bytes
        self.legacy_codec = legacy_codec
        self.pin = pin
        self.pinned_version = 0  # the pin in force at the last refresh; 0 for none
        self.current: LoadedSnapshot | None = None
        self._missing_noted: Path | None = None
        self._missing_pin_noted: int | None = None
        self._refused_files: dict[Path, tuple[tuple[int, int, int], SnapshotError]] = {}
        self._cache_failure_noted = False
        self.on_swap: Callable[[], None] = _nothing  # called on the swapping thread after each swap
        self.on_refused: Callable[[], None] = _nothing  # called when a snapshot file is refused (once per file)

    def load_newest(self) -> LoadedSnapshot:
        """Make the snapshot the folder calls for live (see the class docstring).

        Raises:
            NoSnapshotError: the folder does not exist, is not a folder, or no snapshot in it verifies;
                ``current`` is unchanged.
            PinnedVersionMissingError: nothing is live yet and the pinned version is not in the folder.
        """
        check_folder(self.folder)
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
        self._note_missing_pin(choice.missing_pin)
        loaded, _ = first_valid(choice.candidates, self._build, self._refused)
        if loaded is None:
            self._note_missing_file()
            self._prune_images()
            return self._refresh_deltas()
        self._swap(loaded)
        logger.info(
            "loaded catalog version %s from %s: %s commands, %s deltas, in %.0f ms",
            loaded.info.version, loaded.path, loaded.info.command_count, len(loaded.deltas), loaded.load_ms,
        )  # fmt: skip
        self._prune_images()
        return loaded

    def _note_missing_pin(self, missing: int | None) -> None:
        # Before the first load a missing pin stops the start; later the live version keeps
        # serving, and that is said once per missing pin, not at every folder event.
        if missing is not None and self.current is None:
            raise PinnedVersionMissingError(missing, self.folder)
        if missing is not None and missing != self._missing_pin_noted:
            assert self.current is not None
            logger.error("pinned version %s is not in %s; still serving version %s",
                         missing, self.folder, self.current.info.version)  # fmt: skip
        self._missing_pin_noted = missing

    def _build(self, path: Path) -> LoadedSnapshot:
        # A file refused once is not read again until it changes: every later folder
        # event would otherwise read (and log) the same bad file again.
        seen = _identity(path)
        known = self._refused_files.get(path)
        if known is not None and seen is not None and known[0] == seen:
            raise _RefusedBefore(known[1].reason, path=path)
        started = time.perf_counter()
        try:
            image = self._image(path)
        except SnapshotError as exc:
            if seen is not None:
                self._refused_files[path] = (seen, exc)
            raise
        return build(image, path, chunk_bytes=self.chunk_bytes, started=started, legacy_codec=self.legacy_codec)

    def _image(self, path: Path) -> Image:
        # The image of this file when one exists and checks out; otherwise the file is read,
        # verified and written as the image (in memory when the cache cannot be written).
        info = _read_checked_header(path)
        target = self.serving_cache / image_name(info)
        image = self._open_image(target, info)
        if image is not None:
            return image
        # One process of a group writes the image; the others wait for it and map it.
        with contextlib.ExitStack() as locked:
            with contextlib.suppress(OSError):
                make_cache_folder(self.serving_cache)
                locked.enter_context(folder_lock(self.serving_cache, wait=True))
                image = self._open_image(target, info)
                if image is not None:
                    return image
            return self._write_image(path)

    def _open_image(self, target: Path, info: SnapshotInfo) -> Image | None:
        try:
            image = open_image(target, info)
            logger.info("mapped serving image %s", target)
            return image
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (ImageError, OSError) as exc:
            logger.warning("serving image %s cannot be used (%s); rebuilding it", target, exc)
            with contextlib.suppress(OSError):
                target.unlink()
            return None

    def _write_image(self, path: Path) -> Image:
        data = read_file_bytes(path, named_version=parse_version(path.name))
        info = read_info(data, path=path)  # the file may have changed since its header was read
        try:
            image = write_image(self.serving_cache / image_name(info), data, info, path)
        except OSError as exc:
            if not self._cache_failure_noted:
                self._cache_failure_noted = True
                logger.warning("cannot write serving images in %s (%s); each process holds its own copy in memory",
                               self.serving_cache, exc)  # fmt: skip
            return write_image(None, data, info, path)
        logger.info("wrote serving image %s", image.path)
        return image

    def _prune_images(self) -> None:
        # Images of versions no longer in the folder go; the live one stays even when its file is gone.
        keep = set()
        for _, path in list_snapshots(self.folder):
            with contextlib.suppress(SnapshotError):
                keep.add(image_name(read_header(path)))
        if self.current is not None:
            keep.add(image_name(self.current.info))
        for removed in remove_stale(self.serving_cache, keep):
            logger.info("removed serving image %s (its version is no longer in the folder)", removed.name)
        if self.serving_cache.is_dir():
            remove_temp_files(self.serving_cache, dead_writers_only=True)

    def _refused(self, path: Path, exc: SnapshotError) -> None:
        if isinstance(exc, _RefusedBefore):
            return  # said when it was first refused
        current = self.current
        still = f"still serving version {current.info.version}" if current else "nothing served yet"
        logger.warning("refused snapshot %s: %s; %s", path, exc.reason, still)
        self.on_refused()

    def _note_missing_file(self) -> None:
        # Retention or an operator may delete the live file: it was read into memory
        # when it loaded, so it keeps serving; say so once per version, not per event.
        current = self.current
        if current is not None and current.path != self._missing_noted and not current.path.exists():
            self._missing_noted = current.path
            logger.warning("the file of live version %s is gone; still serving its image", current.info.version)

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


def _read_checked_header(path: Path) -> SnapshotInfo:
    """The header of the snapshot file at ``path``, once its name's version and the file's size agree with it."""
    with fileio.open_file(path) as file:
        info = read_info(fileio.read_from(file, PREAMBLE.size + MAX_HEADER_BYTES, path), path=path)
        check_version(info, parse_version(path.name), path)
        check_size(os.fstat(file.fileno()).st_size, info, path)
        return info


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What tells a changed file from the same one: inode, size, mtime (None when it cannot be seen)."""
    try:
        seen = os.lstat(path)
    except OSError:
        return None
    return seen.st_ino, seen.st_size, seen.st_mtime_ns
