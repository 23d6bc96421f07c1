"""``avap-server``: serve the newest valid snapshot of a folder over gRPC.

Each option may also be given as an ``AVAP_*`` environment variable; a flag
wins over the variable, the variable over the default.

Exit codes: 0 stopped by SIGTERM/SIGINT after a graceful shutdown; 2 bad
options; 3 no valid snapshot in the folder; 4 the address cannot be listened on.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from server import app
from server.config import Settings

EXIT_USAGE = 2


# flag, variable, type, default, help
_OPTIONS: tuple[tuple[str, str, type, object, str], ...] = (
    ("--snapshots", "AVAP_SNAPSHOTS", Path, Settings.snapshots_dir, "snapshot folder to serve"),
    ("--host", "AVAP_HOST", str, Settings.host, "address to listen on"),
    ("--port", "AVAP_PORT", int, Settings.port, "TCP port, 0 for any free one"),
    ("--grace-s", "AVAP_GRACE_S", float, Settings.grace_s, "seconds in-flight calls may run on after SIGTERM/SIGINT"),
    ("--max-workers", "AVAP_MAX_WORKERS", int, Settings.max_workers, "threads answering calls; a stream holds one"),
)


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avap-server", description="Serve the newest valid snapshot over gRPC.")
    for flag, variable, kind, default, text in _OPTIONS:
        # argparse applies `type` to a string default, so a bad variable is a usage error like a bad flag.
        shown = f"{text} [{variable}; default %(default)s]"
        parser.add_argument(flag, type=kind, default=env.get(variable, default), help=shown)
    parser.add_argument(
        "--log-level",
        default=env.get("AVAP_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level [AVAP_LOG_LEVEL; default INFO]",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until it is stopped.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        The process exit code (see the module docstring).
    """
    parser = _parser(os.environ)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings(
            snapshots_dir=args.snapshots,
            host=args.host,
            port=args.port,
            grace_s=args.grace_s,
            max_workers=args.max_workers,
        )
    except ValueError as exc:
        parser.print_usage()
        logging.getLogger(__name__).error("%s", exc)
        return EXIT_USAGE
    return app.run(settings)
