"""A server process's log read as it comes, on a thread of its own, with bounded waits for its lines.

Reading the log is the synchronisation: each line is a state the server reached.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time

WAIT_S = 60.0  # a bound on each wait for a state; generous, for a loaded machine
_STOP_S = 30


class ServerLog:
    """A server process's log (stderr), read as it comes on a thread of its own; waits are bounded."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._new:
                self.lines.append(line)
                self._new.notify_all()
        with self._new:
            self._new.notify_all()

    def wait_for(self, pattern: str, start: int = 0, timeout_s: float = WAIT_S) -> re.Match[str]:
        """The first line from ``lines[start]`` on that matches ``pattern``, once logged.

        Raises:
            AssertionError: the server ended or ``timeout_s`` passed first (with the log so far).
        """
        deadline = time.monotonic() + timeout_s
        with self._new:
            while True:
                reading = self._reader.is_alive()
                for line in self.lines[start:]:
                    if match := re.search(pattern, line):
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not reading:
                    raise AssertionError(f"no line matching {pattern!r} within {timeout_s} s:\n{''.join(self.lines)}")
                self._new.wait(min(remaining, 0.5))

    def count(self, text: str) -> int:
        with self._new:
            return sum(text in line for line in self.lines)

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(_STOP_S)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._reader.join(10)
            assert self.process.stderr is not None
            self.process.stderr.close()
        return self.process.returncode
