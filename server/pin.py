"""``avap-pin``: an operator's way to hold the servers of a folder at one catalog version, or roll them back.

``avap-pin VERSION`` writes ``PIN`` (the version number) into the snapshot
folder, atomically; ``avap-pin --unpin`` removes it. A running server watches
the folder and follows at once; the file outlives restarts. While it exists
the server serves that version (if it verifies) instead of the newest.
The pin file itself is ``avapdefs.folder``'s (``read_pin``, ``write_pin``).

A server started with ``--pin`` (or on a folder whose ``PIN`` names a
version) that is not in the folder refuses to start with the same exit code 3:
neither ever serves another version in its place (docs/server.md, "Pinning").

Exit codes: 0 done; 2 bad arguments; 3 the version is not in the folder or
does not verify (nothing is written).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from avapdefs.about import add_version_option
from avapdefs.errors import OptionError, SnapshotError
from avapdefs.folder import read_verified, remove_pin, snapshot_name, write_pin
from avapdefs.options import Option, add_options, resolve
from server import logs
from server.config import DEFAULTS, LOG_LEVEL

# The server's folder option, with avap-pin's own default and words.
SNAPSHOTS = Option(
    "--snapshots", "AVAP_SNAPSHOTS", "snapshots_dir", Path, "snapshot folder to pin (default: snapshots)"
)

PROG = "avap-pin"
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NO_SUCH_VERSION = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Pin the servers of a snapshot folder to a version.",
        epilog="exit codes:\n  0  done\n  2  bad arguments\n  3  the version is not in the folder or does not verify",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # --version's lines keep their line breaks
    )
    parser.add_argument("version", type=int, nargs="?", help="the catalog version to serve")
    parser.add_argument("--unpin", action="store_true", help="remove the pin: serve the newest version again")
    # The server's own options, so both find the same folder and read the same variables the same way.
    add_options(parser, (SNAPSHOTS, LOG_LEVEL), DEFAULTS)
    add_version_option(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``avap-pin``: pin the servers of a snapshot folder to a version, or unpin them."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        values = resolve(args, os.environ, (SNAPSHOTS, LOG_LEVEL))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except OptionError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(values.get(LOG_LEVEL.field, "WARNING"))
    try:
        return _run(parser, args, values.get(SNAPSHOTS.field, DEFAULTS[SNAPSHOTS.field]))
    finally:
        logs.unconfigure()


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, folder: Path) -> int:
    if args.unpin == (args.version is not None):
        parser.print_usage(sys.stderr)
        print(f"{PROG}: give a VERSION or --unpin", file=sys.stderr)
        return EXIT_USAGE
    if args.unpin:
        print("unpinned" if remove_pin(folder) else "was not pinned")
        return EXIT_OK
    try:
        read_verified(folder / snapshot_name(args.version))
    except SnapshotError as exc:
        print(f"{PROG}: cannot pin version {args.version}: {exc}", file=sys.stderr)
        return EXIT_NO_SUCH_VERSION
    write_pin(folder, args.version)
    print(f"pinned to version {args.version}")
    return EXIT_OK
