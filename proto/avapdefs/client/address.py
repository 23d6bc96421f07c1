"""A server's address: the one check of ``HOST:PORT``, and the words for a server that cannot be reached.

A malformed address is refused before any connection is tried (grpc would
otherwise resolve "not an address" or default a missing port to 443, and the
caller would learn of it only when its deadline ran out). When a server
cannot be reached, grpc's first failed call says why in its details
("... Failed to connect to remote host: Connection refused"); the calls that
then wait for the channel end in a bare DEADLINE_EXCEEDED, so the reason is
taken from the first and carried to the error the caller sees.

A connection that fails at TLS says so in OpenSSL's words, or not at all:
with TLS 1.3 a server that refuses the client's certificate does so after
the handshake, and grpc reports only "Unwrap failed (TSI_DATA_CORRUPTED)";
a plaintext client that reaches a TLS port sees "Socket closed".
``tls_failure`` turns each into what to do about it, knowing what this
client sent (TLS or not, a certificate or not). "Socket closed" is also what
a server at its connection limit says, so before a plaintext client blames
TLS, ``speaks_tls`` asks the port itself: one TLS handshake, nothing verified.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl

DEFAULT_SERVER = "127.0.0.1:50051"

# A host name: dot-separated labels of letters, digits, '-' and '_' (Docker and Kubernetes service names).
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?")
# How grpc's details begin when it could not connect or resolve.
_CONNECT_FAILURES = ("failed to connect to all addresses", "errors resolving", "DNS resolution failed")


def parse_server(text: str) -> str:
    """``text`` when it is ``HOST:PORT`` (``[IPv6]:PORT`` for an IPv6 address), with surrounding space removed.

    Raises:
        ValueError: it is not; the message says what is wrong.
    """
    address = text.strip()
    host, colon, port = address.rpartition(":")
    if not address:
        raise ValueError("the server address is empty; give HOST:PORT")
    if not colon:
        raise ValueError(f"{text!r} is not HOST:PORT (no port)")
    if not host:
        raise ValueError(f"{text!r} is not HOST:PORT (no host)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (the port must be a number from 1 to 65535)")
    if not _is_host(host):
        hint = "; write an IPv6 address in brackets, [::1]:50051" if ":" in host else ""
        raise ValueError(f"{text!r} is not HOST:PORT ({host!r} is not a host name or IP address{hint})")
    return address


def _is_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            return False
    return len(host) <= 253 and _HOST_NAME.fullmatch(host) is not None


def unreachable_reason(details: str) -> str | None:
    """Why grpc could not reach the server, in a few words ("connection refused"), or None when it did.

    Args:
        details: the details of an UNAVAILABLE status.
    """
    if not any(marker in details for marker in _CONNECT_FAILURES):
        return None
    # The cause is the last clause: "...: Failed to connect to remote host: Connection refused".
    reason = details.rsplit(": ", 1)[-1].strip(" []")
    return reason[:1].lower() + reason[1:] if reason else "no reason given"


def cannot_reach(server: str, reason: str) -> str:
    """The one wording of an unreachable server: ``cannot reach 127.0.0.1:50099 (connection refused)``."""
    return f"cannot reach {server} ({reason})"


# grpc's details for each way a connection fails at TLS, and what it means.
_VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED"
_NAME_MISMATCH = "Hostname Verification Check failed"
_NOT_TLS = ("WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST")
_REFUSED_AFTER_HANDSHAKE = ("TSI_DATA_CORRUPTED", "CERTIFICATE_REQUIRED", "ALERT_UNKNOWN_CA", "ALERT_BAD_CERTIFICATE")
_HANDSHAKE = ("Tls handshake failed", "Ssl handshake failed", "Handshake failed")
_CLOSED = ("Socket closed", "Connection reset by peer")


def tls_failure(details: str, *, tls: bool, client_cert: bool) -> str | None:
    """Why a connection failed at TLS, in words that say what to do, or None when TLS is not the cause.

    Args:
        details: the details of an UNAVAILABLE status.
        tls: whether this client spoke TLS.
        client_cert: whether it had a certificate to present.
    """
    if not tls:
        if any(marker in details for marker in _CLOSED) and "failed to connect" in details:
            return "it serves TLS, and this client speaks plaintext: give --tls-ca FILE (or --tls)"
        return None
    if _NAME_MISMATCH in details:
        return "its TLS certificate does not name the host dialled; give the name it holds with --tls-server-name"
    if _VERIFY_FAILED in details:
        why = details.split(_VERIFY_FAILED, 1)[1].strip(": ").split(":", 1)[0].strip()
        return f"its TLS certificate is not trusted ({why or 'verify failed'}); give the CA that signed it: --tls-ca"
    if any(marker in details for marker in _NOT_TLS):
        return "the TLS handshake failed: it does not speak TLS (a plaintext server?); drop the --tls options"
    if any(marker in details for marker in _REFUSED_AFTER_HANDSHAKE):
        if not client_cert:
            return "it wants a client certificate (mutual TLS); give --tls-cert and --tls-key"
        return "it refused this client's certificate (mutual TLS): is it signed by the CA the server trusts?"
    if any(marker in details for marker in _HANDSHAKE):
        return f"the TLS handshake failed: {_last_reason(details)}"
    return None


def _last_reason(details: str) -> str:
    """OpenSSL's reason in grpc's details: the clause after "OPENSSL_internal:", else the last one."""
    if "OPENSSL_internal:" in details:
        return details.split("OPENSSL_internal:", 1)[1].split(":", 1)[0].strip().lower().replace("_", " ")
    return details.rsplit(": ", 1)[-1].strip()


def speaks_tls(server: str, timeout_s: float = 2.0) -> bool:
    """Whether ``server`` (``HOST:PORT``, as ``parse_server`` returns it) completes a TLS handshake.

    Nothing is verified and nothing is sent after the handshake: it only tells a TLS port from a
    plaintext one that closed the connection for another reason (its connection limit, a restart).
    """
    host, _, port = server.rpartition(":")
    host = host.strip("[]")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, int(port)), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=None if _is_ip(host) else host),
        ):
            return True
    except ssl.SSLError as exc:  # an alert (it refused to go on) is TLS speaking too
        return "ALERT" in str(exc.reason)
    except OSError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
