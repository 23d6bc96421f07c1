"""Which legacy contract the server speaks and what it puts in each field: the bundled file's, or a deployment's own.

The known versions of the ``avap.DefinitionEngine`` contract declare some of
the methods ``GetCommand`` and ``SyncCatalog``, name their messages
differently and give ``code`` different types (docs/legacy.md has the table).
So nothing here depends on a message's name: each method's declared output
type decides, and a field is filled only when its name *and* its type are
known. A ``bytes code`` carries the signed package, a ``string code`` the
command's source text (a package in a ``string`` would not even decode as
UTF-8 on the client). Any other field keeps its default value, and the
start-up log says which fields are filled and which are left empty.

Compiling ``--legacy-proto`` happens at run time, with grpcio-tools' protoc:
the one deliberate exception to "never compile .proto at run time", because
the deployment's file is only known then. It is why grpcio-tools is a runtime
dependency rather than a development one.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Generic, TypeVar

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from avap import definition_engine_pb2
from avapdefs.format.package import is_package
from avapdefs.format.snapshot import SnapshotInfo
from avapdefs.v1.definitions_pb2 import Command
from server.legacy import SERVICE_NAME

logger = logging.getLogger(__name__)

GET_COMMAND = "GetCommand"
SYNC_CATALOG = "SyncCatalog"
KNOWN_METHODS = (GET_COMMAND, SYNC_CATALOG)

T = TypeVar("T")

_F = FieldDescriptor
_TYPE_NAMES = {getattr(_F, name): name.removeprefix("TYPE_").lower() for name in dir(_F) if name.startswith("TYPE_")}
_INTEGERS = (_F.TYPE_INT32, _F.TYPE_INT64, _F.TYPE_UINT32, _F.TYPE_UINT64, _F.TYPE_SINT32, _F.TYPE_SINT64,
             _F.TYPE_FIXED32, _F.TYPE_FIXED64, _F.TYPE_SFIXED32, _F.TYPE_SFIXED64)  # fmt: skip


class LegacyProtoError(Exception):
    """A ``--legacy-proto`` file does not compile, or declares nothing the server can answer."""


@dataclass(frozen=True)
class Rule(Generic[T]):
    """What one known field carries, and where its value comes from."""

    what: str
    value: Callable[[T], object]


def _avbc_code(command: Command) -> bytes:
    # The signed package travels as a bytes ``code``; a precompiled form that is not a package as avbc_code.
    return b"" if is_package(command.bytecode) else command.bytecode


def _hex_hash(command: Command) -> str:
    return command.content_hash.hex()


def _version_hash(info: SnapshotInfo) -> str:
    return info.content_hash.hex()


# The fields of a command message the server knows, by (name, type). Anything else keeps its default.
COMMAND_RULES: Mapping[tuple[str, int], Rule[Command]] = {
    ("name", _F.TYPE_STRING): Rule("the command name", attrgetter("name")),
    ("type", _F.TYPE_STRING): Rule("the command type", attrgetter("type")),
    ("interface_json", _F.TYPE_STRING): Rule("the interface as JSON text", attrgetter("interface_json")),
    ("code", _F.TYPE_BYTES): Rule("the signed code package", attrgetter("signed_package")),
    ("code", _F.TYPE_STRING): Rule("the source text as in the table", attrgetter("code")),
    ("avbc_code", _F.TYPE_BYTES): Rule("precompiled code that is not a package", _avbc_code),
    ("hash", _F.TYPE_STRING): Rule("hex sha256 of the definition", _hex_hash),
}

# The scalar fields of a catalog message the server knows, by (name, type); ``commands`` is matched apart.
CATALOG_RULES: Mapping[tuple[str, int], Rule[SnapshotInfo]] = {
    ("version_hash", _F.TYPE_STRING): Rule("hex content hash of the version", _version_hash),
    **{("total_count", kind): Rule("the number of commands", attrgetter("command_count")) for kind in _INTEGERS},
}


def _field_type(field: FieldDescriptor) -> str:
    message = field.message_type
    kind = message.full_name if message is not None else _TYPE_NAMES[field.type]
    return f"repeated {kind}" if field.is_repeated else kind


@dataclass(frozen=True)
class MessagePlan(Generic[T]):
    """One legacy message type, and what the server puts in each of its fields.

    Attributes:
        message: the message class (from the bundled module or a private descriptor pool).
        fills: (field name, rule) for each field the server fills.
        empty: "name (type)" of each field left at its default value.
    """

    message: type[Message]
    fills: tuple[tuple[str, Rule[T]], ...]
    empty: tuple[str, ...]

    def encode(self, source: T) -> bytes:
        """The message filled from ``source``, serialized."""
        values = {name: rule.value(source) for name, rule in self.fills}
        return self.message(**values).SerializeToString()

    def describe(self, also_filled: Sequence[str] = ()) -> str:
        """One line for the start-up log: the message's name, the fields filled and those left empty."""
        filled = [*also_filled, *(f"{name} ({rule.what})" for name, rule in self.fills)]
        empty = ", ".join(self.empty) or "none"
        return f"{self.message.DESCRIPTOR.full_name}: fills {', '.join(filled) or 'nothing'}; leaves empty: {empty}"


