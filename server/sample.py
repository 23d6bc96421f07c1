"""The built-in sample catalog, and where ``avap-server`` finds its snapshots when told nothing.

The sample (AVAP's own commands and generated connector commands, built by
``exporter/sample.py``) ships inside the package, in ``server/sample_catalog/``,
byte for byte the repository's ``snapshots/catalog-0000000001.avsnap``. With
neither ``--snapshots`` nor ``AVAP_SNAPSHOTS``, the server serves
``./snapshots`` when that folder exists (the repository's root, or a
deployment's working folder) and the sample otherwise, so ``avap-server``
answers from any directory after ``pip install``. The sample is served from a
private copy the supervisor removes at exit: the package folder may be read-only, and a
server writes its serving images into the folder it serves.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

SAMPLE_FOLDER = Path(__file__).with_name("sample_catalog")
DEFAULT_FOLDER = Path("snapshots")


@contextlib.contextmanager
def sample_copy() -> Iterator[Path]:
    """A private folder holding a copy of the sample's snapshot files, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="avap-sample-") as folder:
        for path in sorted(SAMPLE_FOLDER.glob("catalog-*.avsnap")):
            shutil.copyfile(path, Path(folder) / path.name)
        yield Path(folder)
