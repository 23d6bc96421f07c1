"""``avap-export inspect FILE [--diff OTHER]``."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.cli import EXIT_BAD_SNAPSHOT, EXIT_OK, main
from tests.helpers import sample_command


def test_inspect_prints_the_header_and_counts(make_snapshot, capsys: pytest.CaptureFixture[str]) -> None:
    commands = [
        sample_command("addVar", bytecode=b"\x01", bytecode_version=1),
        sample_command("if", type="control"),
        sample_command("stripe.getCustomer", type="connector", signed_package=b"AVAP..."),
    ]
    path = make_snapshot(version=4, commands=commands, source="postgresql:obex_dapl_functions")
    assert main(["inspect", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "catalog version   4" in out
    assert "commands          3" in out
    assert "by type         connector 1, control 1, function 1" in out
    assert "with bytecode   1" in out and "signed package  1" in out
    assert "source            postgresql:obex_dapl_functions" in out
    assert "verified          yes" in out


def test_inspect_refuses_a_bit_flipped_file(make_snapshot, capsys: pytest.CaptureFixture[str]) -> None:
    path: Path = make_snapshot()
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    assert main(["inspect", str(path)]) == EXIT_BAD_SNAPSHOT
    assert capsys.readouterr().err.startswith(f"avap-export: {path}:")


def test_diff_lists_added_removed_and_changed(
    make_snapshot, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = make_snapshot(version=1, commands=[sample_command(n) for n in ("addVar", "if", "end", "try")])
    new = make_snapshot(
        version=2,
        commands=[sample_command("addVar"), sample_command("if", code="changed\n"), sample_command("ñandú"),
                  sample_command("end")],
    )  # fmt: skip
    assert main(["inspect", str(old), "--diff", str(new)]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"--- {old} (version 1, 4 commands)"
    assert lines[1] == f"+++ {new} (version 2, 4 commands)"
    assert lines[2] == "added 1, removed 1, changed 1, unchanged 2"
    assert lines[3:] == ["~ if", "- try", "+ ñandú"]


def test_diff_with_a_bad_other_file_exits_9(make_snapshot, tmp_path: Path) -> None:
    other = tmp_path / "other.avsnap"
    other.write_bytes(b"AVAPSNAP")
    assert main(["inspect", str(make_snapshot()), "--diff", str(other)]) == EXIT_BAD_SNAPSHOT
