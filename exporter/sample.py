"""The sample catalog: AVAP's own commands plus generated connector commands, and a loader into PostgreSQL.

Everything here is deterministic (no randomness, no clock), so the sample
always exports to the same snapshot bytes; ``snapshots/catalog-0000000001.avsnap``
is that snapshot, made with ``SAMPLE_CREATED_AT_MS``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import NamedTuple

import psycopg

from exporter.errors import GuardError, SourceError
from exporter.sample_commands import CORE_COMMANDS, CoreCommand

logger = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).with_name("schema.sql")  # package data, installed beside this module
SAMPLE_CREATED_AT_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: the committed sample snapshot's creation time

# (vendor, component type, entities): each entity gets one command per verb.
_CONNECTORS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("stripe", "payments", ("Customer", "Charge", "Refund", "Invoice", "Subscription")),
    ("twilio", "messaging", ("Sms", "Call", "Verification")),
    ("sendgrid", "email", ("Email", "Template", "Contact")),
    ("slack", "messaging", ("Message", "Channel", "User")),
    ("salesforce", "crm", ("Account", "Lead", "Opportunity", "Contact")),
    ("hubspot", "crm", ("Contact", "Deal", "Company")),
    ("shopify", "commerce", ("Order", "Product", "Customer", "Fulfillment")),
    ("zendesk", "support", ("Ticket", "User", "Comment")),
    ("jira", "projects", ("Issue", "Project", "Comment", "Sprint")),
    ("github", "devops", ("Issue", "PullRequest", "Release", "Repository")),
    ("googleSheets", "office", ("Spreadsheet", "Row", "Range")),
    ("s3", "storage", ("Object", "Bucket")),
    ("paypal", "payments", ("Order", "Payout", "Refund")),
    ("quickbooks", "accounting", ("Invoice", "Customer", "Bill", "Payment")),
    ("mailchimp", "email", ("Campaign", "Member", "List")),
    ("redis", "storage", ("Key", "Hash")),
)
# verb: (HTTP method, path suffix, extra interface items, what it does)
_VERBS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "get": ("GET", "/{id}", ("id",), "Reads one {entity} by id"),
    "list": ("GET", "", ("filters", "limit"), "Lists {entity} records matching the filters, at most limit of them"),
    "create": ("POST", "", ("fields",), "Creates a {entity} from a JSON object of fields"),
    "update": ("PATCH", "/{id}", ("id", "fields"), "Changes the given fields of one {entity}"),
    "delete": ("DELETE", "/{id}", ("id",), "Deletes one {entity}"),
}


class SampleDefinition(NamedTuple):
    """One row of ``obex_dapl_functions`` (columns in table order, ``id`` first)."""

    id: int
    name: str
    interface: str
    description: str
    type: str
    logic: bool
    componenttype: str
    service: str
    command: str
    code: str


def _interface(items: tuple[tuple[str, str], ...]) -> str:
    # The legacy format: a compact JSON list of {"item": ..., "type": ...}.
    return json.dumps([{"item": item, "type": kind} for item, kind in items], separators=(",", ":"))


def _core_definition(row_id: int, core: CoreCommand) -> SampleDefinition:
    kind = "control" if core.logic else "function"
    fields = (core.name, _interface(core.items), core.description, kind, core.logic, core.component)
    return SampleDefinition(row_id, *fields, service="core", command=core.name, code=core.code)


def _resource_path(entity: str) -> str:
    return "/" + re.sub(r"(?<!^)(?=[A-Z])", "_", entity).lower() + "s"


def _connector_code(vendor: str, verb: str, entity: str, items: tuple[str, ...]) -> str:
    method, suffix, _, _ = _VERBS[verb]
    params = ", ".join(("connectorId", *items, "targetVarName"))
    path = _resource_path(entity) + suffix.replace("{id}", "{self.resolve(id)}")
    lines = [
        f"def {vendor}_{verb}{entity}(self, {params}):",
        f"    client = self.connectors.client({vendor!r}, self.resolve(connectorId))",
    ]
    options = []
    if "filters" in items:
        lines.append("    query = dict(self.resolve(filters) or {}, limit=int(self.resolve(limit) or 100))")
        options.append("params=query")
    if "fields" in items:
        lines.append("    body = self.resolve(fields)")
        lines.append("    if not isinstance(body, dict):")
        lines.append(f"        raise AvapError('{vendor}.{verb}{entity}: fields must be a JSON object')")
        options.append("json=body")
    call = ", ".join([repr(method), f"f{path!r}", *options])
    lines.append(f"    response = client.request({call})")
    lines.append("    response.raise_for_status()")
    result = "None" if verb == "delete" else "response.json()"
    lines.append(f"    self.variables[targetVarName] = {result}")
    return "\n".join(lines) + "\n"


def _connector_definitions(first_id: int) -> list[SampleDefinition]:
    found: list[SampleDefinition] = []
    for vendor, component, entities in _CONNECTORS:
        for entity in entities:
            for verb, (_, _, extra, what) in _VERBS.items():
                name = f"{vendor}.{verb}{entity}"
                items = (("connectorId", "value"), *((item, "value") for item in extra), ("targetVarName", "variable"))
                description = what.format(entity=entity) + f" through the {vendor} connector."
                code = _connector_code(vendor, verb, entity, extra)
                fields = (name, _interface(items), description, "connector", False, component, vendor)
                found.append(SampleDefinition(first_id + len(found), *fields, command=f"{verb}{entity}", code=code))
    return found


def sample_definitions() -> list[SampleDefinition]:
    """Every sample row: AVAP's own commands first, then the connector commands, ids from 1."""
    core = [_core_definition(index + 1, command) for index, command in enumerate(CORE_COMMANDS)]
    return core + _connector_definitions(len(core) + 1)


