"""The legacy ``avap.DefinitionEngine`` RPCs, answered from the live snapshot's prepared legacy answers.

Errors become status codes the way ``server/service.py`` turns them, with its helpers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from server.legacy.answers import LegacyAnswers
from server.service import StatusError, check_name, parse, require_snapshot, unary
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
            raise StatusError(grpc.StatusCode.UNIMPLEMENTED, "the legacy service is off on this server")
        return legacy.get()

    def get_command(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        """GetCommand(CommandRequest): the legacy command message, or NOT_FOUND naming it."""
        name = str(parse(self._request_type, data).name)
        check_name(name)
        found = self._answers().command(name.encode("utf-8"))
        if found is None:
            raise StatusError(grpc.StatusCode.NOT_FOUND, f"command {name!r} not found")
        return found

    def sync_catalog(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        """SyncCatalog(Empty): every command in one message, prepared once per version."""
        return self._answers().catalog

    def handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        """The method handlers, by method name."""
        as_unary = grpc.unary_unary_rpc_method_handler
        return {
            "GetCommand": as_unary(unary(self.get_command)),
            "SyncCatalog": as_unary(unary(self.sync_catalog)),
        }
