"""The legacy ``avap.DefinitionEngine`` RPCs, answered from the live snapshot's prepared legacy answers.

Only the methods the contract declares are served; the application answers
any other method UNIMPLEMENTED. Errors become status codes the way
``server/service.py`` turns them, with its helpers.
"""

from __future__ import annotations

from typing import Any

from server.legacy.answers import LegacyAnswers
from server.legacy.codec import GET_COMMAND, SYNC_CATALOG, LegacyCodec
from server.rpc import Code, StatusError
from server.service import Unary, check_name, parse, require_snapshot
from server.store import SnapshotStore


class LegacyService:
    """Answers the legacy ``avap.DefinitionEngine`` calls from ``store.current.legacy``.

    The request is parsed with the codec's own class (its field numbers may be
    a deployment's); the answers are encoded once per snapshot version.
    """

    def __init__(self, store: SnapshotStore, codec: LegacyCodec) -> None:
        self._store = store
        self._codec = codec

    def _answers(self) -> LegacyAnswers:
        legacy = require_snapshot(self._store).legacy
        if legacy is None:
            raise StatusError(Code.UNIMPLEMENTED, "the legacy service is off on this server")
        return legacy.get()

    def get_command(self, data: bytes) -> bytes:
        """GetCommand(CommandRequest): the legacy command message, or NOT_FOUND naming it."""
        assert self._codec.request is not None  # served only when the contract declares GetCommand
        request: Any = parse(self._codec.request.FromString, data)
        name = str(request.name)
        check_name(name)
        found = self._answers().command(name.encode("utf-8"))
        if found is None:
            raise StatusError(Code.NOT_FOUND, f"command {name!r} not found")
        return found

    def sync_catalog(self, data: bytes) -> bytes:
        """SyncCatalog(Empty): every command in one message, prepared once per version."""
        catalog = self._answers().catalog
        assert catalog is not None  # served only when the contract declares SyncCatalog
        return catalog

    def unary_methods(self) -> dict[str, Unary]:
        """The handlers of the methods the contract declares, by method name."""
        methods: dict[str, Unary] = {}
        if self._codec.command is not None:
            methods[GET_COMMAND] = self.get_command
        if self._codec.catalog is not None:
            methods[SYNC_CATALOG] = self.sync_catalog
        return methods
