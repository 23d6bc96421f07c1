"""TLS and mutual TLS on the server (Envoy's own TLS), with certificates made at test time and real grpcio clients.

Also: every bad TLS input is one line and exit 2 before Envoy starts; a key
file others may read is warned about; a quiet health Watch outlives the
stream idle timeout.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from avapdefs.v1.definitions_pb2 import GetCommandRequest, GetCommandResponse, WatchCatalogRequest
from avapdefs.v1.definitions_pb2_grpc import DefinitionServiceStub
from server import cli
from tests.certificates import Certificates, make_certificates
from tests.helpers import MakeSnapshot
from tests.server.helpers import (
    ROOT,
    end_process,
    free_port,
    log_lines,
    next_version,
    running_server,
    server_process,
    wait_for_line,
    write_dated_snapshot,
)

TLS_VARIABLES = ("AVAP_TLS_CERT", "AVAP_TLS_KEY", "AVAP_TLS_CLIENT_CA", "AVAP_TLS_CA", "AVAP_TLS")


@pytest.fixture(autouse=True)
def _no_inherited_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in TLS_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "certs")


def _credentials(certs: Certificates, *, ca: Path | None = None, cert: Path | None = None, key: Path | None = None):
    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path is not None else None

    return grpc.ssl_channel_credentials(read(ca or certs.ca), read(key), read(cert))


def _check(channel: grpc.Channel) -> int:
    check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]  # the stub lists no methods
    answer: health_pb2.HealthCheckResponse = check(health_pb2.HealthCheckRequest(), timeout=10)
    return answer.status


def _unavailable(channel: grpc.Channel) -> str:
    """The details of the UNAVAILABLE a call on ``channel`` ends in (it must not succeed)."""
    with pytest.raises(grpc.RpcError) as caught:
        _check(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    return str(caught.value.details())


def test_tls_serves_grpc_clients_that_trust_its_ca(make_snapshot: MakeSnapshot, certs: Certificates) -> None:
    folder = make_snapshot(version=3).parent
    with running_server(folder, tls_cert=certs.server_cert, tls_key=certs.server_key) as server:
        address = f"127.0.0.1:{server.port}"
        with grpc.secure_channel(address, _credentials(certs)) as channel:
            assert _check(channel) == health_pb2.HealthCheckResponse.SERVING
            answer = DefinitionServiceStub(channel).GetCommand(GetCommandRequest(name="addVar"), timeout=10)
            assert answer.command.name == "addVar"
        with grpc.secure_channel(f"localhost:{server.port}", _credentials(certs)) as channel:
            assert _check(channel) == health_pb2.HealthCheckResponse.SERVING  # the certificate names both
        with grpc.insecure_channel(address) as channel:
            assert "Socket closed" in _unavailable(channel)  # a plaintext client is not served
        with grpc.secure_channel(address, _credentials(certs, ca=certs.other_ca)) as channel:
            assert "CERTIFICATE_VERIFY_FAILED" in _unavailable(channel)


def test_mutual_tls_wants_a_certificate_its_ca_signed(make_snapshot: MakeSnapshot, certs: Certificates) -> None:
    folder = make_snapshot(version=3).parent
    settings = {"tls_cert": certs.server_cert, "tls_key": certs.server_key, "tls_client_ca": certs.ca}
    with running_server(folder, **settings) as server:
        address = f"127.0.0.1:{server.port}"
        mine = _credentials(certs, cert=certs.client_cert, key=certs.client_key)
        with grpc.secure_channel(address, mine) as channel:
            assert _check(channel) == health_pb2.HealthCheckResponse.SERVING
            answer = DefinitionServiceStub(channel).GetCommand(GetCommandRequest(name="if"), timeout=10)
            assert answer.command.name == "if"
        # TLS 1.3: the server refuses after the handshake, so grpc sees a connection that broke.
        with grpc.secure_channel(address, _credentials(certs)) as channel:
            assert "TSI_DATA_CORRUPTED" in _unavailable(channel)
        stranger = _credentials(certs, cert=certs.stranger_cert, key=certs.stranger_key)
        with grpc.secure_channel(address, stranger) as channel:
            assert "TSI_DATA_CORRUPTED" in _unavailable(channel)
        with grpc.insecure_channel(address) as channel:
            _unavailable(channel)


def _encrypted_key(certs: Certificates, tmp_path: Path) -> Path:
    """The server's key encrypted with a passphrase (cryptography comes with trustme)."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(certs.server_key.read_bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path = tmp_path / "encrypted.key"
    path.write_bytes(encrypted)
    return path


