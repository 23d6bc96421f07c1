"""Log lines a client can cause are rate-limited: a bad request is logged once per interval, not once per call.

grpcio logs every request it cannot deserialize (for the health and
reflection services, whose messages it parses itself) at ERROR with a
traceback, so anyone who can reach the port could flood the log. The first
line of each kind in an interval is kept, with its traceback; the rest are
counted, and the next line of that kind says how many were left out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

INTERVAL_S = 60.0
# grpcio's loggers that write a line per bad request: deserializing (_common) and handler errors (_server).
CLIENT_DRIVEN_LOGGERS = ("grpc._common", "grpc._server")


class RateLimit(logging.Filter):
    """Passes one record per (logger, message) per ``interval_s``; counts the others.

    Thread safety: ``filter`` may be called from any number of threads.
    """

    def __init__(self, interval_s: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self._clock()
        with self._lock:
            last, dropped = self._seen.get(key, (None, 0))
            if last is not None and now - last < self._interval_s:
                self._seen[key] = (last, dropped + 1)
                return False
            self._seen[key] = (now, 0)
        if dropped:
            record.msg = f"{record.msg} ({dropped} more like it in the last {self._interval_s:g} s not logged)"
        return True


def limit_client_driven_logs() -> None:
    """Install one ``RateLimit`` on each of grpcio's client-driven loggers (idempotent)."""
    for name in CLIENT_DRIVEN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, RateLimit) for existing in logger.filters):
            logger.addFilter(RateLimit())
