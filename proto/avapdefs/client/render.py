"""What the client tools print: a message as JSON for scripts, and as text for people.

JSON follows the message's field names (as in the .proto) and includes every
field, set or not, so a script finds the same keys each time. It differs from
protobuf's JSON mapping where that mapping is awkward at a shell: 64-bit
numbers are numbers, not strings, and hashes (``content_hash``,
``data_sha256``) are hex, as ``avap-export inspect`` and the logs show them;
other bytes (``bytecode``, ``signed_package``) stay base64.
"""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from avapdefs.v1.definitions_pb2 import CatalogInfo, Command

_HEX_SUFFIXES = ("content_hash", "sha256")
_MB = 1_000_000


def message_dict(message: Message) -> dict[str, Any]:
    """Every field of ``message`` by its .proto name; see the module docstring for the value types."""
    return {field.name: _value(field, getattr(message, field.name)) for field in message.DESCRIPTOR.fields}


def _value(field: Any, value: Any) -> Any:
    # `field` is a FieldDescriptor (upb's own class at run time, hence Any).
    if field.is_repeated:
        return [_scalar(field, item) for item in value]
    return _scalar(field, value)


def _scalar(field: Any, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_dict(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return value.hex() if field.name.endswith(_HEX_SUFFIXES) else base64.b64encode(value).decode("ascii")
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name if value in field.enum_type.values_by_number else value
    return value


def plural(count: int, word: str) -> str:
    """``1 command``, ``2 commands``, ``5,000 commands``."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def command_text(command: Command) -> str:
    """One command as ``avap-get NAME`` prints it: name and type, interface, description, code."""
    lines = [f"{command.name} ({command.type})", f"interface: {command.interface_json}"]
    if command.description:
        lines.append(f"description: {command.description}")
    lines += ["code:", command.code.rstrip("\n")]
    return "\n".join(lines)


def snapshot_age_s(info: CatalogInfo, now_s: float | None = None) -> float:
    """How old the served snapshot is: the server's ``snapshot_age_s`` when it has one, else from its creation time."""
    # A field newer servers fill; 0 from a server that does not (a real age is never exactly 0.0).
    reported = float(getattr(info, "snapshot_age_s", 0.0))
    if reported > 0:
        return reported
    now = time.time() if now_s is None else now_s
    return max(now - info.created_at_unix_ms / 1000, 0.0)


def duration_text(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``: two units at most."""
    whole = int(seconds)
    for unit_s, unit, next_s, next_unit in ((86_400, "d", 3600, "h"), (3600, "h", 60, "min"), (60, "min", 1, "s")):
        if whole >= unit_s:
            rest = (whole % unit_s) // next_s
            return f"{whole // unit_s} {unit}" + (f" {rest} {next_unit}" if rest else "")
    return f"{seconds:.1f} s" if seconds < 10 else f"{whole} s"


def _when(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def info_text(info: CatalogInfo, server: str, now_s: float | None = None) -> str:
    """``avapctl info``: the live version, its pin, age and counts, one fact a line."""
    pin = f"version {info.pinned_version}" if info.pinned_version else "none (the server follows the newest snapshot)"
    rows = [
        ("server", server),
        ("version", str(info.version)),
        ("pinned", pin),
        ("commands", f"{info.command_count:,}"),
        ("age", f"{duration_text(snapshot_age_s(info, now_s))} (created {_when(info.created_at_unix_ms)})"),
        ("loaded", _when(info.loaded_at_unix_ms)),
        ("content hash", info.content_hash.hex()),
        (
            "sizes",
            f"file {info.file_size / _MB:.2f} MB, compressed {info.compressed_size / _MB:.2f} MB, "
            f"uncompressed {info.uncompressed_size / _MB:.2f} MB",
        ),
        ("format", str(info.format_version)),
        ("source", info.source),
    ]
    return "\n".join(f"{label:<13} {value}" for label, value in rows)


def live_text(info: CatalogInfo) -> str:
    """One line of ``avapctl watch``: a version that went live."""
    pinned = ", pinned" if info.pinned_version else ""
    return (
        f"version {info.version} live{pinned}: {plural(info.command_count, 'command')}, "
        f"created {_when(info.created_at_unix_ms)}, content hash {info.content_hash.hex()[:16]}"
    )
