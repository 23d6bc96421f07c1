"""The exporter's snapshot bytes are those of an independent encoder: protobuf's own, over a plain SELECT.

Commands are encoded by hand from the COPY stream, and compressed on a second thread; the
file format is a promise (same rows, same bytes), so every export here is compared, byte for
byte, with a file built the way the exporter built it before: psycopg's usual text loading,
``Command(...).SerializeToString()`` per row, and a writer on one thread.
"""

from __future__ import annotations

import io
from pathlib import Path

import psycopg
import pytest

from avapdefs.folder import snapshot_name
from avapdefs.format.snapshot import SnapshotWriter
from tests.exporter.helpers import insert_generated, insert_rows, reference_sealed, row, run_export

CREATED = 1_700_000_000_000
# The export's query, as the exporter sent it before COPY: values loaded by psycopg as usual.
_QUERY = """
SELECT f.id, f.name, f.type, f.interface, f.code, f.description, f.logic, f.componenttype, f.service, f.command,
       b.bytecode, b.version, b.source_hash
FROM obex_dapl_functions AS f LEFT JOIN avap_bytecode AS b ON b.command_name = f.name
ORDER BY f.name COLLATE "C", f.id
"""


def _reference_file(dsn: str, *, level: int, signing_key: bytes | None) -> bytes:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(_QUERY).fetchall()
    buffer = io.BytesIO()
    writer = SnapshotWriter(
        buffer, version=1, source="postgresql:obex_dapl_functions", created_at_unix_ms=CREATED, level=level
    )
    for values in rows:
        writer.add_serialized(values[1], reference_sealed(values, signing_key=signing_key))
    writer.finish()
    return buffer.getvalue()


def _fill(db: psycopg.Connection) -> None:
    insert_generated(db, 6000, code_bytes=1500)  # about 10 MB of payload: several 1 MiB pieces per thread hand-off
    insert_rows(
        db,
        [
            row("RequestGet", interface=None, description=None, type=None, code=None, logic=None, command=None),
            row("blank", interface="   ", logic=True, componenttype="", service=None),
            row("json.padded", interface='  [{"item":"x","type":"value"}]\n', description=""),
            row("ñandú.cálculo", code="é" * 9000, description="日本語 🙂"),
            row("big.body", code="x = 1\n" * 40_000),  # 240 KB: a three-byte length
            row("negative.id", id=-42),
            row("stored.package"),
            row("plain.bytecode"),
            row("negative.version"),
        ],
    )
    db.execute(
        "INSERT INTO avap_bytecode (command_name, bytecode, version, source_hash) VALUES"
        " ('stored.package', %s, 2, 'h1'), ('plain.bytecode', %s, 7, ''), ('negative.version', NULL, -3, NULL)",
        [b"AVAP\x00\x01stored", b"\x00\x01\x02"],
    )
    db.commit()


@pytest.mark.parametrize(("level", "signing_key"), [(3, None), (1, b"k3y")])
def test_export_is_byte_identical_to_the_protobuf_encoder(
    db: psycopg.Connection, pg_dsn: str, tmp_path: Path, level: int, signing_key: bytes | None
) -> None:
    _fill(db)
    extra = ["--level", str(level), "--created-at-ms", str(CREATED)]
    if signing_key:
        key_file = tmp_path / "key"
        key_file.write_bytes(signing_key)
        extra += ["--signing-key-file", str(key_file)]
    assert run_export(pg_dsn, tmp_path / "out", *extra) == 0
    produced = (tmp_path / "out" / snapshot_name(1)).read_bytes()
    assert produced == _reference_file(pg_dsn, level=level, signing_key=signing_key)
