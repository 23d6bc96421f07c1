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


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="avap-server", description=__doc__.splitlines()[0].strip("`: "))
    parser.add_argument(
        "--snapshots",
        type=Path,
        default=Path(env.get("AVAP_SNAPSHOTS", defaults.snapshots_dir)),
        help="snapshot folder to serve [AVAP_SNAPSHOTS; default ./snapshots]",
    )
    parser.add_argument(
        "--host",
        default=env.get("AVAP_HOST", defaults.host),
        help="address to listen on [AVAP_HOST; default 127.0.0.1]",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=env.get("AVAP_PORT", defaults.port),
        help="TCP port, 0 for any free one [AVAP_PORT; default 50051]",
    )
    parser.add_argument(
        "--grace-s",
        type=float,
        default=env.get("AVAP_GRACE_S", defaults.grace_s),
        help="seconds in-flight calls may run on after SIGTERM/SIGINT [AVAP_GRACE_S; default 10]",
    )
    parser.add_argument(
        "--max-workers",
        type=int,
        default=env.get("AVAP_MAX_WORKERS", defaults.max_workers),
        help="threads answering calls; each open stream holds one [AVAP_MAX_WORKERS; default 32]",
    )
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