def _plan(message: Descriptor, rules: Mapping[tuple[str, int], Rule[T]], matched: Sequence[str] = ()) -> MessagePlan[T]:
    fills: list[tuple[str, Rule[T]]] = []
    empty: list[str] = []
    for field in message.fields:
        rule = None if field.is_repeated else rules.get((field.name, field.type))
        if rule is not None:
            fills.append((field.name, rule))
        elif field.is_required:  # proto2: the answer could not even be serialized without it
            problem = f"requires field {field.name} ({_field_type(field)}), which the server cannot fill"
            raise LegacyProtoError(f"message {message.full_name} {problem}")
        elif field.name not in matched:
            empty.append(f"{field.name} ({_field_type(field)})")
    return MessagePlan(message_factory.GetMessageClass(message), tuple(fills), tuple(empty))


@dataclass(frozen=True)
class CatalogPlan:
    """SyncCatalog's output message: its scalar fields, and the repeated field that holds every command.

    Attributes:
        scalars: the plan of the catalog message's own fields (``commands`` apart).
        commands_number: the field number of ``commands``; 0 when the message has none.
        command: the plan of the ``commands`` entries' type; None when the message has no ``commands``.
    """

    scalars: MessagePlan[SnapshotInfo]
    commands_number: int
    command: MessagePlan[Command] | None

    def describe(self) -> str:
        """One line for the start-up log."""
        if self.command is None:
            return self.scalars.describe()
        name = self.command.message.DESCRIPTOR.full_name
        return self.scalars.describe([f"commands (every command, as {name})"])


def _catalog_plan(message: Descriptor, commands: dict[str, MessagePlan[Command]]) -> CatalogPlan:
    field = message.fields_by_name.get("commands")
    entry = field.message_type if field is not None and field.type == _F.TYPE_MESSAGE else None
    if field is None or not field.is_repeated or entry is None or entry.GetOptions().map_entry:
        return CatalogPlan(_plan(message, CATALOG_RULES), 0, None)
    return CatalogPlan(_plan(message, CATALOG_RULES, ["commands"]), field.number, _command_plan(entry, commands))


def _command_plan(message: Descriptor, plans: dict[str, MessagePlan[Command]]) -> MessagePlan[Command]:
    # One plan per message type: when SyncCatalog's entries are GetCommand's type, GetCommand answers slice the catalog.
    if message.full_name not in plans:
        plans[message.full_name] = _plan(message, COMMAND_RULES)
    return plans[message.full_name]


