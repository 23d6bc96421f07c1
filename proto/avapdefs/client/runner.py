"""How a client tool runs: options resolved, its work on a thread of its own, every ending one line and a code.

A signal handler's exception lands wherever the main thread is. Inside grpc,
a KeyboardInterrupt can leave a call half made, and the channel then waits
for it forever when it is closed or collected (seen with grpcio 1.85: a
SIGTERM during ``WatchCatalog``'s call creation hung the process). So the
main thread here runs no grpc at all: it waits for the work's thread, and on
Ctrl-C or SIGTERM it sets the job's ``stop``, closes the job's clients (which
cancels their streams, so a sync in progress removes its temporary file), gives
the work a moment to unwind, and returns. A call still blocked then is left to
the process's exit (the thread is a daemon).

Endings: a bad option or variable (a TLS file that cannot be used included)
is one line and exit 2; an unreachable server one line naming it and exit 3;
a refusal one line and exit 4; no secure connection (TLS) one line saying
what to do and exit 7; Ctrl-C one line and exit 130; SIGTERM, for a tool
that runs until stopped, a normal end (exit 0). Never a traceback, except
for a bug.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from avapdefs.client.address import DEFAULT_SERVER
from avapdefs.client.auth import api_key_from
from avapdefs.client.rpc import DefinitionClient
from avapdefs.client.tool import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SERVER_ERROR,
    EXIT_TLS,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    client_tls,
    named,
    refusal,
    say,
    silence,
    unsilence,
)
from avapdefs.errors import ServerError, ServerUnavailableError, TlsError, TlsFileError
from avapdefs.options import Option, resolve

_SIGNAL_CHECK_S = 0.1
_UNWIND_S = 2.0  # how long a stopped job may take to clean up (remove a temporary file) before the tool returns


@dataclass
class Job:
    """What a tool's work is given: the resolved settings, and a stop to heed.

    Attributes:
        values: the options given as a flag or a variable (absent otherwise), ``api_key`` and ``tls``.
        stop: set when the tool is told to stop (SIGTERM, Ctrl-C); the clients are closed then too.
    """

    values: dict[str, Any]
    stop: threading.Event = field(default_factory=threading.Event)
    _clients: list[DefinitionClient] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, default_timeout_s: float, *, timeout_field: str = "timeout_s") -> DefinitionClient:
        """A client for ``--server`` with the API key and TLS; its deadline is ``timeout_field``'s value or the
        default."""
        client = DefinitionClient(
            self.values.get("server", DEFAULT_SERVER),
            api_key=self.values.get("api_key"),
            tls=self.values.get("tls"),
            timeout_s=self.values.get(timeout_field, default_timeout_s),
        )
        with self._lock:
            self._clients.append(client)
        return client

    def cancel(self) -> None:
        """Set ``stop`` and close every client, which cancels its calls; from any thread."""
        self.stop.set()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.close()


Body = Callable[[argparse.Namespace, Job], int]
"""A tool's work: ``body(args, job)`` returns the exit code; it runs on a thread of its own."""


class _Terminated(BaseException):
    """SIGTERM arrived while a tool that runs until stopped was running."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def run(
    prog: str,
    parser: argparse.ArgumentParser,
    options: Sequence[Option],
    body: Body,
    argv: Sequence[str] | None,
    *,
    interrupted: str = "interrupted",
    until_stopped: Callable[[argparse.Namespace], bool] = lambda args: False,
) -> int:
    """Parse ``argv``, resolve ``options``, the API key and TLS, configure logging, run ``body``; return the exit code.

    Args:
        prog: the tool's name, the prefix of its messages.
        parser: its parser.
        options: the options to resolve from flags and variables.
        body: the work.
        argv: the arguments after the program name; ``sys.argv[1:]`` when None.
        interrupted: the line printed (after ``prog:``) on Ctrl-C.
        until_stopped: whether these arguments run until stopped; SIGTERM is then a normal end (exit 0).
    """
    handler: logging.Handler | None = None
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse has printed the usage or the help
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        try:
            values = resolve(args, os.environ, options)
            handler = _configure_logging(prog, values.pop("log_level", "WARNING"))
            values["api_key"] = api_key_from(values.pop("api_key_file", None), os.environ)
            values["tls"] = client_tls(values)
        except TlsFileError as exc:
            say(prog, named(exc.field, str(exc), options, args))
            return EXIT_USAGE
        except ValueError as exc:  # OptionError included
            say(prog, str(exc))
            return EXIT_USAGE
        return _run_job(prog, body, args, Job(values), until_stopped(args), interrupted)
    except KeyboardInterrupt:  # before the work started: nothing to stop
        say(prog, interrupted)
        return EXIT_INTERRUPTED
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)


def _run_job(prog: str, body: Body, args: argparse.Namespace, job: Job, until_stopped: bool, interrupted: str) -> int:
    outcome: list[int | BaseException] = []
    worker = threading.Thread(target=_work, args=(prog, body, args, job, outcome), name=prog, daemon=True)
    previous_int = signal.getsignal(signal.SIGINT)
    previous_term = signal.signal(signal.SIGTERM, _terminate) if until_stopped else None
    try:
        worker.start()
        # The main thread waits here, and only here, for a signal. In slices: a signal the kernel
        # delivers to one of grpc's threads does not wake a wait without a timeout.
        while worker.is_alive():
            worker.join(_SIGNAL_CHECK_S)
    except (KeyboardInterrupt, _Terminated) as exc:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the clean-up
        if not isinstance(exc, _Terminated):
            say(prog, interrupted)
        _stop(job, worker)
        return EXIT_OK if isinstance(exc, _Terminated) else EXIT_INTERRUPTED
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result  # a bug: its traceback is the report
    return result


def _work(prog: str, body: Body, args: argparse.Namespace, job: Job, outcome: list[int | BaseException]) -> None:
    try:
        outcome.append(_guarded(prog, body, args, job))
    except BaseException as exc:  # handed to the main thread, which decides
        outcome.append(exc)


def _stop(job: Job, worker: threading.Thread) -> None:
    # The tool has said how it ends: what the work says while it unwinds is about the stop itself.
    silence()
    logging.disable(logging.CRITICAL)
    try:
        # Closing a channel can wait for a blocking call in flight: close on a thread of its own.
        threading.Thread(target=job.cancel, name="stop", daemon=True).start()
        worker.join(_UNWIND_S)
    finally:
        logging.disable(logging.NOTSET)
        unsilence()


def _guarded(prog: str, body: Body, args: argparse.Namespace, job: Job) -> int:
    try:
        return body(args, job)
    except TlsError as exc:
        say(prog, exc.details)
        return EXIT_TLS
    except ServerUnavailableError as exc:
        say(prog, exc.details)
        return EXIT_UNAVAILABLE
    except ServerError as exc:
        say(prog, refusal(exc))
        return EXIT_SERVER_ERROR


def _configure_logging(prog: str, level: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prog}: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler
