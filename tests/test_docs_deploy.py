"""Every command docs/deploy.md shows is run here, where that needs no Docker and no Kubernetes.

The guide's ``bash`` blocks run in order, with bash, in a temporary folder
standing for /var/lib/avap and /var/backups, against a real ``avap-server``
started on that folder, whose address stands for 127.0.0.1:50051. A block
that calls docker or kubectl cannot run on this machine, so every line of
such a block must call one of them: nothing else escapes the test. The cron
line's program and options are checked against its ``--help``, and the alert
rules are read as YAML, their metrics asked of a real server and of a real
exporter's ``--metrics-textfile``.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers import MakeSnapshot
from tests.server.helpers import log_lines, wait_for_line

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "deploy.md"
BIN = Path(sys.executable).parent
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
CLUSTER_TOOLS = ("docker", "kubectl")
ADDRESS = "127.0.0.1:50051"


def blocks(kind: str) -> list[str]:
    """The guide's fenced blocks of ``kind`` (the word after the opening fence), in order."""
    return re.findall(rf"^```{kind}\n(.*?)^```$", GUIDE.read_text(), flags=re.MULTILINE | re.DOTALL)


def needs_a_cluster(block: str) -> bool:
    """True when every command line of ``block`` calls docker or kubectl; False when none does."""
    firsts = [line.split()[0] for line in block.splitlines() if line.strip() and not line.startswith("#")]
    cluster = [word in CLUSTER_TOOLS for word in firsts]
    assert all(cluster) or not any(cluster), f"a block mixes cluster commands with others:\n{block}"
    return all(cluster)


@pytest.fixture
def server(tmp_path: Path, make_snapshot: MakeSnapshot) -> Iterator[tuple[Path, str, str]]:
    """A real server on versions 40-42: (the folder standing for /var/lib/avap, its address, its metrics URL)."""
    lib = tmp_path / "lib"
    folder = lib / "snapshots"
    for version in (40, 41, 42):
        make_snapshot(folder=folder, version=version)
    for leftover in (".lock", ".export-state", ".tmp-catalog-0000000043.avsnap.1.0a0b0c0d"):
        (folder / leftover).write_bytes(b"")  # what a backup must leave out
    argv: list[str | Path] = [BIN / "avap-server", "--snapshots", folder, "--host", "127.0.0.1", "--port", "0"]
    argv += ["--processes", "1", "--metrics-port", "0"]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    lines = log_lines(process)
    drain = threading.Thread(target=lambda: all(lines), daemon=True)  # keeps its log pipe from filling
    try:
        metrics = wait_for_line(lines, r"serving metrics on (http://\S+)", [])[1]
        port = wait_for_line(lines, r"serving catalog version 42 .* on 127\.0\.0\.1:(\d+)", [])[1]
        drain.start()
        yield lib, f"127.0.0.1:{port}", metrics
    finally:
        process.terminate()
        assert process.wait(30) == 0
        if drain.is_alive():
            drain.join(10)
        assert process.stderr is not None
        process.stderr.close()


def run(block: str, lib: Path, address: str) -> str:
    """Run ``block`` with bash as the guide shows it, on the test's folders; its output."""
    text = block.replace("/var/lib/avap", str(lib)).replace("/var/backups", str(lib.parent / "backups"))
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", text.replace(ADDRESS, address)],
        env={"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(lib.parent)},
        cwd=lib.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"exit {done.returncode}:\n{block}\n{done.stdout}{done.stderr}"
    return done.stdout


def digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.glob("catalog-*.avsnap")}


