"""Protobuf wire framing written and read by hand: varints, tags, length-delimited entries.

The one place that knows protobuf's encoding below the message level. It is
what lets the server answer without serializing per call: a payload entry is
``Catalog.commands`` (field 1, length-delimited) framing one ``Command``, and
those same bytes are a serialized ``GetCommandResponse``; a different tag
byte makes them a ``ListCommandsResponse.commands`` entry. Messages
concatenate: two serialized messages of one type, joined, parse as one.

Reading raises ``CorruptSnapshotError`` (the framing belongs to a snapshot
payload or a delta), naming ``path`` when the bytes came from a file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from avapdefs.errors import CorruptSnapshotError

VARINT = 0  # the wire type of int32, int64 and bool
LENGTH_DELIMITED = 2  # the wire type of strings, bytes and embedded messages
MAX_VARINT_BYTES = 10
UINT64_MASK = (1 << 64) - 1  # ``value & UINT64_MASK``: a negative int32 or int64 as protobuf encodes it
_ONE_BYTE = tuple(bytes((value,)) for value in range(0x80))


def varint(value: int) -> bytes:
    """``value`` (not negative) as a protobuf varint."""
    # The exporter frames every field of every row through here: the one- and two-byte cases skip the loop.
    if value < 0x80:
        return _ONE_BYTE[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(field_number: int, wire_type: int = LENGTH_DELIMITED) -> bytes:
    """The tag of field ``field_number`` of ``wire_type`` (default: length-delimited)."""
    return varint(field_number << 3 | wire_type)


ENTRY_TAG = tag(1)  # Catalog.commands, GetCommandResponse.command, Command.name: field 1, length-delimited


def encode_entry(body: bytes | memoryview, field_number: int = 1) -> bytes:
    """``body`` framed as the length-delimited field ``field_number``: tag, length, body."""
    head = ENTRY_TAG if field_number == 1 else tag(field_number)
    return head + varint(len(body)) + bytes(body)


def read_varint(view: memoryview, pos: int, path: Path | str | None = None) -> tuple[int, int]:
    """The varint at ``view[pos:]``, and the position after it.

    Raises:
        CorruptSnapshotError: the bytes end inside the varint, or it is over 10 bytes.
    """
    value, end = peek_varint(view, pos, path)
    if end < 0:
        raise CorruptSnapshotError(f"bad length prefix before payload offset {len(view)}", path=path)
    return value, end


def peek_varint(view: memoryview, pos: int, path: Path | str | None = None) -> tuple[int, int]:
    """As ``read_varint``, but (0, -1) when ``view`` ends inside the varint (more bytes may follow).

    Raises:
        CorruptSnapshotError: the varint is over 10 bytes.
    """
    value = shift = 0
    for index in range(pos, min(pos + MAX_VARINT_BYTES, len(view))):
        byte = view[index]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, index + 1
        shift += 7
    if len(view) - pos >= MAX_VARINT_BYTES:
        raise CorruptSnapshotError(f"bad length prefix at payload offset {pos}", path=path)
    return 0, -1


def iter_entries(payload: bytes | memoryview, *, path: Path | str | None = None) -> Iterator[memoryview]:
    """Yield the body of each field-1 entry of ``payload`` (each serialized Command), without parsing it.

    Raises:
        CorruptSnapshotError: the payload is not a sequence of field-1 entries.
    """
    view = memoryview(payload)
    end = len(view)
    pos = 0
    while pos < end:
        if view[pos] != ENTRY_TAG[0]:
            raise CorruptSnapshotError(f"unexpected field tag {view[pos]} at payload offset {pos}", path=path)
        length, pos = read_varint(view, pos + 1, path)
        if pos + length > end:
            raise CorruptSnapshotError(f"command entry at payload offset {pos} runs past the end", path=path)
        yield view[pos : pos + length]
        pos += length


def only_field(message: bytes | memoryview, field_number: int) -> memoryview | None:
    """The body of ``message`` when it is exactly one length-delimited field ``field_number``, else None.

    A view, not a copy: how a sync client takes a ``SyncCatalogResponse.chunk``'s data
    out of the message grpc hands it, without parsing the message.

    Raises:
        CorruptSnapshotError: the length prefix is over 10 bytes.
    """
    view = memoryview(message)
    head = tag(field_number)
    if view[: len(head)] != head:
        return None
    length, start = peek_varint(view, len(head))
    if start < 0 or start + length != len(view):
        return None
    return view[start:]


def split_entries(buffer: bytearray, *, path: Path | str | None = None) -> tuple[list[bytes], int]:
    """The bodies of the complete field-1 entries at the start of ``buffer``, and how many bytes they take.

    For a payload arriving in pieces: the caller drops the bytes used and keeps
    the rest, an entry cut by the end of the piece, for the next one.

    Raises:
        CorruptSnapshotError: a tag other than field 1, or a bad length prefix.
    """
    entries: list[bytes] = []
    pos, end = 0, len(buffer)
    with memoryview(buffer) as view:  # released before the caller resizes the buffer
        while pos < end:
            if view[pos] != ENTRY_TAG[0]:
                raise CorruptSnapshotError(f"unexpected field tag {view[pos]} in the payload", path=path)
            length, start = peek_varint(view, pos + 1, path)
            if start < 0 or start + length > end:
                break  # the rest of this entry is in the next piece
            entries.append(bytes(view[start : start + length]))
            pos = start + length
    return entries, pos


class EntryCounter:
    """Counts the field-1 entries of a payload arriving in pieces, without copying one.

    For verifying a whole file, where only the count matters: ``split_entries``
    would copy every command out. An entry may be cut anywhere, its header too.
    ``whole_bytes`` says where the entries fed so far that are complete end, so a
    caller can hand on (parse, say) each run of whole entries as it is counted.

    Raises (from ``feed`` and ``finish``):
        CorruptSnapshotError: a tag other than field 1, a bad length prefix, or an entry cut by the end.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.count = 0
        self.whole_bytes = 0  # payload bytes, from the start, that are complete entries
        self._path = path
        self._fed = 0  # payload bytes fed so far
        self._skip = 0  # body bytes of the current entry still to come
        self._head = b""  # an entry's tag and length prefix, cut by the end of the last piece

    def feed(self, piece: bytes | memoryview) -> None:
        """Count the entries that start in ``piece``, the next piece of the payload."""
        view = memoryview(piece)
        end = len(view)
        base = self._fed
        self._fed += end
        pos = self._resume(view)
        if pos is None:
            return
        entry = pos  # where the entry being read starts
        tag = ENTRY_TAG[0]
        while pos < end:
            entry = pos
            if view[pos] != tag:
                raise CorruptSnapshotError(f"unexpected field tag {view[pos]} in the payload", path=self._path)
            # The one- and two-byte length prefixes, inline; anything longer or cut, through peek_varint.
            if pos + 1 < end and view[pos + 1] < 0x80:
                pos += 2 + view[pos + 1]
            elif pos + 2 < end and view[pos + 2] < 0x80:
                pos += 3 + ((view[pos + 1] & 0x7F) | view[pos + 2] << 7)
            else:
                length, start = peek_varint(view, pos + 1, self._path)
                if start < 0:
                    self._head = bytes(view[pos:])
                    self.whole_bytes = base + pos
                    return
                pos = start + length
            self.count += 1
        self._skip = pos - end
        if pos <= end:
            self.whole_bytes = base + pos
        elif entry < end:
            self.whole_bytes = base + entry

    def _resume(self, view: memoryview) -> int | None:
        """Go through the entry the last piece cut: where ``view``'s first entry starts, None when it has none."""
        if self._head:
            pos = self._finish_head(view)
            if self._head:  # its header is still cut
                self._skip = 0
                return None
            return pos
        if self._skip >= len(view):
            self._skip -= len(view)
            if not self._skip:
                self.whole_bytes = self._fed
            return None
        return self._skip

    def _finish_head(self, view: memoryview) -> int:
        joined = self._head + bytes(view[:MAX_VARINT_BYTES])
        length, start = peek_varint(memoryview(joined), 1, self._path)
        if start < 0:
            self._head = joined
            return len(view)
        used = start - len(self._head)  # header bytes taken from this piece
        self._head = b""
        self.count += 1
        return used + length

    def finish(self) -> int:
        """The count, once the payload has ended.

        Raises:
            CorruptSnapshotError: the last entry runs past the end.
        """
        if self._head or self._skip:
            raise CorruptSnapshotError("the last command entry runs past the end of the payload", path=self._path)
        return self.count


def command_name(command: bytes | memoryview) -> bytes:
    """The UTF-8 name of a serialized Command, read without parsing the rest.

    ``name`` is field 1, so a serialized Command with a name starts with it.
    Returns b"" for a command without a name.
    """
    view = memoryview(command)
    if not view or view[0] != ENTRY_TAG[0]:
        return b""
    length, start = read_varint(view, 1)
    return bytes(view[start : start + length])
