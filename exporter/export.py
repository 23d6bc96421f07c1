"""One export run: lock, read the tables, write the snapshot, guard, publish, prune, write the missing deltas."""

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
from exporter.files import published_file
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
        deltas: delta files written to the newest version (by an unchanged run: the ones a run
            killed after its rename did not write).
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
            backfilled = f", {len(self.deltas)} missing deltas written" if self.deltas else ""
            return (
                f"unchanged at version {info.version}: {info.command_count} commands{backfilled}, {self.seconds:.2f} s"
            )
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
    recorded = unchanged.read_state(folder)
    with connect(
        config.dsn,
        connect_timeout_s=config.connect_timeout_s,
        statement_timeout_s=config.statement_timeout_s,
        keepalive_s=config.keepalive_s,
    ) as conn:
        info, state = _read(conn, config, newest, recorded, progress)
    # Nothing below waits on the database. The state is recorded before the deltas are made,
    # so a run killed while making them still finds the table unchanged cheaply.
    if state != recorded:
        unchanged.write_state(folder, state, mode=config.file_mode)
    pruned = prune(folder, config.keep)  # retention first, so no delta is made from a version about to go
    path = folder / snapshot_name(state.version)
    deltas = _settle_deltas(folder, path, state, config)
    if info is None:
        assert newest.info is not None
        return ExportResult(False, newest.info, path, time.monotonic() - started, tuple(pruned), deltas)
    return ExportResult(True, info, path, time.monotonic() - started, tuple(pruned), deltas)


def _read(
    conn: psycopg.Connection[tuple[object, ...]],
    config: ExportConfig,
    newest: Newest,
    recorded: unchanged.ExportState | None,
    progress: TextIO | None,
) -> tuple[SnapshotInfo | None, unchanged.ExportState]:
    """Publish the tables as the next version, or find them unchanged.

    Returns:
        The new snapshot's header (None when unchanged), and the state to record.
    """
    folder = config.snapshots
    with _source(conn, config) as src:
        counters = src.write_counters()
        if unchanged.worth_checking(recorded, newest, counters):
            assert recorded is not None
            if unchanged.is_unchanged(src, folder, recorded, config.signing_key):
                return None, recorded
    try:
        info, digest, counters = _publish(conn, folder / snapshot_name(newest.version + 1), config, newest, progress)
    except _Unchanged as same:
        # The bases declined for that version stay declined: the long way found the same snapshot.
        kept = recorded.declined_deltas if recorded is not None and recorded.version == same.state.version else ()
        return None, replace(same.state, declined_deltas=kept)
    logger.info("published %s: %s commands", snapshot_name(info.version), info.command_count)
    return info, unchanged.ExportState(info.version, info.content_hash, digest, counters)


def _source(conn: psycopg.Connection[tuple[object, ...]], config: ExportConfig) -> AbstractContextManager[Source]:
    return open_source(
        conn, table=config.table, bytecode_table=config.bytecode_table, statement_timeout_s=config.statement_timeout_s
    )


def _settle_deltas(folder: Path, target: Path, state: unchanged.ExportState, config: ExportConfig) -> tuple[Path, ...]:
    # Every run, unchanged ones too, writes the newest version's missing deltas (a run killed
    # after its rename left them unwritten); the bases declined are recorded, never retried.
    outcome = write_deltas(
        folder,
        target,
        count=config.deltas,
        max_percent=config.delta_max_percent,
        declined=state.declined_deltas,
        mode=config.file_mode,
    )
    if outcome.declined != state.declined_deltas:
        unchanged.write_state(folder, replace(state, declined_deltas=outcome.declined), mode=config.file_mode)
    return outcome.written


def _publish(
    conn: psycopg.Connection[tuple[object, ...]],
    path: Path,
    config: ExportConfig,
    newest: Newest,
    progress: TextIO | None,
) -> tuple[SnapshotInfo, bytes, tuple[int, ...]]:
    """Write the tables into a temp file and publish it as ``path`` once the read transaction has ended.

    Returns:
        The new header, the source digest of the rows and the tables' write counters.

    Raises:
        _Unchanged: the catalog is the newest snapshot's (nothing published).
    """
    # Every check happens inside the file's block, so any refusal removes the temp file and the
    # folder is as it was; the transaction ends before the rename, so a database that fails at
    # the commit has not had its read published.
    with published_file(path, config.file_mode) as file:
        with _source(conn, config) as source:
            counters = source.write_counters()  # before the rows: a write after them shows next time
            info = _write(file, source, config, newest.version + 1, progress)
            digest = unchanged.source_digest(source, source.digest, config.signing_key)
        if newest.info is not None and info.content_hash == newest.info.content_hash and _intact(path.parent, newest):
            raise _Unchanged(unchanged.ExportState(newest.info.version, info.content_hash, digest, counters))
        check_guards(
            info,
            newest.info,
            allow_empty=config.allow_empty,
            force=config.force,
            max_drop_percent=config.max_drop_percent,
        )
    return info, digest, counters


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
    rows = source.rows()
    commands = iter_sealed(
        rows, signing_key=config.signing_key, max_problems=config.max_problems, check_utf8=source.checks_utf8
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
        rows.close()  # ends the COPY now, even on an error, so the rollback gets the connection's lock
        writer.close()
