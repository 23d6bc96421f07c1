"""The exporter's settings: one frozen dataclass, built by ``cli.py`` from flags and AVAP_* variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from exporter.errors import ConfigError

DEFAULT_TABLE = "obex_dapl_functions"
DEFAULT_BYTECODE_TABLE = "avap_bytecode"
DEFAULT_FILE_MODE = 0o644  # readable by a server running as another user; written by the exporter alone


@dataclass(frozen=True)
class ExportConfig:
    """Everything one export run needs to know.

    Attributes:
        snapshots: the snapshot folder to publish into.
        dsn: libpq connection string; "" lets libpq use its PG* variables.
        table: the command-definitions table (``schema.table`` allowed).
        bytecode_table: the precompiled-packages table joined on the name; "" for none.
        keep: snapshots to keep after publishing (the newest is never deleted).
        max_drop_percent: refuse a catalog with this much fewer commands than the newest.
        allow_empty: publish an empty catalog instead of refusing it.
        force: publish despite the count-drop guard.
        level: zstd compression level of the snapshot's frame.
        connect_timeout_s: give up connecting after this long.
        statement_timeout_s: the longest the database may take over one statement (a lock wait
            included), or leave the export's transaction idle; past it the export fails (exit 3)
            and releases the folder's lock, instead of hanging on a frozen backend.
        keepalive_s: give the connection up after about this long without a sign of life from the
            database host's kernel (TCP keepalive probes, and TCP_USER_TIMEOUT for data sent). A
            frozen backend on a live host answers those probes: ``statement_timeout_s`` ends that.
        created_at_unix_ms: creation time recorded in the header; now when None
            (fix it to make a snapshot reproducible byte for byte).
        signing_key: HMAC key for the legacy signed code packages; none built when None.
        progress: draw a progress bar on stderr.
        fetch_rows: ignored since rows stream through COPY, one at a time; kept so that
            ``--fetch-rows`` and ``AVAP_EXPORT_FETCH_ROWS`` in existing cron lines still parse.
        max_problems: bad-row problems listed in one error.
        deltas: after publishing, write a delta from each of this many earlier versions; 0 for none.
        delta_max_percent: keep a delta only when smaller than this percentage of the new file.
        file_mode: the permissions of every file published into the folder (snapshots, deltas,
            ``.export-state``), set before the rename whatever the umask.
    """

    snapshots: Path = Path("snapshots")
    dsn: str = ""
    table: str = DEFAULT_TABLE
    bytecode_table: str = DEFAULT_BYTECODE_TABLE
    keep: int = 10
    max_drop_percent: float = 50.0
    allow_empty: bool = False
    force: bool = False
    level: int = 3
    connect_timeout_s: int = 10
    # The sort of 1,000,000 rows of 2 KB took 17 s here (bench/bench_export.py); 600 s leaves room.
    statement_timeout_s: int = 600
    keepalive_s: int = 60  # probes after 30 s of silence, 3 of them 10 s apart
    created_at_unix_ms: int | None = None
    signing_key: bytes | None = field(default=None, repr=False)  # never in logs
    progress: bool = False
    fetch_rows: int = 2000
    max_problems: int = 20
    deltas: int = 3
    delta_max_percent: float = 50.0  # a delta nearer the full file's size saves a syncing client too little
    file_mode: int = DEFAULT_FILE_MODE

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise ConfigError(f"keep must be at least 1 (the newest snapshot is never deleted), not {self.keep}")
        if not 0 <= self.max_drop_percent <= 100:
            raise ConfigError(f"max drop percent must be between 0 and 100, not {self.max_drop_percent}")
        if not 1 <= self.level <= zstandard.MAX_COMPRESSION_LEVEL:
            raise ConfigError(f"zstd level must be between 1 and {zstandard.MAX_COMPRESSION_LEVEL}, not {self.level}")
        self._check_connection()
        if not 0 <= self.file_mode <= 0o777 or not self.file_mode & 0o400:
            raise ConfigError(f"file mode must be 0400 to 0777 and readable by its owner, not {self.file_mode:04o}")
        if not self.table:
            raise ConfigError("the table name is empty")
        if self.created_at_unix_ms is not None and self.created_at_unix_ms < 0:
            raise ConfigError(f"created-at must not be negative, not {self.created_at_unix_ms}")
        if self.signing_key is not None and not self.signing_key:
            raise ConfigError("the signing key is empty")
        self._check_deltas()

    def _check_connection(self) -> None:
        for what, seconds in (("connect", self.connect_timeout_s), ("statement", self.statement_timeout_s)):
            if seconds < 1:
                raise ConfigError(f"{what} timeout must be at least 1 second, not {seconds}")
        if self.keepalive_s < 2:
            raise ConfigError(f"keepalive must be at least 2 seconds, not {self.keepalive_s}")

    def _check_deltas(self) -> None:
        if self.deltas < 0:
            raise ConfigError(f"deltas must be 0 (none) or more, not {self.deltas}")
        if not 0 < self.delta_max_percent <= 100:
            raise ConfigError(f"delta max percent must be above 0 and at most 100, not {self.delta_max_percent}")

    @property
    def source(self) -> str:
        """The source string recorded in every snapshot header."""
        return f"postgresql:{self.table}"
