"""``avap-export``: the command line. The only module that reads the environment or configures logging.

    avap-export [options]                       export the tables into a new snapshot (the cron job)
    avap-export --every 60s [options]           the same on a schedule, in one process, until SIGTERM
    avap-export inspect FILE [--diff OTHER]     verify and describe a snapshot or delta; list changes to OTHER
    avap-export load-sample [options]           create the legacy tables and load the sample catalog

Exit codes (docs/exporter.md): 0 success (published, unchanged, or loaded),
1 unexpected error, 2 invalid usage or setting, 3 database unreachable or
failed, 4 table or column missing, 5 bad rows, 6 refused by a guard,
7 another exporter holds the lock, 8 snapshot folder not writable,
9 invalid snapshot file, 10 published locally but not to the object store
(``--publish``; its line says whether running again helps), 130 interrupted. With ``--every``
each run's code is printed with its failure line, and the process ends with 0
on SIGTERM or 130 on SIGINT (``exporter/schedule.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from avapdefs.about import add_version_option
from avapdefs.cloud import StoreURLError, add_store_options, open_remote, store_options
from avapdefs.errors import LockedError, OptionError, SnapshotError
from avapdefs.folder import folder_lock
from avapdefs.options import Option, add_options, duration_s, parse_bool, parse_log_level, resolve
from exporter import inspection, metrics, schedule
from exporter.config import DEFAULT_FILE_MODE, ExportConfig
from exporter.errors import (
    BadDataError,
    ConfigError,
    GuardError,
    PublishError,
    SchemaError,
    SourceError,
)
from exporter.export import ExportResult, run_export
from exporter.sample import load_sample
from exporter.source import connect

if TYPE_CHECKING:
    from avapdefs.remote import Remote

logger = logging.getLogger(__name__)

PROG = "avap-export"
EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_DATABASE = 3
EXIT_SCHEMA = 4
EXIT_BAD_DATA = 5
EXIT_REFUSED = 6
EXIT_LOCKED = 7
EXIT_FOLDER = 8
EXIT_BAD_SNAPSHOT = 9
EXIT_STORE = 10
EXIT_INTERRUPTED = 130

# Checked in order: a subclass before its base.
_EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (ConfigError, EXIT_USAGE),
    (OptionError, EXIT_USAGE),
    (SchemaError, EXIT_SCHEMA),
    (SourceError, EXIT_DATABASE),
    (BadDataError, EXIT_BAD_DATA),
    (GuardError, EXIT_REFUSED),
    (LockedError, EXIT_LOCKED),
    (PublishError, EXIT_FOLDER),
    (SnapshotError, EXIT_BAD_SNAPSHOT),
    (StoreURLError, EXIT_USAGE),
)


def _key_file(text: str) -> bytes:
    try:
        return Path(text).read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise ValueError(f"cannot read the signing key file: {exc.strerror or exc}") from exc


def _file_mode(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise ValueError(f"not an octal file mode: {text!r} (e.g. 0644)") from None


_EXPORT_OPTIONS = (
    Option("--snapshots", "AVAP_SNAPSHOTS", "snapshots", Path, "snapshot folder to publish into"),
    Option("--dsn", "AVAP_PG_DSN", "dsn", str, "libpq connection string; unset: libpq's PG* variables"),
    Option("--table", "AVAP_EXPORT_TABLE", "table", str, "command-definitions table ([schema.]name)"),
    Option("--bytecode-table", "AVAP_EXPORT_BYTECODE_TABLE", "bytecode_table", str, "packages table; '' for none"),
    Option("--keep", "AVAP_EXPORT_KEEP", "keep", int, "snapshots to keep; the newest is never deleted"),
    Option("--max-drop-percent", "AVAP_EXPORT_MAX_DROP_PERCENT", "max_drop_percent", float, "largest count drop"),
    Option(
        "--allow-empty", "AVAP_EXPORT_ALLOW_EMPTY", "allow_empty", parse_bool, "publish an empty catalog", switch=True
    ),
    Option("--force", "AVAP_EXPORT_FORCE", "force", parse_bool, "publish despite the count-drop guard", switch=True),
    Option("--level", "AVAP_EXPORT_LEVEL", "level", int, "zstd compression level"),
    Option("--connect-timeout-s", "AVAP_EXPORT_CONNECT_TIMEOUT_S", "connect_timeout_s", int, "connect timeout"),
    Option(
        "--statement-timeout-s",
        "AVAP_EXPORT_STATEMENT_TIMEOUT_S",
        "statement_timeout_s",
        int,
        "longest wait for one statement (lock waits included) or an idle transaction",
    ),
    Option(
        "--keepalive-s",
        "AVAP_EXPORT_KEEPALIVE_S",
        "keepalive_s",
        int,
        "give the connection up after about this long without a sign of life from the database host (TCP)",
    ),
    Option("--created-at-ms", "AVAP_EXPORT_CREATED_AT_MS", "created_at_unix_ms", int, "fixed creation time"),
    Option(
        "--signing-key-file",
        "AVAP_SIGNING_KEY_FILE",
        "signing_key",
        _key_file,
        "HMAC key file for signed packages (or the key itself in AVAP_SIGNING_KEY)",
    ),
    Option(
        "--fetch-rows",
        "AVAP_EXPORT_FETCH_ROWS",
        "fetch_rows",
        int,
        "ignored (rows now stream through COPY); accepted so that existing cron lines still run",
    ),
    Option("--deltas", "AVAP_DELTAS", "deltas", int, "write deltas from this many earlier versions; 0 for none"),
    Option(
        "--delta-max-percent",
        "AVAP_EXPORT_DELTA_MAX_PERCENT",
        "delta_max_percent",
        float,
        "keep a delta only when smaller than this percentage of the new file",
    ),
    Option(
        "--file-mode",
        "AVAP_EXPORT_FILE_MODE",
        "file_mode",
        _file_mode,
        "permissions (octal) of the snapshots, deltas and state file it writes, whatever the umask",
    ),
)
# Not an ExportConfig field: it decides `progress`, with whether stderr is a terminal.
_NO_PROGRESS = Option(
    "--no-progress",
    "AVAP_EXPORT_NO_PROGRESS",
    "no_progress",
    parse_bool,
    "no progress bar even on a terminal; never drawn when stderr is not one",
    switch=True,
)
# Not an ExportConfig field either: publishing to object storage follows the export, under the folder's lock.
_PUBLISH = Option(
    "--publish",
    "AVAP_EXPORT_PUBLISH",
    "publish",
    str,
    "then upload the newest version and its deltas to object storage and announce it: s3://bucket/prefix, "
    "gs://, az://, file:///path (credentials and endpoint from the --store-* options, else AWS_* and the like; "
    "needs the cloud extra)",
)


def _textfile(text: str) -> Path:
    path = Path(text)
    if path.suffix != metrics.SUFFIX:
        raise ValueError(f"{text!r} does not end in {metrics.SUFFIX}, the only files node-exporter's collector reads")
    return path


# Neither is an ExportConfig field: they decide when runs happen and what is written after each.
_EVERY = Option(
    "--every",
    "AVAP_EXPORT_EVERY",
    "every_s",
    duration_s,
    "export on this schedule (90s, 15m, 2h, 1d) in one long-lived process, runs never overlapping, until "
    "SIGTERM (exit 0) or SIGINT (130); a failed run prints its exit code and the next one runs on time",
)
_METRICS_TEXTFILE = Option(
    "--metrics-textfile",
    "AVAP_EXPORT_METRICS_TEXTFILE",
    "metrics_textfile",
    _textfile,
    "after each run, write its metrics (avap_export_*) to this .prom file for node-exporter's textfile "
    "collector, replaced atomically",
)
_DEFAULTS = {field.name: field.default for field in dataclasses.fields(ExportConfig)}
_SHOWN_DEFAULTS = {**_DEFAULTS, "file_mode": f"{DEFAULT_FILE_MODE:04o}"}


_LOG_LEVEL = Option(
    "--log-level", "AVAP_LOG_LEVEL", "log_level", parse_log_level, "log level on stderr", default="warning"
)


def _add_logging(parser: argparse.ArgumentParser) -> None:
    add_options(parser, (_LOG_LEVEL,), {})


def _export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export the AVAP definitions tables into a new versioned snapshot, published atomically. "
        "Other commands: 'avap-export inspect FILE [--diff OTHER]', 'avap-export load-sample'.",
        epilog="Exit codes: 0 ok or unchanged, 2 usage, 3 database, 4 missing table/column, 5 bad rows, "
        "6 refused by a guard, 7 locked by another exporter, 8 snapshot folder, 10 published locally but not to "
        "the object store (--publish: unreachable, credentials refused, or another exporter's versions there; "
        "the line says whether running again helps), 1 unexpected. With --every: each run's code "
        "on its failure line; 0 after SIGTERM, 130 after SIGINT.",
    )
    add_options(parser, (*_EXPORT_OPTIONS, _NO_PROGRESS, _PUBLISH), _SHOWN_DEFAULTS)
    add_store_options(parser)
    add_options(parser, (_EVERY, _METRICS_TEXTFILE), _SHOWN_DEFAULTS)
    _add_logging(parser)
    add_version_option(parser)
    return parser


@dataclasses.dataclass(frozen=True)
class _Job:
    """What every run of one ``avap-export`` does: the export, then the store, then the metrics file."""

    config: ExportConfig
    store: Remote | None = None
    textfile: metrics.Textfile | None = None


def _run_export(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    values = resolve(args, env, _EXPORT_OPTIONS)
    if "signing_key" not in values and env.get("AVAP_SIGNING_KEY"):
        # The key itself only ever comes from the environment or a file, never a flag that shows in ps.
        values["signing_key"] = env["AVAP_SIGNING_KEY"].encode("utf-8")
    quiet = resolve(args, env, (_NO_PROGRESS,)).get(_NO_PROGRESS.field, False)
    config = ExportConfig(**values, progress=not quiet and sys.stderr.isatty())
    extra = resolve(args, env, (_PUBLISH, _EVERY, _METRICS_TEXTFILE))
    # A bad URL is refused before any work.
    store = open_remote(extra["publish"], "--publish", store_options(args, env)) if "publish" in extra else None
    textfile = _metrics_textfile(extra["metrics_textfile"], config) if "metrics_textfile" in extra else None
    job = _Job(config, store, textfile)
    if "every_s" in extra:
        return schedule.run_every(extra["every_s"], lambda signals: _run_once(job, signals.interruptible), prog=PROG)
    end = _run_once(job, contextlib.nullcontext)
    if end.failure is not None:
        print(f"{PROG}: {end.failure}", file=sys.stderr, flush=True)
    return end.code


def _metrics_textfile(path: Path, config: ExportConfig) -> metrics.Textfile:
    if not path.parent.is_dir():  # refused before any work, not after the first run
        raise ConfigError(f"--metrics-textfile {path}: the folder {path.parent} does not exist")
    return metrics.Textfile(path, mode=config.file_mode)


def _run_once(job: _Job, interruptible: Callable[[], contextlib.AbstractContextManager[None]]) -> schedule.RunEnd:
    """One run: export, print its summary, publish to the store, then write its metrics. Errors become exit codes;
    an interrupt (KeyboardInterrupt, or ``schedule.Stopped`` within ``interruptible``) goes through, unrecorded."""
    config, started, result = job.config, time.monotonic(), None
    stored = None if job.store is None else False  # False until the store announces the newest version
    try:
        with interruptible():
            result = run_export(config, progress=sys.stderr if config.progress else None)
        print(result.summary(), flush=True)  # not interrupted: a stop after it finds the run done
        failure = None
        if job.store is not None:
            with interruptible():
                failure = _publish(job.store, config.snapshots)
        stored = None if job.store is None else failure is None
        end = schedule.RunEnd(EXIT_OK if failure is None else EXIT_STORE, failure)
    except Exception as exc:
        end = _failure(exc)
    if job.textfile is not None:
        _record(job.textfile, end.code, time.monotonic() - started, result, stored)
    return end


def _failure(exc: Exception) -> schedule.RunEnd:
    code = _exit_code(exc)
    if code is None:
        logger.exception("unexpected error")
        return schedule.RunEnd(EXIT_UNEXPECTED, f"unexpected error: {exc}")
    return schedule.RunEnd(code, str(exc))


def _record(
    textfile: metrics.Textfile, code: int, seconds: float, result: ExportResult | None, stored: bool | None
) -> None:
    record = metrics.RunRecord(code, seconds, time.time(), result, stored)
    try:
        textfile.record(record)
    except OSError as exc:  # the run's own code stands; the metrics' last success goes stale, which alerts
        print(f"{PROG}: cannot write the metrics textfile {textfile.path}: {exc.strerror or exc}", file=sys.stderr)


def _publish(store: Remote, folder: Path) -> str | None:
    """Publish the folder's newest version to the store, under the folder's lock (so retention agrees).

    Returns:
        None, or the line saying why the store does not announce the version (exit 10): it was not reached
        (the next run completes it), refused the credentials or holds another exporter's versions (the next
        run does not, until that changes).
    """
    from avapdefs.remote import PublishConflictError, RemoteError, StoreRefusedError

    try:
        with folder_lock(folder):
            published = store.publish(folder)
    except PublishConflictError as exc:
        return (
            f"{exc}; published locally only, and running again does not change that: one exporter per store URL, "
            f"and a folder that lost its versions is refilled first (avap-sync --from {store.url} --dest {folder})"
        )
    except StoreRefusedError as exc:
        return (
            f"{exc}; published locally only, and running again does not change that until the store accepts "
            "the credentials (--store-credentials, or AWS_* and the like)"
        )
    except RemoteError as exc:
        return f"{exc}; published locally only (the next run completes it)"
    announcement = published.announcement
    if published.announced:
        uploaded = f"{len(published.uploaded)} object{'' if len(published.uploaded) == 1 else 's'} uploaded"
        print(f"announced version {announcement.version} in {store.url} ({uploaded})", flush=True)
    else:
        print(f"{store.url} already announces version {announcement.version}", flush=True)
    return None


def _inspect_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} inspect",
        description="Verify a snapshot file and describe it (a delta file: its base, target and counts); "
        "with --diff, list the commands added (+), removed (-) and changed (~) from FILE to OTHER. "
        "Exit code 9 when a file is not a valid snapshot or delta.",
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="the snapshot (or delta) file")
    parser.add_argument("--diff", type=Path, metavar="OTHER", help="a newer snapshot to compare FILE with")
    _add_logging(parser)
    return parser


def _run_inspect(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    lines = inspection.diff(args.file, args.diff) if args.diff else inspection.describe(args.file)
    print("\n".join(lines), flush=True)
    return EXIT_OK


_SAMPLE_OPTIONS = tuple(option for option in _EXPORT_OPTIONS if option.field in ("dsn", "connect_timeout_s"))


def _sample_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} load-sample",
        description="Create the legacy tables (exporter/schema.sql) if missing and load the sample catalog: "
        "AVAP's own commands plus generated connector commands.",
    )
    add_options(parser, _SAMPLE_OPTIONS, _DEFAULTS)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--replace", action="store_true", help="empty both tables first")
    what.add_argument("--if-empty", action="store_true", help="do nothing (exit 0) when the table has rows")
    _add_logging(parser)
    return parser


def _run_load_sample(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    values = resolve(args, env, _SAMPLE_OPTIONS)
    config = ExportConfig(**values)
    with connect(config.dsn, connect_timeout_s=config.connect_timeout_s) as conn:
        loaded = load_sample(conn, replace=args.replace, if_empty=args.if_empty)
    print(f"loaded {loaded} sample commands" if loaded else "table not empty; sample not loaded", flush=True)
    return EXIT_OK


_COMMANDS: dict[
    str, tuple[Callable[[], argparse.ArgumentParser], Callable[[argparse.Namespace, Mapping[str, str]], int]]
] = {
    "inspect": (_inspect_parser, _run_inspect),
    "load-sample": (_sample_parser, _run_load_sample),
    "export": (_export_parser, _run_export),
}


def _exit_code(exc: Exception) -> int | None:
    return next((code for kind, code in _EXIT_CODES if isinstance(exc, kind)), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``avap-export`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    name = words.pop(0) if words and words[0] in _COMMANDS else "export"
    make_parser, run = _COMMANDS[name]
    try:
        args = make_parser().parse_args(words)
    except SystemExit as exc:  # argparse has printed the usage or the help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        level = resolve(args, os.environ, (_LOG_LEVEL,)).get("log_level", "WARNING")
    except OptionError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    handler = _configure_logging(level)
    try:
        return run(args, os.environ)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing published", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        code = _exit_code(exc)
        if code is None:
            logger.exception("unexpected error")
            return EXIT_UNEXPECTED
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        return code
    finally:
        logging.getLogger().removeHandler(handler)


def _configure_logging(level: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler
