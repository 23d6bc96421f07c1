"""The legacy ``avap.DefinitionEngine`` contract, served from the same snapshot.

Existing AVAP language servers and workers call ``GetCommand(CommandRequest)``
and a unary ``SyncCatalog(Empty)``. Their ``.proto`` was never published, so
the field numbers are matched by *field name*: by default those of the
bundled ``proto/avap/definition_engine.proto``; with ``--legacy-proto PATH``
those of a deployment's own copy, so clients generated from it decode our
answers whatever numbering it uses.

Every answer is encoded once per snapshot version (``LegacyAnswers``): a
GetCommand is a dict lookup and SyncCatalog returns one prepared message.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, ServiceDescriptor
from google.protobuf.message import Message

from avap import definition_engine_pb2
from avapdefs.format.package import is_package
from avapdefs.format.snapshot import SnapshotInfo
from avapdefs.format.wire import encode_entry, iter_entries
from avapdefs.v1.definitions_pb2 import Command

logger = logging.getLogger(__name__)

SERVICE_NAME = "avap.DefinitionEngine"
_COMMAND_FIELDS = ("name", "type", "interface_json", "code", "avbc_code", "hash")
_CATALOG_FIELDS = ("commands", "total_count", "version_hash")


class LegacyProtoError(Exception):
    """A ``--legacy-proto`` file does not compile or lacks what the contract needs."""


@dataclass(frozen=True)
class LegacyCodec:
    """The legacy message classes the answers are encoded with.

    Attributes:
        request: the GetCommand request message (has a ``name`` field).
        command: the command message (fields ``_COMMAND_FIELDS``).
        catalog: the SyncCatalog response message (fields ``_CATALOG_FIELDS``).
        origin: where the classes came from, for the log.
    """

    request: type[Message]
    command: type[Message]
    catalog: type[Message]
    origin: str


def _classes(service: ServiceDescriptor, origin: str) -> LegacyCodec:
    methods = {method.name: method for method in service.methods}
    if "GetCommand" not in methods or "SyncCatalog" not in methods:
        raise LegacyProtoError(f"{origin}: service {service.full_name} lacks GetCommand or SyncCatalog")
    command = methods["GetCommand"].output_type
    catalog = methods["SyncCatalog"].output_type
    request = methods["GetCommand"].input_type
    _require_fields(request, ("name",), origin)
    _require_fields(command, _COMMAND_FIELDS, origin)
    _require_fields(catalog, _CATALOG_FIELDS, origin)
    return LegacyCodec(
        request=message_factory.GetMessageClass(request),
        command=message_factory.GetMessageClass(command),
        catalog=message_factory.GetMessageClass(catalog),
        origin=origin,
    )


def _require_fields(message: Descriptor, names: tuple[str, ...], origin: str) -> None:
    missing = [name for name in names if name not in message.fields_by_name]
    if missing:
        raise LegacyProtoError(f"{origin}: message {message.full_name} lacks field(s) {', '.join(missing)}")


def bundled_codec() -> LegacyCodec:
    """The codec of the bundled ``avap/definition_engine.proto``."""
    service = definition_engine_pb2.DESCRIPTOR.services_by_name["DefinitionEngine"]
    return _classes(service, "bundled avap/definition_engine.proto")


def load_codec(proto_path: Path) -> LegacyCodec:
    """Compile a deployment's own legacy ``.proto`` and take its message classes.

    The file is compiled into a private descriptor pool (its package ``avap``
    would clash with the bundled contract in the default pool).

    Raises:
        LegacyProtoError: the file does not compile, or has no
            ``avap.DefinitionEngine`` service with the contract's fields.
    """
    from grpc_tools import protoc  # type: ignore[import-untyped]  # only needed for this option

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "legacy.pb"
        status = protoc.main(
            [
                "protoc",
                f"--proto_path={proto_path.parent.resolve()}",
                f"--proto_path={Path(protoc.__file__).parent / '_proto'}",
                "--include_imports",
                f"--descriptor_set_out={out}",
                proto_path.name,
            ]
        )
        if status != 0 or not out.exists():
            raise LegacyProtoError(f"{proto_path}: does not compile (protoc exit {status})")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    try:
        service = pool.FindServiceByName(SERVICE_NAME)
    except KeyError as exc:
        raise LegacyProtoError(f"{proto_path}: no service {SERVICE_NAME}") from exc
    return _classes(service, str(proto_path))


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


def build_answers(codec: LegacyCodec, payload: bytes, info: SnapshotInfo) -> LegacyAnswers:
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
    """Legacy answers built on a background thread, so they do not delay serving.

    Encoding the legacy answers takes about as long as the rest of a load
    (0.54 s of 1.3 s for 50,000 commands); the avapdefs.v1 service needs none
    of it. The build starts when the snapshot is loaded; a legacy call that
    arrives before it is done waits for it.

    Thread safety: ``get`` may be called from any number of threads.
    """

    def __init__(self, codec: LegacyCodec, payload: bytes, info: SnapshotInfo) -> None:
        self._inputs: tuple[LegacyCodec, bytes, SnapshotInfo] | None = (codec, payload, info)
        self._value: LegacyAnswers | None = None
        self._lock = threading.Lock()
        threading.Thread(target=self.get, name="avap-legacy-build", daemon=True).start()

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
