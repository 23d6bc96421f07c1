"""Envoy's allocator in a serving process: tcmalloc's per-CPU caches."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server import launch
from tests.helpers import MakeSnapshot
from tests.server.helpers import RunningServer, running_server


def _tcmalloc_stats(server: RunningServer) -> str:
    status, body = server.process._admin.request("GET", "/memory/tcmalloc")
    assert status == 200
    return body.decode()


def _stat(stats: str, label: str) -> int:
    match = re.search(rf"^MALLOC:\s+(\d+) .*\) {re.escape(label)}$", stats, re.MULTILINE)
    assert match is not None, f"no {label!r} in tcmalloc's stats"
    return int(match[1])


@pytest.mark.parametrize(
    ("inherited", "given"),
    [
        ({}, "glibc.pthread.rseq=0"),
        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "glibc.malloc.arena_max=2:glibc.pthread.rseq=0"),
        ({"GLIBC_TUNABLES": "glibc.pthread.rseq=1"}, None),  # the deployment's own choice stands
    ],
)
def test_envoy_gets_rseq_off_beside_the_deployments_own_tunables(inherited: dict[str, str], given: str | None) -> None:
    assert launch._allocator_environ(inherited).get("GLIBC_TUNABLES") == given


def test_a_serving_process_caches_freed_memory_per_cpu(
    make_snapshot: MakeSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without glibc's rseq registration off, tcmalloc falls back to per-thread caches: no per-CPU slab at all.
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    with running_server(make_snapshot().parent) as server:
        # glibc rewrites the variable in place as it reads it: what is left shows the deployment's own is kept.
        environ = Path(f"/proc/{server.process.pid}/environ").read_bytes().split(b"\0")
        stats = _tcmalloc_stats(server)
    assert any(entry.startswith(b"GLIBC_TUNABLES=glibc.malloc.arena_max=2") for entry in environ)
    assert _stat(stats, "per-CPU slab resident bytes") > 0
