"""An in-process replica of the catalog, for language servers: lookups from RAM, kept current in the background.

A ``Replica`` boots from the local cache folder ``avap-sync`` keeps (so it
answers with the server down), then a daemon thread runs ``follow``: it syncs
the cache (a delta when the server has one), watches WatchCatalog, syncs again
each time a new version goes live, and reconnects with jittered backoff. After
each sync that brings another version, the thread builds a ``CatalogView`` of
it and swaps it in with one reference assignment. What a view answers never
changes once built, so a lookup, or a series of lookups on one ``view``, sees
exactly one version; readers take no lock.

Why commands are kept as bytes and parsed on their first lookup: the designs
measured on the 5,000-command bench catalog (10.2 MB uncompressed; Python
3.11, protobuf 7.36 upb; 1,000,000 lookups of random names, one thread of a
shared 2-core machine, its load average 6-8 at the time, so the rates are a
third of a quiet machine's):

    design                                        get() per s   memory / payload
    dict name -> Command, one Catalog parse           3.2 M      1.27x
    dict name -> bytes, parsed once on first get      2.4 M      1.03x; 1.18x all looked up,
      into one arena per version (this)                          1.46x with an arena per command
    dict name -> bytes, parsed on each get            0.7 M      1.03x (quiet machine)

The issue's goal is a whole Replica within 1.5x of the payload, and the gRPC
channel alone costs about 4.5 MB whatever the catalog's size (grpc's core
starting in the process, and the connection): 0.43x at this size. Only the
bytes view leaves room for it. A command is parsed once, into its version's
shared arena (a ``Catalog`` whose elements the parsed commands are), so even
with every command looked up the view holds less than the parsed dict did; a
reader thread does that write, under the GIL, and lookups still take no lock.
The whole Catalog is parsed once when the view is built and dropped, so a
version whose commands do not parse is refused at the swap, never at a
lookup. ``bench/bench_replica.py`` (5 rounds, load average about 10): a view
holds 1.08x the payload (1.29x before), 1.28x once every command was looked
up, a whole Replica 1.50x (1.64x before); ``Replica.get`` 2.0 M lookups/s
(1.5-4.0 M; 3.0 M before, in the same conditions) against about 900 for
``DefinitionClient.get_command`` over gRPC. While a new version is built,
the old view, the new file's payload and the new view coexist for a moment.

A returned ``Command`` is shared by every caller of that version: read it,
never modify it (``Command().CopyFrom(command)`` gives a private copy).

Thread safety: ``get``, ``names``, ``info`` and ``view`` may be called from
any thread, lock-free; ``close`` from any one thread.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from avapdefs.client.cache import SyncResult
from avapdefs.client.follow import backoff_s, follow
from avapdefs.client.rpc import DefinitionClient
from avapdefs.errors import CorruptSnapshotError, SnapshotError
from avapdefs.folder import read_newest, read_verified
from avapdefs.format.snapshot import Snapshot
from avapdefs.format.wire import iter_entries
from avapdefs.tls import ClientTls
from avapdefs.v1.definitions_pb2 import Catalog, Command

logger = logging.getLogger(__name__)

_CLOSE_GRACE_S = 0.5  # how long close() lets the thread leave by itself before it closes the channel under it


@dataclass(frozen=True)
class ReplicaInfo:
    """Which catalog a replica holds: version 0, no hash and no command before its first catalog."""

    version: int
    content_hash: bytes
    command_count: int


class CatalogView:
    """One catalog version, indexed by name; what a lookup sees never changes once built.

    Each command is held as its serialized bytes until it is first looked up,
    then parsed once, into one arena shared by the version's commands, and
    kept parsed (a reader thread does that, under the GIL; two readers that
    race on one name may each parse it, and get equal commands).

    Attributes:
        info: its version, content hash and command count.
        names: every name, sorted.
    """

    __slots__ = ("_arena", "_entries", "info", "names")

    def __init__(self, info: ReplicaInfo, entries: dict[str, bytes | Command], names: tuple[str, ...]) -> None:
        self.info = info
        self.names = names
        # A plain dict: a MappingProxyType would cost every get() a second call.
        self._entries = entries
        self._arena = Catalog()  # the parsed commands are its elements, so they share its memory

    def get(self, name: str) -> Command | None:
        """The command ``name`` of this version, or None (shared: do not modify it)."""
        found = self._entries.get(name)
        if isinstance(found, bytes):
            return self.parse(name, found)
        return found

    def parse(self, name: str, serialized: bytes) -> Command:
        """Parse the command ``name`` from its bytes, keep it, and return it."""
        command = self._arena.commands.add()
        command.MergeFromString(serialized)  # checked when the view was built: it parses
        self._entries[name] = command
        return command

    def names_with_prefix(self, prefix: str = "") -> list[str]:
        """The sorted names that start with ``prefix`` (all of them for "")."""
        start = bisect.bisect_left(self.names, prefix)
        return list(itertools.takewhile(lambda name: name.startswith(prefix), self.names[start:]))


EMPTY_VIEW = CatalogView(ReplicaInfo(0, b"", 0), {}, ())


def build_view(snapshot: Snapshot) -> CatalogView:
    """Index a verified snapshot: each name to its command's bytes, parsed when first looked up.

    The whole Catalog is parsed once here and dropped, so a command that does
    not parse refuses the version now, not on a lookup later.

    Raises:
        CorruptSnapshotError: a command does not parse (the payload's framing verified, its contents not).
    """
    try:
        names = [command.name for command in snapshot.catalog().commands]
    except DecodeError as exc:
        raise CorruptSnapshotError(f"a command does not parse: {exc}") from exc
    entries: dict[str, bytes | Command] = dict(zip(names, map(bytes, iter_entries(snapshot.payload)), strict=True))
    info = ReplicaInfo(snapshot.info.version, snapshot.info.content_hash, len(entries))
    return CatalogView(info, entries, tuple(sorted(entries)))


class Replica:
    """The catalog, in this process, following a definition server.

    Booting reads the newest valid snapshot in ``cache_dir`` (none: an empty
    catalog until the first sync); then a daemon thread keeps it current. Use
    as a context manager, or call ``close``::

        with Replica("127.0.0.1:50051", Path("~/.cache/avap").expanduser()) as replica:
            command = replica.get("addVar")

    Args:
        server: ``HOST:PORT`` of the definition server.
        cache_dir: the local snapshot cache (as ``avap-sync --dest``); created when missing.
        api_key: the key the server wants in ``x-avap-auth`` (started with ``AVAP_API_KEY``); None for none.
        tls: speak TLS (``ClientTls.from_files``: the CA to trust; a certificate for mutual TLS); None: plaintext.
        on_change: called from the replica's thread with the new ``ReplicaInfo`` after each swap;
            an exception it raises is logged and ignored.
        timeout_s: the deadline of each call the sync makes to reach the server.

    Attributes:
        cache_dir: the local snapshot cache.
        synced: set once a sync with the server has finished (up to date or not) and its version is held.

    Raises:
        ValueError: ``server`` is not ``HOST:PORT``, or ``api_key`` is blank.
    """

    def __init__(
        self,
        server: str,
        cache_dir: Path,
        *,
        api_key: str | None = None,
        tls: ClientTls | None = None,
        on_change: Callable[[ReplicaInfo], None] | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        # First: it checks the arguments.
        client = DefinitionClient(server, api_key=api_key, tls=tls, timeout_s=timeout_s)
        self.cache_dir = cache_dir
        self._on_change = on_change
        self._changed = threading.Condition()
        self._view = _boot(cache_dir)
        self._stop = threading.Event()
        self.synced = threading.Event()
        self._client = client
        self._thread = threading.Thread(target=self._follow, name=f"avapdefs-replica {server}", daemon=True)
        self._thread.start()

    def get(self, name: str) -> Command | None:
        """The command ``name`` of the newest version held, or None when it has none of that name.

        None rather than KeyError: an editor looks up every word typed, and most are not commands.
        """
        view = self._view
        found = view._entries.get(name)  # CatalogView.get, inline: this is the hot path
        if isinstance(found, bytes):
            return view.parse(name, found)
        return found

    def names(self, prefix: str = "") -> list[str]:
        """The sorted names, of the newest version held, that start with ``prefix``."""
        return self._view.names_with_prefix(prefix)

    def info(self) -> ReplicaInfo:
        """The version, content hash and command count of the newest version held."""
        return self._view.info

    @property
    def view(self) -> CatalogView:
        """The newest version held, for several lookups that must all see the same version."""
        return self._view

    def wait_for_version(self, version: int, timeout_s: float | None = None) -> bool:
        """Wait until the replica holds ``version`` or a newer one.

        Returns:
            Whether it does; False when ``timeout_s`` passed first.
        """
        with self._changed:
            return self._changed.wait_for(lambda: self._view.info.version >= version, timeout_s)

    def close(self) -> None:
        """Stop following (an open watch is cancelled) and close the connection; lookups keep working."""
        self._stop.set()
        self._thread.join(_CLOSE_GRACE_S)
        self._client.close()  # cancels a sync still waiting for the server
        self._thread.join()

    def __enter__(self) -> Replica:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _follow(self) -> None:
        # follow() retries what it expects (server and file errors) by itself;
        # anything else is a bug, logged with its traceback, and followed again.
        for attempt in itertools.count():
            try:
                follow(self._client, self.cache_dir, self._stop, on_sync=self._on_sync)
            except Exception:
                if self._stop.is_set():
                    return  # the channel was closed under a call
                logger.exception("following %s failed unexpectedly", self._client.server)
            if self._stop.wait(backoff_s(attempt)):
                return

    def _on_sync(self, result: SyncResult) -> None:
        current = self._view.info
        if (result.info.version, result.info.content_hash) != (current.version, current.content_hash):
            snapshot = result.snapshot if result.snapshot is not None else read_verified(result.path).snapshot
            self._swap(build_view(snapshot))  # the sync verified it: not read back and verified again
        self.synced.set()

    def _swap(self, view: CatalogView) -> None:
        with self._changed:
            self._view = view  # the swap: one reference assignment
            self._changed.notify_all()
        logger.info("replica now at catalog version %s (%s commands)", view.info.version, view.info.command_count)
        if self._on_change is not None:
            try:
                self._on_change(view.info)
            except Exception:
                logger.exception("the on_change callback failed")


def _boot(cache_dir: Path) -> CatalogView:
    try:
        view = build_view(read_newest(cache_dir).snapshot)
    except SnapshotError as exc:
        logger.info("no cached catalog to boot from (%s); empty until the first sync", exc.reason)
        return EMPTY_VIEW
    logger.info("replica booted from %s at catalog version %s", cache_dir, view.info.version)
    return view
