"""What this build is: the package version, the file formats it reads and writes, the contracts it speaks.

Every tool prints ``version_text`` for ``--version``, so an operator can tell
which snapshots and which clients a given install works with.
"""

from __future__ import annotations

import argparse

PACKAGE = "avap-definition-server"
CONTRACTS = ("avapdefs.v1.DefinitionService", "avap.DefinitionEngine (legacy)")


def package_version() -> str:
    """The installed package's version, or ``unknown`` when it runs from a tree that is not installed."""
    from importlib import metadata  # 30-50 ms to import: paid by --version only, not by every start

    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def version_text(tool: str) -> str:
    """The lines ``<tool> --version`` prints.

    Args:
        tool: the program's name, e.g. ``avap-server``.
    """
    from avapdefs.format import delta, snapshot  # zstandard and protobuf: paid by --version, not by every start

    return (
        f"{tool} {package_version()} ({PACKAGE})\n"
        f"snapshot format {snapshot.FORMAT_VERSION}, delta format {delta.FORMAT_VERSION}\n"
        f"contracts: {', '.join(CONTRACTS)}"
    )


class _PrintVersion(argparse.Action):
    """``--version``: print ``version_text`` as it is (argparse's own action reflows its lines) and exit 0."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        what = "show the version, the snapshot and delta formats and the contracts, and exit"
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=what)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_text(parser.prog), flush=True)
        parser.exit()


def add_version_option(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` a ``--version`` option that prints ``version_text`` and exits 0."""
    parser.add_argument("--version", action=_PrintVersion)
