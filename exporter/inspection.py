"""``avap-export inspect``: describe a snapshot or delta file and list what changed between two snapshots."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from avapdefs import fileio
from avapdefs.errors import SnapshotError
from avapdefs.format import delta, snapshot, wire
from avapdefs.format.snapshot import Snapshot
from avapdefs.v1.definitions_pb2 import Command


def _timestamp(unix_ms: int) -> str:
    moment = datetime.fromtimestamp(unix_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def describe(path: Path) -> list[str]:
    """Read and verify the snapshot (or delta) at ``path``; return lines describing it.

    Raises:
        SnapshotError: the file is not a valid snapshot or delta.
    """
    if _starts_with(path, delta.MAGIC):
        return describe_delta(path)
    loaded = snapshot.read_file(path)
    info = loaded.info
    types: collections.Counter[str] = collections.Counter()
    with_bytecode = signed = 0
    for entry in wire.iter_entries(loaded.payload):
        command = Command.FromString(bytes(entry))
        types[command.type or "(none)"] += 1
        with_bytecode += bool(command.bytecode)
        signed += bool(command.signed_package)
    ratio = info.uncompressed_size / info.compressed_size if info.compressed_size else 0.0
    by_type = ", ".join(f"{name} {count}" for name, count in sorted(types.items())) or "-"
    return [
        f"file              {path}",
        "verified          yes (header CRC, sizes, zstd checksum, content hash, command count)",
        f"format version    {info.format_version}",
        f"catalog version   {info.version}",
        f"content hash      {info.content_hash.hex()}",
        f"created at        {_timestamp(info.created_at_unix_ms)} ({info.created_at_unix_ms})",
        f"source            {info.source}",
        f"file size         {info.file_size} bytes",
        f"compressed        {info.compressed_size} bytes",
        f"uncompressed      {info.uncompressed_size} bytes (ratio {ratio:.2f})",
        f"commands          {info.command_count}",
        f"  by type         {by_type}",
        f"  with bytecode   {with_bytecode}",
        f"  signed package  {signed}",
    ]


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        return fileio.read_bytes(path, prefix_bytes=len(magic)) == magic
    except SnapshotError:
        return False  # reading it again reports the error


def describe_delta(path: Path) -> list[str]:
    """Decode the delta file at ``path``; return lines describing it.

    Raises:
        SnapshotError: the file cannot be read or is not a valid delta.
    """
    data = fileio.read_bytes(path, "delta")
    made = delta.decode_delta(data)
    target = delta.target_info(made)
    return [
        f"file              {path}",
        f"delta format      {delta.FORMAT_VERSION}",
        f"file size         {len(data)} bytes (the target's zstd frame is {target.compressed_size})",
        f"base version      {made.base_version} (content hash {made.base_content_hash.hex()})",
        f"target version    {target.version} (content hash {target.content_hash.hex()})",
        f"target commands   {target.command_count}",
        f"removed           {len(made.removed_names)}",
        f"upserted          {len(made.upserts)} (added or changed)",
    ]


def _entries(loaded: Snapshot) -> Iterator[tuple[bytes, bytes]]:
    for entry in wire.iter_entries(loaded.payload):
        yield wire.command_name(entry), bytes(entry)


def diff(old_path: Path, new_path: Path) -> list[str]:
    """Lines listing the commands added (+), removed (-) and changed (~) from one snapshot to another.

    Commands are compared by their sealed bytes, which include each command's content hash.

    Raises:
        SnapshotError: either file is not a valid snapshot.
    """
    old, new = snapshot.read_file(old_path), snapshot.read_file(new_path)
    old_entries = dict(_entries(old))
    marks: list[tuple[bytes, str]] = []
    unchanged = 0
    for name, entry in _entries(new):
        previous = old_entries.pop(name, None)
        if previous is None:
            marks.append((name, "+"))
        elif previous != entry:
            marks.append((name, "~"))
        else:
            unchanged += 1
    marks.extend((name, "-") for name in old_entries)
    marks.sort()
    counts = collections.Counter(mark for _, mark in marks)
    return [
        f"--- {old_path} (version {old.info.version}, {old.info.command_count} commands)",
        f"+++ {new_path} (version {new.info.version}, {new.info.command_count} commands)",
        f"added {counts['+']}, removed {counts['-']}, changed {counts['~']}, unchanged {unchanged}",
        *(f"{mark} {name.decode('utf-8')}" for name, mark in marks),
    ]
