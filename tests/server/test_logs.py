"""Log lines: one per event, plain or JSON, naming the process when there are several, never a secret."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from server import cli, logs
from tests.helpers import MakeSnapshot
from tests.server.helpers import ROOT, end_process, free_port, log_lines, wait_for_line

KEY = 'k3y-"with\\-quotes'
DSN = "postgresql://avap:s3cret-pw@db.example:5432/avap"


@pytest.fixture
def log_to_stderr() -> Iterator[None]:
    yield
    logs.unconfigure()


def _emit(capsys: pytest.CaptureFixture[str], log_format: str, process: logs.Process = None) -> list[str]:
    logs.configure("INFO", log_format, process=process, secrets=[KEY, None])
    logger = logging.getLogger("server.test")
    logger.info("key %s and dsn %s and password=hunter2 host=db", KEY, DSN)
    try:
        raise ValueError(f"connecting to {DSN} with\nkey {KEY}")
    except ValueError:
        logger.exception("failed over\ntwo lines")
    return capsys.readouterr().err.splitlines()


@pytest.mark.usefixtures("log_to_stderr")
def test_plain_lines_are_one_per_event_and_hide_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _emit(capsys, "plain")
    assert len(lines) == 2, lines
    assert re.match(r"^\S+ \S+ INFO server\.test: key \*\*\* and dsn postgresql://avap:\*\*\*@db", lines[0])
    assert "password=*** host=db" in lines[0]
    assert "failed over\\ntwo lines\\nTraceback (most recent call last):\\n" in lines[1]
    for line in lines:
        assert "s3cret-pw" not in line and "hunter2" not in line and "k3y" not in line


@pytest.mark.usefixtures("log_to_stderr")
def test_json_lines_are_objects_that_name_the_process_and_hide_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _emit(capsys, "json", process=1)
    assert len(lines) == 2, lines
    first, second = (json.loads(line) for line in lines)
    assert {"time", "level", "logger", "message", "process"} <= first.keys()
    assert (first["level"], first["logger"], first["process"]) == ("INFO", "server.test", 1)
    assert first["message"] == "key *** and dsn postgresql://avap:***@db.example:5432/avap and password=*** host=db"
    assert second["message"] == "failed over\ntwo lines" and "ValueError" in second["exc_info"]
    for line in lines:
        assert "s3cret-pw" not in line and "hunter2" not in line and "k3y" not in line


@pytest.mark.usefixtures("log_to_stderr")
def test_a_single_process_names_none_and_a_bad_format_is_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("INFO", "plain")
    logging.getLogger("server.test").info("hello")
    assert re.match(r"^\S+ \S+ INFO server\.test: hello$", capsys.readouterr().err)
    monkeypatch.setenv("AVAP_LOG_FORMAT", "yaml")
    assert cli.main([]) == 2
    assert (
        capsys.readouterr().err == "avap-server: AVAP_LOG_FORMAT='yaml': not a log format: 'yaml' (use plain or json)\n"
    )


def _serve(folder: Path, *argv: str, env: dict[str, str]) -> list[str]:
    """The log of a 2-process server from its start to its stop."""
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--snapshots", str(folder), "--port", str(free_port()),
         "--processes", "2", *argv],
        stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    seen: list[str] = []
    try:
        lines = log_lines(process)
        wait_for_line(lines, "serving catalog version", seen)
        process.terminate()
        seen.extend(lines)
        assert process.wait(timeout=30) == 0
    finally:
        end_process(process)
    return seen


def test_every_line_of_several_processes_names_its_process_in_json(make_snapshot: MakeSnapshot) -> None:
    env = {**os.environ, "AVAP_API_KEY": KEY, "AVAP_LOG_FORMAT": "json", "AVAP_LOG_LEVEL": "debug"}
    seen = _serve(make_snapshot().parent, env=env)
    records = [json.loads(line) for line in seen]  # every line is one JSON object
    assert {record["process"] for record in records} == {"supervisor", 0, 1}
    assert any(r["process"] == 1 and r["logger"] == "server.store" for r in records)
    assert all("k3y" not in line for line in seen)


def test_every_line_of_several_processes_names_its_process_in_plain_text(make_snapshot: MakeSnapshot) -> None:
    seen = _serve(make_snapshot().parent, "--log-level", "info", env=dict(os.environ))
    tags = [re.match(r"^\S+ \S+ [A-Z]+ \[(supervisor|process \d)\] \S+: ", line) for line in seen]
    assert all(tags), [line for line, tag in zip(seen, tags, strict=True) if not tag]
    assert {tag[1] for tag in tags if tag} == {"supervisor", "process 0", "process 1"}
