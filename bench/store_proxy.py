"""A counting HTTP/1.1 reverse proxy in front of an S3 endpoint, on loopback: what each client asks of the store.

Each client (the exporter, every server) gets a listener of its own, so
that a request is counted against the client that made it without looking
into it: a client's ``AWS_ENDPOINT_URL`` names its own port. Requests are
forwarded as they are (the Host header and the signature included), one
upstream keep-alive connection per client connection, and each answer is
logged as a ``Request``: who asked, the method, what was asked for (the
announcement, a snapshot or delta object, a listing), the status and the body
bytes each way. The standard library's HTTP server and client do the
framing (Content-Length and chunked answers, 304s with no body), so nothing
of HTTP is parsed by hand here.

An answer is buffered whole before it is passed on. That costs memory (a
snapshot at a time) and a little latency, never a request.
"""

from __future__ import annotations

import http.client
import http.server
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

# Headers that belong to one connection, not to the message (RFC 9110, 7.6.1).
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                         "upgrade", "content-length"})  # fmt: skip
_UPSTREAM_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Request:
    """One request a client made of the store, as the proxy saw it answered.

    Attributes:
        client: the label of the listener it came in on.
        method: GET, PUT, HEAD, DELETE, POST.
        kind: ``announcement``, ``object`` (a snapshot or a delta), ``list``, ``delete`` or ``other``.
        key: the object key (the path after the bucket), empty for a listing.
        status: the store's HTTP status (502 when the store could not be reached).
        sent_bytes: the request body's bytes.
        received_bytes: the answer body's bytes.
        at: ``time.monotonic()`` when the answer came back from the store.
        wall: ``time.time()`` at the same moment.
    """

    client: str
    method: str
    kind: str
    key: str
    status: int
    sent_bytes: int
    received_bytes: int
    at: float
    wall: float


def kind_of(path: str) -> tuple[str, str]:
    """(kind, key) of a path-style S3 request: ``/bucket/prefix/announcement.json`` is the announcement."""
    parts = urllib.parse.urlsplit(path)
    key = urllib.parse.unquote(parts.path).lstrip("/").partition("/")[2]
    if "delete" in urllib.parse.parse_qs(parts.query, keep_blank_values=True):
        return "delete", key  # DeleteObjects: POST /bucket?delete
    if not key or "list-type" in parts.query:
        return "list", key
    if key.endswith("announcement.json"):
        return "announcement", key
    if key.endswith((".avsnap", ".avdelta")):
        return "object", key
    return "other", key


@dataclass
class Log:
    """Every request through the proxy, in the order answered; safe to append to and read from any thread."""

    requests: list[Request] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def between(self, start: float, end: float = float("inf"), client: str | None = None) -> list[Request]:
        """The requests answered in [start, end), of one client or of all."""
        with self._lock:
            found = list(self.requests)
        return [r for r in found if start <= r.at < end and (client is None or r.client == client)]


class _Forwarder(http.server.BaseHTTPRequestHandler):
    """Forwards each request of one client connection to the store, and logs it; ``StoreProxy.add`` subclasses it."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect
    timeout = 300  # an idle client connection is dropped after this
    label = ""
    upstream_port = 0
    log: Log
    upstream: http.client.HTTPConnection | None = None

    def _forward(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.send_error(501, "chunked request bodies are not forwarded")  # obstore sends Content-Length
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name: value for name, value in self.headers.items() if name.lower() not in _HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        status, reason, answer_headers, data = self._ask(headers, body)
        kind, key = kind_of(self.path)
        self.log.add(
            Request(self.label, self.command, kind, key, status, len(body), len(data), time.monotonic(), time.time())
        )
        self._answer(status, reason, answer_headers, data)

    def _answer(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        if self.command == "HEAD":  # no body, but the length of the one a GET would get
            length = {name.lower(): value for name, value in headers}.get("content-length")
            if length is not None:
                self.send_header("Content-Length", length)
        elif status not in (204, 304):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _ask(self, headers: dict[str, str], body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        # Once more on a fresh connection when the store closed an idle one under us.
        for attempt in (1, 2):
            if self.upstream is None:
                self.upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=_UPSTREAM_TIMEOUT_S)
            try:
                self.upstream.request(self.command, self.path, body=body or None, headers=headers)
                answer = self.upstream.getresponse()
                data = answer.read()
            except (OSError, http.client.HTTPException):
                self._drop_upstream()
                if attempt == 2:
                    return 502, "Bad Gateway", [], b""
                continue
            if answer.will_close:
                self._drop_upstream()
            return answer.status, answer.reason, answer.getheaders(), data
        raise AssertionError("unreachable")

    def _drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    def finish(self) -> None:
        super().finish()
        self._drop_upstream()

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _forward

    def log_message(self, format: str, *args: object) -> None:
        pass  # counted, not printed


class StoreProxy:
    """Listeners on 127.0.0.1, one per client label, all forwarding to the store at ``upstream_port``.

    Use it as a context manager; ``add`` a client to get its endpoint URL.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.log = Log()
        self._servers: dict[str, http.server.ThreadingHTTPServer] = {}

    def add(self, label: str) -> str:
        """A new listener for ``label``; its ``http://127.0.0.1:PORT`` endpoint."""
        attributes = {"label": label, "upstream_port": self.upstream_port, "log": self.log}
        handler = type("Forwarder", (_Forwarder,), attributes)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name=f"proxy-{label}", daemon=True).start()
        self._servers[label] = server
        return f"http://127.0.0.1:{server.server_address[1]}"

    def close(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> StoreProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
