"""The legacy message classes: the bundled contract's, or those of a deployment's own ``--legacy-proto``.

Compiling ``--legacy-proto`` happens at run time, with grpcio-tools' protoc:
the one deliberate exception to "never compile .proto at run time", because
the deployment's file is only known then. It is why grpcio-tools is a runtime
dependency rather than a development one.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, ServiceDescriptor
from google.protobuf.message import Message

from avap import definition_engine_pb2
from server.legacy import SERVICE_NAME

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
    from grpc_tools import protoc  # only needed for this option

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
