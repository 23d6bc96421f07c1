"""Protobuf framing written and read by hand agrees with protobuf's own encoding."""

from __future__ import annotations

import pytest
from google.protobuf.internal import encoder
from hypothesis import given
from hypothesis import strategies as st

from avapdefs.errors import CorruptSnapshotError
from avapdefs.format import wire
from avapdefs.v1.definitions_pb2 import (
    Catalog,
    Command,
    GetCommandResponse,
    ListCommandsResponse,
    SyncCatalogResponse,
    SyncHeader,
)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varint_round_trips(value: int) -> None:
    encoded = wire.varint(value)
    assert encoded == encoder._VarintBytes(value)  # type: ignore[attr-defined]
    assert wire.read_varint(memoryview(encoded), 0) == (value, len(encoded))


@given(st.integers(min_value=1, max_value=2**29 - 1))
def test_tag_is_protobufs_own(field_number: int) -> None:
    assert wire.tag(field_number) == encoder.TagBytes(field_number, wire.LENGTH_DELIMITED)


@given(st.binary(min_size=1, max_size=300), st.sampled_from(["bytecode", "signed_package", "content_hash"]))
def test_encode_entry_is_protobufs_own_framing(body: bytes, field: str) -> None:
    number = Command.DESCRIPTOR.fields_by_name[field].number
    command = Command()
    setattr(command, field, body)
    assert wire.encode_entry(body, number) == command.SerializeToString()


@given(st.lists(st.text(min_size=1, max_size=40), max_size=20))
def test_entries_are_catalog_commands(names: list[str]) -> None:
    commands = [Command(name=name, code="x" * len(name)).SerializeToString() for name in names]
    payload = b"".join(wire.encode_entry(command) for command in commands)
    assert payload == Catalog(commands=[Command.FromString(c) for c in commands]).SerializeToString()
    assert [bytes(entry) for entry in wire.iter_entries(payload)] == commands
    assert [wire.command_name(entry) for entry in wire.iter_entries(payload)] == [n.encode() for n in names]


def test_an_entry_is_a_get_command_response_and_a_list_entry() -> None:
    command = Command(name="addVar", code="pass")
    entry = wire.encode_entry(command.SerializeToString())
    assert GetCommandResponse.FromString(entry).command == command
    listed = wire.encode_entry(command.SerializeToString(), ListCommandsResponse.COMMANDS_FIELD_NUMBER)
    assert list(ListCommandsResponse.FromString(listed).commands) == [command]


@given(st.lists(st.binary(max_size=200), max_size=10), st.integers(min_value=1, max_value=64))
def test_split_entries_reassembles_a_payload_cut_anywhere(bodies: list[bytes], piece: int) -> None:
    payload = b"".join(wire.encode_entry(body) for body in bodies)
    pending = bytearray()
    found: list[bytes] = []
    for start in range(0, len(payload), piece):
        pending += payload[start : start + piece]
        entries, used = wire.split_entries(pending)
        del pending[:used]
        found += entries
    assert found == bodies and not pending


@given(st.lists(st.binary(max_size=20_000), max_size=8), st.integers(min_value=1, max_value=30_000))
def test_entry_counter_says_where_the_whole_entries_end(bodies: list[bytes], piece: int) -> None:
    # Bodies long enough for three-byte length prefixes, pieces short enough to cut one.
    payload = b"".join(wire.encode_entry(body) for body in bodies)
    ends, end = [0], 0
    for body in bodies:
        end += len(wire.encode_entry(body))
        ends.append(end)
    counter = wire.EntryCounter()
    for start in range(0, len(payload), piece):
        counter.feed(payload[start : start + piece])
        counter.feed(b"")  # an empty piece changes nothing
        fed = min(start + piece, len(payload))
        assert counter.whole_bytes == max(e for e in ends if e <= fed)
    assert counter.finish() == len(bodies)


def test_entry_counter_whole_bytes_stay_before_an_entry_cut_in_its_header() -> None:
    body = bytes(300)  # a two-byte length prefix
    payload = wire.encode_entry(b"ab") + wire.encode_entry(body)
    counter = wire.EntryCounter()
    counter.feed(payload[:5])  # the first entry (4 bytes) and the second's tag
    assert (counter.count, counter.whole_bytes) == (1, 4)
    counter.feed(payload[5:6])  # half of its length prefix
    assert counter.whole_bytes == 4
    counter.feed(payload[6:])
    assert (counter.count, counter.whole_bytes, counter.finish()) == (2, len(payload), 2)


def test_command_name_of_a_command_without_one_is_empty() -> None:
    assert wire.command_name(Command(code="x").SerializeToString()) == b""
    assert wire.command_name(b"") == b""


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"\x12\x00", "unexpected field tag 18"),
        (b"\x0a\x05abc", "runs past the end"),
        (b"\x0a" + b"\xff" * 11, "bad length prefix"),
        (b"\x0a\xff", "bad length prefix"),
    ],
)
def test_bad_framing_is_refused(payload: bytes, says: str) -> None:
    with pytest.raises(CorruptSnapshotError, match=says):
        list(wire.iter_entries(payload, path="x.avsnap"))


def test_split_entries_refuses_an_overlong_varint() -> None:
    with pytest.raises(CorruptSnapshotError, match="bad length prefix"):
        wire.split_entries(bytearray(b"\x0a" + b"\xff" * 11))


@given(st.binary(max_size=70_000))
def test_only_field_is_a_sync_chunks_data_without_a_copy(data: bytes) -> None:
    message = SyncCatalogResponse(chunk=data).SerializeToString()
    body = wire.only_field(message, 2)
    assert body is not None and body == data and body.obj is message


def test_only_field_is_none_for_another_field_or_more_than_one() -> None:
    header = SyncCatalogResponse(header=SyncHeader(data_size=5)).SerializeToString()
    assert wire.only_field(header, 2) is None
    chunk = SyncCatalogResponse(chunk=b"abc").SerializeToString()
    assert wire.only_field(chunk + chunk, 2) is None
    assert wire.only_field(chunk[:-1], 2) is None
    assert wire.only_field(b"", 2) is None
