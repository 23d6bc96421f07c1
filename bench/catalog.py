"""Turn the peer's generated catalog (JSON lines) into one of our snapshot folders.

Both servers then serve the same commands: the peer reads the JSON lines, ours
reads the snapshot built here from them. Fields map one to one (``name``,
``type``, ``interface_json``, ``code``); the peer's ``version`` and
``updated_at`` have no counterpart in ``avapdefs.v1.Command`` and are dropped,
while ours adds a 32-byte ``content_hash`` per command.

``publish`` writes any commands as one snapshot of a folder; the other bench
scripts publish their generated catalogs with it.

``jsonl_for`` picks the JSON lines a run uses: the peer's generator's when
``../shared/peer`` is there (the same catalog for both servers), else a
deterministic one generated here in the same shape (about 2 KB a command), so
that our server can be measured without the peer.

    .venv/bin/python bench/catalog.py bench/.cache/catalogs/catalog_5000.jsonl OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import peer

from avapdefs.folder import atomic_file, snapshot_name
from avapdefs.format.snapshot import SnapshotInfo, write_snapshot
from avapdefs.v1.definitions_pb2 import Command

VERSION = 1
SOURCE = "bench:gen_catalog"
_CREATED_AT_UNIX_MS = 1_700_000_000_000  # fixed, so the same lines give the same file
_SEED = 20261130
_WORDS = ("account", "invoice", "order", "customer", "payment", "report", "user", "session", "ticket", "product",
          "shipment", "refund", "contract", "vendor", "campaign", "ledger")  # fmt: skip
_VERBS = ("get", "list", "create", "update", "delete", "sync", "export", "validate", "approve", "archive")
_TYPES = ("command", "command", "query", "job", "webhook")


def jsonl_for(commands: int, peer_source: Path = peer.SOURCE) -> Path:
    """The JSON lines of a ``commands``-command catalog, generated once into ``bench/.cache/catalogs``.

    The peer's ``gen_catalog.py`` writes them when ``peer_source`` holds the
    peer (copied into the cache first, without installing its packages);
    otherwise ``generated_commands`` does.
    """
    if peer.available(peer_source):
        peer.prepare(peer_source, install=False)
        return peer.catalog_jsonl(commands)
    path = peer.CACHE / "catalogs" / f"generated_{commands}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as out:
            for command in generated_commands(commands):
                row = {"name": command.name, "type": command.type, "interface_json": command.interface_json,
                       "code": command.code}  # fmt: skip
                out.write(json.dumps(row, separators=(",", ":")).encode() + b"\n")
    return path


def generated_commands(count: int) -> Iterator[Command]:
    """``count`` deterministic commands of about 2 KB: an interface of 3-8 parameters, 9-28 lines of code."""
    rng = random.Random(_SEED)
    for index in range(count):
        word, verb = rng.choice(_WORDS), rng.choice(_VERBS)
        params = rng.sample(_WORDS, rng.randint(3, 8))
        interface = {
            "name": f"{word}.{verb}",
            "description": f"{verb.capitalize()} a {word} of the current tenant.",
            "params": [{"name": f"{param}_id", "type": rng.choice(("string", "integer", "boolean", "uuid")),
                        "required": rng.random() < 0.4, "description": f"The {param} this {verb} applies to."}
                       for param in params],
        }  # fmt: skip
        lines = [f"async def {verb}_{word}(ctx, req):"]
        lines += [f'    {param} = req.get("{param}_id")' for param in params]
        for step in range(rng.randint(6, 20)):
            table, limit, param = rng.choice(_WORDS), rng.randint(1, 500), rng.choice(params)
            query = f"SELECT * FROM {table}s WHERE id = $1 LIMIT {limit}"
            lines.append(f'    row{step} = await db.fetch_one("{query}", {param})')
        yield Command(
            name=f"gen.{word}.{verb}_{index:07d}",
            type=rng.choice(_TYPES),
            interface_json=json.dumps(interface, separators=(",", ":")),
            code="\n".join(lines) + "\n",
        )


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

    ``folder`` must be ``jsonl``'s own (``snapshot_folder``): a snapshot newer than
    another catalog's lines would be kept.

    Returns:
        The snapshot file's path.
    """
    path = folder / snapshot_name(VERSION)
    if path.exists() and path.stat().st_mtime >= jsonl.stat().st_mtime:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    return publish(folder, read_commands(jsonl), VERSION, source=SOURCE, created_at_unix_ms=_CREATED_AT_UNIX_MS)


def snapshot_folder(jsonl: Path) -> Path:
    """The snapshot folder built from ``jsonl``, in the cache: one per catalog, named after its lines."""
    return peer.CACHE / "snapshots" / jsonl.stem


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
