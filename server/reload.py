"""Hot reload: watch the snapshot folder and swap in what it now calls for.

One thread runs ``watchfiles.watch`` on the folder. Any change to a snapshot
file, a delta file or the pin file makes the store refresh: the new snapshot
is read, verified and indexed beside the live one, then swapped in by one
reference assignment (``store.SnapshotStore.refresh``), so no call fails and
a stream that began on the old version finishes on it. Temporary files of a
running export (``.tmp-*``) are ignored: their rename into place is the event.

Docker bind mounts and some network file systems deliver no file events:
``--poll`` (or ``WATCHFILES_FORCE_POLLING``) makes watchfiles poll instead.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from avapdefs.folder import is_followed
from server.store import SnapshotStore

if TYPE_CHECKING:
    import watchfiles

logger = logging.getLogger(__name__)

DEBOUNCE_MS = 50  # several files of one export (snapshot, then deltas) arrive within this
_STOP_CHECK_MS = 200


def _relevant(change: watchfiles.Change, path: str) -> bool:
    return is_followed(Path(path).name)


class Reloader:
    """Keeps ``store`` current with its folder from a background thread.

    Args:
        store: the store to refresh.
        poll: poll the folder instead of waiting for file events.
    """

    def __init__(self, store: SnapshotStore, *, poll: bool = False) -> None:
        self._store = store
        self._poll = poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="avap-reload", daemon=True)
        self.ready = threading.Event()  # set once the watch is in place

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop watching and wait for the thread to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        # Imported here, on the watching thread, not on the way to the first answer (about 5 ms, with anyio):
        # a snapshot published meanwhile is caught up on once the watch is in place.
        import watchfiles

        folder = self._store.folder
        logger.info("watching %s for new snapshots%s", folder, " (polling)" if self._poll else "")
        try:
            changes = watchfiles.watch(
                folder,
                watch_filter=_relevant,
                debounce=DEBOUNCE_MS,
                step=50,
                stop_event=self._stop,
                force_polling=self._poll or None,
                yield_on_timeout=True,
                rust_timeout=_STOP_CHECK_MS,
                raise_interrupt=False,
            )
            for batch in changes:
                if not self.ready.is_set():
                    # The watch is in place: catch up on anything published before it was.
                    self.ready.set()
                    logger.debug("watch in place on %s", folder)
                    self._refresh()
                elif batch:
                    self._refresh()
        except Exception:
            logger.exception("watching %s failed; new snapshots will not be picked up until a restart", folder)

    def _refresh(self) -> None:
        try:
            self._store.refresh()
        except Exception:  # a reload must never take the server down
            logger.exception("reloading from %s failed; the live version keeps serving", self._store.folder)
