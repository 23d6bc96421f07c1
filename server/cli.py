"""``avap-server``: serve the newest valid snapshot of a folder over gRPC (Envoy's HTTP/2, see launch.py).

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

from avapdefs.options import add_options, resolve
from server import processes
from server.config import DEFAULTS, OPTIONS, Settings

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avap-server", description="Serve the newest valid snapshot over gRPC.")
    add_options(parser, OPTIONS, DEFAULTS)
    return parser


def _api_key(path: Path | None, env: Mapping[str, str]) -> str | None:
    """The API key from the key file, else AVAP_API_KEY, else None; surrounding white space is not part of it.

    A key that is set but blank is refused rather than taken as "no key": a
    deployment that meant to protect the server must not silently run open.

    Raises:
        ValueError: the key file cannot be read, or the key it or the variable holds is blank.
    """
    if path is None:
        if "AVAP_API_KEY" not in env:
            return None
        key, where = env["AVAP_API_KEY"].strip(), "AVAP_API_KEY is set but blank"
    else:
        try:
            key, where = path.read_text(encoding="utf-8").strip(), f"the API key file {path} is blank"
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the API key file {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    if not key:
        raise ValueError(f"{where}; give a key, or unset it to run without one")
    return key


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until it is stopped.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        The process exit code (see the module docstring).
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        values = resolve(args, os.environ, OPTIONS)
        log_level = values.pop("log_level", "INFO")
        logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        processes_wanted = values.pop("processes", None)
        values["api_key"] = _api_key(values.pop("api_key_file", None), os.environ)
        settings = Settings(**values)
        if processes_wanted is None:
            processes_wanted = processes.default_processes(settings.port)
        if processes_wanted > 1 and settings.port == 0:
            raise ValueError("--processes above 1 needs a fixed --port (each process must listen on the same one)")
        if processes_wanted < 1:
            raise ValueError(f"--processes {processes_wanted} is below 1")
    except ValueError as exc:
        parser.print_usage()
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger(__name__).error("%s", exc)
        return EXIT_USAGE
    return processes.run(settings, processes=processes_wanted, log_level=log_level)
