"""What every client tool shares: its options and their notation, exit codes, and how it prints.

``avap-sync``, ``avap-get`` and ``avapctl`` read the same options the same
way (``avapdefs.options``: the flag, then its ``AVAP_*`` variable, then the
default): ``--server``/``AVAP_SERVER``, ``--api-key-file``/``AVAP_API_KEY_FILE``
or the key itself in ``AVAP_API_KEY``, ``--log-level``/``AVAP_LOG_LEVEL``.
``runner.run`` is the one frame around each tool's work.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from avapdefs.client.address import DEFAULT_SERVER, parse_server
from avapdefs.errors import ServerError
from avapdefs.options import Option, add_options, parse_log_level

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_SERVER_ERROR = 4
EXIT_INTERRUPTED = 130

# Statuses that no retry will change: a tool that runs until stopped gives up on them at once.
FATAL_CODES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "UNIMPLEMENTED", "INVALID_ARGUMENT"})


class _BadValue(argparse.ArgumentTypeError, ValueError):
    """A value's own message, which argparse shows (for a ValueError it shows only "invalid value")."""


def _checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def checked(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise _BadValue(str(exc)) from None

    checked.__name__ = parse.__name__
    return checked


def _positive_s(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{text!r} is not a number of seconds above 0")
    return value


def _positive_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{text!r} is not a whole number above 0")
    return value


seconds = _checked(_positive_s)
"""Parses a duration in seconds above 0, with a clear message otherwise."""

count = _checked(_positive_count)
"""Parses a whole number above 0, with a clear message otherwise."""

SERVER = Option("--server", "AVAP_SERVER", "server", _checked(parse_server), "HOST:PORT of the server")
API_KEY_FILE = Option(
    "--api-key-file",
    "AVAP_API_KEY_FILE",
    "api_key_file",
    Path,
    "file holding the API key a server started with one wants in x-avap-auth; the key itself may be "
    "given as AVAP_API_KEY (never as a flag, so it does not show in ps)",
)
LOG_LEVEL = Option("--log-level", "AVAP_LOG_LEVEL", "log_level", parse_log_level, "logging level", default="warning")
COMMON_OPTIONS = (SERVER, API_KEY_FILE, LOG_LEVEL)
COMMON_DEFAULTS: dict[str, object] = {"server": DEFAULT_SERVER, "log_level": "warning"}

SERVER_EXIT_CODES = """\
   2  bad usage: an unknown option, a malformed --server, a blank API key
   3  the server could not be reached (retries and deadline included); the message names it
   4  the server refused the call (any other gRPC status, e.g. UNAUTHENTICATED: give the API key)
 130  interrupted (Ctrl-C)"""


def add_common_options(parser: argparse.ArgumentParser, options: Sequence[Option] = COMMON_OPTIONS) -> None:
    """Give ``parser`` the options every client tool takes (or ``options``), in the shared notation."""
    add_options(parser, options, COMMON_DEFAULTS)


_silenced = threading.Event()


def silence() -> None:
    """From now on ``emit`` and ``say`` print nothing: the tool has said how it ends, and its work,
    stopped under it, would only add noise about the stop (a cancelled stream, say)."""
    _silenced.set()


def unsilence() -> None:
    """Undo ``silence`` (for a tool run again in the same process, as the tests do)."""
    _silenced.clear()


def emit(text: str) -> None:
    """Print ``text`` on stdout, at once; a reader that went away (``avapctl ls | head``) is not an error."""
    if _silenced.is_set():
        return
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not report it either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def say(prog: str, message: str) -> None:
    """One line on stderr: ``prog: message``."""
    if _silenced.is_set():
        return
    print(f"{prog}: {message}", file=sys.stderr, flush=True)


def refusal(exc: ServerError) -> str:
    """A refused call in words, with what to do about a missing or wrong API key."""
    hint = "; give the key with --api-key-file or AVAP_API_KEY" if exc.code == "UNAUTHENTICATED" else ""
    return f"the server refused the call: {exc}{hint}"
