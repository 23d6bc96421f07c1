"""The API key a client sends: where it comes from, how it is checked, and the metadata that carries it.

A server started with ``AVAP_API_KEY`` refuses calls to its definition
services (UNAUTHENTICATED) unless they carry that key in the ``x-avap-auth``
metadata. A client is given the key as a parameter (``DefinitionClient``,
``Replica``); the command-line tools read it from ``--api-key-file`` /
``AVAP_API_KEY_FILE``, else ``AVAP_API_KEY`` (``api_key_from``), never from a
flag, so that it does not show in ``ps``. Surrounding white space (the newline
an editor leaves) is not part of a key; a blank one is refused rather than
taken as "no key".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from avapdefs.tls import warn_if_exposed

logger = logging.getLogger(__name__)

AUTH_METADATA_KEY = "x-avap-auth"
KEY_VARIABLE = "AVAP_API_KEY"


def check_api_key(key: str) -> str:
    """``key`` without surrounding white space.

    Raises:
        ValueError: it is blank, or holds a character gRPC metadata cannot carry (printable ASCII only).
    """
    stripped = key.strip()
    if not stripped:
        raise ValueError("the API key is blank")
    if not all(" " <= char <= "~" for char in stripped):
        raise ValueError("the API key holds a character other than printable ASCII, which gRPC metadata cannot carry")
    return stripped


def read_api_key_file(path: Path) -> str:
    """The key held in ``path``; warns when others than its owner may read the file.

    Raises:
        ValueError: the file cannot be read, or it holds no usable key.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the API key file {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    warn_if_exposed(path, "the API key file")
    try:
        return check_api_key(text)
    except ValueError as exc:
        raise ValueError(f"the API key file {path}: {exc}") from None


def api_key_from(path: Path | None, env: Mapping[str, str]) -> str | None:
    """The key from the key file when one is given, else from ``AVAP_API_KEY``, else None.

    Raises:
        ValueError: the file cannot be read, or the file or the variable holds no usable key.
    """
    if path is not None:
        return read_api_key_file(path)
    if KEY_VARIABLE not in env:
        return None
    try:
        return check_api_key(env[KEY_VARIABLE])
    except ValueError as exc:
        raise ValueError(f"{KEY_VARIABLE} is set, but {exc}; give a key, or unset it") from None


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class KeyInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the ``x-avap-auth`` metadata to every call of a channel (``grpc.intercept_channel``).

    Args:
        key: the API key, as ``check_api_key`` returns it.
    """

    def __init__(self, key: str) -> None:
        self._entry = (AUTH_METADATA_KEY, key)

    def _with_key(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self._entry]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return continuation(self._with_key(client_call_details), request)

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Iterator[Any]],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return continuation(self._with_key(client_call_details), request)
