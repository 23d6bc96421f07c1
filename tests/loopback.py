"""A TCP proxy on 127.0.0.1 whose link a test cuts, throttles or holds: a database or an object store that vanishes.

One thread runs every connection through one selector; the test's calls
(``go_silent``, ``drop``, ``refuse``, ``restore``, ``hold``, ``release``) are
queued to that thread and return once it has acted on them, so a call's
effect is in place when it returns.
"""

from __future__ import annotations

import collections
import contextlib
import re
import select
import selectors
import socket
import struct
import threading
import time
from pathlib import Path
from typing import cast

_FORWARD, _SILENT, _REFUSE, _HOLD = "forward", "silent", "refuse", "hold"
_CHUNK_BYTES = 65536
_ACK_TIMEOUT_S = 10.0
_HTTP_REQUEST = re.compile(rb"^(?:GET|HEAD|PUT|POST|DELETE|OPTIONS|PATCH) /")


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (SO_LINGER 0) rather than a clean end of stream."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class LoopbackProxy:
    """A TCP proxy on 127.0.0.1 to a Unix socket (a ``Path``) or a TCP address (``(host, port)``).

    Args:
        target: where each connection is forwarded.
        rate_bytes_per_s: a cap on the bytes forwarded per second, both directions and every
            connection together; None for none.
        request_latency_s: after forwarding the start of an HTTP request, forward nothing for this
            long: each request costs a round trip to a distant store.

    Attributes:
        port: the port it listens on.
        bytes_up: bytes forwarded from clients to the target so far.
        bytes_down: bytes forwarded from the target to clients so far.
        requests: HTTP requests forwarded so far, counted by their request lines (an HTTP/1.1
            client sends one at a time on a connection, so each starts a read).
        accepted: connections accepted so far.
    """

    def __init__(
        self,
        target: Path | tuple[str, int],
        *,
        rate_bytes_per_s: float | None = None,
        request_latency_s: float = 0.0,
    ) -> None:
        self._target = target
        self._rate = rate_bytes_per_s
        self._latency_s = request_latency_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.bytes_up = 0
        self.bytes_down = 0
        self.requests = 0
        self.accepted = 0
        self._peers: dict[socket.socket, socket.socket] = {}
        self._clients: set[socket.socket] = set()
        self._reading: set[socket.socket] = set()  # open sockets whose peer has not ended its stream
        self._held: set[socket.socket] = set()  # clients with bytes waiting, unread while held
        self._mode = _FORWARD
        self._paced_until = 0.0
        self._wake_r, self._wake_w = socket.socketpair()
        self._orders: collections.deque[tuple[str, threading.Event]] = collections.deque()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name=f"loopback-proxy :{self.port}", daemon=True)
        self._thread.start()

    # -- the test's side

    def go_silent(self) -> None:
        """Stop forwarding and accepting; keep every connection open.

        To a client, the host behind it has vanished, though this machine's
        kernel still acknowledges its packets.
        """
        self._order(_SILENT)

    def drop(self) -> None:
        """Close every connection at once with a reset, then stay silent (new connections wait unaccepted)."""
        self._order("drop")

    def refuse(self) -> None:
        """Reset every connection, and each new one once accepted, until ``restore``: a store that is down."""
        self._order(_REFUSE)

    def restore(self) -> None:
        """Forward again (after ``go_silent``, ``refuse`` or ``hold``)."""
        self._order(_FORWARD)

    def hold(self) -> None:
        """Accept connections but forward nothing from clients until ``release``; ``wait_held`` counts them."""
        self._order(_HOLD)

    def release(self) -> None:
        """Forward what held clients sent, all at once, and everything after it."""
        self._order(_FORWARD)

    def wait_held(self, count: int, timeout_s: float) -> bool:
        """Wait until ``count`` held connections have sent bytes that wait to be forwarded; False on time out."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._held) >= count, timeout_s)

    def wait_bytes_up(self, count: int, timeout_s: float) -> bool:
        """Wait until ``bytes_up`` reaches ``count``; False on time out."""
        with self._changed:
            return self._changed.wait_for(lambda: self.bytes_up >= count, timeout_s)

    def wait_requests(self, count: int, timeout_s: float) -> bool:
        """Wait until ``requests`` reaches ``count``; False on time out."""
        with self._changed:
            return self._changed.wait_for(lambda: self.requests >= count, timeout_s)

    def close(self) -> None:
        """Stop the proxy and close everything."""
        self._order("close")
        self._thread.join(_ACK_TIMEOUT_S)
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    def _order(self, order: str) -> None:
        done = threading.Event()
        self._orders.append((order, done))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if not done.wait(_ACK_TIMEOUT_S) and self._thread.is_alive():
            raise RuntimeError(f"the proxy did not act on {order!r} within {_ACK_TIMEOUT_S} s")

    # -- the proxy's thread

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ)
            self._arrange(selector)
            while True:
                delay = self._paced_until - time.monotonic()
                if delay > 0:  # over the rate: let only an order in until the bytes sent are paid for
                    if select.select([self._wake_r], [], [], delay)[0] and not self._obey(selector):
                        return
                    continue
                for key, _ in selector.select():
                    sock = cast(socket.socket, key.fileobj)
                    if sock is self._wake_r:
                        if not self._obey(selector):
                            return
                    elif sock is self._listener:
                        self._accept(selector)
                    elif self._mode == _HOLD and sock in self._clients:
                        selector.unregister(sock)  # unread: its bytes wait in the kernel until released
                        with self._changed:
                            self._held.add(sock)
                            self._changed.notify_all()
                    elif sock in self._reading:
                        self._forward(selector, sock)

    def _obey(self, selector: selectors.BaseSelector) -> bool:
        """Act on the queued orders; False when one says close."""
        with contextlib.suppress(OSError):
            self._wake_r.recv(4096)
        while self._orders:
            order, done = self._orders.popleft()
            if order == "close":
                self._close_all(selector)
                done.set()
                return False
            if order in ("drop", _REFUSE):
                self._close_all(selector)
            self._mode = _SILENT if order == "drop" else order
            with self._changed:
                self._held.clear()
            self._arrange(selector)
            done.set()
        return True

    def _arrange(self, selector: selectors.BaseSelector) -> None:
        """Register what the mode listens to: nothing while silent, the listener and the open sockets otherwise."""
        wanted = set() if self._mode == _SILENT else {self._listener, *self._reading}
        for key in list(selector.get_map().values()):
            sock = cast(socket.socket, key.fileobj)
            if sock is not self._wake_r and sock not in wanted:
                selector.unregister(sock)
        registered = {cast(socket.socket, key.fileobj) for key in selector.get_map().values()}
        for sock in wanted - registered:
            selector.register(sock, selectors.EVENT_READ)

    def _close_all(self, selector: selectors.BaseSelector) -> None:
        for sock in list(self._peers):
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(sock)
            _reset(sock)
        self._peers.clear()
        self._clients.clear()
        self._reading.clear()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        client, _ = self._listener.accept()
        self.accepted += 1
        if self._mode == _REFUSE:
            _reset(client)
            return
        try:
            if isinstance(self._target, Path):
                server = socket.socket(socket.AF_UNIX)
                server.connect(str(self._target))
            else:
                server = socket.create_connection(self._target, timeout=5)
                server.settimeout(None)
        except OSError:
            _reset(client)
            return
        self._peers.update({client: server, server: client})
        self._clients.add(client)
        self._reading.update((client, server))
        for sock in (client, server):
            selector.register(sock, selectors.EVENT_READ)

    def _forward(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        peer = self._peers[sock]
        chunk = _CHUNK_BYTES if self._rate is None else max(min(_CHUNK_BYTES, int(self._rate / 20)), 1024)
        try:
            data = sock.recv(chunk)
            if data:
                peer.sendall(data)
                request = sock in self._clients and _HTTP_REQUEST.match(data) is not None
                if sock in self._clients:
                    with self._changed:
                        self.bytes_up += len(data)
                        self.requests += request
                        self._changed.notify_all()
                else:
                    self.bytes_down += len(data)
                pause_s = (len(data) / self._rate if self._rate else 0.0) + (self._latency_s if request else 0.0)
                if pause_s:
                    self._paced_until = max(self._paced_until, time.monotonic()) + pause_s
                return
            peer.shutdown(socket.SHUT_WR)  # the end of one direction is passed on as it is
        except OSError:
            # A reset on either side resets both: a client killed mid-request must not look like one that finished.
            for end in (sock, peer):
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(end)
                self._reading.discard(end)
                self._clients.discard(end)
                self._peers.pop(end, None)
                _reset(end)
            return
        selector.unregister(sock)
        self._reading.discard(sock)
        if peer not in self._reading:  # both directions ended
            for end in (sock, peer):
                self._peers.pop(end, None)
                self._clients.discard(end)
                end.close()
