"""Hostile files in a snapshot folder or cache: refused at once, with bounded memory, never followed or waited on."""

from __future__ import annotations

import os
import resource
import shutil
from pathlib import Path

import pytest

from avapdefs import fileio, folder
from avapdefs.client import load_cached
from avapdefs.errors import CorruptSnapshotError, NotASnapshotError, SnapshotError
from avapdefs.format import snapshot
from tests.helpers import MakeSnapshot

GIB = 1 << 30


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / folder.snapshot_name(2)
    os.mkfifo(fifo)
    with pytest.raises(SnapshotError, match="not a regular file \\(a FIFO\\)"):
        fileio.read_bytes(fifo)


def test_a_symbolic_link_is_refused_even_to_a_valid_snapshot(make_snapshot: MakeSnapshot, tmp_path: Path) -> None:
    real = make_snapshot(version=1)
    for target in (Path("/dev/zero"), real):
        link = tmp_path / "links" / folder.snapshot_name(1)
        link.parent.mkdir(exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        with pytest.raises(SnapshotError, match="symbolic link"):
            folder.read_verified(link)


def test_a_directory_or_device_named_like_a_snapshot_is_refused(tmp_path: Path) -> None:
    (tmp_path / folder.snapshot_name(3)).mkdir()
    with pytest.raises(SnapshotError, match="a directory"):
        folder.read_header(tmp_path / folder.snapshot_name(3))
    with pytest.raises(SnapshotError, match="a character device"):
        fileio.read_bytes("/dev/null", "delta")


def test_a_huge_sparse_file_is_refused_before_its_payload_is_read(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(version=1)
    size = path.stat().st_size
    before = _peak_rss_bytes()
    with open(path, "r+b") as file:
        file.truncate(3 * GIB)  # a valid header, then 3 GiB of holes
    with pytest.raises(CorruptSnapshotError, match=f"file is {3 * GIB} bytes, header says {size}"):
        snapshot.read_file(path)
    junk = path.with_name(folder.snapshot_name(2))
    with open(junk, "wb") as file:
        file.truncate(3 * GIB)  # no header at all
    with pytest.raises(NotASnapshotError):
        folder.read_verified(junk)
    assert _peak_rss_bytes() - before < 64 << 20  # nothing near the 3 GiB was read into memory


def test_an_older_version_renamed_to_a_newer_name_is_refused(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(version=1)
    renamed = path.with_name(folder.snapshot_name(5))
    shutil.copyfile(path, renamed)
    with pytest.raises(CorruptSnapshotError, match="file name says version 5, its header says 1"):
        folder.read_verified(renamed)
    with pytest.raises(CorruptSnapshotError, match="file name says version 5"):
        folder.read_header(renamed)
    assert folder.read_newest(path.parent).snapshot.info.version == 1  # the real newest serves


def test_a_cache_whose_newest_file_is_a_fifo_still_boots_from_its_last_good_copy(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(version=1)
    os.mkfifo(path.with_name(folder.snapshot_name(2)))
    os.symlink("/dev/zero", path.with_name(folder.snapshot_name(3)))
    assert load_cached(path.parent).info.version == 1
    newest = folder.read_newest_header(path.parent)  # what the exporter compares against
    assert newest.version == 3 and newest.info is not None and newest.info.version == 1
