"""Regenerate the Python code for every .proto file under proto/ (the one way to do it).

Run from anywhere: ``python proto/generate.py``. The include root is ``proto/``,
so generated modules import as ``avapdefs.v1.definitions_pb2`` with no fix-up.
Output (``*_pb2.py``, ``*_pb2_grpc.py`` and their mypy-protobuf ``.pyi`` stubs)
is committed and never edited by hand; ``tests/test_generate.py`` checks that
running this changes nothing.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent


def _plugin(name: str) -> str:
    """Find a protoc plugin installed beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"protoc plugin {name!r} not found: pip install mypy-protobuf")
    return found


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    """Every contract file under ``root``, in a stable order."""
    return sorted(root.rglob("*.proto"))


def generate(out_dir: Path = PROTO_ROOT, root: Path = PROTO_ROOT) -> None:
    """Compile every .proto under ``root`` into ``out_dir``.

    Raises:
        SystemExit: protoc reported an error.
    """
    files = [str(path.relative_to(root)) for path in proto_files(root)]
    args: Sequence[str] = [
        "grpc_tools.protoc",
        f"--proto_path={root}",
        f"--proto_path={Path(protoc.__file__).parent / '_proto'}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *files,
    ]
    if protoc.main(list(args)) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate()
