"""The clients over TLS and mutual TLS: the library (DefinitionClient, Replica) and the tools as subprocesses.

Certificates are made at test time; the servers are real (Envoy's TLS). Each
way a connection can fail at TLS is one line saying what to do, and exit 7
for a tool; a TLS file that cannot be used is one line naming its option,
and exit 2.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from avapdefs.client import DefinitionClient, Replica
from avapdefs.client.address import speaks_tls
from avapdefs.errors import ServerUnavailableError, TlsError, TlsFileError
from avapdefs.folder import list_snapshots
from avapdefs.tls import ClientTls
from tests.certificates import Certificates, make_certificates
from tests.server.helpers import VERSIONED_NAMES, RunningServer, running_server, write_dated_snapshot

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Servers:
    """One catalog served three ways, and the certificates."""

    plain: RunningServer
    tls: RunningServer
    mutual: RunningServer
    certs: Certificates

    def address(self, server: RunningServer, host: str = "127.0.0.1") -> str:
        return f"{host}:{server.port}"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("tls")
    certs = make_certificates(root / "certs")
    tls = {"tls_cert": certs.server_cert, "tls_key": certs.server_key}
    folders = [root / name for name in ("plain", "tls", "mutual")]
    for folder in folders:
        write_dated_snapshot(folder, 1, age_s=0)
    with (
        running_server(folders[0]) as plain,
        running_server(folders[1], **tls) as secure,
        running_server(folders[2], **tls, tls_client_ca=certs.ca) as mutual,
    ):
        yield Servers(plain, secure, mutual, certs)


def _client(servers: Servers, server: RunningServer, tls: ClientTls | None, host: str = "127.0.0.1"):
    return DefinitionClient(servers.address(server, host), tls=tls, timeout_s=20)


def test_the_library_over_tls_and_mutual_tls(servers: Servers, tmp_path: Path) -> None:
    certs = servers.certs
    trusting = ClientTls.from_files(certs.ca)
    with _client(servers, servers.tls, trusting) as client:
        assert client.get_command(VERSIONED_NAMES[0]).name == VERSIONED_NAMES[0]
        assert client.health() == 1  # SERVING
        result = client.sync(tmp_path / "cache")
        assert result.info.version == 1 and list_snapshots(tmp_path / "cache")
    mine = ClientTls.from_files(certs.ca, certs.client_cert, certs.client_key)
    with _client(servers, servers.mutual, mine, host="localhost") as client:
        assert client.catalog_info().version == 1
        watch = client.watch()
        assert next(iter(watch)).catalog.version == 1
        watch.cancel()
    with Replica(servers.address(servers.mutual), tmp_path / "replica", tls=mine, timeout_s=20) as replica:
        assert replica.synced.wait(30)
        assert replica.get(VERSIONED_NAMES[1]) is not None


def _tls_error(client: DefinitionClient) -> str:
    """The details of the TlsError a call ends in, which must come at once, not after the deadline."""
    started = time.monotonic()
    with client, pytest.raises(TlsError) as caught:
        client.get_command(VERSIONED_NAMES[0])
    assert time.monotonic() - started < 10  # the deadline is 20 s: no retry waited for it
    return caught.value.details


def test_each_tls_failure_says_what_to_do(servers: Servers) -> None:
    certs = servers.certs
    trusting = ClientTls.from_files(certs.ca)
    address = servers.address
    failures = {
        "plaintext client, TLS server": (
            _client(servers, servers.tls, None),
            f"no secure connection to {address(servers.tls)}: it serves TLS, and this client speaks plaintext: "
            "give --tls-ca FILE (or --tls)",
        ),
        "TLS client, plaintext server": (
            _client(servers, servers.plain, trusting),
            f"no secure connection to {address(servers.plain)}: the TLS handshake failed: it does not speak TLS "
            "(a plaintext server?); drop the --tls options",
        ),
        "untrusted server certificate": (
            _client(servers, servers.tls, ClientTls.from_files(certs.other_ca)),
            f"no secure connection to {address(servers.tls)}: its TLS certificate is not trusted "
            "(unable to get local issuer certificate); give the CA that signed it: --tls-ca",
        ),
        "another name": (
            _client(servers, servers.tls, ClientTls.from_files(certs.ca, server_name="elsewhere.test")),
            f"no secure connection to {address(servers.tls)}: its TLS certificate does not name the host dialled; "
            "give the name it holds with --tls-server-name",
        ),
        "no client certificate": (
            _client(servers, servers.mutual, trusting),
            f"no secure connection to {address(servers.mutual)}: it wants a client certificate (mutual TLS); "
            "give --tls-cert and --tls-key",
        ),
        "a stranger's certificate": (
            _client(servers, servers.mutual, ClientTls.from_files(certs.ca, certs.stranger_cert, certs.stranger_key)),
            f"no secure connection to {address(servers.mutual)}: it refused this client's certificate (mutual TLS): "
            "is it signed by the CA the server trusts?",
        ),
    }
    said = {case: _tls_error(client) for case, (client, _) in failures.items()}
    assert said == {case: expected for case, (_, expected) in failures.items()}


@contextlib.contextmanager
def _closing_listener() -> Iterator[str]:
    """A plaintext port that accepts each connection and closes it at once (a server at its connection limit)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                listener.accept()[0].close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_a_port_that_closes_connections_is_not_taken_for_tls(servers: Servers) -> None:
    assert speaks_tls(servers.address(servers.tls)) and speaks_tls(servers.address(servers.mutual))
    assert not speaks_tls(servers.address(servers.plain))
    with _closing_listener() as address:
        assert not speaks_tls(address)
        with DefinitionClient(address, timeout_s=1.0) as client, pytest.raises(ServerUnavailableError) as caught:
            client.get_command("x")
        assert not isinstance(caught.value, TlsError)  # retried until the deadline, as an unreachable server


