"""One export run: lock, read the tables, write the snapshot, guard, publish, prune, write deltas."""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, TextIO

import psycopg

from avapdefs.errors import CatalogOrderError, SnapshotError
from avapdefs.folder import (
    Newest,
    atomic_file,
    folder_lock,
    prune,
    read_newest_header,
    remove_temp_files,
    snapshot_name,
)
from avapdefs.format.reader import verify_file
from avapdefs.format.snapshot import SnapshotInfo, SnapshotWriter
from avapdefs.progress import ProgressBar
from exporter import unchanged
from exporter.build import iter_sealed
from exporter.config import ExportConfig
from exporter.deltas import write_deltas
from exporter.errors import PublishError, SourceError
from exporter.guards import check_guards
from exporter.source import Source, connect, open_source

logger = logging.getLogger(__name__)

_LOG_EVERY_COMMANDS = 10_000  # also how often the progress bar is told


@dataclass(frozen=True)
class ExportResult:
    """What a run did.

    Attributes:
        published: whether a new snapshot was published (False: unchanged).
        info: the header of the new snapshot, or of the newest one when unchanged.
        path: that snapshot's file.
        seconds: the run's wall time.
        pruned: snapshots deleted by retention, and the deltas that went with them.
        deltas: delta files written to the new version.
    """

    published: bool
    info: SnapshotInfo
    path: Path
    seconds: float
    pruned: tuple[Path, ...] = ()
    deltas: tuple[Path, ...] = ()

    def summary(self) -> str:
        """The one line a run prints on success."""
        info = self.info
        if not self.published:
            return f"unchanged at version {info.version}: {info.command_count} commands, {self.seconds:.2f} s"
        ratio = info.uncompressed_size / info.compressed_size if info.compressed_size else 0.0
        return (
            f"published version {info.version} ({self.path.name}): {info.command_count} commands, "
            f"{info.file_size} bytes ({info.uncompressed_size} uncompressed, ratio {ratio:.2f}), "
            f"{len(self.deltas)} deltas, {self.seconds:.2f} s"
        )


class _Unchanged(Exception):
    """Raised inside ``atomic_file`` so that it discards the temp file instead of publishing."""

    def __init__(self, state: unchanged.ExportState) -> None:
        self.state = state
        super().__init__("unchanged")


def run_export(config: ExportConfig, *, progress: TextIO | None = None) -> ExportResult:
    """Export the tables into a new snapshot in ``config.snapshots``, or publish nothing if unchanged.

    Args:
        config: the settings.
        progress: where to draw a progress bar (None for none).

    Raises:
        ExportError: a subclass saying what went wrong; nothing was published.
    """
    started = time.monotonic()
    folder = config.snapshots
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with folder_lock(folder):
            return _export_locked(config, progress, started)
    except OSError as exc:
        raise PublishError(f"snapshot folder {folder}: {exc.strerror or exc}") from exc


def _export_locked(config: ExportConfig, progress: TextIO | None, started: float) -> ExportResult:
    folder = config.snapshots
    for path in remove_temp_files(folder):
        logger.info("removed %s, left by an exporter that died", path.name)
    newest = read_newest_header(folder)
    path = folder / snapshot_name(newest.version + 1)
    with connect(
        config.dsn, connect_timeout_s=config.connect_timeout_s, statement_timeout_s=config.statement_timeout_s
    ) as conn:
        state = unchanged.read_state(folder)
        with _source(conn, config) as src:
            counters = src.write_counters()
            if unchanged.worth_checking(state, newest, counters):
                assert state is not None
                if unchanged.is_unchanged(src, folder, state, config.signing_key):
                    return _unchanged_result(folder, newest, config, started)
        with _source(conn, config) as src:
            counters = src.write_counters()  # before the rows: a write after them shows next time
            try:
                info = _publish(path, src, config, newest, progress)
            except _Unchanged as same:
                unchanged.write_state(folder, replace(same.state, write_counters=counters))
                return _unchanged_result(folder, newest, config, started)
            digest = unchanged.source_digest(src, src.digest, config.signing_key)
    unchanged.write_state(folder, unchanged.ExportState(info.version, info.content_hash, digest, counters))
    logger.info("published %s: %s commands", path.name, info.command_count)
    # Retention first, so no delta is made from a version about to be deleted.
    pruned = prune(folder, config.keep)
    deltas = write_deltas(folder, path, count=config.deltas, max_percent=config.delta_max_percent)
    return ExportResult(True, info, path, time.monotonic() - started, tuple(pruned), tuple(deltas))


def _source(conn: psycopg.Connection[tuple[object, ...]], config: ExportConfig) -> AbstractContextManager[Source]:
    return open_source(conn, table=config.table, bytecode_table=config.bytecode_table)


def _unchanged_result(folder: Path, newest: Newest, config: ExportConfig, started: float) -> ExportResult:
    assert newest.info is not None
    pruned = prune(folder, config.keep)
    path = folder / snapshot_name(newest.info.version)
    return ExportResult(False, newest.info, path, time.monotonic() - started, tuple(pruned))


def _publish(path: Path, source: Source, config: ExportConfig, newest: Newest, progress: TextIO | None) -> SnapshotInfo:
    # Every check happens inside atomic_file, so any refusal removes the temp
    # file and the folder is as it was.
    with atomic_file(path) as file:
        info = _write(file, source, config, newest.version + 1, progress)
        if newest.info is not None and info.content_hash == newest.info.content_hash and _intact(path.parent, newest):
            digest = unchanged.source_digest(source, source.digest, config.signing_key)
            raise _Unchanged(unchanged.ExportState(newest.info.version, info.content_hash, digest))
        check_guards(
            info,
            newest.info,
            allow_empty=config.allow_empty,
            force=config.force,
            max_drop_percent=config.max_drop_percent,
        )
    return info


def _intact(folder: Path, newest: Newest) -> bool:
    # Same content hash as the newest header: unchanged, but only if that file is still whole.
    # A truncated or bit-flipped newest file is replaced by a new, higher version instead.
    assert newest.info is not None
    if newest.info.version != newest.version:
        logger.warning("the newest snapshot, version %s, is not readable; publishing the table anew", newest.version)
        return False
    try:
        verify_file(folder / snapshot_name(newest.version))
    except SnapshotError as exc:
        logger.warning("the newest snapshot does not verify (%s); publishing the table as a new version", exc)
        return False
    return True


def _write(file: BinaryIO, source: Source, config: ExportConfig, version: int, progress: TextIO | None) -> SnapshotInfo:
    writer = SnapshotWriter(
        file,
        version=version,
        source=config.source,
        created_at_unix_ms=config.created_at_unix_ms,
        level=config.level,
    )
    writer.compress_in_background()
    bar = ProgressBar(progress, source.count() if progress else None, unit="commands")
    logger.debug("writing version %s into %s", version, file.name)
    commands = iter_sealed(
        source.rows(), signing_key=config.signing_key, max_problems=config.max_problems, check_utf8=source.checks_utf8
    )
    try:
        for command_name, serialized in commands:
            writer.add_serialized(command_name, serialized)
            if writer.command_count % _LOG_EVERY_COMMANDS == 0:
                bar.update(writer.command_count)
                logger.debug("%s commands written", writer.command_count)
        bar.close(writer.command_count)
        return writer.finish()
    except CatalogOrderError as exc:
        raise SourceError(f"rows did not arrive in UTF-8 name order (is the database encoding UTF8?): {exc}") from exc
    finally:
        writer.close()
