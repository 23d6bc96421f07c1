"""What every client tool shares: its options and their notation, exit codes, and how it prints.

``avap-sync``, ``avap-get`` and ``avapctl`` read the same options the same
way (``avapdefs.options``: the flag, then its ``AVAP_*`` variable, then the
default): ``--server``/``AVAP_SERVER``, ``--api-key-file``/``AVAP_API_KEY_FILE``
or the key itself in ``AVAP_API_KEY``, the TLS options (``--tls``,
``--tls-ca``, ``--tls-cert``, ``--tls-key``, ``--tls-server-name``: any of them
turns TLS on), ``--log-level``/``AVAP_LOG_LEVEL``.
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
from avapdefs.options import Option, add_options, parse_bool, parse_log_level
from avapdefs.tls import ClientTls

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_SERVER_ERROR = 4
EXIT_TLS = 7
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
TLS_OPTIONS = (
    Option(
        "--tls",
        "AVAP_TLS",
        "tls",
        parse_bool,
        "speak TLS, trusting the system's CAs (any other --tls option turns TLS on too)",
        switch=True,
    ),
    Option("--tls-ca", "AVAP_TLS_CA", "tls_ca", Path, "speak TLS, trusting the CA certificates (PEM) in this file"),
    Option(
        "--tls-cert",
        "AVAP_TLS_CERT",
        "tls_cert",
        Path,
        "mutual TLS: this client's certificate (PEM), for a server that wants one; needs --tls-key",
    ),
    Option("--tls-key", "AVAP_TLS_KEY", "tls_key", Path, "the client certificate's private key (PEM, unencrypted)"),
    Option(
        "--tls-server-name",
        "AVAP_TLS_SERVER_NAME",
        "tls_server_name",
        str,
        "the name the server's certificate must hold (default: the host of --server)",
    ),
)
LOG_LEVEL = Option("--log-level", "AVAP_LOG_LEVEL", "log_level", parse_log_level, "logging level", default="warning")
COMMON_OPTIONS = (SERVER, API_KEY_FILE, *TLS_OPTIONS, LOG_LEVEL)
COMMON_DEFAULTS: dict[str, object] = {"server": DEFAULT_SERVER, "log_level": "warning"}

SERVER_EXIT_CODES = """\
   2  bad usage: an unknown option, a malformed --server, a blank API key
   3  the server could not be reached (retries and deadline included); the message names it
   4  the server refused the call (any other gRPC status, e.g. UNAUTHENTICATED: give the API key)
   7  no secure connection: TLS on one side only, the server's certificate not trusted,
      or a client certificate missing or refused (mutual TLS); the message says which
 130  interrupted (Ctrl-C)"""


def client_tls(values: dict[str, Any]) -> ClientTls | None:
    """The TLS a tool's clients speak, from its TLS options (taken out of ``values``); None: plaintext.

    Raises:
        TlsFileError: a file cannot be used; its ``field`` names the option.
    """
    wanted = bool(values.pop("tls", False))
    ca, cert, key, name = (values.pop(field, None) for field in ("tls_ca", "tls_cert", "tls_key", "tls_server_name"))
    if not wanted and ca is None and cert is None and key is None and name is None:
        return None
    return ClientTls.from_files(ca, cert, key, name)


def named(field: str, message: str, options: Sequence[Option], args: argparse.Namespace) -> str:
    """``message`` led by the flag, or the variable, the value of ``field`` came from."""
    option = next((option for option in options if option.field == field), None)
    if option is None:
        return message
    return f"{option.flag if getattr(args, field, None) is not None else option.env}: {message}"


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
