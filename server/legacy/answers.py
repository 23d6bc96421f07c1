"""The legacy answers of one snapshot version, encoded once with a codec.

Every answer is encoded once per snapshot version: a GetCommand is a dict
lookup and a slice, and SyncCatalog returns one prepared message.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from avapdefs.format.package import is_package
from avapdefs.format.snapshot import SnapshotInfo
from avapdefs.format.wire import encode_entry, iter_entries
from avapdefs.v1.definitions_pb2 import Command
from server.legacy.codec import LegacyCodec


@dataclass(frozen=True, eq=False)
class LegacyAnswers:
    """The legacy answers of one snapshot version, already serialized.

    Each command's message is a slice of the catalog message, so the commands
    are held once: a GetCommand copies its ~2 KB slice (well under a
    microsecond) rather than the server keeping a second copy of the catalog.

    Attributes:
        spans: UTF-8 command name -> (start, end) of its message in ``catalog``.
        catalog: the serialized SyncCatalog response (every command).
    """

    spans: Mapping[bytes, tuple[int, int]]
    catalog: bytes

    def command(self, name: bytes) -> bytes | None:
        """The serialized legacy command message named ``name``, or None."""
        span = self.spans.get(name)
        return None if span is None else self.catalog[span[0] : span[1]]


def _legacy_command(codec: LegacyCodec, command: Command) -> Message:
    # The signed package is the code legacy clients verify and run; a precompiled
    # form that is not a package travels as avbc_code.
    avbc = b"" if is_package(command.bytecode) else command.bytecode
    fields: dict[str, Any] = {
        "name": command.name,
        "type": command.type,
        "interface_json": command.interface_json,
        "code": command.signed_package,
        "avbc_code": avbc,
        "hash": command.content_hash.hex(),
    }
    return codec.command(**fields)


def build_answers(codec: LegacyCodec, payload: bytes | memoryview, info: SnapshotInfo) -> LegacyAnswers:
    """Encode every legacy answer of one snapshot payload.

    Serialized messages concatenate into one message, so the catalog is each
    command framed as a ``commands`` entry, followed by the scalar fields:
    every command is serialized once, not twice.
    """
    spans: dict[bytes, tuple[int, int]] = {}
    entry_number = codec.catalog.DESCRIPTOR.fields_by_name["commands"].number
    parts: list[bytes] = []
    offset = 0
    for serialized in iter_entries(payload):
        command = Command.FromString(bytes(serialized))
        message = _legacy_command(codec, command).SerializeToString()
        entry = encode_entry(message, entry_number)  # the tag and length, then the message
        parts.append(entry)
        offset += len(entry)
        spans[command.name.encode("utf-8")] = (offset - len(message), offset)
    tail = codec.catalog(total_count=info.command_count, version_hash=info.content_hash.hex())
    parts.append(tail.SerializeToString())
    return LegacyAnswers(spans=spans, catalog=b"".join(parts))


class LazyLegacyAnswers:
    """Legacy answers built by the first legacy call of a version, so they cost nothing until needed.

    Encoding the legacy answers parses every command (about 0.5 s and a second
    copy of the catalog in this process's memory at 50,000 commands); the
    avapdefs.v1 service needs none of it. Built on a background thread at load,
    as before, it held the GIL while the first calls waited: the first
    GetCommand after a start came about 1 s late, and each process held the
    copy. The first legacy call of a version now builds them (calls arriving
    meanwhile wait for it); the payload it reads is the mapped serving image.

    Thread safety: ``get`` may be called from any number of threads.
    """

    def __init__(self, codec: LegacyCodec, payload: bytes | memoryview, info: SnapshotInfo) -> None:
        self._inputs: tuple[LegacyCodec, bytes | memoryview, SnapshotInfo] | None = (codec, payload, info)
        self._value: LegacyAnswers | None = None
        self._lock = threading.Lock()

    def get(self) -> LegacyAnswers:
        """The answers, built on first need."""
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    assert self._inputs is not None
                    self._value = build_answers(*self._inputs)
                    self._inputs = None  # the payload is no longer needed
                value = self._value
        return value
