"""The reference Node.js server, prepared in a writable cache and run on loopback.

``../shared/peer`` is read-only, so it is copied to ``bench/.cache/peer``,
``npm ci`` installs its three packages there (once, until package-lock.json
changes), its ``gen_catalog.py`` writes the deterministic catalogs, and
``definitions.proto`` is compiled into Python messages under
``bench/.cache/peer_py`` so the harness can decode what the peer streams.
Nothing else needs it: without ``../shared/peer`` (``available`` is False)
our server is measured alone, on a catalog ``catalog.py`` generates.

    .venv/bin/python bench/peer.py --commands 5000      # prepare, start, print the address, stop on Enter
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import procs

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / ".cache"
SOURCE = BENCH.parent.parent / "shared" / "peer"
PEER_DIR = CACHE / "peer"
SERVICE = "avap.v1.DefinitionService"
_FILES = ("definitions.proto", "gen_catalog.py", "node_server.js", "package.json", "package-lock.json")
_NPM_TIMEOUT_S = 300
_GEN_TIMEOUT_S = 600


def available(source: Path = SOURCE) -> bool:
    """Whether ``source`` holds the peer (its server and its catalog generator)."""
    return all((source / name).is_file() for name in _FILES)


def prepare(source: Path = SOURCE, *, install: bool = True) -> Path:
    """Copy the peer into the cache and (when ``install``) install its packages; return its folder.

    Raises:
        FileNotFoundError: ``source`` does not hold the peer.
        subprocess.CalledProcessError: ``npm ci`` failed.
    """
    PEER_DIR.mkdir(parents=True, exist_ok=True)
    changed = False
    for name in _FILES:
        target = PEER_DIR / name
        if not target.exists() or not filecmp.cmp(source / name, target, shallow=False):
            shutil.copyfile(source / name, target)
            changed = True
    stamp = PEER_DIR / "node_modules" / ".bench-installed"
    if install and (changed or not stamp.exists()):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=PEER_DIR, check=True, timeout=_NPM_TIMEOUT_S)
        stamp.touch()
    elif changed and stamp.exists():
        stamp.unlink()  # installed for other files
    return PEER_DIR


def catalog_jsonl(commands: int) -> Path:
    """The peer's generated catalog of ``commands`` commands (generated once, then cached)."""
    path = CACHE / "catalogs" / f"catalog_{commands}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        argv = [sys.executable, str(PEER_DIR / "gen_catalog.py"), "-n", str(commands), "-o", str(partial)]
        subprocess.run(argv, check=True, timeout=_GEN_TIMEOUT_S, stdout=subprocess.DEVNULL)
        partial.replace(path)
    return path


def messages() -> ModuleType:
    """The peer's ``avap.v1`` messages (Command, Catalog, CatalogChunk, ...), compiled once into the cache."""
    out = CACHE / "peer_py"
    module_path = out / "definitions_pb2.py"
    proto = PEER_DIR / "definitions.proto"
    if not module_path.exists() or module_path.stat().st_mtime < proto.stat().st_mtime:
        out.mkdir(parents=True, exist_ok=True)
        from grpc_tools import protoc  # a build step into the cache, like npm ci

        if protoc.main(["protoc", f"-I{PEER_DIR}", f"--python_out={out}", str(proto)]) != 0:
            raise RuntimeError(f"protoc failed on {proto}")
    spec = importlib.util.spec_from_file_location("bench_peer_definitions_pb2", module_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start(catalog: Path, port: int, *, label: str = "peer", timeout_s: float = 120.0) -> procs.Process:
    """Start ``node node_server.js PORT CATALOG`` and wait until it says it is ready."""
    argv = ["node", str(PEER_DIR / "node_server.js"), str(port), str(catalog)]
    log = CACHE / "logs" / f"{label}-{port}.log"
    return procs.start(label, argv, log_path=log, ready_text="ready in", timeout_s=timeout_s, cwd=PEER_DIR)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare and run the reference Node.js server on 127.0.0.1.")
    parser.add_argument("--commands", type=int, default=5000, help="catalog size (default 5000)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    args = parser.parse_args(argv)
    prepare()
    catalog = catalog_jsonl(args.commands)
    process = start(catalog, args.port or procs.free_port())
    print(f"peer pid {process.pid} ready in {process.ready_s:.2f}s: {procs.tail(process.log_path, 1)}")
    with contextlib.suppress(EOFError, KeyboardInterrupt):
        input("Enter stops it. ")
    procs.stop(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
