"""``avap-pin``: an operator's way to hold the servers of a folder at one catalog version, or roll them back.

``avap-pin VERSION`` writes ``PIN`` (the version number) into the snapshot
folder, atomically; ``avap-pin --unpin`` removes it. A running server watches
the folder and follows at once; the file outlives restarts. While it exists
the server serves that version (if it verifies) instead of the newest.
The pin file itself is ``avapdefs.folder``'s (``read_pin``, ``write_pin``).

Exit codes: 0 done; 2 bad arguments; 3 the version is not in the folder or
does not verify (nothing is written).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from avapdefs.errors import SnapshotError
from avapdefs.folder import read_verified, remove_pin, snapshot_name, write_pin
from avapdefs.options import add_options, resolve
from server.config import DEFAULTS, SNAPSHOTS

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NO_SUCH_VERSION = 3


def main(argv: Sequence[str] | None = None) -> int:
    """``avap-pin``: pin the servers of a snapshot folder to a version, or unpin them."""
    parser = argparse.ArgumentParser(prog="avap-pin", description="Pin the servers of a snapshot folder to a version.")
    parser.add_argument("version", type=int, nargs="?", help="the catalog version to serve")
    parser.add_argument("--unpin", action="store_true", help="remove the pin: serve the newest version again")
    add_options(parser, (SNAPSHOTS,), DEFAULTS)  # the server's own option, so both find the same folder
    try:
        args = parser.parse_args(argv)
        folder: Path = resolve(args, os.environ, (SNAPSHOTS,)).get(SNAPSHOTS.field, DEFAULTS[SNAPSHOTS.field])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.unpin == (args.version is not None):
        parser.print_usage()
        print("avap-pin: give a VERSION or --unpin")
        return EXIT_USAGE
    if args.unpin:
        print("unpinned" if remove_pin(folder) else "was not pinned")
        return EXIT_OK
    try:
        read_verified(folder / snapshot_name(args.version))
    except SnapshotError as exc:
        print(f"avap-pin: cannot pin version {args.version}: {exc}")
        return EXIT_NO_SUCH_VERSION
    write_pin(folder, args.version)
    print(f"pinned to version {args.version}")
    return EXIT_OK
