"""Installing a synced file: written and checked in one pass as its chunks arrive, and nothing left when it is bad.

The stream is the one ``sync_cache`` would get from a server (a header, then
chunks), made here from a real snapshot file, so each way the data can go
wrong is tried on its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from avapdefs.client.cache import SyncStream, sync_cache
from avapdefs.errors import SyncError
from avapdefs.folder import snapshot_name
from avapdefs.format import snapshot
from avapdefs.v1.definitions_pb2 import CatalogInfo, SyncCatalogRequest, SyncHeader
from tests.helpers import numbered_commands

INFO, DATA = snapshot.encode_snapshot(numbered_commands(300), version=4, source="test", created_at_unix_ms=1)


def _header(**changes: object) -> SyncHeader:
    fields: dict[str, object] = {
        "kind": SyncHeader.KIND_FULL,
        "catalog": CatalogInfo(version=INFO.version, content_hash=INFO.content_hash),
        "data_size": len(DATA),
        "data_sha256": hashlib.sha256(DATA).digest(),
    }
    fields.update(changes)
    return SyncHeader(**fields)  # type: ignore[arg-type]


def _chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _sync(dest: Path, header: SyncHeader, data: bytes, progress: list[tuple[int, int]] | None = None) -> Path:
    def open_stream(request: SyncCatalogRequest) -> SyncStream:
        return SyncStream(header, _chunks(data), lambda: None)

    def record(received: int, total: int) -> None:
        if progress is not None:
            progress.append((received, total))

    return sync_cache(dest, open_stream, progress=record, keep=2, accept_delta=False).path


def test_a_file_arriving_in_chunks_is_installed_as_sent(tmp_path: Path) -> None:
    progress: list[tuple[int, int]] = []
    path = _sync(tmp_path, _header(), DATA, progress)
    assert path == tmp_path / snapshot_name(INFO.version)
    assert path.read_bytes() == DATA
    assert progress[-1] == (len(DATA), len(DATA)) and len(progress) == -(-len(DATA) // 1000)


@pytest.mark.parametrize(
    ("header", "data", "says"),
    [
        (_header(), DATA[:-1], f"received {len(DATA) - 1} bytes, the server announced {len(DATA)}"),
        (_header(), DATA[:5000] + bytes([DATA[5000] ^ 1]) + DATA[5001:], "does not verify"),
        (_header(data_sha256=bytes(32)), DATA, "sha256 differs"),
        (_header(catalog=CatalogInfo(version=5, content_hash=INFO.content_hash)), DATA, "not the announced one"),
        (_header(data_size=len(DATA) + 1), DATA + b"\0", "does not verify"),
    ],
    ids=["short", "a-flipped-bit", "another-sha256", "another-version", "longer"],
)
def test_bad_data_is_refused_and_leaves_nothing(tmp_path: Path, header: SyncHeader, data: bytes, says: str) -> None:
    with pytest.raises(SyncError, match=says) as caught:
        _sync(tmp_path, header, data)
    assert caught.value.code == "DATA_LOSS"
    assert list(tmp_path.iterdir()) == []
