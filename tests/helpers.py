"""Plain helpers for every test package: sample commands and the make_snapshot factory's type.

Fixtures live in conftest.py; what they and the tests share as plain code lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

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