@dataclass(frozen=True)
class LegacyCodec:
    """The legacy contract the server answers: the methods it declares and how each answer is filled.

    Attributes:
        origin: where the contract came from, for the log.
        request: GetCommand's input message (it has a ``string name``); None when GetCommand is not declared.
        command: the plan of GetCommand's output message; None when GetCommand is not declared.
        catalog: the plan of SyncCatalog's output message; None when SyncCatalog is not declared.
        unknown_methods: other methods the file declares, which the server does not answer.
    """

    origin: str
    request: type[Message] | None
    command: MessagePlan[Command] | None
    catalog: CatalogPlan | None
    unknown_methods: tuple[str, ...] = ()

    def describe(self) -> list[str]:
        """The start-up log lines: what is served, and what each answer's fields carry."""
        served = [name for name, plan in ((GET_COMMAND, self.command), (SYNC_CATALOG, self.catalog)) if plan]
        unanswered = [name for name in KNOWN_METHODS if name not in served] + list(self.unknown_methods)
        head = f"legacy {SERVICE_NAME} from {self.origin}: serves {', '.join(served)}"
        lines = [f"{head}; UNIMPLEMENTED for {', '.join(unanswered)}" if unanswered else head]
        if self.command is not None:
            lines.append(f"legacy {GET_COMMAND} answers {self.command.describe()}")
        if self.catalog is not None:
            lines.append(f"legacy {SYNC_CATALOG} answers {self.catalog.describe()}")
        return lines


def _unary(method: MethodDescriptor) -> MethodDescriptor:
    if method.client_streaming or method.server_streaming:
        raise LegacyProtoError(f"{method.full_name} is declared as a stream; the server answers it unary")
    return method


def _read_service(service: ServiceDescriptor, origin: str) -> LegacyCodec:
    methods = {method.name: method for method in service.methods}
    if not any(name in methods for name in KNOWN_METHODS):
        raise LegacyProtoError(f"service {service.full_name} declares neither GetCommand nor SyncCatalog")
    plans: dict[str, MessagePlan[Command]] = {}
    request = command = catalog = None
    if GET_COMMAND in methods:
        get = _unary(methods[GET_COMMAND])
        name = get.input_type.fields_by_name.get("name")
        if name is None or name.type != _F.TYPE_STRING or name.is_repeated:
            raise LegacyProtoError(f"message {get.input_type.full_name} lacks a field 'string name'")
        request = message_factory.GetMessageClass(get.input_type)
        command = _command_plan(get.output_type, plans)
    if SYNC_CATALOG in methods:
        catalog = _catalog_plan(_unary(methods[SYNC_CATALOG]).output_type, plans)
    unknown = tuple(name for name in methods if name not in KNOWN_METHODS)
    return LegacyCodec(origin, request, command, catalog, unknown)


def _codec(service: ServiceDescriptor, origin: str) -> LegacyCodec:
    try:
        codec = _read_service(service, origin)
    except LegacyProtoError as exc:
        raise LegacyProtoError(f"{origin}: {exc}") from None
    for line in codec.describe():
        logger.info("%s", line)
    return codec


def bundled_codec() -> LegacyCodec:
    """The codec of the bundled ``avap/definition_engine.proto``."""
    service = definition_engine_pb2.DESCRIPTOR.services_by_name["DefinitionEngine"]
    return _codec(service, "bundled avap/definition_engine.proto")


def load_codec(proto_path: Path) -> LegacyCodec:
    """Compile a deployment's own legacy ``.proto`` and take its service and message classes.

    The file is compiled into a private descriptor pool (its package ``avap``
    would clash with the bundled contract in the default pool).

    Raises:
        LegacyProtoError: the file does not compile, has no ``avap.DefinitionEngine``
            service, declares neither known method, declares one as a stream, its
            GetCommand request has no ``string name``, or an answer has a proto2
            ``required`` field the server cannot fill.
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
    return _codec(service, str(proto_path))
