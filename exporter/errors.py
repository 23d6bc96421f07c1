"""Every error the exporter raises, in one hierarchy; ``cli.py`` maps each to an exit code.

    ExportError
     ├── ConfigError        a setting is invalid                                  exit 2
     ├── SourceError        the database failed during the read                   exit 3
     │    ├── ConnectError  the database cannot be reached or refuses the login   exit 3
     │    └── SchemaError   a table or column the export needs does not exist     exit 4
     ├── BadDataError       rows that cannot be exported (carries .problems)      exit 5
     ├── GuardError         the new catalog looks wrong; nothing published        exit 6
     │    ├── EmptyCatalogError
     │    └── CountDropError
     └── PublishError       the snapshot folder cannot be written                 exit 8

Foreign errors are translated once, where their meaning is known: psycopg's
in ``source.py``, OSError from the folder in ``export.py``. Another exporter
holding the folder's lock is ``avapdefs.errors.LockedError`` (exit 7).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class ExportError(Exception):
    """Base class of every error raised by the exporter."""


class ConfigError(ExportError):
    """A setting (flag or AVAP_* variable) is invalid."""


class SourceError(ExportError):
    """The database failed while the rows were read."""


class ConnectError(SourceError):
    """The database cannot be reached, or refuses the connection."""


class SchemaError(SourceError):
    """A table or column the export reads does not exist.

    Attributes:
        table: the table (as configured).
        columns: the missing columns; empty when the whole table is missing.
    """

    def __init__(self, message: str, *, table: str, columns: Sequence[str] = ()) -> None:
        self.table = table
        self.columns = tuple(columns)
        super().__init__(message)


@dataclass(frozen=True)
class RowProblem:
    """One reason a row cannot be exported.

    Attributes:
        ids: the ``id`` of each row involved (several for duplicate names).
        column: the column at fault.
        reason: what is wrong, in words.
    """

    ids: tuple[int, ...]
    column: str
    reason: str

    def __str__(self) -> str:
        rows = ", ".join(f"id={row_id}" for row_id in self.ids)
        noun = "row" if len(self.ids) == 1 else "rows"
        return f"{noun} {rows}, column {self.column}: {self.reason}"


class BadDataError(ExportError):
    """Rows that cannot be exported; nothing is published.

    Attributes:
        problems: the problems found (at most the configured number).
        total: how many problems there were in all.
    """

    def __init__(self, problems: Sequence[RowProblem], total: int) -> None:
        self.problems = tuple(problems)
        self.total = total
        more = f" (and {total - len(self.problems)} more)" if total > len(self.problems) else ""
        listed = "; ".join(str(problem) for problem in self.problems)
        super().__init__(f"{total} bad row problem(s), nothing published: {listed}{more}")


class GuardError(ExportError):
    """The new catalog fails a publishing guard; nothing is published."""


class EmptyCatalogError(GuardError):
    """The table holds no commands and ``--allow-empty`` was not given."""


class CountDropError(GuardError):
    """The command count dropped by more than the allowed share.

    Attributes:
        previous: the command count of the newest snapshot.
        current: the command count of the new catalog.
    """

    def __init__(self, message: str, *, previous: int, current: int) -> None:
        self.previous = previous
        self.current = current
        super().__init__(message)


class PublishError(ExportError):
    """The snapshot folder cannot be read or written."""
