"""What TLS costs the server: CPU per GetCommand over kept connections, and per new connection (the handshake).

One serving process (pinned to CPU 0; h2load pinned to CPU 1 when there are
two), plaintext and TLS runs interleaved, so the machine's noise falls on
both alike. TLS uses a P-256 ECDSA certificate made by trustme (the dev
extra). Server CPU is the serving process tree's user + system time over the
run, from /proc (psutil).

    .venv/bin/python bench/bench_tls.py                       # 5 rounds of each
    .venv/bin/python bench/bench_tls.py --rounds 3 --calls 50000

Caveats: h2load and the server share the machine; on 2 cores, other load
moves the per-call figures by more than TLS does. Compare medians of
interleaved rounds, never two single runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import procs
import trustme
from catalog import publish
from loads import grpc_frame

from avapdefs.v1.definitions_pb2 import Command, GetCommandRequest

ROOT = Path(__file__).resolve().parents[1]
METHOD = "/avapdefs.v1.DefinitionService/GetCommand"


def _certificate(folder: Path) -> list[str]:
    """``--tls-cert`` and ``--tls-key`` for a certificate naming 127.0.0.1, written into ``folder``."""
    issued = trustme.CA().issue_cert("127.0.0.1")
    cert, key = folder / "server.pem", folder / "server.key"
    cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())
    key.chmod(0o600)
    return ["--tls-cert", str(cert), "--tls-key", str(key)]


def _h2load(url: str, body: Path, calls: int, clients: int, streams: int) -> None:
    pin = ["taskset", "-c", "1"] if len(os.sched_getaffinity(0)) > 1 and shutil.which("taskset") else []
    argv = [*pin, "h2load", "-n", str(calls), "-c", str(clients), "-m", str(streams), "-t", "1", "-d", str(body),
            "-H", "content-type: application/grpc", "-H", "te: trailers", url]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600).stdout
    if f"{calls} succeeded" not in out:
        raise RuntimeError(f"h2load: not every call succeeded:\n{out}")


def _round(folder: Path, tls: list[str], body: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(server CPU us per call over kept connections, us per new connection of one call)."""
    port = procs.free_port()
    argv = [sys.executable, "-m", "server", "--snapshots", str(folder / "snapshots"), "--port", str(port),
            "--processes", "1", "--cpu", "0", *tls]  # fmt: skip
    label = "tls" if tls else "plain"
    server = procs.start(label, argv, log_path=folder / f"{label}.log", ready_text="serving catalog", timeout_s=60)
    try:
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}{METHOD}"
        _h2load(url, body, 2000, args.clients, args.streams)  # warm-up
        before = procs.cpu_s(server.popen.pid)
        _h2load(url, body, args.calls, args.clients, args.streams)
        per_call = (procs.cpu_s(server.popen.pid) - before) / args.calls * 1e6
        before = procs.cpu_s(server.popen.pid)
        _h2load(url, body, args.connections, args.connections, 1)  # each connection makes one call
        per_connection = (procs.cpu_s(server.popen.pid) - before) / args.connections * 1e6
        return per_call, per_connection
    finally:
        procs.stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each, interleaved")
    parser.add_argument("--calls", type=int, default=100_000, help="calls per round over kept connections")
    parser.add_argument("--clients", type=int, default=8, help="h2load -c")
    parser.add_argument("--streams", type=int, default=50, help="h2load -m")
    parser.add_argument("--connections", type=int, default=400, help="new connections per round, one call each")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        sys.exit("bench_tls: h2load is not installed (Debian: nghttp2-client)")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / "snapshots").mkdir()
        publish(folder / "snapshots", [Command(name=f"cmd.{index:04d}", code="x" * 200) for index in range(5000)], 1)
        body = folder / "request.bin"
        body.write_bytes(grpc_frame(GetCommandRequest(name="cmd.0042").SerializeToString()))
        tls = _certificate(folder)
        results: dict[str, list[tuple[float, float]]] = {"plaintext": [], "TLS": []}
        load_before = os.getloadavg()[0]
        for round_ in range(args.rounds):
            for name, extra in (("plaintext", []), ("TLS", tls)):
                results[name].append(_round(folder, extra, body, args))
                call_us, connection_us = results[name][-1]
                print(f"round {round_ + 1} {name:9} {call_us:6.1f} us/call  {connection_us:6.0f} us/connection")
    print(f"\nload average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs")
    print(f"{'':9} {'us/call median (min-max)':>26} {'us/new connection median (min-max)':>36}")
    for name, rows in results.items():
        calls, connections = [row[0] for row in rows], [row[1] for row in rows]
        print(f"{name:9} {statistics.median(calls):12.1f} ({min(calls):.1f}-{max(calls):.1f})"
              f" {statistics.median(connections):18.0f} ({min(connections):.0f}-{max(connections):.0f})")  # fmt: skip


if __name__ == "__main__":
    main()
