"""Turn the peer's generated catalog (JSON lines) into one of our snapshot folders.

Both servers then serve the same commands: the peer reads the JSON lines, ours
reads the snapshot built here from them. Fields map one to one (``name``,
``type``, ``interface_json``, ``code``); the peer's ``version`` and
``updated_at`` have no counterpart in ``avapdefs.v1.Command`` and are dropped,
while ours adds a 32-byte ``content_hash`` per command.

``publish`` writes any commands as one snapshot of a folder; the other bench
scripts publish their generated catalogs with it.

    .venv/bin/python bench/catalog.py bench/.cache/catalogs/catalog_5000.jsonl OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from avapdefs.folder import atomic_file, snapshot_name
from avapdefs.format.snapshot import SnapshotInfo, write_snapshot
from avapdefs.v1.definitions_pb2 import Command

VERSION = 1
SOURCE = "bench:gen_catalog"
_CREATED_AT_UNIX_MS = 1_700_000_000_000  # fixed, so the same lines give the same file


def read_commands(jsonl: Path) -> Iterator[Command]:
    """One Command per JSON line of ``jsonl``."""
    with open(jsonl, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                row = json.loads(line)
                yield Command(
                    name=row["name"], type=row["type"], interface_json=row["interface_json"], code=row["code"]
                )


def read_names(jsonl: Path) -> list[str]:
    """The command names of ``jsonl``, in file order."""
    with open(jsonl, encoding="utf-8") as lines:
        return [json.loads(line)["name"] for line in lines if line.strip()]


def publish(
    folder: Path,
    commands: Iterable[Command],
    version: int,
    *,
    source: str = "bench",
    created_at_unix_ms: int | None = None,
) -> Path:
    """Write ``commands`` into ``folder`` as snapshot ``version``, atomically, as the exporter publishes.

    Returns:
        The snapshot file's path.
    """
    path = folder / snapshot_name(version)
    with atomic_file(path) as file:
        write_snapshot(file, commands, version=version, source=source, created_at_unix_ms=created_at_unix_ms)
    return path


def build(jsonl: Path, folder: Path) -> Path:
    """Write ``folder/catalog-0000000001.avsnap`` from ``jsonl`` unless it is already newer.

    Returns:
        The snapshot file's path.
    """
    path = folder / snapshot_name(VERSION)
    if path.exists() and path.stat().st_mtime >= jsonl.stat().st_mtime:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    return publish(folder, read_commands(jsonl), VERSION, source=SOURCE, created_at_unix_ms=_CREATED_AT_UNIX_MS)


def describe(info: SnapshotInfo) -> str:
    return (
        f"version {info.version}, {info.command_count} commands, "
        f"{info.uncompressed_size / 1e6:.1f} MB -> {info.compressed_size / 1e6:.1f} MB zstd"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a snapshot folder from gen_catalog.py JSON lines.")
    parser.add_argument("jsonl", type=Path)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    from avapdefs.format.snapshot import read_file

    path = build(args.jsonl, args.folder)
    print(f"{path}: {describe(read_file(path).info)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
