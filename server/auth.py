"""API-key authentication: the ``x-avap-auth`` metadata entry, as legacy AVAP clients send it.

Installed only when a key is configured, so an open local server pays nothing
per call. Health and reflection stay open (load balancers and grpcurl need
them); the definition services are protected.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import grpc

METADATA_KEY = "x-avap-auth"


def _deny(details: str) -> Callable[[Any, grpc.ServicerContext], Any]:
    def deny(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, details)

    return deny


class ApiKeyInterceptor(grpc.ServerInterceptor):
    """Refuses calls to the protected services unless ``x-avap-auth`` holds the key.

    The comparison is constant-time (``hmac.compare_digest``), so the time a
    refusal takes says nothing about how much of a guess was right.

    Args:
        key: the API key.
        protected_services: full service names, e.g. ``"avap.DefinitionEngine"``.
    """

    def __init__(self, key: str, protected_services: tuple[str, ...]) -> None:
        if not key:
            raise ValueError("the API key is empty")
        self._key = key.encode("utf-8")
        self._prefixes = tuple(f"/{service}/" for service in protected_services)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self._prefixes):
            return handler
        supplied = [value for key, value in handler_call_details.invocation_metadata if key == METADATA_KEY]
        if not supplied:
            return self._refusal(handler, f"missing {METADATA_KEY} metadata")
        value = supplied[0].encode("utf-8") if isinstance(supplied[0], str) else supplied[0]
        if not hmac.compare_digest(value, self._key):
            return self._refusal(handler, f"wrong {METADATA_KEY} key")
        return handler

    @staticmethod
    def _refusal(handler: grpc.RpcMethodHandler[Any, Any], details: str) -> grpc.RpcMethodHandler[Any, Any]:
        # The refusal takes the method's own shape, so a streaming call ends as a stream would.
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(_deny(details))
        return grpc.unary_unary_rpc_method_handler(_deny(details))
