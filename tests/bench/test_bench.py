"""The benchmark suite's own logic: its generated catalog, when it needs the peer, and how it reports."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))  # the bench scripts import their siblings as top-level modules

import bench_fleet  # noqa: E402
import bench_serve  # noqa: E402
import catalog  # noqa: E402
import loads  # noqa: E402
import peer  # noqa: E402
import report  # noqa: E402
import run_all  # noqa: E402

from avapdefs.format.snapshot import read_file  # noqa: E402
from tests.objectstore import SeaweedS3  # noqa: E402


def test_generated_catalog_is_deterministic_about_2kb_a_command_and_servable(tmp_path: Path) -> None:
    commands = list(catalog.generated_commands(300))
    assert commands == list(catalog.generated_commands(300))
    assert len({command.name for command in commands}) == 300
    assert 1500 <= statistics.mean(command.ByteSize() for command in commands) <= 3000
    snapshot = read_file(catalog.publish(tmp_path, commands, 1))
    assert [command.name for command in snapshot.catalog().commands] == sorted(c.name for c in commands)


def test_the_peer_is_needed_only_when_it_is_measured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert not peer.available(tmp_path)
    with pytest.raises(SystemExit) as exited:
        bench_serve.parse_args(["--peer-source", str(tmp_path)])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert f"the reference server is not in {tmp_path}: measure ours alone with --targets ours" in error
    assert bench_serve.parse_args(["--peer-source", str(tmp_path), "--targets", "ours"]).targets == ["ours"]
    with pytest.raises(SystemExit):
        run_all.parse_args(["--peer-source", str(tmp_path)])
    assert run_all.parse_args(["--peer-source", str(tmp_path), "--targets", "ours"]).targets == ["ours"]


def test_h2load_log_gives_p50_and_p99(tmp_path: Path) -> None:
    log = tmp_path / "requests.tsv"
    log.write_text("".join(f"{1_800_000_000_000_000 + n}\t0\t{n}\n" for n in range(1000, 0, -1)))
    assert loads._log_percentiles_ms(log) == (0.501, 0.991)


def test_table_names_rows_after_their_phase_and_keeps_the_sweeps_short() -> None:
    def metric(name: str, ours: float, theirs: float) -> report.Metric:
        return report.Metric(name, "req/s", True, {"ours": [ours, ours * 2], "peer": [theirs]})

    serve = run_all.Run("serve", {"commands": 5000})
    serve.metrics["x"] = metric("sync: wire", 300, 100)
    sweep = run_all.Run("processes", {"commands": 50_000, "processes": 2})
    sweep.metrics["b"] = metric("B h2load -c8 -m50 -t1: GetCommand", 20_000, 10_000)
    sweep.metrics["x"] = metric("sync: wire", 1, 1)
    startup = run_all.Run("startup", {"commands": 50_000})
    startup.metrics["s"] = metric("start-up (50,000 cmds), cold: first GetCommand answered", 1, 1)
    lines = run_all.table([serve, sweep, startup], ["ours", "peer"]).splitlines()
    assert len(lines) == 5
    assert "| serve (5,000 cmds): sync: wire " in lines[2]
    assert "450.0 (300.0-600.0)" in lines[2] and "4.50x better" in lines[2]
    assert "| processes (50,000 cmds, --processes 2): B h2load -c8 -m50 -t1: GetCommand " in lines[3]
    assert lines[4].startswith("| start-up (50,000 cmds), cold: first GetCommand answered ")


def test_the_fleet_bench_counts_one_pull_per_replica_per_version(
    tmp_path: Path, pg_server_dsn: str, seaweed: SeaweedS3
) -> None:
    """bench_fleet.py --quick against the test's PostgreSQL and SeaweedFS: what it counts is what the fleet did."""
    seaweed.create_bucket("bench-fleet")
    out = tmp_path / "fleet.json"
    argv = ["--quick", "--dsn", pg_server_dsn, "--s3-endpoint", seaweed.endpoint, "--bucket", "bench-fleet"]
    assert bench_fleet.main([*argv, "--json", str(out), "--logs", str(tmp_path / "logs")]) == 0
    record = json.loads(out.read_text())
    (phase,) = record["phases"]
    changing, full = phase["changing"], phase["full"]
    assert set(phase["idle"]["kinds"]) == {"GET announcement 304"}, "an idle replica only asks whether it changed"
    assert changing["announcement_200_per_version"] == [1.0, 1.0], "each replica reads each announcement once"
    assert changing["object_gets_per_version"] == full["object_gets_per_version"] == [1.0, 1.0]
    file_bytes = record["facts"]["file_bytes"]
    assert all(size < file_bytes / 10 for size in changing["object_bytes_per_version"]), "a delta, not the file"
    assert all(size > file_bytes * 0.9 for size in full["object_bytes_per_version"]), "no delta: the whole file"
    for run in changing["runs"] + full["runs"]:
        assert set(run["serving_s"]) == set(run["read_s"]) and len(run["read_s"]) == 2
        assert all(0 < run["read_s"][label] <= run["serving_s"][label] for label in run["read_s"])
