"""``--version`` text: the installed package's version and the formats this code reads."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from avapdefs import about
from avapdefs.format import delta, snapshot


def test_version_text_names_the_installed_package_and_the_formats() -> None:
    text = about.version_text("avap-tool")
    assert text.splitlines()[0] == f"avap-tool {metadata.version('avap-definition-server')} (avap-definition-server)"
    assert f"snapshot format {snapshot.FORMAT_VERSION}, delta format {delta.FORMAT_VERSION}" in text
    assert "avapdefs.v1.DefinitionService" in text


def test_version_option_prints_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="avap-tool")
    about.add_version_option(parser)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("avap-tool ")


@pytest.mark.parametrize("tool", ["avap-export", "avap-server", "avap-pin", "avap-sync", "avap-get", "avapctl"])
def test_every_tool_prints_its_version_one_fact_a_line(tool: str) -> None:
    done = subprocess.run([str(Path(sys.executable).parent / tool), "--version"], capture_output=True, text=True)
    assert done.returncode == 0
    assert done.stdout.splitlines() == about.version_text(tool).splitlines()
