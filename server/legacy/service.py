"""The legacy ``avap.DefinitionEngine`` RPCs, answered from the live snapshot's prepared legacy answers.

Errors become status codes the way ``server/service.py`` turns them, with its helpers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.legacy.answers import LegacyAnswers
from server.rpc import Code, StatusError
from server.service import Unary, check_name, parse, require_snapshot
from server.store import SnapshotStore


class LegacyService:
    """Answers the legacy ``avap.DefinitionEngine`` calls from ``store.current.legacy``.

    The request is parsed with the legacy codec's own class (its field numbers
    may be a deployment's); the answers were encoded when the snapshot loaded.
    """

    def __init__(self, store: SnapshotStore, request_type: Callable[[bytes], Any]) -> None:
        self._store = store
        self._request_type = request_type

    def _answers(self) -> LegacyAnswers:
        legacy = require_snapshot(self._store).legacy
        if legacy is None:
            raise StatusError(Code.UNIMPLEMENTED, "the legacy service is off on this server")
        return legacy.get()

    def get_command(self, data: bytes) -> bytes:
        """GetCommand(CommandRequest): the legacy command message, or NOT_FOUND naming it."""
        name = str(parse(self._request_type, data).name)
        check_name(name)
        found = self._answers().command(name.encode("utf-8"))
        if found is None:
            raise StatusError(Code.NOT_FOUND, f"command {name!r} not found")
        return found

    def sync_catalog(self, data: bytes) -> bytes:
        """SyncCatalog(Empty): every command in one message, prepared once per version."""
        return self._answers().catalog

    def unary_methods(self) -> dict[str, Unary]:
        """The handlers, by method name."""
        return {"GetCommand": self.get_command, "SyncCatalog": self.sync_catalog}
