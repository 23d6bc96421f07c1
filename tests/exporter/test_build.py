"""Rows -> sealed commands (pure): field mapping, validation, duplicate detection."""

from __future__ import annotations

import pytest

from avapdefs.format.package import open_package
from avapdefs.v1.definitions_pb2 import Command
from exporter.build import CommandEncoder, encoder_canary, iter_sealed
from exporter.errors import BadDataError
from exporter.source import SourceRow
from tests.exporter.helpers import reference_sealed

CODE = "def f(self, x):\n    return x\n"


def source_row(row_id: int, name: str | None, **fields: object) -> SourceRow:
    values: dict[str, object] = {
        "id": row_id,
        "name": name,
        "type": "function",
        "interface": '[{"item":"x","type":"value"}]',
        "code": CODE,
        "description": "d",
        "logic": None,
        "componenttype": None,
        "service": None,
        "command": None,
        "bytecode": None,
        "bytecode_version": None,
        "bytecode_source_hash": None,
    }
    values.update(fields)
    # Texts arrive as their UTF-8 bytes, as from the COPY stream.
    encoded = {key: value.encode() if isinstance(value, str) else value for key, value in values.items()}
    return SourceRow(**encoded)  # type: ignore[arg-type]


def build_command(row: SourceRow, *, signing_key: bytes | None = None) -> Command:
    """The Command the encoder writes for ``row``, parsed back."""
    command = Command.FromString(CommandEncoder(signing_key=signing_key).encode(row))
    assert len(command.content_hash) == 32
    command.ClearField("content_hash")
    return command


def test_build_command_maps_every_column_and_nulls_to_defaults() -> None:
    row = source_row(7, "addVar", logic=True, componenttype="variables", service="core", command="addVar",
                     bytecode=b"\x01\x02", bytecode_version=3, bytecode_source_hash="abc")  # fmt: skip
    command = build_command(row)
    assert command == Command(
        name="addVar", type="function", interface_json='[{"item":"x","type":"value"}]', code=CODE,
        description="d", logic=True, component_type="variables", service="core", command="addVar",
        source_id=7, bytecode=b"\x01\x02", bytecode_version=3, bytecode_source_hash="abc",
    )  # fmt: skip
    bare = build_command(source_row(1, "x", type=None, interface=None, code=None, description=None))
    assert (bare.type, bare.interface_json, bare.code, bare.logic, bare.bytecode) == ("", "", "", False, b"")


def test_signing_key_adds_a_package_that_verifies() -> None:
    command = build_command(source_row(1, "addVar"), signing_key=b"secret")
    assert open_package(command.signed_package, b"secret") == command.code


def test_blank_interface_exports_as_empty_text() -> None:
    assert build_command(source_row(1, "x", interface="  ")).interface_json == ""


def _problems(rows: list[SourceRow]) -> list[str]:
    with pytest.raises(BadDataError) as caught:
        list(iter_sealed(rows))
    return [str(problem) for problem in caught.value.problems]


@pytest.mark.parametrize(
    ("name", "interface", "expected"),
    [
        (None, "[]", "row id=5, column name: is NULL"),
        ("", "[]", "row id=5, column name: is empty"),
        ("   ", "[]", "row id=5, column name: is empty"),
        ("x", "[{item: 1}]", "row id=5, column interface: not valid JSON"),
    ],
)
def test_a_bad_row_is_named_by_id_and_column(name: str | None, interface: str, expected: str) -> None:
    (problem,) = _problems([source_row(5, name, interface=interface)])
    assert problem.startswith(expected)


def test_duplicates_are_reported_with_every_id_and_nothing_is_yielded() -> None:
    rows = [source_row(1, "a"), source_row(4, "b"), source_row(9, "b"), source_row(12, "b"), source_row(2, "c")]
    yielded: list[str] = []
    with pytest.raises(BadDataError) as caught:
        for name, _ in iter_sealed(rows):
            yielded.append(name)
    assert [str(p) for p in caught.value.problems] == ["rows id=4, id=9, id=12, column name: duplicate name 'b'"]
    assert yielded == ["a"]  # only what came before the first problem; nothing is published anyway


def test_every_problem_is_collected_up_to_the_limit() -> None:
    rows = [source_row(i, None) for i in range(1, 31)]
    with pytest.raises(BadDataError) as caught:
        list(iter_sealed(rows, max_problems=5))
    assert (len(caught.value.problems), caught.value.total) == (5, 30)
    assert "and 25 more" in str(caught.value)


def test_valid_rows_yield_sealed_commands_in_order() -> None:
    rows = [source_row(3, "a"), source_row(1, "b"), source_row(2, "ñ")]
    sealed = list(iter_sealed(rows))
    assert [name for name, _ in sealed] == ["a", "b", "ñ"]
    parsed = Command.FromString(sealed[1][1])
    assert parsed.source_id == 1 and len(parsed.content_hash) == 32


@pytest.mark.parametrize("signing_key", [None, b"k3y"])
@pytest.mark.parametrize(
    "row",
    [
        source_row(7, "addVar", logic=True, componenttype="variables", service="core", command="addVar",
                   bytecode=b"\x01\x02", bytecode_version=3, bytecode_source_hash="abc"),
        source_row(1, "x", type=None, interface=None, code=None, description=None),
        source_row(-5, "negative", bytecode_version=-1, logic=False, interface="  [1, 2]\n"),
        source_row(2**40, "ñandú🙂", code="é" * 70_000, description="", bytecode=b"AVAP\x00\x01stored"),
        source_row(0, "zero", interface=" ", code="", componenttype="", service="s" * 200),
    ],
)  # fmt: skip
def test_encoder_writes_the_bytes_protobuf_writes(row: SourceRow, signing_key: bytes | None) -> None:
    assert CommandEncoder(signing_key=signing_key).encode(row) == reference_sealed(row, signing_key=signing_key)


def test_the_canary_depends_on_the_key() -> None:
    assert encoder_canary(None) == encoder_canary(None)
    assert len({encoder_canary(None), encoder_canary(b"a"), encoder_canary(b"b")}) == 3


def test_a_text_that_is_not_utf8_is_a_bad_row() -> None:
    row = source_row(5, "x")._replace(description=b"caf\xe9")
    with pytest.raises(BadDataError, match="row id=5, column description: not valid UTF-8"):
        list(iter_sealed([row]))
    assert len(list(iter_sealed([row], check_utf8=False))) == 1  # what a UTF8 database guarantees
