"""grpc.health.v1.Health, and the staleness rule that can turn it NOT_SERVING (``--max-age``).

Health is SERVING once a snapshot is loaded and until a drain begins. With
``--max-age``, the definition service (``avapdefs.v1.DefinitionService``) is
also NOT_SERVING while the live snapshot is older than that and not pinned,
so a load balancer that checks readiness on it routes away from a server
whose exporter is stuck. The whole server (``""``) ignores staleness: it says
whether the process works, so a liveness probe on it never restarts a
server only because its catalog is old (a restart would not make it young).
Calls are still answered: a stale catalog is better than none for a client
that reaches the server anyway.

Age is counted from the snapshot's creation time (``created_at_unix_ms``, set
by the exporter), not from when this server loaded it: a restart does not
make an old catalog young. A pinned version is never stale: an operator held
it there on purpose.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from grpc_health.v1 import health_pb2

from server.rpc import Code, StatusError
from server.service import SERVICE_NAME, Signal, StreamSlots, parse
from server.store import SnapshotStore, snapshot_age_s

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
AGE_CHECK_S = 1.0  # how often staleness (and the age gauge) is looked at


class Health:
    """grpc.health.v1.Health: ``""`` (the whole server: loaded and not draining) and the definition service
    (the same, and not stale).

    Args:
        changes: wakes Watch streams when the status may have changed.
        store: the live snapshot, whose age decides staleness.
        max_age_s: a live, unpinned snapshot older than this is NOT_SERVING; None: never.
        max_watch_streams: Watch streams open at once; beyond it RESOURCE_EXHAUSTED. A Watch
            may stay quiet for ever (no idle timeout cuts it) and costs about 25 KiB, so
            without a cap one client could hold any amount of memory.
    """

    def __init__(
        self, changes: Signal, store: SnapshotStore, max_age_s: float | None = None, *, max_watch_streams: int = 10000
    ) -> None:
        self._changes = changes
        self._store = store
        self._max_age_s = max_age_s
        self._watch_slots = StreamSlots(max_watch_streams, "health watch streams open here")
        self._up = False  # loaded and not draining
        self.stale = False  # as of the last check
        self._services = {"", SERVICE_NAME}

    @property
    def status(self) -> int:
        """The definition service's status as of now: SERVING, or NOT_SERVING (not loaded, draining or stale)."""
        return SERVING if self._up and not self._is_stale() else NOT_SERVING

    def status_of(self, service: str) -> int:
        """The status of ``service``: ``""`` ignores staleness; an unknown service is SERVICE_UNKNOWN."""
        if service == "":
            return SERVING if self._up else NOT_SERVING
        return self.status if service in self._services else _SERVICE_UNKNOWN

    def set_up(self, up: bool) -> None:
        """Loaded (True) or draining (False): report it from now on, and to every Watch."""
        self._up = up
        self._changes.notify()

    def _is_stale(self) -> bool:
        snap = self._store.current
        if self._max_age_s is None or snap is None or self._store.pinned_version:
            return False
        return snapshot_age_s(snap.info) > self._max_age_s

    def check_age(self) -> None:
        """Look at the live snapshot's age; on a change of staleness, say so and wake every Watch."""
        stale = self._is_stale()
        if stale == self.stale:
            return
        self.stale = stale
        snap = self._store.current
        assert snap is not None  # only a loaded snapshot can turn stale
        age = snapshot_age_s(snap.info)
        if stale:
            logger.warning("catalog version %s is %.0f s old, over --max-age %.0f s: health reports NOT_SERVING "
                           "until a newer version loads (is the exporter running?)",
                           snap.info.version, age, self._max_age_s)  # fmt: skip
        else:
            logger.info("catalog version %s is %.0f s old%s: health reports SERVING again",
                        snap.info.version, age, " (pinned)" if self._store.pinned_version else "")  # fmt: skip
        self._changes.notify()

    async def follow_age(self, also: Callable[[], None] | None = None) -> None:
        """Run ``check_age`` (and ``also``) every ``AGE_CHECK_S`` until cancelled."""
        while True:
            self.check_age()
            if also is not None:
                also()
            await asyncio.sleep(AGE_CHECK_S)

    def _status_of(self, data: bytes) -> int:
        return self.status_of(parse(health_pb2.HealthCheckRequest.FromString, data).service)

    def check(self, data: bytes) -> bytes:
        """Check: the status, or NOT_FOUND for a service this server does not have."""
        status = self._status_of(data)
        if status == _SERVICE_UNKNOWN:
            raise StatusError(Code.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=status).SerializeToString()

    async def watch(self, data: bytes, disconnected: asyncio.Future[None]) -> AsyncIterator[bytes]:
        """Watch: the status now, then each change, until the client goes away; RESOURCE_EXHAUSTED past the cap."""
        self._status_of(data)  # a request that does not parse is refused before it takes a slot
        with self._watch_slots.take():
            sent = None
            while not disconnected.done():
                status = self._status_of(data)
                if status != sent:
                    sent = status
                    yield health_pb2.HealthCheckResponse(status=status).SerializeToString()
                await self._changes.wait(3600.0, disconnected)
