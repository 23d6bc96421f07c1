"""Command-line options and their ``AVAP_*`` variables: the one way every program reads its settings.

Each program lists its options once, as ``Option`` rows naming the flag, the
variable and the field of its settings dataclass. Precedence is the same
everywhere: the flag, then the variable, then the dataclass default. A bad
variable is an ``OptionError`` naming it, as a bad flag is argparse's usage
error, so both end in exit 2. True/false values have one spelling set
(``parse_bool``), log levels one parser (``parse_log_level``), and durations one
notation (``duration_s``: 90s, 15m, 2h, 1d), the server's and the exporter's alike.
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
_DURATION_UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


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


def duration_s(text: str) -> float:
    """A duration in seconds: a number with an optional unit, ``90``, ``90s``, ``15m``, ``2h``, ``1d``.

    Raises:
        ValueError: ``text`` is not one, or is not above 0.
    """
    word = text.strip().lower()
    scale = _DURATION_UNITS_S.get(word[-1:])
    try:
        seconds = float(word[:-1] if scale is not None else word) * (scale or 1.0)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (a number of seconds, or with a unit: 90s, 15m, 2h, 1d)") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"not a duration above 0: {text!r}")
    return seconds


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
            parser.add_argument(
                option.flag, dest=option.field, type=_flag_type(option.parse), metavar=metavar, help=text
            )


def _flag_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` for argparse, which shows a ValueError as "invalid <function name> value": our parsers' own
    message says more (the same the variable's error gives). A type (int, float, Path) keeps argparse's wording."""
    if isinstance(parse, type):
        return parse

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


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
