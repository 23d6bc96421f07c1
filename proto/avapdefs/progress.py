"""The one progress bar of every command-line tool: one line on a terminal (drawn only on a TTY, never for cron)."""

from __future__ import annotations

import time
from typing import TextIO

_WIDTH = 30


class ProgressBar:
    """Redraws ``done/total`` on one line of ``stream``, at most every ``interval_s``.

    Args:
        stream: where to draw; None makes every call a no-op.
        total: the expected count, or None when unknown (no bar, just the count).
        unit: what is shown, e.g. "commands" or "MB".
        interval_s: the shortest time between two redraws.
        per_unit: counted things per unit shown (1,000,000 to count bytes and show MB, with a decimal).
    """

    def __init__(
        self, stream: TextIO | None, total: int | None, *, unit: str, interval_s: float = 0.1, per_unit: int = 1
    ) -> None:
        self._stream = stream
        self._total = total
        self._unit = unit
        self._per_unit = per_unit
        self._done: int | None = None
        self._interval_s = interval_s
        self._started = time.monotonic()
        self._last = 0.0

    def update(self, done: int, total: int | None = None) -> None:
        """Note ``done`` finished (of ``total``, when now known); redraw if the interval has passed."""
        if self._stream is None:
            return
        if total is not None:
            self._total = total
        self._done = done
        now = time.monotonic()
        if now - self._last >= self._interval_s:
            self._last = now
            self._draw(done, now)

    def close(self, done: int | None = None) -> None:
        """Draw the final state (``done``, else the last update) and end the line; nothing if nothing was counted."""
        done = self._done if done is None else done
        if self._stream is None or done is None:
            return
        self._draw(done, time.monotonic())
        self._stream.write("\n")
        self._stream.flush()

    def _draw(self, done: int, now: float) -> None:
        assert self._stream is not None
        rate = self._shown(done / max(now - self._started, 1e-9))
        text = f"{self._shown(done)} {self._unit}  {rate}/s"
        if self._total:
            share = min(done / self._total, 1.0)
            filled = int(share * _WIDTH)
            bar = "#" * filled + "." * (_WIDTH - filled)
            text = f"[{bar}] {share:4.0%}  {self._shown(done)}/{self._shown(self._total)} {self._unit}  {rate}/s"
        self._stream.write("\r" + text)
        self._stream.flush()

    def _shown(self, count: float) -> str:
        return f"{count:,.0f}" if self._per_unit == 1 else f"{count / self._per_unit:,.1f}"
