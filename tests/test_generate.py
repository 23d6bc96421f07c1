"""The committed generated code is exactly what proto/generate.py produces."""

from __future__ import annotations

import filecmp
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "proto"))

import generate  # noqa: E402  (proto/generate.py, a script beside the contract)


def test_regenerating_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "proto"
    shutil.copytree(ROOT / "proto", root, ignore=shutil.ignore_patterns("*_pb2*", "__pycache__"))
    generate.generate(out_dir=root, root=root)
    generated = sorted(p.relative_to(root) for p in root.rglob("*_pb2*"))
    assert generated, "protoc produced no files"
    for rel in generated:
        committed = ROOT / "proto" / rel
        assert committed.exists(), f"{rel} is generated but not committed"
        assert filecmp.cmp(root / rel, committed, shallow=False), f"{rel} differs: run python proto/generate.py"
    committed_all = sorted(p.relative_to(ROOT / "proto") for p in (ROOT / "proto").rglob("*_pb2*"))
    assert [p for p in committed_all if p.suffix in (".py", ".pyi")] == generated
