"""Plain factories for test data (fixtures live in conftest.py)."""

from __future__ import annotations

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
