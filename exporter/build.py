"""Rows of the legacy tables -> sealed Command messages, validated on the way (pure: no I/O).

Rows arrive ordered by name (``ORDER BY name COLLATE "C"``, then id), so rows
sharing a name are adjacent: the builder holds back one command until the next
row shows its name is unique, and so needs no set of every name seen.

A Command is encoded here field by field, straight from the row's UTF-8
bytes, instead of through a protobuf object: at 1,000,000 rows that object,
its serialization and its sealing cost about 10 s of a 33 s export. The bytes
are exactly protobuf's (proto3: fields in number order, defaults left out;
``tests/exporter/test_determinism.py`` compares them with ``SerializeToString``
row by row), and the field numbers come from the generated descriptor.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from avapdefs.format import wire
from avapdefs.format.package import build_package, is_package
from avapdefs.format.snapshot import seal_serialized
from avapdefs.format.wire import UINT64_MASK, varint
from avapdefs.v1.definitions_pb2 import Command
from exporter.errors import BadDataError, RowProblem
from exporter.source import SourceRow

_FIELDS = Command.DESCRIPTOR.fields_by_name  # the numbers come from the contract, not from literals here
_NAME = wire.tag(_FIELDS["name"].number)
_TYPE = wire.tag(_FIELDS["type"].number)
_INTERFACE = wire.tag(_FIELDS["interface_json"].number)
_CODE = wire.tag(_FIELDS["code"].number)
_DESCRIPTION = wire.tag(_FIELDS["description"].number)
_LOGIC_TRUE = wire.tag(_FIELDS["logic"].number, wire.VARINT) + b"\x01"
_COMPONENT_TYPE = wire.tag(_FIELDS["component_type"].number)
_SERVICE = wire.tag(_FIELDS["service"].number)
_COMMAND = wire.tag(_FIELDS["command"].number)
_SOURCE_ID = wire.tag(_FIELDS["source_id"].number, wire.VARINT)
_BYTECODE = wire.tag(_FIELDS["bytecode"].number)
_BYTECODE_VERSION = wire.tag(_FIELDS["bytecode_version"].number, wire.VARINT)
_BYTECODE_SOURCE_HASH = wire.tag(_FIELDS["bytecode_source_hash"].number)
_SIGNED_PACKAGE = wire.tag(_FIELDS["signed_package"].number)
# The interface and the name are decoded anyway; the other texts are checked here.
_CHECKED_TEXT_COLUMNS = ("type", "code", "description", "componenttype", "service", "command", "bytecode_source_hash")
# Interfaces repeat (commands generated from one template share theirs): a text that parsed once is
# not parsed again. Bounded, and only short texts, so the cache stays under a few MB.
_JSON_CACHE_ENTRIES = 4096
_JSON_CACHE_MAX_BYTES = 4096


class RowError(Exception):
    """A row cannot become a command (carries the problem)."""

    def __init__(self, problem: RowProblem) -> None:
        self.problem = problem
        super().__init__(str(problem))


def _text(row: SourceRow, column: str, data: bytes | None) -> str:
    # PostgreSQL sends valid UTF-8 (the connection asks for it); a SQL_ASCII database may not.
    try:
        return "" if data is None else data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RowError(RowProblem((row.id or 0,), column, f"not valid UTF-8 ({exc.reason})")) from exc


def _signed_package(bytecode: bytes, code: bytes, signing_key: bytes | None) -> bytes:
    # A package already stored in avap_bytecode is served as is (it was signed
    # where it was built); otherwise one is signed from the code, given a key.
    if is_package(bytecode):
        return bytecode
    return build_package(code.decode("utf-8"), signing_key) if signing_key else b""


class CommandEncoder:
    """Encodes rows into serialized, sealed Commands; validates each on the way.

    Args:
        signing_key: when given, each command carries its code as a signed package.
        check_utf8: check that every text is UTF-8. PostgreSQL sends only valid UTF-8 when the
            client encoding is UTF8, unless the database's encoding is SQL_ASCII (``Source.checks_utf8``);
            the name and the interface are decoded, so checked, in any case.
    """

    def __init__(self, *, signing_key: bytes | None = None, check_utf8: bool = True) -> None:
        self._signing_key = signing_key
        self._check_utf8 = check_utf8
        self._valid_json: dict[bytes, None] = {}

    def name(self, row: SourceRow) -> str:
        """The row's command name.

        Raises:
            RowError: it is NULL, blank or not UTF-8.
        """
        if row.name is None:
            raise RowError(RowProblem((row.id or 0,), "name", "is NULL"))
        name = _text(row, "name", row.name)
        if not name.strip():
            raise RowError(RowProblem((row.id or 0,), "name", "is empty"))
        return name

    def encode(self, row: SourceRow) -> bytes:
        """The sealed, serialized Command the row exports as (its name already checked by ``name``).

        Raises:
            RowError: the interface is not JSON, or a text is not UTF-8.
        """
        interface = self._interface(row)
        if self._check_utf8:
            self._check_texts(row)
        # Written out field by field, in field-number order: this runs once per row, and a
        # helper call per field would cost a third of it.
        parts: list[bytes] = []
        if row.name:
            parts += (_NAME, varint(len(row.name)), row.name)
        if row.type:
            parts += (_TYPE, varint(len(row.type)), row.type)
        if interface:
            parts += (_INTERFACE, varint(len(interface)), interface)
        if row.code:
            parts += (_CODE, varint(len(row.code)), row.code)
        if row.description:
            parts += (_DESCRIPTION, varint(len(row.description)), row.description)
        if row.logic:
            parts.append(_LOGIC_TRUE)
        if row.componenttype:
            parts += (_COMPONENT_TYPE, varint(len(row.componenttype)), row.componenttype)
        self._add_tail(parts, row)
        return seal_serialized(b"".join(parts))

    def _add_tail(self, parts: list[bytes], row: SourceRow) -> None:
        if row.service:
            parts += (_SERVICE, varint(len(row.service)), row.service)
        if row.command:
            parts += (_COMMAND, varint(len(row.command)), row.command)
        if row.id:
            parts += (_SOURCE_ID, varint(row.id & UINT64_MASK))
        if row.bytecode:
            parts += (_BYTECODE, varint(len(row.bytecode)), row.bytecode)
        if row.bytecode_version:
            parts += (_BYTECODE_VERSION, varint(row.bytecode_version & UINT64_MASK))
        if row.bytecode_source_hash:
            parts += (_BYTECODE_SOURCE_HASH, varint(len(row.bytecode_source_hash)), row.bytecode_source_hash)
        package = _signed_package(row.bytecode or b"", row.code or b"", self._signing_key)
        if package:
            parts += (_SIGNED_PACKAGE, varint(len(package)), package)

    def _check_texts(self, row: SourceRow) -> None:
        for column in _CHECKED_TEXT_COLUMNS:
            data = getattr(row, column)
            if data and not data.isascii():
                _text(row, column, data)

    def _interface(self, row: SourceRow) -> bytes:
        # NULL or blank means "no parameters" in the legacy table and exports as "";
        # anything else must be JSON, because every client parses it.
        if row.interface is None:
            return b""
        if row.interface in self._valid_json:
            return row.interface
        text = _text(row, "interface", row.interface)
        if not text.strip():
            return b""
        try:
            json.loads(text)
        except ValueError as exc:
            raise RowError(RowProblem((row.id or 0,), "interface", f"not valid JSON ({exc})")) from exc
        if len(row.interface) <= _JSON_CACHE_MAX_BYTES:
            if len(self._valid_json) >= _JSON_CACHE_ENTRIES:
                self._valid_json.clear()
            self._valid_json[row.interface] = None
        return row.interface


class CatalogBuilder:
    """Turns rows, ordered by name, into sealed commands and collects every problem.

    After the first problem nothing more is emitted (nothing will be
    published), but the remaining rows are still checked so that one run
    reports as many problems as ``max_problems`` allows.

    Args:
        signing_key: passed to ``CommandEncoder``.
        check_utf8: passed to ``CommandEncoder``.
        max_problems: problems kept for the error; the rest are only counted.
    """

    def __init__(self, *, signing_key: bytes | None = None, max_problems: int = 20, check_utf8: bool = True) -> None:
        self._encoder = CommandEncoder(signing_key=signing_key, check_utf8=check_utf8)
        self._max_problems = max_problems
        self._problems: list[RowProblem] = []
        self._total = 0
        self._pending: tuple[str, bytes] | None = None
        self._group_name: bytes | None = None
        self._group_ids: list[int] = []

    def feed(self, row: SourceRow) -> tuple[str, bytes] | None:
        """Take the next row; return the previous command once it is known to be unique."""
        if row.name is not None and row.name == self._group_name:
            self._group_ids.append(row.id or 0)
            return None
        ready = self._close_group()
        self._group_name, self._group_ids = None, [row.id or 0]
        try:
            name = self._encoder.name(row)
            self._group_name = row.name  # only a valid name groups duplicates
            sealed = self._encoder.encode(row)
        except RowError as exc:
            self._add(exc.problem)
            return ready
        if not self._total:
            self._pending = (name, sealed)
        return ready

    def finish(self) -> tuple[str, bytes] | None:
        """Return the last command, if any.

        Raises:
            BadDataError: any row had a problem.
        """
        ready = self._close_group()
        if self._total:
            raise BadDataError(self._problems, self._total)
        return ready

    def _close_group(self) -> tuple[str, bytes] | None:
        if len(self._group_ids) > 1:
            assert self._group_name is not None
            name = self._group_name.decode("utf-8")
            self._add(RowProblem(tuple(self._group_ids), "name", f"duplicate name {name!r}"))
        ready, self._pending = self._pending, None
        return None if self._total else ready

    def _add(self, problem: RowProblem) -> None:
        self._total += 1
        if len(self._problems) < self._max_problems:
            self._problems.append(problem)


def iter_sealed(
    rows: Iterable[SourceRow], *, signing_key: bytes | None = None, max_problems: int = 20, check_utf8: bool = True
) -> Iterator[tuple[str, bytes]]:
    """Yield (name, sealed serialized Command) per row, in the rows' order (arguments: ``CatalogBuilder``'s).

    Raises:
        BadDataError: after the last row, when any row had a problem.
    """
    builder = CatalogBuilder(signing_key=signing_key, max_problems=max_problems, check_utf8=check_utf8)
    for row in rows:
        ready = builder.feed(row)
        if ready is not None:
            yield ready
    last = builder.finish()
    if last is not None:
        yield last


# Rows that touch every field and rule of the encoder. Their sealed bytes, under a run's
# signing key, go into the source digest (exporter/unchanged.py): a change in how rows
# become commands, or another key, changes the digest, so an old digest never vouches for it.
# fmt: off
_CANARY_ROWS = (
    SourceRow(-7, "canary.ñ".encode(), b"function", b' [{"item":"x","type":"value"}] ', "código\n".encode(), b"d",
              True, b"core", b"svc", b"cmd", b"\x00AVBC", -3, b"h"),
    SourceRow(1 << 40, b"canary.nulls", None, b"  ", b"pass\n", None, None, None, None, None, None, None, None),
    SourceRow(3, b"canary.package", b"", b"[]", b"", b"", False, b"", b"", b"", b"AVAP\x00\x01", 0, b""),
)
# fmt: on


def encoder_canary(signing_key: bytes | None) -> bytes:
    """The sealed commands of fixed canary rows under ``signing_key``, concatenated."""
    encoder = CommandEncoder(signing_key=signing_key)
    return b"".join(encoder.encode(row) for row in _CANARY_ROWS)
