"""The legacy answers of one snapshot version, encoded once with a codec.

Every answer is encoded once per snapshot version: a GetCommand is a dict
lookup and a slice, and SyncCatalog returns one prepared message. Only the
methods the contract declares get answers.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from avapdefs.format.snapshot import SnapshotInfo
from avapdefs.format.wire import encode_entry, iter_entries
from avapdefs.v1.definitions_pb2 import Command
from server.legacy.codec import CatalogPlan, LegacyCodec, MessagePlan


@dataclass(frozen=True, eq=False)
class LegacyAnswers:
    """The legacy answers of one snapshot version, already serialized.

    When SyncCatalog's entries are GetCommand's message type (every known
    contract that declares both), each command's message is a slice of the
    catalog message, so the commands are held once: a GetCommand copies its
    ~2 KB slice (well under a microsecond) rather than the server keeping a
    second copy of the catalog.

    Attributes:
        spans: UTF-8 command name -> (start, end) of its GetCommand answer in ``commands``;
            empty when GetCommand is not declared.
        commands: the bytes the spans point into (the catalog itself when it holds them).
        catalog: the serialized SyncCatalog response; None when SyncCatalog is not declared.
    """

    spans: Mapping[bytes, tuple[int, int]]
    commands: bytes
    catalog: bytes | None

    def command(self, name: bytes) -> bytes | None:
        """The serialized legacy command message named ``name``, or None."""
        span = self.spans.get(name)
        return None if span is None else self.commands[span[0] : span[1]]


def _encode_commands(
    plan: MessagePlan[Command], payload: bytes | memoryview, number: int
) -> tuple[dict[bytes, tuple[int, int]], list[bytes]]:
    # Serialized messages concatenate into one message, so each command is framed as
    # entry ``number`` of a catalog, and its answer is the span after the tag and length.
    spans: dict[bytes, tuple[int, int]] = {}
    parts: list[bytes] = []
    offset = 0
    for serialized in iter_entries(payload):
        command = Command.FromString(bytes(serialized))
        message = plan.encode(command)
        entry = encode_entry(message, number)
        parts.append(entry)
        offset += len(entry)
        spans[command.name.encode("utf-8")] = (offset - len(message), offset)
    return spans, parts


def _catalog(plan: CatalogPlan, payload: bytes | memoryview, info: SnapshotInfo) -> bytes:
    parts = [] if plan.command is None else _encode_commands(plan.command, payload, plan.commands_number)[1]
    parts.append(plan.scalars.encode(info))
    return b"".join(parts)


def build_answers(codec: LegacyCodec, payload: bytes | memoryview, info: SnapshotInfo) -> LegacyAnswers:
    """Encode every legacy answer of one snapshot payload, for the methods ``codec`` declares.

    When the catalog's entries are GetCommand's type, the catalog is each
    command framed as a ``commands`` entry, followed by the scalar fields, and
    GetCommand answers are slices of it: every command is serialized once.
    """
    get, sync = codec.command, codec.catalog
    if get is None:
        assert sync is not None  # a codec declares at least one of the two
        return LegacyAnswers(spans={}, commands=b"", catalog=_catalog(sync, payload, info))
    if sync is None or sync.command is not get:
        spans, parts = _encode_commands(get, payload, 1)  # any entry number: only the spans are served
        catalog = None if sync is None else _catalog(sync, payload, info)
        return LegacyAnswers(spans=spans, commands=b"".join(parts), catalog=catalog)
    spans, parts = _encode_commands(get, payload, sync.commands_number)
    parts.append(sync.scalars.encode(info))
    joined = b"".join(parts)
    return LegacyAnswers(spans=spans, commands=joined, catalog=joined)


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
