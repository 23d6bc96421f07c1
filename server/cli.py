"""``avap-server``: serve the newest valid snapshot of a folder over gRPC (Envoy's HTTP/2, see launch.py).

Each option may also be given as an ``AVAP_*`` environment variable; a flag
wins over the variable, the variable over the default. With neither
``--snapshots`` nor ``AVAP_SNAPSHOTS``, ``./snapshots`` is served when it
exists, else the built-in sample catalog (``sample.py``). With ``--source
URL``, the supervisor keeps ``--snapshots`` at an object store's announced
version (``avapdefs.remote``): one pull for all the processes, which serve
the folder as ever.

Exit codes: 0 stopped by SIGTERM/SIGINT after a graceful shutdown; 1 a
serving process failed at start for another reason; 2 bad options (a TLS file
that cannot be read or used, a key that does not match its certificate); 3 nothing
to serve (the folder does not exist, is not a folder, holds no valid
snapshot, or lacks the pinned version; with ``--source``, the store is
unreachable and the folder empty); 4 the address cannot be listened on.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avapdefs.about import add_version_option
from avapdefs.cloud import StoreOptions, StoreURLError, add_store_options, open_remote, store_options
from avapdefs.errors import NoSnapshotError, OptionError, TlsFileError
from avapdefs.folder import check_folder, list_snapshots, no_snapshot_error, remove_source_state
from avapdefs.options import add_options, resolve
from avapdefs.tls import check_server_files, warn_if_exposed
from server import logs, processes, sample
from server.config import DEFAULTS, OPTIONS, SettingError, Settings

if TYPE_CHECKING:
    from avapdefs.remote import Follower

PROG = "avap-server"
EXIT_USAGE = 2
EXIT_NO_SNAPSHOT = 3

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve the newest valid snapshot over gRPC.",
        epilog="exit codes:\n"
        "  0  stopped by SIGTERM/SIGINT after a graceful shutdown\n"
        "  1  a serving process failed at start\n"
        "  2  bad options, or a TLS file that cannot be used (unreadable, not PEM, a key not the certificate's)\n"
        "  3  nothing to serve: no such folder, no valid snapshot, or the pinned version missing\n"
        "     (--source: the store unreachable or empty and nothing in --snapshots)\n"
        "  4  the address cannot be listened on",
        # Raw: --version's lines and the exit-code table keep their line breaks.
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, OPTIONS, DEFAULTS)
    add_store_options(parser)
    add_version_option(parser)
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


def _named(exc: SettingError | TlsFileError, args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """``exc``'s message, led by the flag or the variable its value came from."""
    option = next((option for option in OPTIONS if option.field == exc.field), None)
    if option is None:
        return str(exc)
    if getattr(args, option.field, None) is None and option.env in env:
        return f"{option.env}={env[option.env]!r}: {exc}"
    return f"{option.flag}: {exc}"


@dataclass(frozen=True)
class _Program:
    """The options that are the program's, not the serving processes' settings."""

    processes: int | None
    log_level: str
    log_format: str
    source: str | None = None
    source_poll_s: float = 5.0
    api_key_file: Path | None = None
    store: StoreOptions = field(default_factory=StoreOptions)


