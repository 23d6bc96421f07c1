"""Snapshots in object storage: publish a folder's newest version and announce it; pull the announced one into a folder.

One library, ``obstore``, speaks every store; a store is named by a URL
(``s3://bucket/prefix``, ``gs://…``, ``az://…``, ``file:///path``,
``memory:///``). Credentials and the endpoint come from the standard
variables that obstore reads itself (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``, …), or
from the ``config`` a tool's store options make (``avapdefs.cloud``), which
wins over them. Under the URL, a store holds:

    catalog-<N, 10 digits>.avsnap        a snapshot, byte for byte the exporter's file; never overwritten
    catalog-<N>.from-<B>.avdelta         a delta from version B to version N; never overwritten
    announcement.json                    which version is current (``Announcement``); written last

Publishing follows Netflix Hollow's announcer: every object first, each
with a conditional put (``If-None-Match: *``) so a version is never
overwritten, then the announcement, itself put conditionally on the one it
replaces (``If-Match``) so two publishers cannot both win. A reader
therefore never sees an announcement naming an object that is not complete.

A reader trusts nothing but the announcement's figures: an object must have
the announced size and sha256, the snapshot must verify and carry the
announced version and content hash, and only then is it installed, by
rename, into the local folder, where the ordinary reload path takes over.
Objects are installed under names computed from the announced version,
never under a key read from the store.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import obstore
import obstore.exceptions as store_errors
from obstore.store import from_url

from avapdefs import fileio
from avapdefs.errors import AvapDefsError, NoSnapshotError, SnapshotError
from avapdefs.folder import (
    MAX_VERSION,
    VerifiedFile,
    atomic_file,
    delta_name,
    list_deltas,
    list_snapshots,
    prune,
    read_newest,
    read_newest_header,
    remove_temp_files,
    snapshot_name,
    write_source_state,
)
from avapdefs.format.delta import apply_delta, decode_delta, target_info
from avapdefs.format.snapshot import SnapshotInfo, verify

logger = logging.getLogger(__name__)

ANNOUNCEMENT_KEY = "announcement.json"
ANNOUNCEMENT_FORMAT = 1
MAX_ANNOUNCEMENT_BYTES = 1 << 20  # a few hundred bytes in practice; anything larger is not ours
MAX_OBJECT_BYTES = 1 << 40  # a bound on any size read from an announcement
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# In a refusal obstore quotes: "... status code: 403 Forbidden: <?xml ...><Error><Code>SignatureDoesNotMatch</Code>".
_HTTP_STATUS = re.compile(r"status code: (\d{3}(?: [A-Za-z][A-Za-z ]*[A-Za-z])?)")
_ERROR_CODE = re.compile(r"<Code>([A-Za-z]{1,64})</Code>")
_OBJECT_KEY = re.compile(r"^catalog-(\d{10,})\.(?:avsnap|from-(\d{10,})\.avdelta)$")


class RemoteError(AvapDefsError):
    """The object store refused, lacks or holds something unusable.

    Attributes:
        url: the store's URL, without any credentials.
        reason: what is wrong, in words.
    """

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"{url}: {reason}")


class StoreUnavailableError(RemoteError):
    """The object store could not be reached, retries included."""


class StoreRefusedError(RemoteError):
    """The object store refused the request: the credentials are wrong, or lack a permission. Running
    again does not help until the credentials (or the store's policy) change."""


class NoAnnouncementError(RemoteError):
    """The store holds no announcement: nothing has been published there yet."""


class PublishConflictError(RemoteError):
    """The store holds another publisher's versions: an object of this version with other bytes, or an
    announced version as new as this one or newer. Publishing the same folder again does not help."""


class RefusedAnnouncementError(RemoteError):
    """The announcement was read, but an object it names is missing, differs from it or does not verify.

    Attributes:
        etag: the refused announcement's ETag (None when the store gave none), so that a follower
            can poll on it (a conditional GET) instead of downloading the same objects again.
    """

    def __init__(self, url: str, reason: str, etag: str | None) -> None:
        super().__init__(url, reason)
        self.etag = etag


# obstore's answers that mean something to the caller; they pass through ``Remote._call`` as they are.
_ANSWERS = (
    FileNotFoundError,
    store_errors.NotFoundError,
    store_errors.AlreadyExistsError,
    store_errors.PreconditionError,
    store_errors.NotModifiedError,
)


@dataclass(frozen=True)
class ObjectRef:
    """One immutable object named by an announcement: its key under the store's URL, size and sha256 (hex)."""

    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Announcement:
    """What a store announces as current: one version, its snapshot object and the deltas to it.

    Attributes:
        version: the catalog version.
        content_hash: the snapshot's content hash (hex), as in its header.
        command_count: how many commands the version holds.
        snapshot: the snapshot object.
        deltas: base version -> the delta object from that version to this one.
        published_at: when it was announced, ISO 8601 in UTC.
    """

    version: int
    content_hash: str
    command_count: int
    snapshot: ObjectRef
    deltas: Mapping[int, ObjectRef] = field(default_factory=dict)
    published_at: str = ""

    def to_bytes(self) -> bytes:
        """The announcement object's bytes (JSON, keys sorted)."""
        document = {
            "format": ANNOUNCEMENT_FORMAT,
            "version": self.version,
            "content_hash": self.content_hash,
            "command_count": self.command_count,
            "snapshot": _ref_json(self.snapshot),
            "deltas": [{"base_version": base, **_ref_json(ref)} for base, ref in sorted(self.deltas.items())],
            "published_at": self.published_at,
        }
        return json.dumps(document, sort_keys=True, indent=1).encode("utf-8") + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes, url: str = "") -> Announcement:
        """Parse and check an announcement object.

        Raises:
            RemoteError: not an announcement this code reads, or a field out of bounds.
        """
        try:
            document = json.loads(data)
            if not isinstance(document, dict) or document.get("format") != ANNOUNCEMENT_FORMAT:
                raise ValueError(f"not an announcement of format {ANNOUNCEMENT_FORMAT}")
            version = _bounded_int(document["version"], 1, MAX_VERSION, "version")
            snapshot = _ref(document["snapshot"], snapshot_name(version))
            deltas: dict[int, ObjectRef] = {}
            for entry in document["deltas"]:
                base = _bounded_int(entry["base_version"], 1, version - 1, "base_version")
                deltas[base] = _ref(entry, delta_name(base, version))
            content_hash = document["content_hash"]
            if not isinstance(content_hash, str) or not _SHA256_HEX.match(content_hash):
                raise ValueError("content_hash is not 64 hex digits")
            return cls(
                version=version,
                content_hash=content_hash,
                command_count=_bounded_int(document["command_count"], 0, MAX_OBJECT_BYTES, "command_count"),
                snapshot=snapshot,
                deltas=deltas,
                published_at=str(document.get("published_at", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            raise RemoteError(url, f"{ANNOUNCEMENT_KEY} is not a valid announcement: {exc}") from exc


def _ref_json(ref: ObjectRef) -> dict[str, object]:
    return {"key": ref.key, "size": ref.size, "sha256": ref.sha256}


def _ref(entry: Any, expected_key: str) -> ObjectRef:
    if not isinstance(entry, dict):
        raise ValueError("an object entry is not a JSON object")
    if entry.get("key") != expected_key:
        raise ValueError(f"object key {entry.get('key')!r} is not {expected_key!r}")
    sha256 = entry.get("sha256")
    if not isinstance(sha256, str) or not _SHA256_HEX.match(sha256):
        raise ValueError(f"{expected_key}: sha256 is not 64 hex digits")
    return ObjectRef(expected_key, _bounded_int(entry.get("size"), 1, MAX_OBJECT_BYTES, "size"), sha256)


def _bounded_int(value: object, low: int, high: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{what} {value!r} is not a whole number in {low}..{high}")
    return value


def display_url(url: str) -> str:
    """``url`` without a user name, password or query, fit for a log line."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True)
class PublishResult:
    """What ``Remote.publish`` did.

    Attributes:
        announcement: the announcement now in the store.
        uploaded: keys of the objects uploaded by this call (empty when the store had them all).
        announced: True when this call wrote the announcement (False when it already said the same).
        deleted: keys removed by retention.
    """

    announcement: Announcement
    uploaded: tuple[str, ...]
    announced: bool
    deleted: tuple[str, ...]


@dataclass(frozen=True)
class PullResult:
    """What ``Remote.pull`` did.

    Attributes:
        etag: the announcement's ETag, to pass to the next pull.
        announcement: the announcement read (None when it was not modified since ``etag``).
        installed: the snapshot file installed into the folder (None when the folder already had the version).
        delta: True when the version was rebuilt from a delta rather than downloaded whole.
        bytes_received: object bytes downloaded, the announcement excluded.
        seconds: wall time of the download and install.
    """

    etag: str | None
    announcement: Announcement | None
    installed: Path | None = None
    delta: bool = False
    bytes_received: int = 0
    seconds: float = 0.0


class Remote:
    """One object store holding one catalog's snapshots, named by URL.

    Args:
        url: ``s3://bucket/prefix``, ``gs://…``, ``az://…``, ``file:///path`` or ``memory:///``.
        allow_http: let an S3, GCS or Azure endpoint be plain HTTP (a local test store, say).
        config: obstore settings by the standard variables' names (``AWS_SECRET_ACCESS_KEY``); they win
            over the variables obstore reads itself (``avapdefs.cloud`` makes them).
        secrets: values never to quote in a message (the store's own answers included).
        timeout_s: the deadline of one request.
        connect_timeout_s: the deadline of one connection attempt.
        retries: how many times a failed request is retried.

    Raises:
        RemoteError: the URL names no store obstore knows, or its options are refused.
    """

    def __init__(
        self,
        url: str,
        *,
        allow_http: bool = False,
        config: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        retries: int = 3,
    ) -> None:
        self.url = display_url(url)
        self.secrets = tuple(secret for secret in secrets if secret)
        scheme = urllib.parse.urlsplit(url).scheme
        options: dict[str, Any] = {}
        if config:
            options["config"] = dict(config)
        if scheme in ("s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "http", "https"):
            options["client_options"] = {
                "allow_http": allow_http,
                "timeout": f"{max(int(timeout_s * 1000), 1)}ms",
                "connect_timeout": f"{max(int(connect_timeout_s * 1000), 1)}ms",
            }
            options["retry_config"] = {
                "max_retries": retries,
                "retry_timeout": datetime.timedelta(seconds=timeout_s),
            }
        elif scheme == "file":
            options["mkdir"] = True
        try:
            self.store = from_url(url, **options)
        except Exception as exc:  # obstore raises ValueError and its own errors for a bad URL or option
            raise RemoteError(self.url, f"not a store URL obstore can open: {self._quote(exc)}") from exc

    def _quote(self, exc: BaseException) -> str:
        """The first line of ``exc``'s message, without any of ``secrets``: fit for a message or a log."""
        text = _first_line(exc)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    # -- reading and writing objects; obstore's errors become ours here and only here

    def _call(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(self.store, *args, **kwargs)
        except _ANSWERS:
            raise
        except (store_errors.PermissionDeniedError, store_errors.UnauthenticatedError) as exc:
            raise StoreRefusedError(self.url, f"{what}: refused by the store ({self._refusal(exc)})") from exc
        except (store_errors.BaseError, OSError) as exc:
            raise StoreUnavailableError(self.url, f"{what}: {self._quote(exc)}") from exc

    def _refusal(self, exc: BaseException) -> str:
        """The store's status and error code (``403 Forbidden: SignatureDoesNotMatch``) when its answer
        has them, else the first line of ``exc``; never any of ``secrets``."""
        text = str(exc)
        status, code = _HTTP_STATUS.search(text), _ERROR_CODE.search(text)
        if status is None:
            return self._quote(exc)
        return status.group(1) + (f": {code.group(1)}" if code else "")

    def _get(self, key: str, max_bytes: int, *, if_none_match: str | None = None) -> tuple[bytes | None, str | None]:
        """The object's bytes (None, unread, when it is over ``max_bytes``) and its ETag, in one request."""
        options = {"if_none_match": if_none_match} if if_none_match else None
        result = self._call(f"reading {key}", obstore.get, key, options=options)
        data = bytes(result.bytes()) if result.meta["size"] <= max_bytes else None
        return data, result.meta.get("e_tag")

    def _get_object(self, ref: ObjectRef) -> bytes:
        try:
            data, _ = self._get(ref.key, ref.size)
        except (FileNotFoundError, store_errors.NotFoundError) as exc:
            raise RemoteError(self.url, f"{ref.key} is announced but not in the store") from exc
        if data is None or len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise RemoteError(self.url, f"{ref.key} differs from the announced size and sha256")
        return data

    def _put_immutable(self, key: str, data: bytes) -> tuple[ObjectRef, bool]:
        """Put ``data`` under ``key`` unless it is there; returns its reference and whether it was uploaded."""
        ref = ObjectRef(key, len(data), hashlib.sha256(data).hexdigest())
        try:
            self._call(f"uploading {key}", obstore.put, key, data, mode="create", use_multipart=False)
            return ref, True
        except store_errors.AlreadyExistsError:
            existing, _ = self._get(key, len(data))
            if existing is None or hashlib.sha256(existing).hexdigest() != ref.sha256:
                raise PublishConflictError(
                    self.url, f"{key} is already in the store with other content; a version is never overwritten"
                ) from None
            return ref, False

    # -- the announcement

    def read_announcement(self, etag: str | None = None) -> tuple[Announcement | None, str | None]:
        """The store's announcement and its ETag; (None, etag) when it has not changed since ``etag``.

        Raises:
            NoAnnouncementError: there is no announcement.
            RemoteError: the announcement is not valid.
            StoreUnavailableError: the store could not be reached.
        """
        try:
            data, new_etag = self._get(ANNOUNCEMENT_KEY, MAX_ANNOUNCEMENT_BYTES, if_none_match=etag)
        except store_errors.NotModifiedError:
            return None, etag
        except (FileNotFoundError, store_errors.NotFoundError) as exc:
            raise NoAnnouncementError(self.url, f"no {ANNOUNCEMENT_KEY}: nothing has been published here yet") from exc
        if data is None:
            raise RemoteError(
                self.url, f"{ANNOUNCEMENT_KEY} is over {MAX_ANNOUNCEMENT_BYTES} bytes: not an announcement"
            )
        return Announcement.from_bytes(data, self.url), new_etag

    def _current(self) -> tuple[Announcement | None, str | None]:
        try:
            return self.read_announcement()
        except NoAnnouncementError:
            return None, None

    # -- publishing

    def publish(self, folder: Path) -> PublishResult:
        """Upload ``folder``'s newest valid snapshot and the deltas to it, then announce it.

        Idempotent: objects already in the store (with the same bytes) are not
        uploaded again, so running it again after a failure completes the
        publication. Retention in the store follows the folder's: a snapshot
        or delta whose version is no longer in ``folder`` is deleted, unless
        the announcement names it.

        Raises:
            NoSnapshotError: ``folder`` holds no valid snapshot.
            PublishConflictError: an object of that name with other bytes is in the store, or the store
                announces a newer version than ``folder`` holds (or did so meanwhile).
            RemoteError: another publisher announced an older version meanwhile.
            StoreRefusedError: the store refused the credentials; nothing was announced.
            StoreUnavailableError: the store could not be reached; nothing was announced.
        """
        current, etag = self._current()
        if current is not None and _announces(current, folder):
            # The cron case: nothing new. One GET and one LIST, no upload, not even a read of the file.
            kept = {version for version, _ in list_snapshots(folder)} | {current.version}
            return PublishResult(current, (), False, tuple(self._retain(kept, current)))
        newest = read_newest(folder)
        info = newest.snapshot.info
        if current is not None and current.version > info.version:
            raise PublishConflictError(
                self.url,
                f"the store announces version {current.version}, newer than this folder's newest "
                f"({info.version}); refusing to announce an older one",
            )
        uploaded: list[str] = []
        snapshot_ref, sent = self._put_immutable(snapshot_name(info.version), newest.data)
        if sent:
            uploaded.append(snapshot_ref.key)
        deltas: dict[int, ObjectRef] = {}
        for base, target, path in list_deltas(folder):
            if target != info.version:
                continue
            data = _read_delta(path, info)
            if data is None:
                continue
            deltas[base], sent = self._put_immutable(path.name, data)
            if sent:
                uploaded.append(path.name)
        announcement = Announcement(
            version=info.version,
            content_hash=info.content_hash.hex(),
            command_count=info.command_count,
            snapshot=snapshot_ref,
            deltas=deltas,
            published_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        if current is not None and _same(current, announcement):
            announcement, announced = current, False  # the same objects: keep it, and its ETag, as it is
        else:
            self._announce(announcement, etag)
            announced = True
        deleted = self._retain({version for version, _ in list_snapshots(folder)} | {info.version}, announcement)
        return PublishResult(announcement, tuple(uploaded), announced, tuple(deleted))

    def _announce(self, announcement: Announcement, etag: str | None) -> None:
        """Write the announcement, on condition that it is still the one read (``etag``), or absent."""
        data = announcement.to_bytes()
        try:
            try:
                mode: Any = {"e_tag": etag} if etag else "create"
                self._call(f"writing {ANNOUNCEMENT_KEY}", obstore.put, ANNOUNCEMENT_KEY, data, mode=mode)
            except (NotImplementedError, store_errors.NotSupportedError):
                # A local file store has no conditional update; it replaces the object by rename,
                # and the exporter's folder lock already keeps a second publisher out.
                self._call(f"writing {ANNOUNCEMENT_KEY}", obstore.put, ANNOUNCEMENT_KEY, data)
        except (store_errors.PreconditionError, store_errors.AlreadyExistsError) as exc:
            # Whether running again helps depends on what the other publisher announced.
            latest, _ = self._current()
            if latest is not None and latest.version >= announcement.version:
                raise PublishConflictError(
                    self.url, f"another publisher announced version {latest.version} meanwhile; nothing announced"
                ) from exc
            raise RemoteError(
                self.url, f"another publisher changed {ANNOUNCEMENT_KEY} meanwhile; nothing announced, run again"
            ) from exc
        logger.info("announced catalog version %s in %s", announcement.version, self.url)

    def _retain(self, kept: set[int], announcement: Announcement) -> list[str]:
        named = {announcement.snapshot.key, *(ref.key for ref in announcement.deltas.values())}
        deleted = []
        listing = self._call("listing the store", lambda store: obstore.list(store).collect())
        for meta in listing:
            key = meta["path"]
            if "/" in key or key in named:
                continue
            match = _OBJECT_KEY.match(key)
            if match is None:
                continue
            versions = [int(group) for group in match.groups() if group is not None]
            if all(version in kept for version in versions):
                continue
            self._call(f"deleting {key}", obstore.delete, key)
            deleted.append(key)
            logger.info("deleted %s from %s (retention follows the local folder)", key, self.url)
        return deleted

    # -- pulling

    def pull(self, folder: Path, *, etag: str | None = None, accept_delta: bool = True, keep: int = 2) -> PullResult:
        """Bring ``folder`` up to the store's announced version.

        Nothing partial is ever left in ``folder``: the new snapshot is
        written under a temporary name and renamed into place only once it
        verifies against the announcement. A delta that fails for any reason
        falls back to the whole file.

        Args:
            folder: the local snapshot folder (created when missing).
            etag: the ETag of the announcement last read: a conditional GET, so an
                unchanged announcement costs one small request and no body.
            accept_delta: rebuild from a delta against the folder's newest version when one is announced.
            keep: how many versions the folder keeps, the new one included.

        Raises:
            RefusedAnnouncementError: an object the announcement names does not match it (the folder is unchanged).
            RemoteError: no announcement, or one that is not valid (the folder is unchanged).
            StoreRefusedError: the store refused the credentials (the folder is unchanged).
            StoreUnavailableError: the store could not be reached (the folder is unchanged).
            OSError: ``folder`` cannot be written.
        """
        started = time.perf_counter()
        announcement, new_etag = self.read_announcement(etag)
        if announcement is None:
            return PullResult(etag, None)
        try:
            return self._install(folder, announcement, new_etag, accept_delta=accept_delta, keep=keep, started=started)
        except (StoreUnavailableError, StoreRefusedError):
            raise
        except RemoteError as exc:
            raise RefusedAnnouncementError(self.url, exc.reason, new_etag) from exc

    def _install(
        self,
        folder: Path,
        announcement: Announcement,
        etag: str | None,
        *,
        accept_delta: bool,
        keep: int,
        started: float,
    ) -> PullResult:
        """Install the announced version into ``folder`` (a delta when it can), unless the folder has it."""
        folder.mkdir(parents=True, exist_ok=True)
        for stale in remove_temp_files(folder, dead_writers_only=True):
            logger.info("removed %s, left by a pull that was killed", stale.name)
        local = _newest_local(folder)
        if local is not None and local.snapshot.info.version >= announcement.version:
            return PullResult(etag, announcement)
        path = folder / snapshot_name(announcement.version)
        if accept_delta and local is not None and local.snapshot.info.version in announcement.deltas:
            ref = announcement.deltas[local.snapshot.info.version]
            try:
                self._install_delta(ref, local, path, announcement)
            except (AvapDefsError, OSError) as exc:
                if isinstance(exc, StoreUnavailableError | StoreRefusedError):
                    raise
                logger.warning("delta %s failed (%s); fetching the whole file", ref.key, exc)
            else:
                prune(folder, keep, current=announcement.version)
                seconds = time.perf_counter() - started
                return PullResult(etag, announcement, path, True, ref.size, seconds)
        data = self._get_object(announcement.snapshot)
        try:
            info = verify(data, path=path).info
        except SnapshotError as exc:
            raise RemoteError(self.url, f"{announcement.snapshot.key} does not verify: {exc.reason}") from exc
        _check_announced(info, announcement, self.url)
        with atomic_file(path) as file:
            file.write(data)
        logger.info("installed catalog version %s at %s from %s", info.version, path, self.url)
        prune(folder, keep, current=announcement.version)
        return PullResult(etag, announcement, path, False, len(data), time.perf_counter() - started)

    def _install_delta(self, ref: ObjectRef, local: VerifiedFile, path: Path, announcement: Announcement) -> None:
        delta = decode_delta(self._get_object(ref))
        _check_announced(target_info(delta), announcement, self.url)
        with atomic_file(path) as file:
            apply_delta(local.snapshot, delta, file)  # checks the result's content hash
        logger.info(
            "installed catalog version %s at %s from a delta against version %s",
            announcement.version,
            path,
            local.snapshot.info.version,
        )


def _read_delta(path: Path, info: SnapshotInfo) -> bytes | None:
    """A local delta file's bytes when it decodes and leads to ``info``; None (with a warning) otherwise."""
    try:
        data = fileio.read_bytes(path, "delta")
        target = target_info(decode_delta(data))
    except SnapshotError as exc:
        logger.warning("not publishing %s: %s", path.name, exc.reason)
        return None
    if target.content_hash != info.content_hash:
        logger.warning("not publishing %s: it does not lead to version %s's content", path.name, info.version)
        return None
    return data


def _announces(announcement: Announcement, folder: Path) -> bool:
    """Whether ``announcement`` already names ``folder``'s newest version, by its header, and every delta to it."""
    newest = read_newest_header(folder)
    info = newest.info
    if info is None or info.version != newest.version or info.version != announcement.version:
        return False
    if info.content_hash.hex() != announcement.content_hash or info.file_size != announcement.snapshot.size:
        return False
    bases = {base for base, target, _ in list_deltas(folder) if target == info.version}
    return bases <= set(announcement.deltas)


def _newest_local(folder: Path) -> VerifiedFile | None:
    try:
        return read_newest(folder)
    except NoSnapshotError:
        return None


def _check_announced(info: SnapshotInfo, announcement: Announcement, url: str) -> None:
    if info.version != announcement.version or info.content_hash.hex() != announcement.content_hash:
        raise RemoteError(
            url, f"the object holds version {info.version}, not the announced version {announcement.version}"
        )


def _same(old: Announcement, new: Announcement) -> bool:
    return (old.version, old.content_hash, old.snapshot, dict(old.deltas)) == (
        new.version,
        new.content_hash,
        new.snapshot,
        dict(new.deltas),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@dataclass
class FollowState:
    """How a ``Follower`` is doing, for logs, health and metrics.

    Attributes:
        reachable: the last poll reached the store (None before the first poll).
        version: the announced version last seen (0 before any).
        last_success_unix: wall-clock time of the last poll that reached the store (0.0 before any).
        last_error: what the last failed poll said ("" after a success).
    """

    reachable: bool | None = None
    version: int = 0
    last_success_unix: float = 0.0
    last_error: str = ""


class Follower:
    """Keeps a local folder at a store's announced version, polling its announcement.

    Each poll is one conditional GET (nothing is downloaded while the
    announcement is unchanged). While the store is unreachable the folder
    keeps what it has, and that is said once, when it starts and when it ends,
    not at every poll. An announcement whose objects are refused is said once
    too, and not downloaded again for ``REFUSED_RETRY_S``: until then each poll
    is a conditional GET on its ETag, so a new announcement is still taken at
    the next poll.

    Args:
        remote: the store.
        folder: the local snapshot folder.
        poll_s: the time between polls, on average.
        jitter: each wait is ``poll_s`` times a random factor in 1 ± ``jitter``, so a fleet spreads out.
        keep: how many versions the folder keeps.
        record: keep ``state`` in the folder's ``.source-state`` too (on each change, and at
            least every ``RECORD_EVERY_S`` while it reaches the store), for the serving processes
            to report in GetCatalogInfo.
    """

    RECORD_EVERY_S = 30.0
    REFUSED_RETRY_S = 60.0  # how long an announcement whose objects were refused is not downloaded again

    def __init__(
        self,
        remote: Remote,
        folder: Path,
        *,
        poll_s: float = 5.0,
        jitter: float = 0.2,
        keep: int = 2,
        record: bool = False,
    ):
        self.remote = remote
        self.folder = folder
        self.poll_s = poll_s
        self.jitter = jitter
        self.keep = keep
        self.state = FollowState()
        self.record = record
        self._recorded: tuple[object, ...] | None = None
        self._recorded_at = 0.0
        self._etag: str | None = None
        self._refused_etag: str | None = None  # the ETag of an announcement whose objects were refused
        self._refused_until = 0.0  # monotonic time until which it is not downloaded again
        self._random = random.Random()

    def poll(self) -> PullResult | None:
        """Pull once; None when the poll failed (the reason is in ``state.last_error`` and the log)."""
        try:
            result = self._pull()
        finally:
            if self.record:
                self._write_record()
        return result

    def _write_record(self) -> None:
        state = self.state
        key = (state.reachable, state.version, state.last_error)
        if key == self._recorded and time.monotonic() - self._recorded_at < self.RECORD_EVERY_S:
            return
        record = {
            "url": self.remote.url,
            "reachable": bool(state.reachable),
            "last_success_unix_ms": int(state.last_success_unix * 1000),
            "last_error": state.last_error,
            "announced_version": state.version,
        }
        try:
            write_source_state(self.folder, record)
        except OSError as exc:
            logger.warning("cannot record the store's state in %s: %s", self.folder, exc.strerror or exc)
            return
        self._recorded, self._recorded_at = key, time.monotonic()

    def _pull(self) -> PullResult | None:
        # An announcement whose objects were refused is polled on its ETag, not downloaded again at each
        # poll (a fleet would fetch a whole bad file every few seconds); a new announcement is still seen
        # at the next poll, and the refused one is tried again after REFUSED_RETRY_S.
        refused = self._refused_etag if time.monotonic() < self._refused_until else None
        try:
            result = self.remote.pull(self.folder, etag=refused or self._etag, keep=self.keep)
        except RefusedAnnouncementError as exc:
            self._refused_etag, self._refused_until = exc.etag, time.monotonic() + self.REFUSED_RETRY_S
            self._failed(exc)
            return None
        except (RemoteError, SnapshotError, OSError) as exc:
            self._failed(exc)
            return None
        if self.state.reachable is False:
            logger.info("reached %s again", self.remote.url)
        self.state.reachable, self.state.last_success_unix = True, time.time()
        if refused is not None and result.announcement is None:
            return result  # the refused announcement, unchanged: the refusal stands in last_error
        self._etag, self._refused_etag = result.etag, None
        self.state.last_error = ""
        if result.announcement is not None:
            self.state.version = result.announcement.version
        return result

    def _failed(self, exc: Exception) -> None:
        reason = str(exc)
        if isinstance(exc, StoreUnavailableError):
            if self.state.reachable is not False:
                logger.warning(
                    "cannot reach the store (%s); the folder keeps what it has; retrying every %.0f s",
                    reason,
                    self.poll_s,
                )
        elif reason != self.state.last_error:
            logger.warning("%s; the folder keeps what it has", reason)
        self.state.reachable = not isinstance(exc, StoreUnavailableError)
        self.state.last_error = reason

    def next_wait_s(self) -> float:
        """The time until the next poll."""
        return self.poll_s * self._random.uniform(1 - self.jitter, 1 + self.jitter)

    def run(
        self,
        stop: threading.Event,
        *,
        first_now: bool = False,
        installed: Callable[[PullResult], None] | None = None,
    ) -> None:
        """Poll until ``stop`` is set, waiting ``next_wait_s`` before each poll.

        Args:
            stop: ends the loop (at once, also mid-wait).
            first_now: poll once before the first wait (otherwise the caller has just polled).
            installed: called with each poll's result that installed a new version.
        """
        if not first_now and stop.wait(self.next_wait_s()):
            return
        while not stop.is_set():
            result = self.poll()
            if installed is not None and result is not None and result.installed is not None:
                installed(result)
            stop.wait(self.next_wait_s())
