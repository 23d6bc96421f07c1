"""The exporter's metrics: after each run, one node-exporter textfile (``--metrics-textfile``), replaced whole.

A cron run is a process that is gone before anything could scrape it, so its
metrics go into a ``.prom`` file that node-exporter's textfile collector
serves with the host's own. Each run rewrites the whole file: prometheus-client
formats it (``generate_latest``) and ``exporter.files.published_file`` writes it
as it writes snapshots, under a hidden temp name the collector does not read,
fsynced, given ``--file-mode`` and renamed over ``PATH``. So a scrape sees the
previous run's file or this one's, never a mix, and node-exporter, which
runs as another user, can read it under cron's umask 077.
(prometheus-client's own ``write_to_textfile`` renames too, but leaves the
file 0600 under that umask, and its temp file behind when interrupted.)

What a failed run cannot know is carried over from the file it replaces: the
time of the last success and the catalog version and command count. So they
survive from one cron run to the next; a file that is missing or does not
parse carries nothing, and the last success is then 0 ("none known"), which
an alert on its age treats as long ago.

Names follow the server's (``server/metrics.py``): ``avap_export_*``, the
unit last, ``_timestamp_seconds`` for unix times.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from exporter.config import DEFAULT_FILE_MODE
from exporter.export import ExportResult
from exporter.files import published_file

logger = logging.getLogger(__name__)

SUFFIX = ".prom"  # the only files node-exporter's textfile collector reads
LAST_SUCCESS = "avap_export_last_success_timestamp_seconds"
CATALOG_VERSION = "avap_export_catalog_version"
CATALOG_COMMANDS = "avap_export_catalog_commands"
_CARRIED = (LAST_SUCCESS, CATALOG_VERSION, CATALOG_COMMANDS)

_HELP = {
    "avap_export_last_run_exit_code": "Exit code of the last run (docs/exporter.md): 0 published or unchanged",
    "avap_export_last_run_duration_seconds": "Wall time of the last run, the object store included",
    "avap_export_last_run_timestamp_seconds": "Unix time the last run ended",
    LAST_SUCCESS: "Unix time the last run with exit code 0 ended; 0 when none is known",
    CATALOG_VERSION: "Newest catalog version in the snapshot folder, as the last run that read it left it",
    CATALOG_COMMANDS: "Commands in that version",
    "avap_export_last_run_published": "1 when the last run published a new version, 0 when not (unchanged or failed)",
    "avap_export_last_run_deltas_written": "Delta files the last run wrote",
    "avap_export_last_run_store_success": "With --publish: 1 when the last run left the object store announcing "
    "the newest version, 0 when not",
}


@dataclass(frozen=True)
class RunRecord:
    """What one run did, as the metrics tell it.

    Attributes:
        exit_code: the run's exit code.
        seconds: its wall time.
        ended_at: the unix time it ended.
        result: the export's result; None when the run failed before the export finished.
        stored: with ``--publish``: whether the store announces the newest version; None without it.
    """

    exit_code: int
    seconds: float
    ended_at: float
    result: ExportResult | None = None
    stored: bool | None = None


class Textfile:
    """The ``--metrics-textfile``: what the file it replaces says, and each run written over it.

    Args:
        path: the ``.prom`` file; its folder must exist.
        mode: its permissions (``--file-mode``).
    """

    def __init__(self, path: Path, *, mode: int = DEFAULT_FILE_MODE) -> None:
        self.path = path
        self.mode = mode
        self._carried = _read_carried(path)

    def record(self, run: RunRecord) -> None:
        """Write ``run``'s metrics over the file, atomically.

        Raises:
            OSError: the file cannot be written (the previous one is left as it was).
        """
        from prometheus_client import CollectorRegistry, Gauge, generate_latest

        if run.result is not None:
            self._carried[CATALOG_VERSION] = run.result.info.version
            self._carried[CATALOG_COMMANDS] = run.result.info.command_count
        if run.exit_code == 0:
            self._carried[LAST_SUCCESS] = run.ended_at
        values: dict[str, float] = {
            "avap_export_last_run_exit_code": run.exit_code,
            "avap_export_last_run_duration_seconds": run.seconds,
            "avap_export_last_run_timestamp_seconds": run.ended_at,
            LAST_SUCCESS: self._carried.get(LAST_SUCCESS, 0.0),
            **{name: self._carried[name] for name in (CATALOG_VERSION, CATALOG_COMMANDS) if name in self._carried},
            "avap_export_last_run_published": int(run.result is not None and run.result.published),
            "avap_export_last_run_deltas_written": len(run.result.deltas) if run.result is not None else 0,
        }
        if run.stored is not None:
            values["avap_export_last_run_store_success"] = int(run.stored)
        registry = CollectorRegistry()
        for name, value in values.items():
            Gauge(name, _HELP[name], registry=registry).set(value)
        with published_file(self.path, self.mode) as file:
            file.write(generate_latest(registry))


def _read_carried(path: Path) -> dict[str, float]:
    """The carried values the file at ``path`` holds; none when it is missing or does not parse."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        logger.warning("cannot read the metrics textfile %s (%s); its values start again", path, exc)
        return {}
    try:
        samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]
    except ValueError as exc:
        logger.warning("the metrics textfile %s does not parse (%s); its values start again", path, exc)
        return {}
    return {sample.name: sample.value for sample in samples if sample.name in _CARRIED}
