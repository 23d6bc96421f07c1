"""The files the exporter publishes into the snapshot folder: whole or not at all, with chosen permissions.

``avapdefs.folder.atomic_file`` writes a temp file and renames it into
place. It creates the temp file as ``open`` does, 0666 less the process's
umask, so the same exporter made 0644 files from a shell and 0600 files
under a cron whose umask is 077, which a server running as another user
then could not read. Here the mode (``--file-mode``, 0644 by default) is set
on the temp file before anything is written to it, whatever the umask, so a
file appears under its name already with its final permissions.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from avapdefs.folder import atomic_file


@contextlib.contextmanager
def published_file(path: Path, mode: int) -> Iterator[BinaryIO]:
    """``atomic_file(path)`` whose file gets permissions ``mode`` (e.g. 0o644) before the rename.

    Raises:
        OSError: the file cannot be created, written or renamed (nothing is left at ``path``).
    """
    with atomic_file(path) as file:
        os.fchmod(file.fileno(), mode)
        yield file
