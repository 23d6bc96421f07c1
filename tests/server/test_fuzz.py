"""Fuzzing every method the server exposes with raw request bytes, through grpcio, against a real server process.

Each method of ``avapdefs.v1.DefinitionService``, the legacy
``avap.DefinitionEngine``, ``grpc.health.v1.Health`` and server reflection
gets a few hundred request bodies: random bytes, and protobuf-shaped ones
(random field numbers and wire types, huge and negative varints, lengths that
run past the end, valid requests with bytes flipped or appended), sent as
they are (no serializer). An answer may be any status but INTERNAL, UNKNOWN
or UNAVAILABLE (a body that does not parse is INVALID_ARGUMENT). Afterwards
the server still answers GetCommand, its process is alive, and it logged no
traceback and no ERROR line. Examples are derandomized, so a run is repeatable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avapdefs.format import wire
from avapdefs.v1.definitions_pb2 import GetCommandRequest
from tests.helpers import export_snapshot
from tests.server.helpers import VERSIONED_NAMES, RunningServer, running_server, versioned_commands

SERVICE = "/avapdefs.v1.DefinitionService/"
LEGACY = "/avap.DefinitionEngine/"
HEALTH = "/grpc.health.v1.Health/"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
UNARY = [
    SERVICE + "GetCommand",
    SERVICE + "BatchGetCommands",
    SERVICE + "ListCommands",
    SERVICE + "GetCatalogInfo",
    LEGACY + "GetCommand",
    LEGACY + "SyncCatalog",
    HEALTH + "Check",
]
STREAMS = [SERVICE + "SyncCatalog", SERVICE + "WatchCatalog", HEALTH + "Watch"]
# A server's answer to bytes it cannot use; never INTERNAL, UNKNOWN (a crash of a handler) or UNAVAILABLE.
ACCEPTABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # a stream that goes on (a watch), ended by the test's deadline
}
FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("fuzz") / "snapshots"
    export_snapshot(folder, 1, versioned_commands(1))
    export_snapshot(folder, 2, versioned_commands(2), delta_from=1)
    with running_server(folder, max_watch_streams=8, max_sync_streams=8) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


def _varint_field(number: int, value: int) -> bytes:
    return wire.varint(number << 3) + wire.varint(value & wire.UINT64_MASK)


@st.composite
def _field(draw: st.DrawFn) -> bytes:
    """One protobuf field, well or badly formed."""
    number = draw(st.integers(1, 20) | st.just(536870911))
    kind = draw(st.sampled_from(["varint", "bytes", "text", "fixed32", "fixed64", "overlong", "group", "bad_type"]))
    if kind == "varint":
        return _varint_field(number, draw(st.integers(-(1 << 63), (1 << 64) - 1)))
    if kind in ("bytes", "text"):
        body = draw(st.binary(max_size=300)) if kind == "bytes" else draw(st.text(max_size=300)).encode()
        return wire.tag(number) + wire.varint(len(body)) + body
    if kind == "fixed32":
        return wire.tag(number, 5) + draw(st.binary(min_size=4, max_size=4))
    if kind == "fixed64":
        return wire.tag(number, 1) + draw(st.binary(min_size=8, max_size=8))
    if kind == "overlong":  # a length that runs past the end of the message
        return wire.tag(number) + wire.varint(draw(st.integers(1, (1 << 64) - 1))) + b"x"
    if kind == "group":
        return wire.tag(number, 3) + draw(st.binary(max_size=8))
    return wire.tag(number, draw(st.integers(6, 7))) + draw(st.binary(max_size=8))


_VALID = [
    GetCommandRequest(name=VERSIONED_NAMES[0]).SerializeToString(),
    GetCommandRequest(name="x" * 300).SerializeToString(),
    b"",
]


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    """A request body: random bytes, protobuf-shaped fields, or a valid request damaged."""
    kind = draw(st.sampled_from(["random", "fields", "damaged"]))
    if kind == "random":
        return draw(st.binary(max_size=600))
    if kind == "fields":
        return b"".join(draw(st.lists(_field(), max_size=6)))
    body = bytearray(draw(st.sampled_from(_VALID)))
    if body and draw(st.booleans()):
        body[draw(st.integers(0, len(body) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(body) + draw(st.binary(max_size=16))


# The codes each method answered, so the last test can tell the fuzzing reached past the parsing.
SEEN: dict[str, set[grpc.StatusCode]] = {}


def _code(method: str, call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
    SEEN.setdefault(method, set()).add(code)
    return code


def _first_message(stream: Iterator[bytes]) -> None:
    # A watch goes on for ever: its first message (or its refusal) tells enough, then it is cancelled.
    try:
        next(stream, None)
    finally:
        stream.cancel()  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", UNARY)
@FUZZ
@given(body=_bodies())
def test_a_unary_method_answers_any_bytes_with_a_status_not_a_fault(
    channel: grpc.Channel, method: str, body: bytes
) -> None:
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
    code = _code(method, lambda: call(body, timeout=10))
    assert code in ACCEPTABLE, (method, body, code)


@pytest.mark.parametrize("method", STREAMS)
@settings(FUZZ, max_examples=120)
@given(body=_bodies())
def test_a_streaming_method_answers_any_bytes_with_a_status_not_a_fault(
    channel: grpc.Channel, method: str, body: bytes
) -> None:
    call: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(method)
    code = _code(method, lambda: _first_message(call(body, timeout=3)))
    assert code in ACCEPTABLE | {grpc.StatusCode.CANCELLED}, (method, body, code)


@FUZZ
@given(bodies=st.lists(_bodies(), min_size=1, max_size=3))
def test_reflection_answers_any_bytes_with_a_status_not_a_fault(channel: grpc.Channel, bodies: list[bytes]) -> None:
    call: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(REFLECTION)
    code = _code(REFLECTION, lambda: list(call(iter(bodies), timeout=10)))
    assert code in ACCEPTABLE, (bodies, code)


def test_after_the_fuzzing_the_server_answers_and_logged_no_fault(server: RunningServer, channel: grpc.Channel) -> None:
    # Runs last in this module (pytest keeps the file's order): every fuzzed call has been made.
    # Each method answered some bodies (OK) and refused others: the fuzzing went past the parsing.
    assert set(SEEN) == {*UNARY, *STREAMS, REFLECTION}
    for method, codes in SEEN.items():
        assert grpc.StatusCode.OK in codes, method
        assert codes - {grpc.StatusCode.OK} or method == LEGACY + "SyncCatalog", method  # it takes no fields
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(SERVICE + "GetCommand")
    answer = call(GetCommandRequest(name=VERSIONED_NAMES[0]).SerializeToString(), timeout=10)
    assert b"# version 2\n" in answer
    assert server.process.process is not None and server.process.process.poll() is None
    faults = [line for line in server.lines if "Traceback" in line or " ERROR " in line or "CRITICAL" in line]
    assert faults == []
    # Envoy's own log (where pyvoy reports an exception that escaped the application) has none either.
    envoy_log = server.process._envoy_log.read_text(errors="replace")
    assert "Traceback" not in envoy_log and "[error]" not in envoy_log and "[critical]" not in envoy_log
