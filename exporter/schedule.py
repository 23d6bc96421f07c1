"""``avap-export --every``: the export on a schedule in one long-lived process, until SIGTERM or SIGINT.

Runs start one interval apart, counted from the start of the one before (a
fixed rate, not a fixed pause), and never overlap: a run that takes longer
than the interval is followed by the next one at once, and the ticks it
missed are not made up. Each run is the one-shot run, with its lock, output
and exit code; a failed one (the database down, another exporter holding the
folder's lock) prints its one line with its exit code and the loop goes on.

Stopping. A signal between runs ends the wait at once. A signal during a run
interrupts it as Ctrl-C interrupts a one-shot run: as a ``KeyboardInterrupt``
(``Stopped``), which psycopg answers by cancelling the statement in the
server, and on which every file the run was writing removes its temp file,
so nothing is left half-written and nothing half-read is published. A run
may take as long as the statement timeout (600 s by default) while
``docker stop`` and Kubernetes kill after 10 and 30 s, and the next run does
the interrupted one's work anyway: interrupting is the safe choice, waiting
would end in SIGKILL. What follows a run (its output line and its metrics
file) is never interrupted: a signal then is acted on once it is written.

Exit code: 0 after SIGTERM (a service manager's ordinary stop), 130 after
SIGINT (Ctrl-C, as in every tool), whether a run was under way or not.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

EXIT_STOPPED = 0  # SIGTERM
EXIT_INTERRUPTED = 130  # SIGINT


class Stopped(KeyboardInterrupt):
    """A stop signal arrived while a run or the wait for one could be interrupted.

    A KeyboardInterrupt, so that psycopg cancels the statement under way as it does on Ctrl-C.

    Attributes:
        signum: the signal.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class RunEnd:
    """How a run ended.

    Attributes:
        code: its exit code.
        failure: the line a failed run prints (without the program's name); None when it succeeded.
    """

    code: int
    failure: str | None = None


class StopSignals:
    """SIGTERM and SIGINT while in a ``with`` block: raised as ``Stopped`` within ``interruptible()``,
    else kept until the next ``interruptible()`` begins. Main thread only (signal handlers run there)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._interruptible = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        if self._interruptible:
            self._interruptible = False  # once: a second signal cannot break into the clean-up
            raise Stopped(self.received)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A block a stop signal may interrupt (raising ``Stopped``); one received before it raises at once."""
        self._interruptible = True  # before the check, so a signal in between is not missed
        try:
            if self.received is not None:
                self._interruptible = False
                raise Stopped(self.received)
            yield
        finally:
            self._interruptible = False


def run_every(interval_s: float, run: Callable[[StopSignals], RunEnd], *, prog: str) -> int:
    """Call ``run`` every ``interval_s`` seconds until SIGTERM or SIGINT; the exit code to end with.

    Args:
        interval_s: from the start of one run to the start of the next.
        run: one run; it makes its export ``interruptible()`` and prints its own output on success.
        prog: the program's name, for the lines printed here.
    """
    with StopSignals() as signals:
        _say(f"{prog}: exporting every {_span(interval_s)}; SIGTERM or Ctrl-C stops it")
        next_start = time.monotonic()
        running = False
        try:
            while True:
                with signals.interruptible():
                    time.sleep(max(0.0, next_start - time.monotonic()))
                started = time.monotonic()
                running = True
                end = run(signals)
                running = False
                next_start = max(started + interval_s, time.monotonic())
                if end.failure is not None:
                    wait = _span(next_start - time.monotonic())
                    _say(f"{prog}: {end.failure} (exit {end.code}; next run in {wait})")
        except Stopped as stop:
            name = signal.Signals(stop.signum).name
            during = "; the run under way was interrupted and left nothing half-written" if running else ""
            _say(f"{prog}: stopped by {name}{during}")
            return EXIT_STOPPED if stop.signum == signal.SIGTERM else EXIT_INTERRUPTED


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _span(seconds: float) -> str:
    """``45s``, ``1.5s``, ``2s``, ``15m``, ``2h``: the notation ``--every`` takes, rounded."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size < 0.5:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}".removesuffix(".0") + "s"
