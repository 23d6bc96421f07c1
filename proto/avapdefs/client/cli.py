"""``avap-sync`` (bring a local snapshot cache up to date) and ``avap-get`` (print one command).

Both take the options every client tool takes (``tool.py``): ``--server``
(``AVAP_SERVER``, default 127.0.0.1:50051), ``--api-key-file``
(``AVAP_API_KEY_FILE``) or ``AVAP_API_KEY``, the TLS options, ``--log-level``; ``avap-sync
--dest`` may come from ``AVAP_DEST``. ``avap-sync --from URL`` pulls from
object storage instead of a server (``avapdefs.remote``; the ``cloud``
extra), into the same cache format, reaching it as the ``--store-*``
options say (``avapdefs.cloud``).

Exit codes, for both programs:

    0  success (avap-sync: installed a new version, or already up to date)
    1  avap-get: the server has no command of that name
    2  bad usage
    3  the server could not be reached (retries and deadline included)
    4  the server refused the call (any other gRPC status); avap-sync --from: the store refused the credentials
    5  avap-sync: the stream broke or its data did not verify (--from: or nothing is announced); the cache is unchanged
    6  avap-sync: the destination folder cannot be written
    7  no secure connection (TLS): the message says what to change; avap-sync --watch gives up too
    130 interrupted (Ctrl-C); the cache is unchanged
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from avapdefs.about import add_version_option
from avapdefs.client import tool
from avapdefs.client.cache import SyncResult
from avapdefs.client.follow import describe, follow
from avapdefs.client.render import command_text, message_dict, plural
from avapdefs.client.rpc import DefinitionClient
from avapdefs.client.runner import Job, run
from avapdefs.cloud import StoreURLError, add_store_options, open_remote, store_options
from avapdefs.errors import AvapDefsError, CommandNotFoundError, ServerError, SyncError, TlsError
from avapdefs.options import Option
from avapdefs.progress import ProgressBar

if TYPE_CHECKING:
    from avapdefs.remote import PullResult

EXIT_SYNC_FAILED = 5
EXIT_CANNOT_WRITE = 6
_MB = 1_000_000
_WAIT_WORTH_SAYING_S = 0.5

SYNC_OPTIONS: tuple[Option, ...] = (
    tool.SERVER,
    Option("--dest", "AVAP_DEST", "dest", Path, "cache folder (required)"),
    Option(
        "--connect-timeout-s",
        "AVAP_CONNECT_TIMEOUT_S",
        "connect_timeout_s",
        tool.seconds,
        "how long to retry reaching the server",
        default=10,
    ),
    Option("--timeout-s", "AVAP_SYNC_TIMEOUT_S", "timeout_s", tool.seconds, "deadline of the transfer", default=600),
    Option(
        "--from",
        "AVAP_SYNC_FROM",
        "source",
        str,
        "pull from object storage instead of a server: s3://bucket/prefix, gs://, az://, file:///path "
        "(credentials and endpoint from the --store-* options, else AWS_* and the like; needs the cloud extra)",
    ),
    Option(
        "--poll-s",
        "AVAP_SYNC_POLL_S",
        "poll_s",
        tool.seconds,
        "with --from --watch: seconds between polls of the store's announcement (jittered)",
        default=5,
    ),
    tool.API_KEY_FILE,
    *tool.TLS_OPTIONS,
    tool.LOG_LEVEL,
)
GET_OPTIONS: tuple[Option, ...] = (
    tool.SERVER,
    Option("--timeout-s", "AVAP_TIMEOUT_S", "timeout_s", tool.seconds, "deadline, retries included", default=5),
    tool.API_KEY_FILE,
    *tool.TLS_OPTIONS,
    tool.LOG_LEVEL,
)

_SYNC_EPILOG = f"""\
examples:
  avap-sync --server 127.0.0.1:50051 --dest /var/cache/avap     # once, at a worker's boot
  AVAP_API_KEY_FILE=/run/secrets/avap-key avap-sync --dest ./cache --watch
  avap-sync --from s3://avap-snapshots/prod --dest ./cache --watch   # no server: the exporter's bucket

