"""Streamed reading of a snapshot file: each command as soon as it is decompressed.

For files too large to hold whole (the exporter comparing versions to build
deltas): memory stays at one slice of the frame plus the largest command.
The format itself, and whole-file verification, are in ``snapshot.py``.

Thread safety: a ``CommandReader`` belongs to one thread.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from avapdefs.errors import CorruptSnapshotError, SnapshotError, TruncatedSnapshotError
from avapdefs.format.snapshot import (
    CATALOG_ENTRY_TAG,
    MAX_HEADER_BYTES,
    PREAMBLE,
    SnapshotInfo,
    inflate_frame,
    read_info,
)

_MAX_VARINT_BYTES = 10


class CommandReader:
    """The serialized commands of one snapshot file, streamed from disk and verified.

    Unlike ``read_file``, the payload is never whole in memory: the frame is
    decompressed a slice at a time and each command is yielded as soon as it
    is complete, so memory stays at one slice plus the largest command. The
    checks that need the whole payload (zstd checksum, sizes, content hash,
    command count) run when the last command has been read: a consumer must
    read to the end before trusting what it got, and a damaged file raises
    there, after earlier commands were yielded.

    Use as a context manager; ``info`` is read (and the file size checked) on
    opening. Iterating again starts over from the first command::

        with CommandReader(path) as reader:
            for serialized in reader: ...

    Raises:
        SnapshotError: on opening, the file cannot be read or its header is not
            valid; while iterating, a subclass saying what is wrong with the payload.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise SnapshotError(f"cannot read snapshot: {exc.strerror or exc}", path=path) from exc
        try:
            self.info = self._read_info()
        except BaseException:
            self._file.close()
            raise

    def _read_info(self) -> SnapshotInfo:
        try:
            prefix = self._file.read(PREAMBLE.size + MAX_HEADER_BYTES)
            size = os.fstat(self._file.fileno()).st_size
        except OSError as exc:
            raise SnapshotError(f"cannot read snapshot: {exc.strerror or exc}", path=self.path) from exc
        info = read_info(prefix, path=self.path)
        if size != info.file_size:
            kind = TruncatedSnapshotError if size < info.file_size else CorruptSnapshotError
            raise kind(f"file is {size} bytes, header says {info.file_size}", path=self.path)
        return info

    def __enter__(self) -> CommandReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __iter__(self) -> Iterator[bytes]:
        hasher = hashlib.sha256()
        pending = bytearray()
        count = 0
        for part in self._pieces():
            hasher.update(part)
            pending += part
            entries, used = _split_entries(pending, self.path)
            del pending[:used]
            count += len(entries)
            yield from entries
        if pending:
            raise CorruptSnapshotError("the last command entry runs past the end of the payload", path=self.path)
        if hasher.digest() != self.info.content_hash:
            raise CorruptSnapshotError("content hash mismatch", path=self.path)
        if count != self.info.command_count:
            raise CorruptSnapshotError(
                f"payload holds {count} commands, header says {self.info.command_count}", path=self.path
            )

    def _pieces(self) -> Iterator[bytes]:
        self._file.seek(self.info.payload_offset)
        yield from inflate_frame(self._read, self.info, self.path)

    def _read(self, size: int) -> bytes:
        try:
            return self._file.read(size)
        except OSError as exc:
            raise SnapshotError(f"cannot read snapshot: {exc.strerror or exc}", path=self.path) from exc


def iter_file_commands(path: Path | str) -> Iterator[bytes]:
    """Yield each serialized Command of the snapshot file at ``path``, streamed (see ``CommandReader``).

    Raises:
        SnapshotError: the file is not a valid snapshot; raised at the latest
            after the last command, before the iteration ends.
    """
    with CommandReader(path) as reader:
        yield from reader


def _split_entries(buffer: bytearray, path: Path | str | None) -> tuple[list[bytes], int]:
    """The complete command entries at the start of ``buffer``, and how many bytes they take."""
    entries: list[bytes] = []
    pos, end = 0, len(buffer)
    with memoryview(buffer) as view:  # released before the caller resizes the buffer
        while pos < end:
            if view[pos] != CATALOG_ENTRY_TAG[0]:
                raise CorruptSnapshotError(f"unexpected field tag {view[pos]} in the payload", path=path)
            length, start = _peek_varint(view, pos + 1, path)
            if start < 0 or start + length > end:
                break  # the rest of this entry is in the next piece
            entries.append(bytes(view[start : start + length]))
            pos = start + length
    return entries, pos


def _peek_varint(view: memoryview, pos: int, path: Path | str | None) -> tuple[int, int]:
    """Like ``_read_varint``, but (0, -1) when ``view`` ends inside the varint."""
    value = shift = 0
    for index in range(pos, min(pos + _MAX_VARINT_BYTES, len(view))):
        byte = view[index]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, index + 1
        shift += 7
    if len(view) - pos >= _MAX_VARINT_BYTES:
        raise CorruptSnapshotError("bad length prefix in the payload", path=path)
    return 0, -1
