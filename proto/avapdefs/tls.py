"""TLS files and key files, for the server and the clients alike: each checked before use, in words when bad.

The server hands its certificate, key and client CA to Envoy by name, and
Envoy reads them only as it starts; a client hands grpc their bytes, and
grpc reads them only at the first handshake. Either way a bad file would
surface late, as a log line of the serving process or a failed handshake.
So each file is checked here first, with Python's own ``ssl`` module (no
dependency beyond the standard library): readable, PEM, a certificate where
one is wanted, an unencrypted key that matches its certificate. A problem is
one ``TlsFileError`` naming the file and what is wrong with it.

A file holding a secret (a TLS private key, an API key) should be readable
by its owner only: ``warn_if_exposed`` logs one warning, naming the file and
its mode, when group or others may read it. It is a warning, not a refusal:
a deployment may have reasons (a group that runs the server), and a server
that will not start is worse than one that says so.
"""

from __future__ import annotations

import logging
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path

from avapdefs.errors import TlsFileError

logger = logging.getLogger(__name__)

_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PRIVATE_KEY = b"PRIVATE KEY-----"
_ENCRYPTED = (b"-----BEGIN ENCRYPTED PRIVATE KEY-----", b"Proc-Type: 4,ENCRYPTED")


def warn_if_exposed(path: Path, what: str) -> bool:
    """Log one warning when group or others may read ``path`` (a file holding a secret).

    Args:
        path: the file; a link is followed (a Kubernetes secret is a link to the file).
        what: what it holds, for the message ("the TLS key file").

    Returns:
        Whether it warned. A file that cannot be looked at is not warned about: reading it says why.
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    if not mode & (stat.S_IRGRP | stat.S_IROTH):
        return False
    logger.warning("%s %s may be read by group or others (mode %s); chmod 600 it", what, path, stat.filemode(mode))
    return True


def _read(path: Path, field: str, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsFileError(field, f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    if not data.strip():
        raise TlsFileError(field, f"the {what} {path} is empty")
    return data


def _certificates(path: Path, field: str, what: str) -> bytes:
    """The bytes of ``path``, once ``ssl`` has parsed every certificate in it (at least one)."""
    data = _read(path, field, what)
    if _CERTIFICATE not in data:
        hint = " (that is a private key)" if _PRIVATE_KEY in data else ""
        raise TlsFileError(field, f"the {what} {path} holds no PEM certificate{hint}")
    try:
        ssl.create_default_context(cadata=data.decode("ascii", errors="replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise TlsFileError(field, f"the {what} {path} holds a certificate that does not parse: {_reason(exc)}") from exc
    return data


def _private_key(path: Path, field: str) -> bytes:
    data = _read(path, field, "TLS key")
    if _PRIVATE_KEY not in data:
        hint = " (that is a certificate)" if _CERTIFICATE in data else ""
        raise TlsFileError(field, f"the TLS key {path} holds no PEM private key{hint}")
    if any(marker in data for marker in _ENCRYPTED):
        raise TlsFileError(field, f"the TLS key {path} is encrypted; give it unencrypted (chmod 600 instead)")
    return data


def check_pair(cert: Path, key: Path, *, cert_field: str = "tls_cert", key_field: str = "tls_key") -> None:
    """Check that ``cert`` holds certificates and ``key`` the unencrypted private key of the first.

    Raises:
        TlsFileError: a file cannot be read or parsed, the key is encrypted, or it does not match.
    """
    _certificates(cert, cert_field, "TLS certificate")
    _private_key(key, key_field)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsFileError(key_field, f"the TLS key {key} does not match the certificate {cert}") from exc
        raise TlsFileError(key_field, f"the TLS key {key} does not parse: {_reason(exc)}") from exc
    except OSError as exc:  # a file went away between the reads
        raise TlsFileError(key_field, f"cannot read {cert} or {key}: {exc.strerror or exc}") from exc


def check_ca(ca: Path, field: str) -> bytes:
    """The bytes of a CA file, once checked to hold certificates.

    Raises:
        TlsFileError: it cannot be read, or holds no certificate that parses.
    """
    return _certificates(ca, field, "CA file")


def check_server_files(cert: Path, key: Path, client_ca: Path | None) -> None:
    """Check the server's TLS files before Envoy is given them, and warn when the key is exposed.

    Raises:
        TlsFileError: as ``check_pair`` and ``check_ca``; ``field`` is the server setting's name.
    """
    check_pair(cert, key)
    if client_ca is not None:
        check_ca(client_ca, "tls_client_ca")
    warn_if_exposed(key, "the TLS key file")


@dataclass(frozen=True)
class ClientTls:
    """What a client's channel is secured with: whom to trust and, for mutual TLS, what to present.

    Attributes:
        ca: the PEM certificates trusted to sign the server's; None: the system's (grpc's roots).
        cert: the client's certificate chain (PEM), for a server that wants one (mutual TLS).
        key: its private key (PEM).
        server_name: the name the server's certificate must hold, when it is not the host dialled.
    """

    ca: bytes | None = field(default=None, repr=False)
    cert: bytes | None = field(default=None, repr=False)
    key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        server_name: str | None = None,
    ) -> ClientTls:
        """Read and check the files; a key others may read is warned about.

        Raises:
            TlsFileError: a file cannot be used, or a certificate is given without its key (or the
                other way round); ``field`` is ``tls_ca``, ``tls_cert``, ``tls_key`` or ``tls_server_name``.
        """
        if cert is not None and key is None:
            raise TlsFileError("tls_cert", "a client certificate without its key; give --tls-key too")
        if key is not None and cert is None:
            raise TlsFileError("tls_key", "a client key without its certificate; give --tls-cert too")
        if server_name is not None and not server_name.strip():
            raise TlsFileError("tls_server_name", "the TLS server name is blank")
        trusted = check_ca(ca, "tls_ca") if ca is not None else None
        if cert is None or key is None:
            return cls(trusted, None, None, server_name)
        check_pair(cert, key)
        warn_if_exposed(key, "the TLS key file")
        return cls(trusted, _read(cert, "tls_cert", "TLS certificate"), _read(key, "tls_key", "TLS key"), server_name)


def _no_password() -> bytes:
    # Without a callback, OpenSSL would prompt on the terminal for an encrypted key's passphrase.
    raise ssl.SSLError("the key is encrypted")


def _reason(exc: Exception) -> str:
    """An ``ssl`` error in words: its reason code as text ("NO_CERTIFICATE_OR_CRL_FOUND" -> lower case)."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        return reason.lower().replace("_", " ")
    return str(exc.args[1] if len(exc.args) > 1 else exc).split(" (_ssl.c")[0]