exit codes:
   0  a new version installed, or already up to date (--watch: stopped by SIGTERM)
   5  the stream broke or its data did not verify (--from: or nothing is announced yet); the cache is unchanged
   6  the destination folder cannot be written
 3, 4  --from: the store could not be reached (3), or refused the credentials (4)
{tool.SERVER_EXIT_CODES}; the cache is unchanged
"""
_GET_EPILOG = f"""\
examples:
  avap-get addVar
  avap-get addVar --json | jq .code
  avapctl get addVar if end      # several at once; avapctl ls, info, watch, health: the other calls

exit codes:
   0  printed
   1  the server has no command of that name
{tool.SERVER_EXIT_CODES}
"""


def _parser(prog: str, description: str, epilog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_version_option(parser)
    return parser


def _sync_parser() -> argparse.ArgumentParser:
    parser = _parser("avap-sync", "Bring a local snapshot cache up to date.", _SYNC_EPILOG)
    tool.add_common_options(parser, SYNC_OPTIONS)
    add_store_options(parser)
    parser.add_argument(
        "--watch",
        action="store_true",
        help="keep the cache current until stopped: sync each new version as it goes live; "
        "while the server is away, retry with jittered backoff, saying so once",
    )
    return parser


def summary(result: SyncResult, dest: Path) -> str:
    """The line ``avap-sync`` prints after a sync.

    The rate counts the transfer only, not the time spent waiting for a server to come back.
    """
    if result.up_to_date:
        return f"catalog version {result.info.version} in {dest} is up to date"
    rate = result.bytes_received / _MB / result.transfer_s if result.transfer_s > 0 else 0.0
    waited_s = result.seconds - result.transfer_s
    waited = f", after {waited_s:.1f} s reaching the server" if waited_s >= _WAIT_WORTH_SAYING_S else ""
    return (
        f"synced catalog version {result.info.version} ({plural(result.info.command_count, 'command')}"
        f"{', as a delta' if result.delta else ''}): "
        f"{result.bytes_received / _MB:.2f} MB in {result.transfer_s:.2f} s, {rate:.1f} MB/s{waited} -> {result.path}"
    )


def _is_fatal(exc: AvapDefsError | OSError) -> bool:
    # A refused key or certificate is the tool's configuration: no retry will change it.
    if isinstance(exc, TlsError):
        return True
    return isinstance(exc, ServerError) and not isinstance(exc, SyncError) and exc.code in tool.FATAL_CODES


def _sync(args: argparse.Namespace, job: Job) -> int:
    dest: Path | None = job.values.get("dest")
    if dest is None:
        tool.say("avap-sync", "give the cache folder: --dest DIR or AVAP_DEST")
        return tool.EXIT_USAGE
    source: str | None = job.values.get("source")
    if source is not None:
        return _pull(args, job, source, dest)
    with job.client(10.0, timeout_field="connect_timeout_s") as client:
        if args.watch:  # until SIGTERM or Ctrl-C sets job.stop
            follow(client, dest, job.stop, on_sync=lambda result: tool.emit(summary(result, dest)), fatal=_is_fatal)
            return tool.EXIT_OK
        return _sync_once(client, dest, job.values.get("timeout_s", 600.0))


def _sync_once(client: DefinitionClient, dest: Path, timeout_s: float) -> int:
    bar = ProgressBar(sys.stderr if sys.stderr.isatty() else None, None, unit="MB", per_unit=_MB)
    try:
        result = client.sync(dest, progress=bar.update, timeout_s=timeout_s)
    except SyncError as exc:
        tool.say("avap-sync", describe(exc))
        return EXIT_SYNC_FAILED
    except OSError as exc:
        tool.say("avap-sync", f"cannot write {dest}: {exc.strerror or exc}")
        return EXIT_CANNOT_WRITE
    finally:
        bar.close()
    tool.emit(summary(result, dest))
    return tool.EXIT_OK


def _pull(args: argparse.Namespace, job: Job, url: str, dest: Path) -> int:
    try:
        store = open_remote(
            url, "--from", store_options(args, os.environ), timeout_s=job.values.get("timeout_s", 600.0)
        )
    except StoreURLError as exc:
        tool.say("avap-sync", str(exc))
        return tool.EXIT_USAGE
    from avapdefs import remote  # importable: open_remote has imported it

    if args.watch:  # until SIGTERM or Ctrl-C sets job.stop
        follower = remote.Follower(store, dest, poll_s=job.values.get("poll_s", 5.0))
        follower.run(
            job.stop, first_now=True, installed=lambda result: tool.emit(pull_summary(result, dest, store.url))
        )
        return tool.EXIT_OK
    try:
        result = store.pull(dest)
    except remote.StoreUnavailableError as exc:
        tool.say("avap-sync", f"cannot reach the store: {exc}")
        return tool.EXIT_UNAVAILABLE
    except remote.StoreRefusedError as exc:
        tool.say("avap-sync", f"{exc}; check the store's credentials (--store-credentials, or AWS_* and the like)")
        return tool.EXIT_SERVER_ERROR
    except remote.RemoteError as exc:
        tool.say("avap-sync", str(exc))
        return EXIT_SYNC_FAILED
    except OSError as exc:
        tool.say("avap-sync", f"cannot write {dest}: {exc.strerror or exc}")
        return EXIT_CANNOT_WRITE
    tool.emit(pull_summary(result, dest, store.url))
    return tool.EXIT_OK


def pull_summary(result: PullResult, dest: Path, url: str) -> str:
    """The line ``avap-sync --from`` prints after a pull."""
    announcement = result.announcement
    if announcement is None or result.installed is None:
        version = announcement.version if announcement is not None else "?"
        return f"catalog version {version} in {dest} is up to date with {url}"
    rate = result.bytes_received / _MB / result.seconds if result.seconds > 0 else 0.0
    return (
        f"synced catalog version {announcement.version} ({plural(announcement.command_count, 'command')}"
        f"{', as a delta' if result.delta else ''}) from {url}: "
        f"{result.bytes_received / _MB:.2f} MB in {result.seconds:.2f} s, {rate:.1f} MB/s -> {result.installed}"
    )


def sync_main(argv: Sequence[str] | None = None) -> int:
    """``avap-sync``: sync the server's newest catalog into ``--dest``; returns the exit code."""
    interrupted = "interrupted; nothing partial is left in the cache"
    return run("avap-sync", _sync_parser(), SYNC_OPTIONS, _sync, argv, interrupted=interrupted, until_stopped=_watches)


def _watches(args: argparse.Namespace) -> bool:
    return bool(args.watch)


def _get_parser() -> argparse.ArgumentParser:
    parser = _parser("avap-get", "Print one command definition.", _GET_EPILOG)
    parser.add_argument("name", help="the command name, e.g. addVar")
    tool.add_common_options(parser, GET_OPTIONS)
    parser.add_argument("--json", action="store_true", help="print the whole Command message as JSON")
    return parser


def _get(args: argparse.Namespace, job: Job) -> int:
    try:
        with job.client(5.0) as client:
            command = client.get_command(args.name)
    except CommandNotFoundError as exc:
        tool.say("avap-get", exc.details)
        return tool.EXIT_NOT_FOUND
    tool.emit(json.dumps(message_dict(command), indent=2) if args.json else command_text(command))
    return tool.EXIT_OK


def get_main(argv: Sequence[str] | None = None) -> int:
    """``avap-get``: print the definition of one command; returns the exit code."""
    return run("avap-get", _get_parser(), GET_OPTIONS, _get, argv)
