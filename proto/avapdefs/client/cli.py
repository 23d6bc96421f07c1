"""``avap-sync`` (bring a local snapshot cache up to date) and ``avap-get`` (print one command).

``--server`` defaults to the ``AVAP_SERVER`` variable, else 127.0.0.1:50051;
``avap-sync --dest`` to ``AVAP_DEST``.

Exit codes, for both programs:

    0  success (avap-sync: installed a new version, or already up to date)
    1  avap-get: the server has no command of that name
    2  bad usage
    3  the server could not be reached (retries and deadline included)
    4  the server refused the call (any other gRPC status)
    5  avap-sync: the stream broke or its data did not verify; the cache is unchanged
    6  avap-sync: the destination folder cannot be written
    130 interrupted (Ctrl-C); the cache is unchanged
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import json_format

from avapdefs.client.follow import follow
from avapdefs.client.rpc import DEFAULT_SERVER, DefinitionClient, SyncResult
from avapdefs.errors import CommandNotFoundError, ServerError, ServerUnavailableError, SyncError
from avapdefs.progress import ProgressBar
from avapdefs.v1.definitions_pb2 import Command

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_SERVER_ERROR = 4
EXIT_SYNC_FAILED = 5
EXIT_CANNOT_WRITE = 6
EXIT_INTERRUPTED = 130
_MB = 1_000_000


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def _server_error_exit(exc: ServerError) -> int:
    logging.getLogger(__name__).error("%s", exc)
    return EXIT_UNAVAILABLE if isinstance(exc, ServerUnavailableError) else EXIT_SERVER_ERROR


def _summary(result: SyncResult, dest: Path) -> str:
    if result.up_to_date:
        return f"catalog version {result.info.version} in {dest} is up to date"
    rate = result.bytes_received / _MB / result.seconds if result.seconds > 0 else 0.0
    return (
        f"synced catalog version {result.info.version} ({result.info.command_count} commands"
        f"{', as a delta' if result.delta else ''}): "
        f"{result.bytes_received / _MB:.2f} MB in {result.seconds:.2f} s, {rate:.1f} MB/s -> {result.path}"
    )


def _sync_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avap-sync", description="Bring a local snapshot cache up to date.")
    parser.add_argument(
        "--server", default=os.environ.get("AVAP_SERVER", DEFAULT_SERVER), help="HOST:PORT [AVAP_SERVER]"
    )
    dest = os.environ.get("AVAP_DEST")
    parser.add_argument("--dest", type=Path, default=dest, required=dest is None, help="cache folder [AVAP_DEST]")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="deadline of the transfer (default 600)")
    parser.add_argument(
        "--connect-timeout-s", type=float, default=10.0, help="how long to retry reaching the server (default 10)"
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="keep the cache current until SIGINT/SIGTERM: sync each new version as it goes live, "
        "reconnecting with jittered backoff",
    )
    return parser


def _follow(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    with DefinitionClient(args.server, timeout_s=args.connect_timeout_s) as client:
        follow(client, args.dest, stop, on_sync=lambda result: _print(_summary(result, args.dest)))
    return EXIT_OK


def sync_main(argv: Sequence[str] | None = None) -> int:
    """``avap-sync``: sync the server's newest catalog into ``--dest``; returns the exit code."""
    args = _parse(_sync_parser(), argv)
    if isinstance(args, int):
        return args
    logging.basicConfig(level=logging.WARNING, format="avap-sync: %(levelname)s: %(message)s")
    if args.watch:
        return _follow(args)
    bar = ProgressBar(sys.stderr if sys.stderr.isatty() else None, None, unit="MB", per_unit=_MB)
    try:
        with DefinitionClient(args.server, timeout_s=args.connect_timeout_s) as client:
            result = client.sync(args.dest, progress=bar.update, timeout_s=args.timeout_s)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except SyncError as exc:
        logging.getLogger(__name__).error("%s", exc)
        return EXIT_SYNC_FAILED
    except ServerError as exc:
        return _server_error_exit(exc)
    except OSError as exc:
        logging.getLogger(__name__).error("cannot write %s: %s", args.dest, exc)
        return EXIT_CANNOT_WRITE
    finally:
        bar.close()
    print(_summary(result, args.dest))
    return EXIT_OK


def _print(text: str) -> None:
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # The reader went away (`avap-get x | head`): not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not report it either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _text(command: Command) -> str:
    lines = [f"{command.name} ({command.type})", f"interface: {command.interface_json}"]
    if command.description:
        lines.append(f"description: {command.description}")
    lines += ["code:", command.code.rstrip("\n")]
    return "\n".join(lines)


def _get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avap-get", description="Print one command definition.")
    parser.add_argument("name", help="the command name, e.g. addVar")
    parser.add_argument(
        "--server", default=os.environ.get("AVAP_SERVER", DEFAULT_SERVER), help="HOST:PORT [AVAP_SERVER]"
    )
    parser.add_argument("--json", action="store_true", help="print the whole Command message as JSON")
    parser.add_argument("--timeout-s", type=float, default=5.0, help="deadline, retries included (default 5)")
    return parser


def get_main(argv: Sequence[str] | None = None) -> int:
    """``avap-get``: print the definition of one command; returns the exit code."""
    args = _parse(_get_parser(), argv)
    if isinstance(args, int):
        return args
    logging.basicConfig(level=logging.WARNING, format="avap-get: %(levelname)s: %(message)s")
    try:
        with DefinitionClient(args.server, timeout_s=args.timeout_s) as client:
            command = client.get_command(args.name)
    except CommandNotFoundError as exc:
        logging.getLogger(__name__).error("%s", exc.details)
        return EXIT_NOT_FOUND
    except ServerError as exc:
        return _server_error_exit(exc)
    if args.json:
        _print(json.dumps(json_format.MessageToDict(command, preserving_proto_field_name=True), indent=2))
    else:
        _print(_text(command))
    return EXIT_OK