def _bad_inputs(certs: Certificates, tmp_path: Path) -> list[tuple[list[str], str]]:
    missing = tmp_path / "missing.pem"
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    cert, key = ["--tls-cert", str(certs.server_cert)], ["--tls-key", str(certs.server_key)]
    return [
        ([*key], "--tls-key: a TLS key without a certificate; give --tls-cert too"),
        ([*cert], "--tls-cert: a TLS certificate without its key; give --tls-key too"),
        (
            ["--tls-client-ca", str(certs.ca)],
            "--tls-client-ca: mutual TLS needs TLS: give --tls-cert and --tls-key too",
        ),
        (["--tls-cert", str(missing), *key], f"--tls-cert: cannot read the TLS certificate {missing}: No such file"),
        ([*cert, "--tls-key", str(empty)], f"--tls-key: the TLS key {empty} is empty"),
        ([*cert, "--tls-key", str(certs.client_key)], f"--tls-key: the TLS key {certs.client_key} does not match the"),
        (["--tls-cert", str(certs.server_key), *key], "holds no PEM certificate (that is a private key)"),
        ([*cert, "--tls-key", str(certs.server_cert)], "holds no PEM private key (that is a certificate)"),
        ([*cert, "--tls-key", str(_encrypted_key(certs, tmp_path))], "is encrypted; give it unencrypted"),
        ([*cert, *key, "--tls-client-ca", str(certs.client_key)], "--tls-client-ca: the CA file"),
        ([*cert, *key, "--tls-client-ca", str(tmp_path)], f"cannot read the CA file {tmp_path}: Is a directory"),
    ]


