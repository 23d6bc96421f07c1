"""How the server's log lines look: the one place ``avap-server`` and its serving processes set up logging.

The supervisor (``cli.py``) and each serving process (``app.py``, inside
Envoy) call ``configure`` once; every other module only logs through
``logging.getLogger(__name__)``. Every line:

- is one line per event: a traceback, or a message holding a line break, has
  its breaks written as ``\\n``, so a log shipper never splits an event;
- is plain text (``2026-01-01 12:00:00,000 INFO server.store: ...``) or,
  with ``--log-format json``, one JSON object (``time``, ``level``,
  ``logger``, ``message``, and ``exc_info`` for a traceback);
- names its process when ``avap-server`` runs several: ``[process 1]`` or
  ``[supervisor]`` after the level, ``"process": 1`` or ``"supervisor"`` in JSON;
- never shows a secret: the API key, and the password of anything shaped
  like a DSN (``postgresql://user:PASSWORD@host``, ``password=PASSWORD``),
  are written as ``***``.

The processes write to one shared stderr; a line under 4 KiB reaches a pipe
whole, so lines of different processes do not mix.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("plain", "json")
SUPERVISOR = "supervisor"
REDACTED = "***"

# watchfiles logs each batch of file events at INFO ("1 change detected"): an event is
# not a state change of the server; the reload it causes is, and is logged by the store.
_CHATTY_LOGGERS = ("watchfiles",)
_installed: list[logging.Handler] = []  # the handler this module set up, replaced by the next configure

_DSN_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@")
_KEYWORD_PASSWORD = re.compile(r"(?i)\b(password|passwd|pwd)(\s*=\s*)('[^']*'|[^\s'\"\\]+)")

Process = int | str | None  # a serving process's index, SUPERVISOR, or None when there is one process


def parse_log_format(text: str) -> str:
    """``plain`` or ``json``, any case.

    Raises:
        ValueError: anything else.
    """
    word = text.strip().lower()
    if word not in LOG_FORMATS:
        raise ValueError(f"not a log format: {text!r} (use plain or json)")
    return word


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with each of ``secrets`` and every DSN-shaped password replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    text = _DSN_PASSWORD.sub(rf"\g<1>{REDACTED}@", text)
    return _KEYWORD_PASSWORD.sub(rf"\g<1>\g<2>{REDACTED}", text)


class _Plain(logging.Formatter):
    def __init__(self, process: Process, secrets: tuple[str, ...]) -> None:
        label = None if process is None else SUPERVISOR if process == SUPERVISOR else f"process {process}"
        super().__init__(PLAIN_FORMAT if label is None else PLAIN_FORMAT.replace(" %(name)s", f" [{label}] %(name)s"))
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return redact(line.replace("\r", "\\r").replace("\n", "\\n"), self._secrets)


class _Json(logging.Formatter):
    def __init__(self, process: Process, secrets: tuple[str, ...]) -> None:
        super().__init__()
        # Imported only for --log-format json: about 5 ms of every start otherwise.
        from pythonjsonlogger.json import JsonFormatter

        self._json = JsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            static_fields={} if process is None else {"process": process},
            timestamp="time",
        )
        # A secret inside a JSON string may be escaped there (quotes, backslashes): redact both spellings.
        self._secrets = tuple({*secrets, *(json.dumps(secret)[1:-1] for secret in secrets)})

    def format(self, record: logging.LogRecord) -> str:
        return redact(self._json.format(record), self._secrets)


class _Stderr(logging.Handler):
    """Writes each line to ``sys.stderr`` as it is when the line is written (a test may have replaced it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def configure(
    level: str, log_format: str = "plain", *, process: Process = None, secrets: Iterable[str | None] = ()
) -> logging.Handler:
    """Send log lines at ``level`` and above to stderr, replacing the handler an earlier call set up.

    Args:
        level: a ``logging`` level name (``INFO``).
        log_format: ``plain`` or ``json``.
        process: what every line names as its process (None: nothing, there is one process).
        secrets: strings never to write (None entries are skipped), such as the API key.

    Returns:
        The handler installed on the root logger.
    """
    hidden = tuple(secret for secret in secrets if secret)
    handler = _Stderr()
    handler.setFormatter(_Json(process, hidden) if log_format == "json" else _Plain(process, hidden))
    unconfigure()
    root = logging.getLogger()
    root.addHandler(handler)
    _installed.append(handler)
    root.setLevel(level)
    quiet = max(logging.getLevelName(level), logging.WARNING) if level != "DEBUG" else logging.DEBUG
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
    return handler


def unconfigure() -> None:
    """Remove the handler ``configure`` set up (a program's ``main`` returning, e.g. in a test's process)."""
    root = logging.getLogger()
    while _installed:
        root.removeHandler(_installed.pop())
