"""A one-line progress bar for terminals (cron gets none: ``cli.py`` enables it only on a TTY)."""

from __future__ import annotations

import time
from typing import TextIO

_WIDTH = 30


class ProgressBar:
    """Redraws ``done/total`` on one line of ``stream``, at most every ``interval_s``.

    Args:
        stream: where to draw; None makes every call a no-op.
        total: the expected count, or None when unknown (no bar, just the count).
        unit: what is counted, e.g. "commands".
        interval_s: the shortest time between two redraws.
    """

    def __init__(self, stream: TextIO | None, total: int | None, *, unit: str, interval_s: float = 0.1) -> None:
        self._stream = stream
        self._total = total
        self._unit = unit
        self._interval_s = interval_s
        self._started = time.monotonic()
        self._last = 0.0

    def update(self, done: int) -> None:
        """Note that ``done`` units are finished; redraw if the interval has passed."""
        if self._stream is None:
            return
        now = time.monotonic()
        if now - self._last >= self._interval_s:
            self._last = now
            self._draw(done, now)

    def close(self, done: int) -> None:
        """Draw the final state and end the line."""
        if self._stream is None:
            return
        self._draw(done, time.monotonic())
        self._stream.write("\n")
        self._stream.flush()

    def _draw(self, done: int, now: float) -> None:
        assert self._stream is not None
        rate = done / max(now - self._started, 1e-9)
        text = f"{done:,} {self._unit}  {rate:,.0f}/s"
        if self._total:
            share = min(done / self._total, 1.0)
            filled = int(share * _WIDTH)
            bar = "#" * filled + "." * (_WIDTH - filled)
            text = f"[{bar}] {share:4.0%}  {done:,}/{self._total:,} {self._unit}  {rate:,.0f}/s"
        self._stream.write("\r" + text)
        self._stream.flush()
