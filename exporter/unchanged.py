"""Telling, cheaply and soundly, that the tables still export to the newest snapshot (the cron case).

A run that finds the table unchanged used to build and hash the whole
catalog (33 s at 1,000,000 rows of 2 KB). Instead, each run that publishes
(or finds "unchanged" the long way) records in the snapshot folder's
``.export-state`` the **source digest** of what it read, beside the content
hash it made of it. The next run reads the rows as raw bytes, hashes them,
and calls the table unchanged when the digest is the recorded one and the
newest snapshot has the recorded content hash and still verifies (both run
at once: the database streams while a thread verifies the file).

Why equal digests prove an equal snapshot: the digest is the sha256 of

- ``DIGEST_FORMAT`` (bumped whenever the rules that turn rows into commands change),
- the query, which names the tables, the columns, the casts and the order,
- the sealed commands of fixed canary rows, encoded by this exporter under this
  run's signing key (``build.encoder_canary``): another key, or an encoder that
  writes other bytes, gives another digest,
- the rows' binary COPY stream (``Source.digest``), whose every value is
  length-prefixed, NULL distinct from empty, in a fixed binary form.

The snapshot's payload is a pure function of those inputs, so the same digest
means the same payload: the content hash recorded with it. A sha256 collision
is the only way to miss a change. Nothing depends on transaction ids, table
statistics or timestamps, which a restore, a ``VACUUM FULL`` or a clock can
reset; the price is that the rows are still read, once, in the database's
parallel sort (about 7 s at 1,000,000 rows), but never parsed or encoded.

The state also records, for its version, the bases whose delta was declined
(``exporter/deltas.py``), so that no run tries them again. That field is
not part of the digest, so adding it left ``DIGEST_FORMAT`` as it was; a
state written before it reads as "none declined".

Statistics do serve the other way round. The tables' write counters are
recorded too, and when they have moved the check is skipped: it could only
find the change after reading every row, and the export would then read them
all again. Counters that have not moved prove nothing, and decide nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from avapdefs.errors import SnapshotError
from avapdefs.folder import Newest, snapshot_name
from avapdefs.format.reader import verify_file
from exporter.build import encoder_canary
from exporter.config import DEFAULT_FILE_MODE
from exporter.files import published_file
from exporter.source import Source

logger = logging.getLogger(__name__)

STATE_NAME = ".export-state"  # in the snapshot folder; no reader or server looks at it
DIGEST_FORMAT = b"avap-export source digest 1\n"


@dataclass(frozen=True)
class ExportState:
    """What the last recording run read, and what it made of it.

    Attributes:
        version: the snapshot version the digest's rows export to.
        content_hash: that snapshot's content hash.
        source_digest: the digest of the rows (``source_digest``).
        write_counters: the tables' write counters when they were read (``Source.write_counters``).
        declined_deltas: the base versions that get no delta to ``version`` (``deltas.DeltaOutcome``).
    """

    version: int
    content_hash: bytes
    source_digest: bytes
    write_counters: tuple[int, ...] = ()
    declined_deltas: tuple[int, ...] = ()


def source_digest(source: Source, stream_digest: bytes, signing_key: bytes | None) -> bytes:
    """The digest of everything a snapshot's payload depends on (see the module docstring)."""
    digest = hashlib.sha256(DIGEST_FORMAT)
    for part in (source.query.encode("utf-8"), encoder_canary(signing_key), stream_digest):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def read_state(folder: Path) -> ExportState | None:
    """The folder's recorded state, or None when there is none or it does not read (never an error)."""
    try:
        fields = json.loads((folder / STATE_NAME).read_text(encoding="utf-8"))
        return ExportState(
            int(fields["version"]),
            bytes.fromhex(fields["content_hash"]),
            bytes.fromhex(fields["source_digest"]),
            tuple(int(value) for value in fields["write_counters"]),
            tuple(int(value) for value in fields.get("declined_deltas", ())),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring %s: %s", STATE_NAME, exc)
        return None


def write_state(folder: Path, state: ExportState, *, mode: int = DEFAULT_FILE_MODE) -> None:
    """Record ``state`` atomically; a failure is logged, not raised (the next run only takes the long way)."""
    text = json.dumps(
        {
            "version": state.version,
            "content_hash": state.content_hash.hex(),
            "source_digest": state.source_digest.hex(),
            "write_counters": list(state.write_counters),
            "declined_deltas": list(state.declined_deltas),
        }
    )
    try:
        with published_file(folder / STATE_NAME, mode) as file:
            file.write(text.encode("utf-8") + b"\n")
    except OSError as exc:
        logger.warning("cannot record %s: %s", STATE_NAME, exc.strerror or exc)


def worth_checking(state: ExportState | None, newest: Newest, write_counters: tuple[int, ...]) -> bool:
    """Whether ``is_unchanged`` may answer yes: ``state`` is about the newest snapshot (as its header reads;
    the file is verified there) and the tables' write counters have not moved since.

    Moved counters skip the check, which would only find the change after reading every row,
    and the run exports at once. Unmoved counters prove nothing (see ``Source.write_counters``):
    only ``is_unchanged`` can say "unchanged".
    """
    info = newest.info
    if state is None or info is None or not info.version == newest.version == state.version:
        return False
    if info.content_hash != state.content_hash:
        return False
    if write_counters != state.write_counters:
        logger.info("the tables were written since version %s; exporting", state.version)
        return False
    return True


def is_unchanged(source: Source, folder: Path, state: ExportState, signing_key: bytes | None) -> bool:
    """Whether the rows have ``state``'s digest and its snapshot, the newest, still verifies whole.

    Reads the rows (unparsed) while a thread verifies the file: the database's sort and
    stream and the file's decompression and hashing overlap.

    Raises:
        SourceError: the database fails during the read.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-newest") as pool:
        intact = pool.submit(_verify, folder / snapshot_name(state.version))
        same = source_digest(source, source.drain(), signing_key) == state.source_digest
        if not same:
            logger.info("the rows changed since version %s", state.version)
            return False
        if not intact.result():
            return False
    logger.info("the rows have version %s's digest and its file verifies: unchanged", state.version)
    return True


def _verify(path: Path) -> bool:
    # A newest file that is damaged is never taken for "unchanged": the table is published anew.
    try:
        verify_file(path)
    except SnapshotError as exc:
        logger.warning("the newest snapshot does not verify (%s); publishing the table as a new version", exc)
        return False
    return True
