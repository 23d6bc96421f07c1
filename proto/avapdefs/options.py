"""Command-line options and their ``AVAP_*`` variables: the one way every program reads its settings.

Each program lists its options once, as ``Option`` rows naming the flag, the
variable and the field of its settings dataclass. Precedence is the same
everywhere: the flag, then the variable, then the dataclass default. A bad
variable is an ``OptionError`` naming it, as a bad flag is argparse's usage
error, so both end in exit 2. True/false values have one spelling set
(``parse_bool``), and log levels one parser (``parse_log_level``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from avapdefs.errors import OptionError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_bool(text: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case; empty is false).

    Raises:
        ValueError: anything else.
    """
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r} (use one of {', '.join(_TRUE + _FALSE[:-1])})")


def parse_log_level(text: str) -> str:
    """A logging level name in any case, returned upper-case for ``logging``.

    Raises:
        ValueError: not one of debug, info, warning, error.
    """
    word = text.strip().lower()
    if word not in LOG_LEVELS:
        raise ValueError(f"not a log level: {text!r} (use one of {', '.join(LOG_LEVELS)})")
    return word.upper()


@dataclass(frozen=True)
class Option:
    """One setting: its flag, its variable, how to parse it, and the field it fills.

    Attributes:
        flag: e.g. ``--snapshots``.
        env: e.g. ``AVAP_SNAPSHOTS``.
        field: the settings field (or program-level name) the value goes to.
        parse: turns the flag's or variable's text into the value; raises ValueError.
        help: what it does.
        switch: a flag without a value that sets ``const``; its variable is parsed with ``parse``.
        const: the value a switch sets.
        default: the default shown in the help when ``field`` is not a field of the settings.
    """

    flag: str
    env: str
    field: str
    parse: Callable[[str], Any]
    help: str
    switch: bool = False
    const: object = True
    default: object = None


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option], defaults: Mapping[str, object]) -> None:
    """Add each option to ``parser``; its help names the variable and the default.

    Args:
        parser: the program's parser.
        options: its options.
        defaults: the settings dataclass's defaults by field, for the help text.
    """
    for option in options:
        shown = defaults.get(option.field, option.default)
        default = "" if shown in (None, "") else f"; default {shown}"
        text = f"{option.help} [{option.env}{default}]"
        if option.switch:
            parser.add_argument(option.flag, dest=option.field, action="store_const", const=option.const, help=text)
        else:
            metavar = option.flag.lstrip("-").upper().replace("-", "_")
            parser.add_argument(option.flag, dest=option.field, type=option.parse, metavar=metavar, help=text)


def resolve(args: argparse.Namespace, env: Mapping[str, str], options: Sequence[Option]) -> dict[str, Any]:
    """Each option's value from its flag, else its variable; options given neither are left out.

    Raises:
        OptionError: a variable's value does not parse (it names the variable).
    """
    values: dict[str, Any] = {}
    for option in options:
        value = getattr(args, option.field, None)
        if value is None and option.env in env:
            try:
                value = option.parse(env[option.env])
            except ValueError as exc:
                raise OptionError(f"{option.env}={env[option.env]!r}: {exc}", variable=option.env) from exc
        if value is not None:
            values[option.field] = value
    return values
