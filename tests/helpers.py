"""Plain helpers for every test package: sample commands and the make_snapshot factory's type.

Fixtures live in conftest.py; what they and the tests share as plain code lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from avapdefs.folder import atomic_file, delta_name, snapshot_name
from avapdefs.format import snapshot
from avapdefs.format.delta import encode_delta, make_delta_files
from avapdefs.v1.definitions_pb2 import Command


def sample_command(name: str, **fields: object) -> Command:
    """A plausible command definition named ``name``; ``fields`` override."""
    values: dict[str, object] = {
        "name": name,
        "type": "function",
        "interface_json": '[{"item":"targetVarName","type":"variable"},{"item":"varValue","type":"value"}]',
        "code": f"def {name.replace('.', '_')}(self, targetVarName, varValue):\n    return varValue\n",
        "description": f"The {name} command.",
    }
    values.update(fields)
    return Command(**values)  # type: ignore[arg-type]


def numbered_commands(count: int, changed: int = -1) -> list[Command]:
    """``count`` commands ``cmd0000``, ``cmd0001``, …; the one numbered ``changed`` has a different body."""
    return [sample_command(f"cmd{i:04d}", code=f"x = {i}{'  # changed' if i == changed else ''}") for i in range(count)]


def export_snapshot(folder: Path, version: int, commands: list[Command], *, delta_from: int | None = None) -> Path:
    """Publish a snapshot into ``folder`` as the exporter does, and a delta to it from version ``delta_from``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / snapshot_name(version)
    with atomic_file(path) as file:
        snapshot.write_snapshot(file, commands, version=version, source="test")
    if delta_from is not None:
        delta = make_delta_files(folder / snapshot_name(delta_from), path)
        assert delta is not None
        with atomic_file(folder / delta_name(delta_from, version)) as file:
            file.write(encode_delta(delta))
    return path


class MakeSnapshot(Protocol):
    """The ``make_snapshot`` fixture: write a valid snapshot file into a folder and return its path."""

    def __call__(
        self,
        *,
        folder: Path | None = None,
        version: int = 1,
        commands: list[Command] | None = None,
        source: str = "test",
    ) -> Path: ...