def _settings(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[dict[str, Any], _Program]:
    """The Settings fields and the program's own options, from the flags and ``env``.

    Raises:
        ValueError: an option's value cannot be used (OptionError and SettingError name where it came from).
    """
    values = resolve(args, env, OPTIONS)
    program = _Program(
        values.pop("processes", None),
        values.pop("log_level", "INFO"),
        values.pop("log_format", "plain"),
        values.pop("source", None),
        values.pop("source_poll_s", 5.0),
        values.pop("api_key_file", None),
        store_options(args, env),
    )
    if program.source is not None and values.get("snapshots_dir") is None:
        raise ValueError("--source needs --snapshots DIR: the local folder the pulled versions are served from")
    processes_wanted = program.processes
    values["api_key"] = _api_key(program.api_key_file, env)
    if processes_wanted is not None and processes_wanted < 1:
        raise ValueError(f"--processes {processes_wanted} is below 1")
    port = values.get("port", DEFAULTS["port"])
    if processes_wanted is not None and processes_wanted > 1 and port == 0:
        raise ValueError("--processes above 1 needs a fixed --port (each process must listen on the same one)")
    return values, program


@contextlib.contextmanager
def _folder(values: dict[str, Any]) -> Iterator[Path]:
    """The folder to serve: the one given, else ./snapshots when it exists, else a copy of the built-in sample."""
    given = values.get("snapshots_dir")
    if given is not None or sample.DEFAULT_FOLDER.is_dir():
        yield given if given is not None else sample.DEFAULT_FOLDER
        return
    with sample.sample_copy() as copy:
        logger.warning("no --snapshots given and no ./snapshots here: serving the built-in sample catalog")
        yield copy


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
        values, program = _settings(args, os.environ)
    except (OptionError, ValueError) as exc:
        return _usage_error(str(exc))
    logs.configure(program.log_level, program.log_format, secrets=[values["api_key"]])
    try:
        return _serve(args, values, program)
    finally:
        logs.unconfigure()


def _serve(args: argparse.Namespace, values: dict[str, Any], program: _Program) -> int:
    with _folder(values) as folder:
        follower: Follower | None = None
        try:
            settings = Settings(**{**values, "snapshots_dir": folder})
            _check_secrets(settings, program)
            follower = _follower(program, settings)
            check_folder(settings.snapshots_dir)
            if follower is not None and not list_snapshots(settings.snapshots_dir):
                raise no_snapshot_error(settings.snapshots_dir)
        except (SettingError, TlsFileError) as exc:
            return _usage_error(_named(exc, args, os.environ))
        except StoreURLError as exc:
            return _usage_error(str(exc))
        except NoSnapshotError as exc:
            store_error = follower.state.last_error if follower is not None else ""
            if follower is not None and store_error and not store_error.startswith(f"{follower.remote.url}: "):
                store_error = f"{follower.remote.url}: {store_error}"  # the store named once, not twice
            also = f" (and {store_error})" if store_error else ""
            print(f"{PROG}: {exc}; nothing to serve{also}", file=sys.stderr, flush=True)
            return EXIT_NO_SNAPSHOT
        wanted = processes.default_processes(settings.port) if program.processes is None else program.processes
        if wanted > 1:  # from here on, every line names its process
            logs.configure(
                program.log_level, program.log_format, process=logs.SUPERVISOR, secrets=_secrets(settings, follower)
            )
        return processes.run(
            settings,
            processes=wanted,
            log_level=program.log_level,
            log_format=program.log_format,
            follower=follower,
        )


def _check_secrets(settings: Settings, program: _Program) -> None:
    """Check the TLS files before Envoy is given them; warn about a key file others may read.

    Raises:
        TlsFileError: a TLS file cannot be used (it names the file and what is wrong).
    """
    if program.api_key_file is not None:
        warn_if_exposed(program.api_key_file, "the API key file")
    if settings.tls_cert is not None and settings.tls_key is not None:
        check_server_files(settings.tls_cert, settings.tls_key, settings.tls_client_ca)


def _secrets(settings: Settings, follower: Follower | None) -> list[str | None]:
    """What no log line may hold: the API key, and the store's secrets (its credentials file's, or AWS_*'s)."""
    return [settings.api_key, *(follower.remote.secrets if follower is not None else ())]


def _follower(program: _Program, settings: Settings) -> Follower | None:
    """With ``--source``, a follower of the store, after a first pull into the folder (which it creates).

    A first pull that fails is logged and the server boots from what the folder holds.

    Raises:
        StoreURLError: the URL names no store, obstore is not installed, or a --store-* option cannot be used.
    """
    folder = settings.snapshots_dir
    if program.source is None:
        remove_source_state(folder)  # an earlier run's record of a store this run does not follow
        return None
    store = open_remote(program.source, "--source", program.store)
    from avapdefs.remote import Follower  # importable: open_remote has imported it

    if store.secrets:  # from here on, the store's secrets join the API key among what no log line may hold
        logs.configure(program.log_level, program.log_format, secrets=[settings.api_key, *store.secrets])
    if folder.exists():
        check_folder(folder)  # a regular file named as the folder is refused, not made a folder of
    folder.mkdir(parents=True, exist_ok=True)
    follower = Follower(store, folder, poll_s=program.source_poll_s, record=True)
    logger.info("following %s into %s, every %.0f s", store.url, folder, program.source_poll_s)
    follower.poll()  # installs the announced version before the processes start; a failure is logged
    return follower


def _usage_error(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE
