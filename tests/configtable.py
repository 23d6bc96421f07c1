"""README.md's configuration tables, read from each tool's own argparse parser: ``python -m tests.configtable``.

Every flag of every tool, with its ``AVAP_*`` variable, its default and its
meaning, as ``--help`` shows it. The rows come from the parsers the programs
build, not from a list kept beside them, so nothing can be left out: a plain
argparse flag (``--json``, ``--watch``) is there as surely as one made from
an ``Option`` row. An ``Option`` reaches its parser through
``avapdefs.options.add_options``, which ends its help with ``[VARIABLE]`` or
``[VARIABLE; default X]``; that tail gives the variable and the default.

This lives under ``tests/`` because only the README and its test need every
tool at once: the installed packages keep their one-way imports
(``exporter -> avapdefs <- server``). ``tests/test_docs.py`` fails, with the
diff, when README.md differs from what this writes.

    .venv/bin/python -m tests.configtable            rewrite the tables in README.md
    .venv/bin/python -m tests.configtable --check    exit 1 with the diff when README.md is stale
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BEGIN = "<!-- configuration:begin -->"
END = "<!-- configuration:end -->"
COMMAND = ".venv/bin/python -m tests.configtable"

# The tail add_options (avapdefs/options.py) gives an Option's help.
_VARIABLE = re.compile(r" \[(?P<variable>AVAP_[A-Z0-9_]+)(?:; default (?P<default>[^\]]*))?\]$")
# A default the help states in words, "(default: one per CPU; 1 with --port 0)": it goes to the default column.
_SPOKEN_DEFAULT = re.compile(r" ?\(default:? (?P<default>[^()]*)\)")
# Keys are never flags (a flag shows in ps): each may be given as a variable beside its file's flag.
KEY_VARIABLES = {"--api-key-file": "AVAP_API_KEY", "--signing-key-file": "AVAP_SIGNING_KEY"}


@dataclass(frozen=True)
class Row:
    """One flag (or a variable without a flag): the cells of its table row, as Markdown."""

    flag: str
    variable: str
    default: str
    meaning: str

    def markdown(self) -> str:
        cells = (self.flag or "—", self.variable, self.default, self.meaning)
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command line of the package, keyed by the words that start it (``avap-export inspect``).

    ``avapctl``'s subcommands are argparse subparsers of its one parser; ``avap-export``'s
    commands are parsers of their own, one per first word.
    """
    # Imported here, not at the top: importing this module must not load every tool.
    from avapdefs.client import cli as client_cli
    from avapdefs.client import ctl
    from exporter import cli as export_cli
    from server import cli as server_cli
    from server import pin

    found = {"avap-server": server_cli._parser(), "avap-pin": pin._parser()}
    commands = sorted(export_cli._COMMANDS.items(), key=lambda command: command[0] != "export")  # the default first
    for name, (make_parser, _) in commands:
        found["avap-export" if name == "export" else f"avap-export {name}"] = make_parser()
    found["avap-sync"] = client_cli._sync_parser()
    found["avap-get"] = client_cli._get_parser()
    found["avapctl"] = ctl._parser()
    return found


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands of a parser built with add_subparsers (avapctl), by name; none for the others."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def _default(action: argparse.Action, stated: str | None, spoken: str | None) -> str:
    if spoken is not None:
        return spoken
    if isinstance(action, argparse._VersionAction):
        return ""
    if action.nargs == 0:
        return "off"
    if stated is not None:
        return f"`{stated}`"
    if action.default in (None, argparse.SUPPRESS):
        return ""
    return "`''`" if action.default == "" else f"`{action.default}`"


def rows(parser: argparse.ArgumentParser, skip: Iterable[str] = ()) -> list[Row]:
    """The rows of ``parser``'s flags in ``--help`` order, less ``--help`` and the flags in ``skip``."""
    formatter = parser._get_formatter()
    found: list[Row] = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        if set(action.option_strings) & set(skip):
            continue
        text = " ".join(formatter._expand_help(action).split()) if action.help else ""
        tail = _VARIABLE.search(text)
        variable = tail["variable"] if tail else None
        stated = tail["default"] if tail else None
        meaning = text[: tail.start()] if tail else text
        spoken = _SPOKEN_DEFAULT.search(meaning)
        if spoken is not None:
            meaning = meaning[: spoken.start()] + meaning[spoken.end() :]
        flags = ", ".join(f"`{flag}`" for flag in action.option_strings)
        default = _default(action, stated, spoken["default"] if spoken else None)
        found.append(Row(flags, f"`{variable}`" if variable else "", default, meaning))
        for flag in action.option_strings:
            if flag in KEY_VARIABLES:
                found.append(Row("", f"`{KEY_VARIABLES[flag]}`", "", f"the key itself, instead of `{flag}`"))
    return found


def _subcommand_rows(parser: argparse.ArgumentParser) -> list[Row]:
    """The flags each subcommand adds to those of its tool, one row per flag, naming the subcommands that take it."""
    shared = [flag for action in parser._actions for flag in action.option_strings]
    takers: dict[Row, list[str]] = {}
    for name, sub in subcommands(parser).items():
        for row in rows(sub, skip=shared):
            takers.setdefault(row, []).append(name)
    return [
        Row(f"{row.flag} ({', '.join(f'`{name}`' for name in names)})", row.variable, row.default, row.meaning)
        for row, names in takers.items()
    ]


def table(name: str, parser: argparse.ArgumentParser) -> str:
    """One tool's section: its name, what it does, and a row for each flag."""
    body = [row.markdown() for row in rows(parser) + _subcommand_rows(parser)]
    description = " ".join((parser.description or "").split())
    lines = [
        f"### `{name}`",
        "",
        description,
        "",
        "| flag | variable | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    return "\n".join(lines + body)


def render() -> str:
    """What goes between the markers: one table per command line."""
    return "\n\n".join(table(name, parser) for name, parser in parsers().items())


def updated(readme: str) -> str:
    """``readme`` with the text between its markers replaced by ``render()``.

    Raises:
        ValueError: the markers are missing or out of order.
    """
    begin, end = readme.find(BEGIN), readme.find(END)
    if begin < 0 or end < begin:
        raise ValueError(f"README.md needs {BEGIN} and then {END}")
    return f"{readme[: begin + len(BEGIN)]}\n{render()}\n{readme[end:]}"


def diff(readme: str) -> str:
    """A unified diff from ``readme`` to what it should be; empty when it is current."""
    lines = difflib.unified_diff(
        readme.splitlines(keepends=True), updated(readme).splitlines(keepends=True), "README.md", "generated"
    )
    return "".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite README.md's tables (or, with ``--check``, print the diff and return 1 when they are stale)."""
    parser = argparse.ArgumentParser(prog=COMMAND, description="Write README.md's configuration tables.")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 with the diff when stale")
    args = parser.parse_args(argv)
    readme = README.read_text(encoding="utf-8")
    if args.check:
        stale = diff(readme)
        sys.stdout.write(stale)
        return 1 if stale else 0
    README.write_text(updated(readme), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
