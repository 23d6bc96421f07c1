"""Keep a local snapshot cache current: sync, then watch, then sync each new version.

What a worker runs beside its work: ``follow`` syncs once, opens a
WatchCatalog stream, and syncs again (a delta when the server has one) each
time a new version goes live. When the server goes away, restarts, or has no
watch slot free, it reconnects after a backoff with full jitter, so a fleet of
workers does not stampede a server coming back up.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from avapdefs.client.cache import SyncResult
from avapdefs.client.rpc import DefinitionClient, WatchStream
from avapdefs.errors import AvapDefsError, ServerError, ServerUnavailableError
from avapdefs.v1.definitions_pb2 import WatchCatalogResponse

logger = logging.getLogger(__name__)


FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0


def backoff_s(
    attempt: int, *, first_s: float = FIRST_BACKOFF_S, max_s: float = MAX_BACKOFF_S, rng: random.Random | None = None
) -> float:
    """The wait before reconnect ``attempt`` (0, 1, 2, ...): full jitter over an exponential cap."""
    cap = min(max_s, first_s * 2**attempt)
    return (rng or random).uniform(0, cap)


def follow(
    client: DefinitionClient,
    dest_dir: Path,
    stop: threading.Event,
    *,
    on_sync: Callable[[SyncResult], None] | None = None,
    rng: random.Random | None = None,
    fatal: Callable[[AvapDefsError | OSError], bool] | None = None,
) -> None:
    """Keep ``dest_dir`` at the server's live version until ``stop`` is set.

    A failure is logged once, as a warning that names the backoff; the
    retries that follow it are logged at DEBUG until a sync succeeds again
    (then at INFO), so a server that is down for an hour costs one line.

    Args:
        client: the connection to the server.
        dest_dir: the snapshot cache (as ``DefinitionClient.sync``).
        stop: set it to return (an open watch is cancelled at once).
        on_sync: called after each sync, up to date or not.
        rng: the source of jitter.
        fatal: says which errors end the loop (raised) instead of being retried, e.g. a refused
            API key for a command-line tool; by default every error is retried.
    """
    failures = 0
    while not stop.is_set():
        try:
            version = _sync(client, dest_dir, on_sync)
            if failures:
                logger.info("reached %s again, after %d failed attempts", client.server, failures)
            failures = 0
            _watch_and_sync(client, dest_dir, stop, version, on_sync)
        except (AvapDefsError, OSError) as exc:
            if stop.is_set():
                return  # the failure is the stop's doing (the caller closed the channel)
            if fatal is not None and fatal(exc):
                raise
            delay = backoff_s(failures, rng=rng)
            if failures == 0:
                logger.warning(
                    "keeping %s current: %s; retrying until it works, after a backoff of %g s doubling to %g s "
                    "(jittered), without saying so again",
                    dest_dir,
                    describe(exc),
                    FIRST_BACKOFF_S,
                    MAX_BACKOFF_S,
                )
            else:
                logger.debug("keeping %s current: %s; retry %d in %.1f s", dest_dir, describe(exc), failures, delay)
            failures += 1
            stop.wait(delay)


def describe(exc: Exception) -> str:
    """An error in words; an unreachable server's details say it all (``cannot reach HOST:PORT (why)``)."""
    return exc.details if isinstance(exc, ServerUnavailableError) else str(exc)


def _sync(client: DefinitionClient, dest_dir: Path, on_sync: Callable[[SyncResult], None] | None) -> int:
    """Sync once and tell ``on_sync``; the version now cached. The result (which holds the
    verified snapshot, payload included) is not kept while the watch waits for the next version."""
    result = client.sync(dest_dir)
    if on_sync is not None:
        on_sync(result)
    return result.info.version


def _watch_and_sync(
    client: DefinitionClient,
    dest_dir: Path,
    stop: threading.Event,
    have_version: int,
    on_sync: Callable[[SyncResult], None] | None,
) -> None:
    call = client.watch(have_version)

    def cancel_when_stopped() -> None:
        stop.wait()
        call.cancel()

    threading.Thread(target=cancel_when_stopped, daemon=True).start()
    try:
        for message in _events(call, stop):
            if message.WhichOneof("event") == "catalog" and message.catalog.version != have_version:
                have_version = _sync(client, dest_dir, on_sync)  # its errors are the caller's, not the stream's
    finally:
        call.cancel()
    if not stop.is_set():
        raise _StreamEnded("the server closed the watch stream")


def _events(call: WatchStream, stop: threading.Event) -> Iterator[WatchCatalogResponse]:
    """The stream's messages; it breaking is a _StreamEnded, unless ``stop`` ended it."""
    try:
        yield from call
    except ServerError as exc:
        if not stop.is_set():
            raise _StreamEnded(f"the watch stream ended: {describe(exc)}") from exc


class _StreamEnded(AvapDefsError):
    """The watch stream ended while it was still wanted."""
