"""Certificates made at test time (trustme): a CA, a server certificate for 127.0.0.1 and localhost, a client's.

Shared by the server's TLS tests and the clients': each gets PEM files in a
folder of its own, private keys written as a deployment should (mode 600).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Certificates:
    """PEM files in one folder.

    Attributes:
        ca: the CA that signed the server's and the client's certificates.
        server_cert, server_key: the server's, for ``127.0.0.1`` and ``localhost``.
        client_cert, client_key: a client's, for mutual TLS.
        other_ca: a CA that signed nothing here (a server certificate it is told to trust fails).
        stranger_cert, stranger_key: a client certificate signed by ``other_ca``.
    """

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    stranger_cert: Path
    stranger_key: Path


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def make_certificates(folder: Path) -> Certificates:
    """A CA, a server certificate, a client certificate, and a stranger's, written into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("worker@avap.test")
    stranger = other.issue_cert("stranger@avap.test")
    return Certificates(
        ca=_write(folder / "ca.pem", ca.cert_pem.bytes()),
        server_cert=_write(folder / "server.pem", b"".join(pem.bytes() for pem in server.cert_chain_pems)),
        server_key=_write(folder / "server.key", server.private_key_pem.bytes(), 0o600),
        client_cert=_write(folder / "client.pem", b"".join(pem.bytes() for pem in client.cert_chain_pems)),
        client_key=_write(folder / "client.key", client.private_key_pem.bytes(), 0o600),
        other_ca=_write(folder / "other-ca.pem", other.cert_pem.bytes()),
        stranger_cert=_write(folder / "stranger.pem", b"".join(pem.bytes() for pem in stranger.cert_chain_pems)),
        stranger_key=_write(folder / "stranger.key", stranger.private_key_pem.bytes(), 0o600),
    )
