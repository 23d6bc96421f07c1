"""The two servers under test, as the harness sees them: address, service, and how to check their answers.

``GetCommandRequest.name`` is field 1 in both contracts, so the same request
bytes go to both; the replies differ (ours wraps the Command in a
GetCommandResponse and streams the snapshot file; the peer returns the bare
Command and streams its serialized Catalog in CatalogChunks), so each target
brings its own decoders, which check everything they decode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType

from loads import Synced

from avapdefs.format.stream import verify_stream
from avapdefs.format.wire import only_field
from avapdefs.v1.definitions_pb2 import Catalog, GetCommandRequest, GetCommandResponse, SyncCatalogResponse, SyncHeader

OURS_SERVICE = "avapdefs.v1.DefinitionService"
PEER_SERVICE = "avap.v1.DefinitionService"
_CHUNK_FIELD = SyncCatalogResponse.DESCRIPTOR.fields_by_name["chunk"].number


class CheckError(Exception):
    """A server answered something other than what the catalog holds."""


@dataclass(frozen=True)
class Target:
    """One server under test."""

    label: str
    address: str
    service: str
    command_name: Callable[[bytes], str]  # GetCommand response bytes -> the command's name
    decode_sync: Callable[[Iterator[bytes]], Synced]  # SyncCatalog response messages, as they come -> checked catalog
    sync_request: bytes

    def method(self, rpc: str) -> str:
        return f"/{self.service}/{rpc}"


def request_bytes(name: str) -> bytes:
    """A serialized GetCommandRequest: the same bytes for both contracts."""
    return GetCommandRequest(name=name).SerializeToString()


def ours(address: str, expected_commands: int) -> Target:
    def command_name(data: bytes) -> str:
        return GetCommandResponse.FromString(data).command.name

    def decode_sync(messages: Iterator[bytes]) -> Synced:
        return _decode_ours_sync(messages, expected_commands)

    return Target("ours", address, OURS_SERVICE, command_name, decode_sync, b"")


def _decode_ours_sync(messages: Iterator[bytes], expected_commands: int) -> Synced:
    """What a client that syncs into memory does with a stream: check the file and parse it as its chunks come.

    The chunks' data is taken out of the messages without a copy; ``verify_stream`` checks the size and
    sha256 the header announces, the preamble, header, zstd frame, content hash and command count, and
    hands each run of whole commands to the Catalog's parse as soon as it is inflated and counted, so the
    parse follows the inflating part by part instead of the whole payload. The parsed Catalog is the
    whole catalog, every command parsed.
    """
    first_message = next(messages, None)
    if first_message is None:
        raise CheckError("SyncCatalog sent no message")
    first = SyncCatalogResponse.FromString(first_message)
    if first.WhichOneof("message") != "header" or first.header.kind != SyncHeader.KIND_FULL:
        raise CheckError(f"SyncCatalog did not start with a full-sync header: {first}")
    header = first.header
    catalog = Catalog()

    def parse(entries: memoryview) -> None:
        catalog.MergeFromString(entries)  # type: ignore[arg-type]  # any buffer parses; bytes() would copy it

    snapshot = verify_stream(
        (_chunk_data(message) for message in messages),
        file_size=header.data_size,
        file_sha256=header.data_sha256,
        on_entries=parse,
    )
    commands = len(catalog.commands)
    if commands != expected_commands or snapshot.info.version != header.catalog.version:
        raise CheckError(f"SyncCatalog delivered {commands} commands of version {snapshot.info.version}")
    return Synced(len(snapshot.payload), commands)


def _chunk_data(message: bytes) -> memoryview:
    data = only_field(message, _CHUNK_FIELD)
    if data is None:
        raise CheckError("a SyncCatalog message after the header is not a chunk")
    return data


def peer(address: str, expected_commands: int, messages: ModuleType) -> Target:
    def command_name(data: bytes) -> str:
        return str(messages.Command.FromString(data).name)

    def decode_sync(chunks: Iterator[bytes]) -> Synced:
        parsed = [messages.CatalogChunk.FromString(m) for m in chunks]
        data = b"".join(chunk.data for chunk in parsed)
        if not parsed or len(data) != parsed[0].total:
            raise CheckError(f"SyncCatalog sent {len(data)} bytes in {len(parsed)} chunks, not the announced total")
        count = len(messages.Catalog.FromString(data).commands)
        if count != expected_commands or count != parsed[0].command_count:
            raise CheckError(f"SyncCatalog delivered {count} commands")
        return Synced(len(data), count)

    return Target("peer", address, PEER_SERVICE, command_name, decode_sync, b"")


def check_get_command(call: Callable[..., bytes], target: Target, names: list[str]) -> None:
    """Ask ``target`` for ``names`` and check each answer names the command asked for.

    Raises:
        CheckError: an answer is for another command.
        grpc.RpcError: a call failed.
    """
    for name in names:
        got = target.command_name(call(request_bytes(name), timeout=10))
        if got != name:
            raise CheckError(f"{target.label}: GetCommand({name!r}) answered {got!r}")