def sample_bytecode() -> list[tuple[str, bytes, int, str]]:
    """Rows of ``avap_bytecode`` (command_name, bytecode, version, source_hash) for AVAP's own commands."""
    rows = []
    for command in CORE_COMMANDS:
        source = command.code.encode("utf-8")
        # A stand-in for the real compiled form, deterministic on every Python version.
        rows.append((command.name, b"AVBC\x01" + hashlib.sha256(source).digest() + source, 1, _sha256_hex(source)))
    return rows


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def create_schema(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Create the two legacy tables (``schema.sql``) unless they exist."""
    schema = SCHEMA_PATH.read_text(encoding="utf-8")
    conn.execute(schema.encode("utf-8"))  # bytes: a trusted, packaged script, not a literal query


def load_sample(conn: psycopg.Connection[tuple[object, ...]], *, replace: bool = False, if_empty: bool = False) -> int:
    """Create the schema if needed and load the sample catalog, in one transaction.

    Args:
        conn: an open connection.
        replace: empty both tables first.
        if_empty: load nothing (and succeed) when the definitions table has rows.

    Returns:
        The definitions loaded (0 when skipped by ``if_empty``).

    Raises:
        GuardError: the table has rows and neither ``replace`` nor ``if_empty`` was given.
        SourceError: the database fails.
    """
    try:
        return _load(conn, replace=replace, if_empty=if_empty)
    except psycopg.Error as exc:
        raise SourceError(f"loading the sample failed: {str(exc).strip().splitlines()[0]}") from exc


def _load(conn: psycopg.Connection[tuple[object, ...]], *, replace: bool, if_empty: bool) -> int:
    with conn.transaction():
        create_schema(conn)
        row = conn.execute("SELECT count(*) FROM obex_dapl_functions").fetchone()
        existing = int(row[0]) if row else 0  # type: ignore[call-overload]
        if existing and not replace:
            if if_empty:
                logger.info("obex_dapl_functions already holds %s rows; sample not loaded", existing)
                return 0
            raise GuardError(f"obex_dapl_functions already holds {existing} rows (use --replace or --if-empty)")
        if replace:
            conn.execute("TRUNCATE obex_dapl_functions, avap_bytecode RESTART IDENTITY")
        definitions = sample_definitions()
        _copy_rows(conn, definitions)
    return len(definitions)


def _copy_rows(conn: psycopg.Connection[tuple[object, ...]], definitions: list[SampleDefinition]) -> None:
    columns = ", ".join(SampleDefinition._fields)
    with conn.cursor() as cursor:
        with cursor.copy(f"COPY obex_dapl_functions ({columns}) FROM STDIN".encode()) as copy:
            for definition in definitions:
                copy.write_row(definition)
        with cursor.copy("COPY avap_bytecode (command_name, bytecode, version, source_hash) FROM STDIN") as copy:
            for bytecode_row in sample_bytecode():
                copy.write_row(bytecode_row)
        # Ids were given explicitly (so they are the same on every load): move the sequence past them.
        cursor.execute("SELECT setval(pg_get_serial_sequence('obex_dapl_functions', 'id'), %s)", [len(definitions)])
