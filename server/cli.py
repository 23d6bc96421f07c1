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
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from server import app, processes
from server.config import Settings

EXIT_USAGE = 2


# flag, variable, type, default, help
_OPTIONS: tuple[tuple[str, str, type, object, str], ...] = (
    ("--snapshots", "AVAP_SNAPSHOTS", Path, Settings.snapshots_dir, "snapshot folder to serve"),
    ("--host", "AVAP_HOST", str, Settings.host, "address to listen on"),
    ("--port", "AVAP_PORT", int, Settings.port, "TCP port, 0 for any free one"),
    ("--grace-s", "AVAP_GRACE_S", float, Settings.grace_s, "seconds in-flight calls may run on after SIGTERM/SIGINT"),
    ("--max-workers", "AVAP_MAX_WORKERS", int, Settings.max_workers, "threads answering calls; a stream holds one"),
    ("--max-watch-streams", "AVAP_MAX_WATCH_STREAMS", int, Settings.max_watch_streams, "WatchCatalog streams at once"),
    ("--heartbeat-s", "AVAP_HEARTBEAT_S", float, Settings.heartbeat_s, "seconds between heartbeats on a quiet watch"),
)


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avap-server", description="Serve the newest valid snapshot over gRPC.")
    for flag, variable, kind, default, text in _OPTIONS:
        # argparse applies `type` to a string default, so a bad variable is a usage error like a bad flag.
        shown = f"{text} [{variable}; default %(default)s]"
        parser.add_argument(flag, type=kind, default=env.get(variable, default), help=shown)
    parser.add_argument(
        "--legacy-proto",
        type=Path,
        default=env.get("AVAP_LEGACY_PROTO"),
        help="a deployment's own avap.DefinitionEngine .proto: legacy answers use its field numbers "
        "[AVAP_LEGACY_PROTO; default the bundled proto/avap/definition_engine.proto]",
    )
    parser.add_argument(
        "--no-legacy",
        dest="legacy",
        action="store_false",
        default=env.get("AVAP_LEGACY", "1") not in ("0", "false", "no"),
        help="do not serve the legacy avap.DefinitionEngine service [AVAP_LEGACY=0]",
    )
    parser.add_argument(
        "--api-key-file",
        type=Path,
        default=env.get("AVAP_API_KEY_FILE"),
        help="file holding the API key that calls must carry in x-avap-auth; the key itself may be given "
        "as AVAP_API_KEY (never as a flag, so it does not show in ps) [AVAP_API_KEY_FILE; default no key]",
    )
    parser.add_argument(
        "--pin",
        type=int,
        default=env.get("AVAP_PIN"),
        help="serve this catalog version, not the newest; a PIN file in the folder (avap-pin) wins [AVAP_PIN]",
    )
    parser.add_argument(
        "--poll",
        action="store_true",
        default=env.get("AVAP_POLL", "") in ("1", "true", "yes"),
        help="poll the folder for new snapshots instead of waiting for file events (Docker bind mounts) [AVAP_POLL]",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=env.get("AVAP_PROCESSES", "1"),
        help="server processes sharing the port, each pinned to its own CPU; above 1 needs a fixed --port "
        "[AVAP_PROCESSES; default 1]",
    )
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU (set by --processes)")
    parser.add_argument(
        "--log-level",
        default=env.get("AVAP_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level [AVAP_LOG_LEVEL; default INFO]",
    )
    return parser


def _api_key(path: Path | None, env: Mapping[str, str]) -> str | None:
    """The API key from the key file (trailing newline stripped), else AVAP_API_KEY, else None.

    Raises:
        ValueError: the key file cannot be read.
    """
    if path is None:
        return env.get("AVAP_API_KEY") or None
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"cannot read the API key file {path}: {exc.strerror or exc}") from exc


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
        api_key = _api_key(args.api_key_file, os.environ)
        settings = Settings(
            snapshots_dir=args.snapshots,
            host=args.host,
            port=args.port,
            grace_s=args.grace_s,
            max_workers=args.max_workers,
            legacy=args.legacy,
            legacy_proto=args.legacy_proto,
            api_key=api_key,
            cpu=args.cpu,
            pin=args.pin,
            poll=args.poll,
            heartbeat_s=args.heartbeat_s,
            max_watch_streams=args.max_watch_streams,
        )
        if args.processes > 1 and args.port == 0:
            raise ValueError("--processes above 1 needs a fixed --port (each process must listen on the same one)")
        if args.processes < 1:
            raise ValueError(f"--processes {args.processes} is below 1")
    except ValueError as exc:
        parser.print_usage()
        logging.getLogger(__name__).error("%s", exc)
        return EXIT_USAGE
    if args.processes > 1:
        given = list(sys.argv[1:] if argv is None else argv)
        return processes.run(given, processes=args.processes, grace_s=settings.grace_s)
    return app.run(settings)
