"""The serving image: written once per version, shared, checked before use, rebuilt when damaged, pruned."""

from __future__ import annotations

import logging
import os
import re
import signal
from pathlib import Path

import grpc
import pytest

from avapdefs.folder import LOCK_NAME, read_header, snapshot_name
from avapdefs.format import snapshot
from avapdefs.format.wire import command_name, encode_entry, iter_entries
from avapdefs.v1.definitions_pb2 import GetCommandRequest, GetCommandResponse
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from server.image import CACHE_NAME, HEADER_BYTES, image_name
from server.store import LoadedSnapshot, SnapshotStore
from tests.helpers import MakeSnapshot, sample_command
from tests.server.helpers import big_commands, free_port, log_lines, server_process, wait_for_line

NAMES = ["if", "addVar", "ñandú.cálculo", "日本語コマンド", "end", "RequestGet", "x" * 300]


def _load(folder: Path) -> LoadedSnapshot:
    return SnapshotStore(folder, chunk_bytes=1024).load_newest()


def _image_of(path: Path) -> Path:
    return path.parent / CACHE_NAME / image_name(read_header(path))


def _identity(path: Path) -> tuple[int, int]:
    seen = path.stat()
    return seen.st_ino, seen.st_mtime_ns


def _assert_answers_are_the_snapshots(loaded: LoadedSnapshot, path: Path) -> None:
    payload = snapshot.read_file(path).payload
    expected = {bytes(command_name(body)): encode_entry(body) for body in iter_entries(payload)}
    assert {name: loaded.responses[name] for name in expected} == expected
    assert len(loaded.responses) == len(expected) and set(loaded.responses) == set(expected)
    assert list(loaded.names) == sorted(name.decode("utf-8") for name in expected)
    assert loaded.responses.get(b"no.such.command") is None and b"no.such.command" not in loaded.responses
    assert loaded.file_bytes() == path.read_bytes()


