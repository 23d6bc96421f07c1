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
from collections.abc import Callable
from pathlib import Path

import grpc

from avapdefs.client.rpc import DefinitionClient, SyncResult
from avapdefs.errors import AvapDefsError
from avapdefs.v1.definitions_pb2 import WatchCatalogRequest

logger = logging.getLogger(__name__)


def backoff_s(attempt: int, *, first_s: float = 0.5, max_s: float = 30.0, rng: random.Random | None = None) -> float:
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
) -> None:
    """Keep ``dest_dir`` at the server's live version until ``stop`` is set.

    Args:
        client: the connection to the server.
        dest_dir: the snapshot cache (as ``DefinitionClient.sync``).
        stop: set it to return (an open watch is cancelled at once).
        on_sync: called after each sync, up to date or not.
        rng: the source of jitter.
    """
    attempt = 0
    while not stop.is_set():
        try:
            result = client.sync(dest_dir)
            if on_sync is not None:
                on_sync(result)
            attempt = 0
            _watch_and_sync(client, dest_dir, stop, result.info.version, on_sync)
        except (AvapDefsError, OSError) as exc:
            delay = backoff_s(attempt, rng=rng)
            attempt += 1
            logger.warning("keeping %s current failed (%s); retrying in %.1f s", dest_dir, exc, delay)
            stop.wait(delay)


def _watch_and_sync(
    client: DefinitionClient,
    dest_dir: Path,
    stop: threading.Event,
    have_version: int,
    on_sync: Callable[[SyncResult], None] | None,
) -> None:
    call = client.stub.WatchCatalog(WatchCatalogRequest(have_version=have_version))
    canceller = threading.Thread(target=lambda: (stop.wait(), call.cancel()), daemon=True)
    canceller.start()
    try:
        for message in call:
            if message.WhichOneof("event") == "catalog" and message.catalog.version != have_version:
                result = client.sync(dest_dir)
                have_version = result.info.version
                if on_sync is not None:
                    on_sync(result)
    except grpc.RpcError as exc:
        if stop.is_set():
            return
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        raise _StreamEnded(f"the watch stream ended: {code.name}") from exc
    finally:
        call.cancel()
    if not stop.is_set():
        raise _StreamEnded("the server closed the watch stream")


class _StreamEnded(AvapDefsError):
    """The watch stream ended while it was still wanted."""
