"""Rows of the legacy tables -> sealed Command messages, validated on the way (pure: no I/O).

Rows arrive ordered by name (``ORDER BY name COLLATE "C"``, then id), so rows
sharing a name are adjacent: the builder holds back one command until the next
row shows its name is unique, and so needs no set of every name seen.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from avapdefs.format.package import build_package, is_package
from avapdefs.format.snapshot import seal_command
from avapdefs.v1.definitions_pb2 import Command
from exporter.errors import BadDataError, RowProblem
from exporter.source import SourceRow


class RowError(Exception):
    """A row cannot become a command (carries the problem)."""

    def __init__(self, problem: RowProblem) -> None:
        self.problem = problem
        super().__init__(str(problem))


def _check_interface(row: SourceRow) -> str:
    # NULL or blank means "no parameters" in the legacy table and exports as "";
    # anything else must be JSON, because every client parses it.
    text = row.interface
    if text is None or not text.strip():
        return ""
    try:
        json.loads(text)
    except ValueError as exc:
        raise RowError(RowProblem((row.id,), "interface", f"not valid JSON ({exc})")) from exc
    return text


def _signed_package(bytecode: bytes, code: str, signing_key: bytes | None) -> bytes:
    # A package already stored in avap_bytecode is served as is (it was signed
    # where it was built); otherwise one is signed from the code, given a key.
    if is_package(bytecode):
        return bytecode
    return build_package(code, signing_key) if signing_key else b""


def build_command(row: SourceRow, *, signing_key: bytes | None = None) -> Command:
    """The Command a row exports as (not yet sealed).

    Args:
        row: the row.
        signing_key: when given, the command carries its code as a signed package.

    Raises:
        RowError: the name is NULL or blank, or the interface is not JSON.
    """
    if row.name is None:
        raise RowError(RowProblem((row.id,), "name", "is NULL"))
    if not row.name.strip():
        raise RowError(RowProblem((row.id,), "name", "is empty"))
    code = row.code or ""
    return Command(
        name=row.name,
        type=row.type or "",
        interface_json=_check_interface(row),
        code=code,
        description=row.description or "",
        logic=bool(row.logic),
        component_type=row.componenttype or "",
        service=row.service or "",
        command=row.command or "",
        source_id=row.id,
        bytecode=row.bytecode or b"",
        bytecode_version=row.bytecode_version or 0,
        bytecode_source_hash=row.bytecode_source_hash or "",
        signed_package=_signed_package(row.bytecode or b"", code, signing_key),
    )


class CatalogBuilder:
    """Turns rows, ordered by name, into sealed commands and collects every problem.

    After the first problem nothing more is emitted (nothing will be
    published), but the remaining rows are still checked so that one run
    reports as many problems as ``max_problems`` allows.

    Args:
        signing_key: passed to ``build_command``.
        max_problems: problems kept for the error; the rest are only counted.
    """

    def __init__(self, *, signing_key: bytes | None = None, max_problems: int = 20) -> None:
        self._signing_key = signing_key
        self._max_problems = max_problems
        self._problems: list[RowProblem] = []
        self._total = 0
        self._pending: tuple[str, bytes] | None = None
        self._group_name: str | None = None
        self._group_ids: list[int] = []

    def feed(self, row: SourceRow) -> tuple[str, bytes] | None:
        """Take the next row; return the previous command once it is known to be unique."""
        if row.name and row.name.strip() and row.name == self._group_name:
            self._group_ids.append(row.id)
            return None
        ready = self._close_group()
        self._group_name, self._group_ids = row.name, [row.id]
        try:
            command = build_command(row, signing_key=self._signing_key)
        except RowError as exc:
            self._add(exc.problem)
            return ready
        if not self._total:
            self._pending = (command.name, seal_command(command))
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
            self._add(RowProblem(tuple(self._group_ids), "name", f"duplicate name {self._group_name!r}"))
        ready, self._pending = self._pending, None
        return None if self._total else ready

    def _add(self, problem: RowProblem) -> None:
        self._total += 1
        if len(self._problems) < self._max_problems:
            self._problems.append(problem)


def iter_sealed(
    rows: Iterable[SourceRow], *, signing_key: bytes | None = None, max_problems: int = 20
) -> Iterator[tuple[str, bytes]]:
    """Yield (name, sealed serialized Command) per row, in the rows' order.

    Raises:
        BadDataError: after the last row, when any row had a problem.
    """
    builder = CatalogBuilder(signing_key=signing_key, max_problems=max_problems)
    for row in rows:
        ready = builder.feed(row)
        if ready is not None:
            yield ready
    last = builder.finish()
    if last is not None:
        yield last