def test_bad_tls_input_is_one_line_and_exit_2_before_envoy_starts(
    make_snapshot: MakeSnapshot, certs: Certificates, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_snapshot(version=1).parent
    for argv, expected in _bad_inputs(certs, tmp_path):
        started = time.monotonic()
        assert cli.main(["--snapshots", str(folder), "--port", "0", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("avap-server: ") and expected in err, (argv, err)
        assert time.monotonic() - started < 5  # refused before any process started


def test_a_bad_tls_variable_is_named(
    make_snapshot: MakeSnapshot,
    certs: Certificates,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = make_snapshot(version=1).parent
    monkeypatch.setenv("AVAP_TLS_CERT", str(certs.server_cert))
    monkeypatch.setenv("AVAP_TLS_KEY", str(certs.client_key))
    assert cli.main(["--snapshots", str(folder), "--port", "0"]) == 2
    expected = f"avap-server: AVAP_TLS_KEY='{certs.client_key}': the TLS key {certs.client_key} does not match the"
    assert capsys.readouterr().err.startswith(expected)


def _serving(process: subprocess.Popen[str], seen: list[str]) -> int:
    line = wait_for_line(log_lines(process), r"serving catalog version 1 .* on 127\.0\.0\.1:(\d+) with 2 process", seen)
    return int(line[1])


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(timeout=60) == 0
    finally:
        end_process(process)


def _avapctl(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("AVAP_")}
    command = [str(Path(sys.executable).parent / "avapctl"), *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment, cwd=cwd)


def test_every_process_serves_mutual_tls_health_checks_included_and_open_keys_are_warned_about(
    make_snapshot: MakeSnapshot, certs: Certificates, tmp_path: Path
) -> None:
    folder = make_snapshot(version=1).parent
    certs.server_key.chmod(0o640)
    api_key = tmp_path / "api-key"
    api_key.write_text("k3y\n")
    api_key.chmod(0o644)
    port = free_port()
    process = server_process(
        *("--snapshots", str(folder), "--port", str(port), "--processes", "2", "--api-key-file", str(api_key)),
        *("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key), "--tls-client-ca", str(certs.ca)),
    )
    seen: list[str] = []
    try:
        assert _serving(process, seen) == port
        log = "".join(seen)
        assert f"the TLS key file {certs.server_key} may be read by group or others (mode -rw-r-----)" in log
        assert f"the API key file {api_key} may be read by group or others (mode -rw-r--r--); chmod 600 it" in log
        assert "mutual TLS" in seen[-1]
        # Each new channel is a new connection, which the kernel hands to either process: all are TLS.
        mine = _credentials(certs, cert=certs.client_cert, key=certs.client_key)
        for _ in range(8):
            with grpc.secure_channel(f"127.0.0.1:{port}", mine) as channel:
                assert _check(channel) == health_pb2.HealthCheckResponse.SERVING
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                _unavailable(channel)
        tls = ["--tls-ca", str(certs.ca), "--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key)]
        healthy = _avapctl("health", "--server", f"127.0.0.1:{port}", *tls)
        assert (healthy.returncode, healthy.stdout, healthy.stderr) == (0, "SERVING\n", "")
        refused = _avapctl("health", "--server", f"127.0.0.1:{port}", "--tls-ca", str(certs.ca))
        assert refused.returncode == 7 and refused.stdout == ""
        assert refused.stderr == (
            f"avapctl: no secure connection to 127.0.0.1:{port}: it wants a client certificate (mutual TLS); "
            "give --tls-cert and --tls-key\n"
        )
    finally:
        _stop(process)


def _reset_when_idle(channel: grpc.Channel, idle_timeout_s: float) -> grpc.RpcError:
    """The error a GetCommand call on ``channel`` ends in when it sends its headers and never its body.

    It sits on the ordinary route and moves no bytes, so Envoy resets it once the idle timeout has passed
    since it opened: its reset is the sign that any stream quiet since before it opened has been idle as long.
    """
    release = threading.Event()

    def never_sent() -> Iterator[GetCommandRequest]:
        release.wait(4 * idle_timeout_s)  # ends the request only after the reset has come
        yield GetCommandRequest(name="addVar")

    call = channel.stream_unary(
        "/avapdefs.v1.DefinitionService/GetCommand",
        request_serializer=GetCommandRequest.SerializeToString,
        response_deserializer=GetCommandResponse.FromString,
    )
    future = call.future(never_sent(), timeout=4 * idle_timeout_s)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            future.result()
    finally:
        release.set()
    return caught.value


def test_a_quiet_health_watch_outlives_the_idle_timeout_and_still_reports_a_change(
    make_snapshot: MakeSnapshot,
) -> None:
    folder = make_snapshot(version=1).parent
    idle_timeout_s, heartbeat_s = 3.0, 0.5
    settings = {"stream_idle_timeout_s": idle_timeout_s, "heartbeat_s": heartbeat_s}
    with running_server(folder, **settings) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())  # type: ignore[attr-defined]
        catalog = DefinitionServiceStub(channel).WatchCatalog(WatchCatalogRequest(have_version=1))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        # Opened after the health Watch's last message, on the same connection: when Envoy resets this
        # quiet call, the health Watch (which sends nothing meanwhile) has been quiet for longer still.
        reset = _reset_when_idle(channel, idle_timeout_s)
        assert (reset.code(), reset.details()) == (grpc.StatusCode.UNKNOWN, "stream timeout")
        write_dated_snapshot(folder, 2, age_s=0)
        assert next_version(catalog) == 2  # kept open by its heartbeats, it reports the new version
        server.process.drain()  # health turns NOT_SERVING: the quiet Watch is still open to hear it
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        catalog.cancel()


def _security_guides_certificate_lines() -> list[list[str]]:
    """The commands of docs/security.md's first bash block (the openssl lines that make certificates)."""
    text = (ROOT / "docs" / "security.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_the_security_guides_certificates_serve_mutual_tls(make_snapshot: MakeSnapshot, tmp_path: Path) -> None:
    folder = make_snapshot(version=1).parent
    made = tmp_path / "made"
    made.mkdir()
    lines = _security_guides_certificate_lines()
    assert [line[0] for line in lines] == ["openssl"] * 5 + ["chmod"]
    for line in lines:
        subprocess.run(line, cwd=made, check=True, capture_output=True, timeout=60)
    settings = {"tls_cert": made / "server.pem", "tls_key": made / "server.key", "tls_client_ca": made / "ca.pem"}
    with running_server(folder, **settings) as server:
        tls = ["--tls-ca", "ca.pem", "--tls-cert", "client.pem", "--tls-key", "client.key"]
        for host in ("127.0.0.1", "localhost"):
            done = _avapctl("health", "--server", f"{host}:{server.port}", *tls, cwd=made)
            assert (done.returncode, done.stdout, done.stderr) == (0, "SERVING\n", "")
