"""``avapctl``: a command for every read call of a definition server, for operators and scripts.

    avapctl info              the live version, its pin, age and counts (GetCatalogInfo)
    avapctl ls [PREFIX]       command names, all pages (ListCommands)
    avapctl get NAME...       command definitions (BatchGetCommands)
    avapctl watch             each version as it goes live (WatchCatalog), until stopped
    avapctl health            the gRPC health status; exit 0 when SERVING (for health checks)

Each takes ``--json`` and the options every client tool takes (``tool.py``),
before or after the subcommand.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import threading
from collections.abc import Callable, Sequence

from grpc_health.v1 import health_pb2

from avapdefs.about import add_version_option
from avapdefs.client import tool
from avapdefs.client.follow import FIRST_BACKOFF_S, MAX_BACKOFF_S, backoff_s, describe
from avapdefs.client.render import command_text, info_text, live_text, message_dict, snapshot_age_s
from avapdefs.client.rpc import DefinitionClient
from avapdefs.client.runner import Job, run
from avapdefs.errors import ServerError, ServerUnavailableError, TlsError
from avapdefs.options import Option

logger = logging.getLogger(__name__)

PROG = "avapctl"
TIMEOUT = Option("--timeout-s", "AVAP_TIMEOUT_S", "timeout_s", tool.seconds, "deadline of each call", default=5)
OPTIONS: tuple[Option, ...] = (tool.SERVER, TIMEOUT, tool.API_KEY_FILE, *tool.TLS_OPTIONS, tool.LOG_LEVEL)

_EXIT_CODES = f"""\
exit codes:
   0  done (health: the server is SERVING)
   1  get: a name the catalog does not hold; health: the server answers, but is not SERVING
{tool.SERVER_EXIT_CODES}"""
_EXAMPLES = {
    "info": "avapctl info\n  avapctl info --json | jq .age_s",
    "ls": "avapctl ls\n  avapctl ls add --json | jq '.names | length'",
    "get": "avapctl get addVar if end\n  avapctl get addVar --json | jq '.commands[0].code'",
    "watch": "avapctl watch\n  avapctl watch --count 1 --json     # wait for the next version, print it, exit",
    "health": "avapctl health --server 127.0.0.1:50051 --timeout-s 2     # a container's health check",
}
_HELP = {
    "info": "the live version, its pin, age and counts",
    "ls": "command names with a prefix, every page",
    "get": "command definitions, several at once",
    "watch": "print each version as it goes live, until stopped",
    "health": "the gRPC health status; exit 0 when SERVING",
}


def _info(client: DefinitionClient, args: argparse.Namespace, stop: threading.Event) -> int:
    info = client.catalog_info()
    if args.json:
        tool.emit(json.dumps({"server": client.server, **message_dict(info), "age_s": round(snapshot_age_s(info), 3)}))
    else:
        tool.emit(info_text(info, client.server))
    return tool.EXIT_OK


def _ls(client: DefinitionClient, args: argparse.Namespace, stop: threading.Event) -> int:
    names: list[str] = []
    versions: list[int] = []
    for page in client.list_commands(args.prefix, page_size=args.page_size):
        if args.json:
            names.extend(page.names)
        elif page.names:
            tool.emit("\n".join(page.names))
        if page.catalog_version not in versions:
            versions.append(page.catalog_version)
    if len(versions) > 1:
        tool.say(PROG, f"the catalog changed from version {versions[0]} to {versions[-1]} while listing")
    if args.json:
        tool.emit(json.dumps({"catalog_version": versions[-1], "names": names}))
    return tool.EXIT_OK


def _get(client: DefinitionClient, args: argparse.Namespace, stop: threading.Event) -> int:
    answer = client.batch_get(args.names)
    if args.json:
        tool.emit(json.dumps(message_dict(answer), indent=2))
    else:
        tool.emit("\n\n".join(command_text(command) for command in answer.commands))
    for name in answer.missing_names:
        tool.say(PROG, f"no command named {name!r} in catalog version {answer.catalog_version}")
    return tool.EXIT_NOT_FOUND if answer.missing_names else tool.EXIT_OK


def _health(client: DefinitionClient, args: argparse.Namespace, stop: threading.Event) -> int:
    status = client.health(args.service)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    tool.emit(json.dumps({"server": client.server, "service": args.service, "status": name}) if args.json else name)
    return tool.EXIT_OK if status == health_pb2.HealthCheckResponse.SERVING else tool.EXIT_NOT_FOUND


def _watch(client: DefinitionClient, args: argparse.Namespace, stop: threading.Event) -> int:
    # Until --count versions were printed, or SIGTERM or Ctrl-C sets stop (and closes the client).
    watcher = _Watcher(client, args.json, args.count, stop)
    while not watcher.done:
        try:
            watcher.follow()
        except ServerError as exc:
            if stop.is_set():
                break  # the stop closed the channel under the stream
            if exc.code in tool.FATAL_CODES or isinstance(exc, TlsError):
                raise
            watcher.failed(exc)
    return tool.EXIT_OK


class _Watcher:
    """One WatchCatalog stream after another: prints each new version, and says once when the server is away."""

    def __init__(self, client: DefinitionClient, as_json: bool, count: int | None, stop: threading.Event) -> None:
        self._client = client
        self._stop = stop
        self._as_json = as_json
        self._left = count
        self._have_version = 0
        self._failures = 0
        self._rng = random.Random()

    @property
    def done(self) -> bool:
        return self._stop.is_set() or (self._left is not None and self._left <= 0)

    def follow(self) -> None:
        call = self._client.watch(self._have_version)
        try:
            for message in call:
                self._failures = 0
                if message.WhichOneof("event") == "catalog" and message.catalog.version != self._have_version:
                    self._have_version = message.catalog.version
                    info = message.catalog
                    tool.emit(json.dumps(message_dict(info)) if self._as_json else live_text(info))
                    self._left = None if self._left is None else self._left - 1
                    if self.done:
                        return
        finally:
            call.cancel()
        raise ServerUnavailableError("UNAVAILABLE", f"{self._client.server} closed the watch stream")

    def failed(self, exc: ServerError) -> None:
        if self._failures == 0:
            tool.say(
                PROG,
                f"{describe(exc)}; retrying until it answers, after a backoff of {FIRST_BACKOFF_S:g} s "
                f"doubling to {MAX_BACKOFF_S:g} s (jittered), without saying so again",
            )
        delay = backoff_s(self._failures, rng=self._rng)
        logger.debug("watching %s: %s; retry %d in %.1f s", self._client.server, describe(exc), self._failures, delay)
        self._failures += 1
        self._stop.wait(delay)


Handler = Callable[[DefinitionClient, argparse.Namespace, threading.Event], int]
_HANDLERS: dict[str, Handler] = {"info": _info, "ls": _ls, "get": _get, "watch": _watch, "health": _health}


def _add_arguments(name: str, sub: argparse.ArgumentParser) -> None:
    if name == "ls":
        sub.add_argument("prefix", nargs="?", default="", help="only names that start with it (default: all)")
        sub.add_argument(
            "--page-size", type=tool.count, default=1000, help="names per call (the server caps it at 1000)"
        )
    elif name == "get":
        sub.add_argument("names", nargs="+", metavar="NAME", help="command names")
    elif name == "watch":
        sub.add_argument("--count", type=tool.count, help="exit 0 after this many versions (the live one counts)")
    elif name == "health":
        sub.add_argument("--service", default="", help="a service name; '' (default) is the whole server")
    json_help = "one JSON object a line, per version" if name == "watch" else "print JSON, for scripts"
    sub.add_argument("--json", action="store_true", help=json_help)


def _parser() -> argparse.ArgumentParser:
    epilog = "examples:\n" + "".join(f"  {examples}\n" for examples in _EXAMPLES.values()) + "\n" + _EXIT_CODES
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Ask a definition server: one subcommand per read call.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version_option(parser)
    tool.add_common_options(parser, OPTIONS)
    # Each subcommand takes the same options after its name; left unset there, they keep
    # the values given before it (argparse would otherwise reset them to None).
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    tool.add_common_options(common, OPTIONS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in _HELP.items():
        sub = commands.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=f"{help_text[:1].upper()}{help_text[1:]}.",
            epilog=f"examples:\n  {_EXAMPLES[name]}\n\n{_EXIT_CODES}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_arguments(name, sub)
    return parser


def _run(args: argparse.Namespace, job: Job) -> int:
    with job.client(5.0) as client:
        return _HANDLERS[args.command](client, args, job.stop)


def main(argv: Sequence[str] | None = None) -> int:
    """``avapctl``: run one subcommand against a definition server; returns the exit code."""
    return run(PROG, _parser(), OPTIONS, _run, argv, until_stopped=_watches)


def _watches(args: argparse.Namespace) -> bool:
    return bool(args.command == "watch")
