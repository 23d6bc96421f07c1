"""gRPC over ASGI: the wire protocol the server speaks through Envoy, written once.

The server's HTTP/2 is Envoy's (through pyvoy, which runs this ASGI app inside
the Envoy process); this module is the thin gRPC layer on top, measured
against the alternatives in docs/serving-stack.md:

- a message is a 5-byte prefix (compressed flag, big-endian length) and the
  serialized bytes; compressed requests are refused (UNIMPLEMENTED): no client
  of this server compresses, and answers are never compressed;
- a call ends with the HTTP/2 trailers ``grpc-status`` and ``grpc-message``
  (percent-encoded), sent after a final empty body;
- ``grpc-timeout`` bounds a streaming call; a unary call is answered at once;
- a client that resets its stream makes ``send`` raise pyvoy's
  ``ClientDisconnectedError`` (an ``OSError``) and ``receive`` return
  ``http.disconnect``.

Status codes are this module's ``Code``: the server does not import grpcio.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREFIX_BYTES = 5
_PREFIX = struct.Struct(">BI")


class Code(enum.IntEnum):
    """gRPC status codes (grpc/doc/statuscodes.md)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class StatusError(Exception):
    """Ends a call with ``code`` and ``details``; raised by handlers, sent as trailers here."""

    def __init__(self, code: Code, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Disconnected(Exception):
    """The client went away (reset its stream or closed its connection)."""


# Built once: every answer starts and ends with the same ASGI messages.
START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/grpc")],
    "trailers": True,
}
END_BODY: Message = {"type": "http.response.body", "body": b"", "more_body": False}
OK_TRAILERS: Message = {"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")], "more_trailers": False}


def frame(message: bytes) -> bytes:
    """``message`` with its gRPC length prefix (uncompressed)."""
    return _PREFIX.pack(0, len(message)) + message


def status_trailers(code: Code, details: str) -> Message:
    """The trailers message that ends a call with ``code`` and ``details``."""
    return {
        "type": "http.response.trailers",
        "headers": [(b"grpc-status", str(int(code)).encode()), (b"grpc-message", _percent_encode(details))],
        "more_trailers": False,
    }


def _percent_encode(details: str) -> bytes:
    # grpc-message is UTF-8 with every byte outside printable ASCII, and '%', percent-encoded.
    return b"".join(
        bytes((byte,)) if 0x20 <= byte <= 0x7E and byte != 0x25 else b"%%%02X" % byte
        for byte in details.encode("utf-8")
    )


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header ``name`` (lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


_TIMEOUT = re.compile(rb"^(\d{1,8})([HMSmun])$")
_TIMEOUT_UNIT_S = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def timeout_s(scope: Scope) -> float | None:
    """The call's ``grpc-timeout`` in seconds, None when it has none.

    Raises:
        StatusError: the header is not a gRPC timeout (INVALID_ARGUMENT).
    """
    value = header(scope, b"grpc-timeout")
    if value is None:
        return None
    match = _TIMEOUT.match(value)
    if match is None:
        raise StatusError(Code.INVALID_ARGUMENT, f"grpc-timeout {value.decode('latin-1')!r} is not a gRPC timeout")
    return int(match[1]) * _TIMEOUT_UNIT_S[match[2]]


def is_grpc(scope: Scope) -> bool:
    """Whether the request is a gRPC call: POST with content type application/grpc (or a +subtype)."""
    if scope["method"] != "POST":
        return False
    content_type = header(scope, b"content-type") or b""
    return content_type == b"application/grpc" or content_type.startswith((b"application/grpc+", b"application/grpc;"))


class MessageReader:
    """Reads length-prefixed request messages off ``receive``, each at most ``limit_bytes``."""

    def __init__(self, receive: Receive, limit_bytes: int) -> None:
        self._receive = receive
        self._limit_bytes = limit_bytes
        self._buffer = b""
        self._ended = False

    async def next(self) -> bytes | None:
        """The next whole message; None once the client has sent its last.

        Raises:
            StatusError: a message is compressed, over the limit, or cut short.
            Disconnected: the client went away.
        """
        while True:
            if len(self._buffer) >= PREFIX_BYTES:
                compressed, length = _PREFIX.unpack_from(self._buffer)
                if compressed:
                    raise StatusError(
                        Code.UNIMPLEMENTED, "compressed messages are not accepted: send them uncompressed"
                    )
                if length > self._limit_bytes:
                    raise StatusError(
                        Code.RESOURCE_EXHAUSTED,
                        f"a request message of {length} bytes is over this server's limit of {self._limit_bytes}",
                    )
                end = PREFIX_BYTES + length
                if len(self._buffer) >= end:
                    message, self._buffer = self._buffer[PREFIX_BYTES:end], self._buffer[end:]
                    return message
            if self._ended:
                if self._buffer:
                    raise StatusError(Code.INTERNAL, "the request ended inside a message")
                return None
            event = await self._receive()
            if event["type"] == "http.disconnect":
                raise Disconnected
            self._buffer += event.get("body", b"")
            self._ended = not event.get("more_body", False)


async def read_unary(receive: Receive, limit_bytes: int) -> bytes:
    """The one request message of a call that takes one (a unary or server-streaming call).

    Raises:
        StatusError: there is not exactly one message, or it is unacceptable.
        Disconnected: the client went away.
    """
    event = await receive()
    body = event.get("body", b"")
    if not event.get("more_body", False) and len(body) >= PREFIX_BYTES and body[0] == 0:
        # The usual shape, one event holding one message: no copy beyond the slice.
        (length,) = struct.unpack_from(">I", body, 1)
        if length == len(body) - PREFIX_BYTES and length <= limit_bytes:
            return body[PREFIX_BYTES:]  # type: ignore[no-any-return]
    if event["type"] == "http.disconnect":
        raise Disconnected
    reader = MessageReader(_replay(event, receive), limit_bytes)
    message = await reader.next()
    if message is None or await reader.next() is not None:
        raise StatusError(Code.UNIMPLEMENTED, "this method takes exactly one request message")
    return message


def _replay(first: Message, receive: Receive) -> Receive:
    pending = [first]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


async def send_status(send: Send, code: Code, details: str, *, started: bool) -> None:
    """End the call with ``code``: headers first if none were sent, then an empty end of body and the trailers."""
    if not started:
        await send(START)
    await send(END_BODY)
    await send(OK_TRAILERS if code == Code.OK and not details else status_trailers(code, details))


class StreamReply:
    """A streaming call's answer as it goes out: the headers before the first message, then messages, then the end."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def message(self, message: bytes) -> None:
        """Send one message (the headers first, if this is the first)."""
        if not self.started:
            await self._send(START)
            self.started = True
        await self._send({"type": "http.response.body", "body": frame(message), "more_body": True})

    async def end(self, code: Code = Code.OK, details: str = "") -> None:
        """End the call with ``code``."""
        await send_status(self._send, code, details, started=self.started)
