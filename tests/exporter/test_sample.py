"""The sample catalog: loading it, and the committed sample snapshot being exactly what the exporter makes of it."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from avapdefs.folder import snapshot_name
from avapdefs.format import snapshot
from exporter.cli import EXIT_REFUSED, main
from exporter.sample import SAMPLE_CREATED_AT_MS, load_sample, sample_definitions
from exporter.sample_commands import CORE_COMMANDS

COMMITTED = Path(__file__).resolve().parents[2] / "snapshots" / snapshot_name(1)
AVAP_COMMANDS = ("addVar", "addParam", "addResult", "if", "else", "end", "startLoop", "endLoop", "try", "exception",
                 "RequestGet", "RequestPost", "ormAccessSelect", "getDateTime", "encodeSHA256", "randomString",
                 "variableToList", "itemFromList")  # fmt: skip


def test_sample_holds_avaps_own_commands_in_the_legacy_interface_format() -> None:
    definitions = sample_definitions()
    names = [d.name for d in definitions]
    assert set(AVAP_COMMANDS) <= set(names)
    assert 200 <= len(names) <= 500 and len(set(names)) == len(names)
    for definition in definitions:
        items = json.loads(definition.interface)
        assert all(set(item) == {"item", "type"} for item in items)
        compile(definition.code, definition.name, "exec")  # plausible Python: it parses
    assert sample_definitions() == definitions  # deterministic


def test_committed_sample_snapshot_is_what_the_exporter_produces(pg_dsn: str, tmp_path: Path) -> None:
    assert main(["load-sample", "--dsn", pg_dsn]) == 0
    assert main(["--dsn", pg_dsn, "--snapshots", str(tmp_path), "--created-at-ms", str(SAMPLE_CREATED_AT_MS)]) == 0
    produced = (tmp_path / snapshot_name(1)).read_bytes()
    assert produced == COMMITTED.read_bytes(), (
        "snapshots/catalog-0000000001.avsnap is stale: regenerate it as docs/exporter.md ('The sample catalog') says"
    )
    info = snapshot.read_file(COMMITTED).info
    assert (info.version, info.command_count, info.source) == (
        1,
        len(sample_definitions()),
        "postgresql:obex_dapl_functions",
    )


def test_bytecode_rows_join_onto_avaps_own_commands(pg_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(pg_dsn) as conn:
        load_sample(conn)
    assert main(["--dsn", pg_dsn, "--snapshots", str(tmp_path)]) == 0
    commands = snapshot.read_file(tmp_path / snapshot_name(1)).catalog().commands
    with_bytecode = {c.name for c in commands if c.bytecode}
    assert with_bytecode == {c.name for c in CORE_COMMANDS}


def test_load_sample_refuses_a_filled_table_unless_told(pg_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["load-sample", "--dsn", pg_dsn]) == 0
    assert main(["load-sample", "--dsn", pg_dsn]) == EXIT_REFUSED
    assert main(["load-sample", "--dsn", pg_dsn, "--if-empty"]) == 0
    assert "sample not loaded" in capsys.readouterr().out
    assert main(["load-sample", "--dsn", pg_dsn, "--replace"]) == 0
    with psycopg.connect(pg_dsn) as conn:
        count, max_id = conn.execute("SELECT count(*), max(id) FROM obex_dapl_functions").fetchall()[0]
        assert count == max_id == len(sample_definitions())
        conn.execute("INSERT INTO obex_dapl_functions (name) VALUES ('next')")  # the sequence is past the ids