def test_the_guides_commands_run(server: tuple[Path, str, str]) -> None:
    lib, address, _ = server
    folder = lib / "snapshots"
    published = digests(folder)
    runnable = [block for block in blocks("bash") if not needs_a_cluster(block)]
    assert len(runnable) == 5, "pin, unpin, backup, restore, the age check"
    pin, unpin, backup, restore, age = runnable
    assert "pinned to version 41" in run(pin, lib, address)
    assert (folder / "PIN").read_text().strip() == "41"
    run(unpin, lib, address)
    assert not (folder / "PIN").exists()
    members = {Path(name).name for name in run(backup, lib, address).split()}
    assert set(published) <= members and not members & {".lock", ".export-state", ".serving"}
    assert not any(name.startswith(".tmp-") for name in members)
    for path in folder.glob("catalog-*.avsnap"):
        path.unlink()  # the folder is lost; the running server keeps serving what it loaded
    output = run(restore, lib, address)
    assert output.count(f"verified {lib}/restore/catalog-") == 3 and "catalog version   42" in output
    assert digests(folder) == published
    assert not (lib / "restore").exists()
    run(age, lib, address)


def test_the_cron_line_runs_an_entry_point_with_options_it_takes() -> None:
    (crontab,) = blocks("crontab")
    (line,) = crontab.splitlines()
    words = shlex.split(line)
    assert len(words[:5]) == 5 and all(re.fullmatch(r"[\d*/,-]+", field) for field in words[:5]), "a schedule"
    program = Path(words[5]).name
    assert program in SCRIPTS
    command = words[5 : words.index(">>")]
    help_text = subprocess.run([BIN / program, "--help"], capture_output=True, text=True, timeout=60, check=True)
    for flag in (word for word in command if word.startswith("--")):
        assert re.search(rf"{re.escape(flag)}(?![\w-])", help_text.stdout), f"{program} takes no {flag}"
    assert "/var/lib/avap/snapshots" in command, "the folder the rest of the guide uses"


def test_the_cluster_blocks_call_only_the_package_inside_containers() -> None:
    cluster = [block for block in blocks("bash") if needs_a_cluster(block)]
    assert len(cluster) == 6
    for block in cluster:
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            inside = words[words.index("--") + 1 :] if "--" in words else []
            if words[:3] == ["docker", "compose", "exec"]:
                inside = words[4:]
            assert not inside or inside[0] in SCRIPTS, f"{line}: runs {inside[0]}, not one of the package's programs"


def test_the_alert_rules_ask_for_metrics_the_server_and_the_exporter_expose(
    server: tuple[Path, str, str], tmp_path: Path
) -> None:
    (rules,) = blocks("yaml")
    groups = yaml.safe_load(rules)["groups"]
    alerts = {rule["alert"]: rule for group in groups for rule in group["rules"]}
    assert set(alerts) == {"AvapCatalogStale", "AvapSnapshotRefused", "AvapExportFailing"}
    for rule in alerts.values():
        assert rule["expr"] and rule["labels"]["severity"] and rule["annotations"]["summary"]
    wanted = {name for rule in alerts.values() for name in re.findall(r"\bavap_\w+", rule["expr"])}
    assert wanted == {
        "avap_snapshot_age_seconds",
        "avap_refused_files_total",
        "avap_export_last_success_timestamp_seconds",
    }
    from_server = {name for name in wanted if not name.startswith("avap_export_")}
    exposed = _metric_names(server[2], from_server) | _exporter_metric_names(tmp_path / "exporter")
    assert wanted <= exposed, f"not exposed: {wanted - exposed}"


def _exporter_metric_names(folder: Path) -> set[str]:
    # What a run writes to --metrics-textfile; a failed run (no database here) writes the same names.
    folder.mkdir()
    textfile = folder / "avap_export.prom"
    argv = ["avap-export", "--dsn", "host=/nonexistent port=1", "--snapshots", str(folder / "snapshots")]
    argv += ["--metrics-textfile", str(textfile)]
    done = subprocess.run([BIN / argv[0], *argv[1:]], capture_output=True, timeout=60, check=False)
    assert done.returncode == 3, done.stderr
    return set(re.findall(r"^(\w+)(?:\{| )", textfile.read_text(), flags=re.MULTILINE))


def _metric_names(url: str, wanted: set[str], timeout_s: float = 10.0) -> set[str]:
    # The age gauge is first set by the server's once-a-second age check: wait for it, boundedly.
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        names = set(re.findall(r"^(\w+)(?:\{| )", text, flags=re.MULTILINE))
        if wanted <= names or time.monotonic() > deadline:
            return names
        time.sleep(0.1)
