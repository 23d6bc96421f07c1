"""SyncCatalog answers prepared ahead: the file in pre-framed chunks, and deltas from earlier versions.

A stream then only yields bytes that already are ``SyncCatalogResponse``
messages: no protobuf work per request, whatever its size.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from avapdefs import fileio
from avapdefs.errors import SnapshotError
from avapdefs.folder import list_deltas
from avapdefs.format.delta import decode_delta, target_info
from avapdefs.format.snapshot import SnapshotInfo
from avapdefs.v1.definitions_pb2 import CatalogInfo, SyncCatalogResponse, SyncHeader

logger = logging.getLogger(__name__)


def frame_chunks(data: bytes, chunk_bytes: int) -> tuple[bytes, ...]:
    """``data`` cut into serialized ``SyncCatalogResponse.chunk`` messages of ``chunk_bytes``."""
    view = memoryview(data)
    return tuple(
        SyncCatalogResponse(chunk=bytes(view[start : start + chunk_bytes])).SerializeToString()
        for start in range(0, len(data), chunk_bytes)
    )


@dataclass(frozen=True, eq=False)
class DeltaAnswer:
    """A delta to the served version from one base version, ready to stream.

    Attributes:
        base_content_hash: the content hash the client's copy must have.
        header: serialized ``SyncCatalogResponse`` holding the KIND_DELTA header.
        chunks: the delta file, as serialized chunk messages.
    """

    base_content_hash: bytes
    header: bytes
    chunks: Sequence[bytes]


def load_deltas(folder: Path, info: SnapshotInfo, catalog: CatalogInfo, chunk_bytes: int) -> dict[int, DeltaAnswer]:
    """The delta files of ``folder`` that lead to the version of ``info``, by base version.

    A delta file that cannot be read, does not decode, or does not lead to
    exactly this version's content is skipped with a warning: clients then
    get the full file.
    """
    answers: dict[int, DeltaAnswer] = {}
    for base, target, path in list_deltas(folder):
        if target != info.version:
            continue
        try:
            data = fileio.read_bytes(path, "delta")
            delta = decode_delta(data)
            leads_to = target_info(delta)
        except SnapshotError as exc:
            logger.warning("skipping delta %s: %s", path.name, exc)
            continue
        if delta.base_version != base or (leads_to.version, leads_to.content_hash) != (info.version, info.content_hash):
            logger.warning("skipping delta %s: it does not lead from version %s to the served content", path.name, base)
            continue
        header = SyncHeader(
            kind=SyncHeader.KIND_DELTA,
            catalog=catalog,
            data_size=len(data),
            base_version=base,
            data_sha256=hashlib.sha256(data).digest(),
        )
        answers[base] = DeltaAnswer(
            delta.base_content_hash,
            SyncCatalogResponse(header=header).SerializeToString(),
            frame_chunks(data, chunk_bytes),
        )
    return answers
