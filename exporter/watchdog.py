"""The exporter's own clock on PostgreSQL: what the server's timeouts cannot end, a watchdog ends.

``statement_timeout`` and ``idle_in_transaction_session_timeout`` are kept by
the backend itself. A backend that is frozen (stopped, its VM paused, its
host hung while its kernel still answers) keeps nothing, and because the
database host's kernel still acknowledges the connection, TCP keepalives see
nothing wrong either: the exporter waited, holding the folder's lock, for as
long as the freeze lasted (still waiting after 15 s of a 3 s statement
timeout, and 61 s in the reliability issue's campaign).

So the exporter keeps a clock of its own for each transaction: started at
its first statement, restarted at the start and the end of every statement,
stopped after the commit. No wait may outlast the statement timeout plus
``GRACE_S``, by which time a working server would have cancelled the
statement and said so. Past it, the watchdog shuts the connection's socket
down: the blocked read returns at once, psycopg raises, and the run fails
(exit 3) and frees the folder's lock.

The socket is shut down through a duplicate of its descriptor taken when the
clock starts, so the watchdog can never touch a descriptor number that libpq
has meanwhile closed and the process reused.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from types import TracebackType

import psycopg

logger = logging.getLogger(__name__)

GRACE_S = 1.0  # past the statement timeout; the server's own cancellation normally comes first


class Watchdog:
    """Cuts a connection on which one wait for PostgreSQL has lasted longer than ``limit_s``.

    A context manager: entering it starts the clock (and its thread), ``restart`` moves
    the deadline to ``limit_s`` from now, leaving it stops the clock. ``limit_s`` None
    makes a watchdog that never fires. Thread safety: ``restart`` and ``fired`` may be
    called from the thread that uses the connection while the watchdog's thread waits.
    """

    def __init__(self, conn: psycopg.Connection[tuple[object, ...]], limit_s: float | None) -> None:
        self._conn = conn
        self._limit_s = limit_s
        self._condition = threading.Condition()
        self._deadline = 0.0
        self._stopped = False
        self._fired = False
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def limit_s(self) -> float | None:
        """How long one wait may last; None for no bound."""
        return self._limit_s

    @property
    def fired(self) -> bool:
        """Whether the watchdog cut the connection."""
        return self._fired

    def restart(self) -> None:
        """Give the next wait ``limit_s`` from now (the thread notices when the old deadline passes)."""
        if self._limit_s is not None:
            with self._condition:
                self._deadline = time.monotonic() + self._limit_s

    def __enter__(self) -> Watchdog:
        if self._limit_s is not None:
            self._socket = socket.socket(fileno=os.dup(self._conn.pgconn.socket))
            self.restart()
            self._thread = threading.Thread(target=self._watch, name="postgres-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        with self._condition:
            self._stopped = True
            self._condition.notify()
        if self._thread is not None:
            self._thread.join()
        if self._socket is not None:
            self._socket.close()  # the duplicate only: libpq's descriptor stays open until the connection closes

    def _watch(self) -> None:
        with self._condition:
            while not self._stopped:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    self._cut()
                    return
                self._condition.wait(remaining)

    def _cut(self) -> None:
        assert self._socket is not None
        logger.warning("no answer from PostgreSQL for %g s; closing the connection", self._limit_s)
        self._fired = True
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError as exc:  # already closed by the peer: the blocked read ends anyway
            logger.debug("shutting the connection down: %s", exc)