def test_bad_client_tls_files_are_refused_before_any_connection(servers: Servers, tmp_path: Path) -> None:
    certs = servers.certs
    with pytest.raises(TlsFileError, match="a client certificate without its key; give --tls-key too"):
        ClientTls.from_files(certs.ca, cert=certs.client_cert)
    with pytest.raises(TlsFileError, match="a client key without its certificate; give --tls-cert too"):
        ClientTls.from_files(certs.ca, key=certs.client_key)
    with pytest.raises(TlsFileError, match="does not match the certificate"):
        ClientTls.from_files(certs.ca, certs.client_cert, certs.stranger_key)
    with pytest.raises(TlsFileError, match="holds no PEM certificate"):
        ClientTls.from_files(certs.client_key)
    with pytest.raises(TlsFileError, match="cannot read the CA file"):
        ClientTls.from_files(tmp_path / "missing.pem")


def _run(tool: str, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("AVAP_")}
    done = subprocess.run(
        [str(BIN / tool), *argv], capture_output=True, text=True, timeout=60, env={**environment, **(env or {})}
    )
    return done.returncode, done.stdout, done.stderr


def test_the_tools_over_mutual_tls_by_flag_and_by_variable(servers: Servers, tmp_path: Path) -> None:
    certs = servers.certs
    server = servers.address(servers.mutual, "localhost")
    flags = ["--tls-ca", str(certs.ca), "--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key)]
    code, out, err = _run("avap-get", VERSIONED_NAMES[0], "--server", server, *flags)
    assert (code, err) == (0, "") and VERSIONED_NAMES[0] in out
    code, out, err = _run("avapctl", "health", "--server", server, *flags)
    assert (code, out, err) == (0, "SERVING\n", "")
    variables = {
        "AVAP_SERVER": server,
        "AVAP_TLS_CA": str(certs.ca),
        "AVAP_TLS_CERT": str(certs.client_cert),
        "AVAP_TLS_KEY": str(certs.client_key),
    }
    code, out, err = _run("avap-sync", "--dest", str(tmp_path / "cache"), env=variables)
    assert (code, err) == (0, "") and out.startswith("synced catalog version 1")
    code, out, err = _run("avapctl", "ls", env=variables)
    assert (code, out.splitlines()) == (0, VERSIONED_NAMES)


def test_the_tools_fail_in_one_line_with_exit_7_or_2(servers: Servers, tmp_path: Path) -> None:
    certs = servers.certs
    mutual = servers.address(servers.mutual)
    code, out, err = _run("avap-get", "x", "--server", mutual, "--tls-ca", str(certs.ca))
    assert (code, out) == (7, "")
    assert err == (
        f"avap-get: no secure connection to {mutual}: it wants a client certificate (mutual TLS); "
        "give --tls-cert and --tls-key\n"
    )
    code, _, err = _run("avap-sync", "--dest", str(tmp_path / "c"), "--server", servers.address(servers.tls))
    assert code == 7 and err.count("\n") == 1 and "it serves TLS, and this client speaks plaintext" in err
    code, _, err = _run("avapctl", "info", "--server", servers.address(servers.plain), "--tls")
    assert code == 7 and err.count("\n") == 1 and "it does not speak TLS" in err
    code, _, err = _run("avap-sync", "--dest", str(tmp_path / "c"), "--watch", "--server", mutual, "--tls")
    assert code == 7 and err.count("\n") == 1 and "its TLS certificate is not trusted" in err
    code, _, err = _run("avap-get", "x", "--server", mutual, "--tls-cert", str(certs.client_cert))
    assert (code, err) == (2, "avap-get: --tls-cert: a client certificate without its key; give --tls-key too\n")
    code, _, err = _run("avapctl", "health", env={"AVAP_TLS_CA": str(certs.client_key)})
    assert code == 2
    assert (
        err
        == f"avapctl: AVAP_TLS_CA: the CA file {certs.client_key} holds no PEM certificate (that is a private key)\n"
    )


def test_a_client_key_others_may_read_is_warned_about(servers: Servers, tmp_path: Path) -> None:
    certs = servers.certs
    key = tmp_path / "open.key"
    key.write_bytes(certs.client_key.read_bytes())
    key.chmod(0o644)
    flags = ["--tls-ca", str(certs.ca), "--tls-cert", str(certs.client_cert), "--tls-key", str(key)]
    code, out, err = _run("avapctl", "health", "--server", servers.address(servers.mutual), *flags)
    assert (code, out) == (0, "SERVING\n")
    assert (
        err
        == f"avapctl: WARNING: the TLS key file {key} may be read by group or others (mode -rw-r--r--); chmod 600 it\n"
    )