def test_answers_come_from_an_image_identical_to_the_snapshot(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(commands=[sample_command(name) for name in NAMES] + big_commands(count=5, bytecode_bytes=3000))
    loaded = _load(path.parent)
    assert loaded.image.path == _image_of(path)
    _assert_answers_are_the_snapshots(loaded, path)
    assert loaded.names[-1] == loaded.names[len(loaded.names) - 1] and loaded.names[1:3] == list(loaded.names)[1:3]
    assert GetCommandResponse.FromString(loaded.responses["日本語コマンド".encode()]).command.name == "日本語コマンド"


def test_the_image_is_written_once_and_mapped_by_the_next_store(
    make_snapshot: MakeSnapshot, caplog: pytest.LogCaptureFixture
) -> None:
    path = make_snapshot(commands=[sample_command(name) for name in NAMES])
    with caplog.at_level(logging.INFO, logger="server.store"):
        _load(path.parent)
        image = _image_of(path)
        before = _identity(image)
        assert "wrote serving image" in caplog.text
        caplog.clear()
        second = _load(path.parent)
    assert _identity(image) == before  # the same file, not rewritten
    assert "mapped serving image" in caplog.text and "wrote serving image" not in caplog.text
    assert image.stat().st_mode & 0o222 == 0  # read-only: never written again
    _assert_answers_are_the_snapshots(second, path)


def _damage(image: Path, how: str, other: Path, snapshot_path: Path) -> None:
    data = bytearray(image.read_bytes())
    info = read_header(snapshot_path)
    file_start = HEADER_BYTES + info.uncompressed_size + (-info.uncompressed_size % 8)
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "flip payload":
        data[HEADER_BYTES + 100] ^= 0x01
    elif how == "flip index":
        data[-3] ^= 0x40
    elif how == "flip header":
        data[20] ^= 0x01
    elif how == "flip recorded file hash":
        data[60] ^= 0x01  # the snapshot file's sha256 that a sync announces, recorded in the header
    elif how == "flip file":
        data[file_start + info.file_size // 2] ^= 0x08  # the snapshot file a sync streams
    elif how == "foreign":
        data = bytearray(other.read_bytes())  # a valid image, of another snapshot, under this name
    image.unlink()
    image.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "how", ["truncate", "flip payload", "flip index", "flip header", "flip recorded file hash", "flip file", "foreign"]
)
def test_a_damaged_or_foreign_image_is_rebuilt_never_served(
    make_snapshot: MakeSnapshot, tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = make_snapshot(commands=[sample_command(name) for name in NAMES])
    _load(path.parent)
    other_folder = tmp_path / "other"
    other_folder.mkdir()
    other = make_snapshot(folder=other_folder, commands=[sample_command(name, code="other") for name in NAMES])
    _load(other_folder)
    image = _image_of(path)
    _damage(image, how, _image_of(other), path)
    damaged = _identity(image)
    with caplog.at_level(logging.WARNING, logger="server.store"):
        loaded = _load(path.parent)
    assert re.search(r"serving image .* cannot be used .*; rebuilding it", caplog.text)
    assert _identity(image) != damaged and loaded.image.path == image
    _assert_answers_are_the_snapshots(loaded, path)
    _assert_answers_are_the_snapshots(_load(path.parent), path)  # the rebuilt image checks out


def test_images_of_versions_gone_from_the_folder_are_removed(make_snapshot: MakeSnapshot) -> None:
    first = make_snapshot(version=1, commands=[sample_command("a", code="1")])
    store = SnapshotStore(first.parent, chunk_bytes=1024)
    store.load_newest()
    first_image = _image_of(first)
    second = make_snapshot(version=2, commands=[sample_command("a", code="2")])
    assert store.refresh() is not None and store.current is not None and store.current.info.version == 2
    second_image = _image_of(second)
    assert first_image.exists() and second_image.exists()  # version 1 is still in the folder
    first.unlink()
    (first.parent / CACHE_NAME / ".tmp-dead.avimg.999999999.0badf00d").write_bytes(b"left by a killed writer")
    store.refresh()
    assert sorted(p.name for p in (first.parent / CACHE_NAME).iterdir() if p.name != LOCK_NAME) == [second_image.name]
    second.unlink()  # the live version's file is gone: it keeps serving, from its image
    store.refresh()
    assert second_image.exists()


def test_without_a_writable_cache_each_process_serves_from_memory(
    make_snapshot: MakeSnapshot, caplog: pytest.LogCaptureFixture
) -> None:
    path = make_snapshot(commands=[sample_command(name) for name in NAMES])
    (path.parent / CACHE_NAME).write_bytes(b"a file where the cache folder would be")
    with caplog.at_level(logging.WARNING, logger="server.store"):
        loaded = _load(path.parent)
    assert "cannot write serving images" in caplog.text and loaded.image.path is None
    _assert_answers_are_the_snapshots(loaded, path)


def test_a_restarted_server_process_maps_the_image_the_first_one_wrote(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(commands=[sample_command(name) for name in NAMES])
    image = _image_of(path)
    for run in range(2):
        process = server_process("--snapshots", str(path.parent), "--port", "0", "--no-legacy")
        try:
            seen: list[str] = []
            lines = log_lines(process)
            verb = "wrote" if run == 0 else "mapped"
            wait_for_line(lines, rf"{verb} serving image .*{re.escape(image.name)}", seen)
            port = wait_for_line(lines, r"serving .* on 127\.0\.0\.1:(\d+)", seen).group(1)
            if run == 0:
                written = _identity(image)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                answer = DefinitionServiceStub(channel).GetCommand(GetCommandRequest(name="addVar"), timeout=10)
            assert answer.command.name == "addVar" and answer.command.code == sample_command("addVar").code
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
            assert process.stderr is not None
            process.stderr.close()
    assert _identity(image) == written


def test_one_process_of_a_group_writes_the_image_and_the_others_map_it(make_snapshot: MakeSnapshot) -> None:
    path = make_snapshot(commands=big_commands(count=160))  # 20 MiB to inflate and index: the starts overlap
    port = str(free_port())
    process = server_process("--snapshots", str(path.parent), "--port", port, "--no-legacy", "--processes", "3")
    try:
        seen: list[str] = []
        wait_for_line(log_lines(process), r"serving catalog version 1 .* with 3 process", seen)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert process.stderr is not None
        process.stderr.close()
    verbs = sorted(match[1] for line in seen if (match := re.search(r"(wrote|mapped) serving image", line)))
    assert verbs == ["mapped", "mapped", "wrote"]


def test_snapshot_file_names_and_images_do_not_mix(make_snapshot: MakeSnapshot) -> None:
    # Two versions with the same content have one content hash: their images are still two.
    first = make_snapshot(version=1, commands=[sample_command("a")])
    second = make_snapshot(version=2, commands=[sample_command("a")])
    assert read_header(first).content_hash == read_header(second).content_hash
    assert _image_of(first) != _image_of(second)
    loaded = _load(first.parent)
    assert loaded.info.version == 2 and loaded.file_bytes() == second.read_bytes()
    assert snapshot_name(2) == second.name and os.path.exists(_image_of(second))
