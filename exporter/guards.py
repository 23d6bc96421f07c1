"""The exporter's guards: refuse a catalog that looks like a damaged table rather than an edit."""

from __future__ import annotations

from avapdefs.format.snapshot import SnapshotInfo
from exporter.errors import CountDropError, EmptyCatalogError


def check_guards(
    info: SnapshotInfo, previous: SnapshotInfo | None, *, allow_empty: bool, force: bool, max_drop_percent: float
) -> None:
    """Refuse a catalog that looks like a damaged table rather than an edit.

    Args:
        info: the new catalog's header.
        previous: the newest published header, if any.
        allow_empty: accept an empty catalog (and so any drop to zero).
        force: accept any drop in command count.
        max_drop_percent: the largest drop accepted without ``force``.

    Raises:
        EmptyCatalogError: no commands and not ``allow_empty``.
        CountDropError: the count fell by more than ``max_drop_percent``.
    """
    if info.command_count == 0:
        if not allow_empty:
            raise EmptyCatalogError("the table holds no commands; nothing published (use --allow-empty)")
        return
    if previous is None or force or previous.command_count == 0:
        return
    drop = 100.0 * (previous.command_count - info.command_count) / previous.command_count
    if drop > max_drop_percent:
        raise CountDropError(
            f"command count would drop from {previous.command_count} to {info.command_count} "
            f"({drop:.1f}%, more than {max_drop_percent:g}%); nothing published (use --force)",
            previous=previous.command_count,
            current=info.command_count,
        )
