"""Writing a serving image: the entries found in a payload cut anywhere, the frame's checks, nothing left on failure."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from avapdefs.errors import CorruptSnapshotError
from avapdefs.format import snapshot, wire
from avapdefs.v1.definitions_pb2 import Command
from server.image import HEADER_BYTES, image_name, open_image
from server.image_write import _Entries, write_image
from tests.helpers import sample_command
from tests.server.helpers import big_commands

SOURCE = Path("catalog.avsnap")


def _expected(payload: bytes, base: int) -> tuple[list[bytes], list[int]]:
    names, offsets, position = [], [], base
    for body in wire.iter_entries(payload):
        names.append(wire.command_name(body))
        offsets.append(position)
        position += len(wire.encode_entry(body))
    return names, [*offsets, position]


@given(
    st.lists(st.tuples(st.text(max_size=200), st.binary(max_size=20_000)), max_size=8),
    st.lists(st.integers(min_value=1, max_value=40_000), min_size=1, max_size=8),
)
def test_entries_of_a_payload_cut_anywhere(commands: list[tuple[str, bytes]], steps: list[int]) -> None:
    # Names long enough for two-byte length prefixes, bodies for three, a command without a name.
    payload = b"".join(wire.encode_entry(Command(name=n, bytecode=b).SerializeToString()) for n, b in commands)
    entries = _Entries(HEADER_BYTES, SOURCE)
    position, k = 0, 0
    while position < len(payload):
        step = payload[position : position + steps[k % len(steps)]]
        entries.add(step, HEADER_BYTES + position)
        position, k = position + len(step), k + 1
    entries.finish(HEADER_BYTES + len(payload))
    assert (entries.names, entries.offsets) == _expected(payload, HEADER_BYTES)
    assert [name.decode() for name in entries.names] == [name for name, _ in commands]


def test_odd_entries_are_indexed_as_they_lie() -> None:
    # A command without a name, one whose name runs past it, and an empty one: each is an entry named b"".
    bodies = [Command(code="x").SerializeToString(), b"\x0a\x7f" + b"a" * 5, b"", Command(name="z").SerializeToString()]
    payload = b"".join(wire.encode_entry(body) for body in bodies)
    for step in (1, 2, 3, len(payload)):
        entries = _Entries(0, SOURCE)
        for start in range(0, len(payload), step):
            entries.add(payload[start : start + step], start)
        entries.finish(len(payload))
        assert (entries.names, entries.offsets) == ([b"", b"", b"", b"z"], _expected(payload, 0)[1])


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"\x0a\x05abc", "runs past the end"),
        (b"\x12\x01a", "unexpected field tag 18"),
        (b"\x0a" + b"\xff" * 11, "bad length prefix"),
        (b"\x0a\x01a\x0a", "runs past the end"),
    ],
)
def test_a_payload_that_is_not_entries_is_refused(payload: bytes, error: str) -> None:
    entries = _Entries(0, SOURCE)
    with pytest.raises(CorruptSnapshotError, match=error):
        entries.add(payload, 0)
        entries.finish(len(payload))


def _snapshot(payload: bytes, frame: bytes | None = None, **claims: object) -> tuple[snapshot.SnapshotInfo, bytes]:
    """A snapshot file of ``payload`` (or of ``frame``, as it is), its header saying ``claims`` where given."""
    base, _ = snapshot.encode_snapshot([sample_command("a")], version=1, source="test", created_at_unix_ms=1)
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(payload) if frame is None else frame
    facts: dict[str, object] = {
        "content_hash": hashlib.sha256(payload).digest(),
        "compressed_size": len(frame),
        "uncompressed_size": len(payload),
        "command_count": sum(1 for _ in wire.iter_entries(payload)),
    }
    info = dataclasses.replace(base, **{**facts, **claims})  # type: ignore[arg-type]
    return info, snapshot.encode_prefix(info) + frame


PAYLOAD = b"".join(wire.encode_entry(snapshot.seal_command(sample_command(f"cmd.{k}"))) for k in range(50))
FRAME = zstandard.ZstdCompressor(write_checksum=True).compress(PAYLOAD)


@pytest.mark.parametrize(
    ("frame", "claims", "error"),
    [
        (FRAME + zstandard.ZstdCompressor().compress(b"x"), {}, "incomplete or followed by other data"),
        (FRAME + b"\x00" * 7, {}, "zstd frame"),
        (FRAME[:-4], {}, "zstd frame"),  # without its checksum: the payload is whole, the frame is not
        (FRAME[:-40], {}, "zstd frame|payload ends before"),
        (FRAME, {"uncompressed_size": len(PAYLOAD) - 10}, f"exceeds the {len(PAYLOAD) - 10} bytes"),
        (FRAME, {"uncompressed_size": len(PAYLOAD) + 10}, f"payload ends before the {len(PAYLOAD) + 10} bytes"),
        (FRAME, {"content_hash": bytes(32)}, "content hash mismatch"),
        (FRAME, {"command_count": 49}, "payload holds 50 commands, header says 49"),
        (b"\x00" * 40, {}, "zstd frame does not decompress"),
    ],
)
def test_a_bad_frame_is_refused_and_nothing_is_written(
    tmp_path: Path, frame: bytes, claims: dict[str, object], error: str
) -> None:
    info, data = _snapshot(PAYLOAD, frame, **claims)
    with pytest.raises(CorruptSnapshotError, match=error):
        write_image(None, data, info, SOURCE)
    with pytest.raises(CorruptSnapshotError, match=error):
        write_image(tmp_path / image_name(info), data, info, SOURCE)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("names", "served"), [("abab", {"a": 2, "b": 3}), ("cab", {"a": 1, "b": 2, "c": 0})])
def test_entries_out_of_order_or_named_twice_are_indexed_as_a_dict_would(
    tmp_path: Path, names: str, served: dict[str, int]
) -> None:
    # Snapshots are written sorted with each name once; the index does not count on it: the later entry wins.
    bodies = [sample_command(name, code=f"# {k}").SerializeToString() for k, name in enumerate(names)]
    payload = b"".join(wire.encode_entry(body) for body in bodies)
    info, data = _snapshot(payload)
    for target in (None, tmp_path / image_name(info)):
        image = write_image(target, data, info, SOURCE)
        assert list(image.names) == sorted(served) and image.count == len(served)
        assert {name.decode(): bytes(answer) for name, answer in image.answers.items()} == {
            name: wire.encode_entry(bodies[k]) for name, k in served.items()
        }


@pytest.fixture(scope="module")
def big_snapshot() -> tuple[snapshot.SnapshotInfo, bytes]:
    """About 20 MiB of payload: many inflation steps, entries cut at their borders, flushes while writing."""
    commands = big_commands(count=100, bytecode_bytes=200_000) + [sample_command(f"small.{k}") for k in range(2000)]
    return snapshot.encode_snapshot(commands, version=3, source="test", created_at_unix_ms=1)


def test_an_image_written_to_a_file_is_the_one_made_in_memory(
    tmp_path: Path, big_snapshot: tuple[snapshot.SnapshotInfo, bytes]
) -> None:
    info, data = big_snapshot
    in_memory = write_image(None, data, info, SOURCE)
    target = tmp_path / image_name(info)
    written = write_image(target, data, info, SOURCE)
    assert target.read_bytes() == in_memory.buffer
    mapped = open_image(target, info)  # as another process checks it: every checksum
    payload = snapshot.verify(data).payload
    assert bytes(mapped.payload) == payload and bytes(written.file) == data
    assert {bytes(name): bytes(answer) for name, answer in mapped.answers.items()} == {
        wire.command_name(body): wire.encode_entry(body) for body in wire.iter_entries(payload)
    }


@pytest.fixture
def file_size_limit() -> Iterator[int]:
    """Writes past 4 MiB fail (EFBIG) in this process, as on a full disk, until the test ends."""
    limit = 4 << 20
    before_signal = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, before[1]))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)
        signal.signal(signal.SIGXFSZ, before_signal)


def test_a_write_that_fails_on_the_helper_thread_fails_the_image_and_leaves_nothing(
    tmp_path: Path, big_snapshot: tuple[snapshot.SnapshotInfo, bytes], file_size_limit: int
) -> None:
    info, data = big_snapshot
    with pytest.raises(OSError, match="too large"):
        write_image(tmp_path / image_name(info), data, info, SOURCE)
    assert list(tmp_path.iterdir()) == []


def test_the_writers_helpers_run_on_the_cpus_of_the_parent_though_the_process_is_pinned() -> None:
    # A group's processes are pinned, one CPU each, by their supervisor (here: this process).
    mine = os.sched_getaffinity(0)
    code = (
        "import os; from concurrent.futures import ThreadPoolExecutor; from server.image_write import _any_cpu\n"
        "with ThreadPoolExecutor(1, initializer=_any_cpu) as helper:\n"
        "    print(sorted(helper.submit(os.sched_getaffinity, 0).result()), sorted(os.sched_getaffinity(0)))\n"
    )
    pinned = min(mine)
    child = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {pinned}),
    )
    assert child.stdout.strip() == f"{sorted(mine)} {[pinned]}"  # the helper: every CPU; the process: its one
