"""How the server's log lines look: the one place ``avap-server`` and its serving processes set up logging.

The supervisor (``cli.py``) and each serving process (``app.py``, inside
Envoy) call ``configure`` once; every other module only logs through
``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import logging
import sys

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# watchfiles logs each batch of file events at INFO ("1 change detected"): an event is
# not a state change of the server; the reload it causes is, and is logged by the store.
_CHATTY_LOGGERS = ("watchfiles",)
_installed: list[logging.Handler] = []  # the handler this module set up, replaced by the next configure


class _Stderr(logging.Handler):
    """Writes each line to ``sys.stderr`` as it is when the line is written (a test may have replaced it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def configure(level: str) -> logging.Handler:
    """Send log lines at ``level`` and above to stderr, replacing the handler an earlier call set up.

    Args:
        level: a ``logging`` level name (``INFO``).

    Returns:
        The handler installed on the root logger.
    """
    handler = _Stderr()
    handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    while _installed:
        root.removeHandler(_installed.pop())
    root.addHandler(handler)
    _installed.append(handler)
    root.setLevel(level)
    quiet = max(logging.getLevelName(level), logging.WARNING) if level != "DEBUG" else logging.DEBUG
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
    return handler
