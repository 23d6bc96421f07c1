"""README.md's configuration tables match the tools, and every command the docs show runs here or at least parses.

The tables are regenerated from the tools' parsers (``tests/configtable.py``)
and compared with README.md. Every command in a ``bash`` block, every ``$``
line and every cron line of README.md and docs/*.md is a program this test
knows; a program of the package is parsed with that program's own parser
(abbreviations refused), so a renamed flag, or a variable set before a
program that does not read it, fails here. docs/deploy.md's commands run in
``test_docs_deploy.py``; the ones it runs in containers are parsed here.

Beyond parsing, the commands run as shown, in order, where they need nothing
but this machine, the test's PostgreSQL and its SeaweedFS: README.md's quick
start against ``avap-server`` started as the README starts it, its cron
export, both servers and every ``avapctl`` and ``avap-sync`` line;
docs/server.md's calls (grpcurl's through grpcio, which is here) and
``python -m server``; both Python snippets; docs/exporter.md's regeneration
of the sample and its ``inspect`` output; docs/object-storage.md's publish,
server and worker. Temporary folders stand for /var/lib/avap, /var/cache/avap
and /tmp/avap-cache. What else changes on the way, and nothing more: the
``...`` placeholders become the test's DSN and keys, ``--host 0.0.0.0``
becomes 127.0.0.1 (loopback only), ``--metrics-port 9102`` becomes 0 (any
free port), ``AVAP_PORT=0`` in the environment stands for a free port, whose
address stands for 127.0.0.1:50051, and the store's address and a fresh
prefix stand for the guide's. Installing the package (the network) and the
whole suite (this test is part of it) are checked, not run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2  # noqa: F401  (registers grpc.health.v1.Health for the grpcurl lines)
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import avap.definition_engine_pb2  # noqa: F401  (registers the legacy service for the grpcurl lines)
from avapdefs.v1 import definitions_pb2  # noqa: F401  (registers avapdefs.v1.DefinitionService)
from tests import configtable
from tests.objectstore import SeaweedS3
from tests.server.helpers import log_lines, wait_for_line

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]
# docs/deploy.md's commands run in test_docs_deploy.py; here, those it runs in containers are parsed.
DOCS = (
    "README.md",
    *(f"docs/{path.name}" for path in sorted((ROOT / "docs").glob("*.md")) if path.name != "deploy.md"),
)
ADDRESS = "127.0.0.1:50051"
# Programs the docs may call that are not the package's: checked as far as this machine can.
OTHERS = ("python", "python3", "pip", "grpcurl", "jq", "rm", "openssl", "chmod")
_OPERATORS = ("&&", "||", "|", ";")
_CRON = re.compile(r"^(?:[\d*/,-]+\s+){5}(?P<command>\S.*)$")
_ASSIGNMENT = re.compile(r"^(?P<name>[A-Za-z_]\w*)=(?P<value>.*)$", re.DOTALL)
# A command run here must not listen beyond loopback, take a fixed port or touch the machine's folders.
_NOT_HERE = re.compile(r"0\.0\.0\.0|:50051|--(?:metrics-)?port [1-9]|/var/|/tmp/avap|\.\.\.")
_SECRET = "docs-test-key"


def _exact(parsers: dict[str, argparse.ArgumentParser]) -> dict[str, argparse.ArgumentParser]:
    """The parsers, refusing abbreviated flags: a doc must show a flag whole, or a renamed one would still pass."""
    for parser in parsers.values():
        for sub in [parser, *configtable.subcommands(parser).values()]:
            sub.allow_abbrev = False
    return parsers


PARSERS = _exact(configtable.parsers())


@dataclass(frozen=True)
class Command:
    """One simple command: the variables set before it, its program and its arguments."""

    env: dict[str, str]
    words: list[str]

    @property
    def program(self) -> str:
        return Path(self.words[0]).name


@dataclass(frozen=True)
class Line:
    """A line as a doc shows it (continuations joined), where it is, and its simple commands."""

    where: str
    text: str
    commands: list[Command]


def _commands(text: str) -> list[Command]:
    """The simple commands of a shell line: split at ``&&``, ``|``..., redirections dropped."""
    found: list[Command] = []
    words: list[str] = []
    redirected = False
    for word in [*shlex.split(text, comments=True), ";"]:
        if redirected:  # the file of "> /dev/null"
            redirected = False
        elif word in _OPERATORS:
            if words:
                env = {}
                while words and (assignment := _ASSIGNMENT.match(words[0])):
                    env[assignment["name"]] = assignment["value"]
                    words.pop(0)
                found.append(Command(env, words))
            words = []
        elif re.match(r"^\d*[<>]", word):  # >>file, 2>&1, > file
            redirected = word.rstrip("&") in ("<", ">", ">>", "2>", "2>>")
        else:
            words.append(word)
    return found


def blocks(doc: str, kind: str = "bash") -> list[list[Line]]:
    """The lines of each fenced block of ``kind`` in ``doc``; for ``$`` lines and cron lines, kind ``""``."""
    found: list[list[Line]] = []
    fence: str | None = None
    pending = ""
    for number, raw in enumerate((ROOT / doc).read_text().splitlines(), start=1):
        if raw.lstrip().startswith("```"):
            fence = raw.lstrip()[3:].strip() if fence is None else None
            if fence == kind:
                found.append([])
            continue
        if fence != kind:
            continue
        text = pending + raw
        if text.endswith("\\"):
            pending = text[:-1]
            continue
        pending = ""
        if kind == "":
            shown = text[2:] if text.startswith("$ ") else (cron["command"] if (cron := _CRON.match(text)) else None)
            if shown is None:
                continue
            text = shown
        if text.strip() and not text.lstrip().startswith("#"):
            found[-1].append(Line(f"{doc}:{number}", text, _commands(text)))
    return [block for block in found if block]


def shown_lines(doc: str) -> list[Line]:
    return [line for kind in ("bash", "") for block in blocks(doc, kind) for line in block]


# --- The configuration tables ------------------------------------------------------------------


def test_the_configuration_tables_are_what_the_tools_parsers_say() -> None:
    stale = configtable.diff(configtable.README.read_text(encoding="utf-8"))
    assert not stale, f"README.md's configuration tables differ from the code; run: {configtable.COMMAND}\n{stale}"


def test_the_tables_cover_every_program_of_the_package() -> None:
    assert {name.split()[0] for name in configtable.parsers()} == set(SCRIPTS)


def test_every_variable_the_programs_read_is_in_the_tables() -> None:
    sources = [*(ROOT / "server").rglob("*.py"), *(ROOT / "exporter").rglob("*.py"), *(ROOT / "proto").rglob("*.py")]
    read = {name for path in sources for name in re.findall(r"\bAVAP_[A-Z0-9_]+\b", path.read_text())}
    read.discard("AVAP_CONTROL_FD")  # the supervisor's hand-over to its own serving processes, not a setting
    tables = configtable.render()
    documented = set(re.findall(r"\| `(AVAP_[A-Z0-9_]+)` \|", tables))
    assert read <= documented, f"read by the code but not in a table: {sorted(read - documented)}"


# --- Every command shown is a program that takes its options -----------------------------------


def _parse(program: str, args: list[str], line: Line) -> None:
    name = f"{program} {args[0]}" if args and f"{program} {args[0]}" in PARSERS else program
    parser = PARSERS[name]
    args = args[1:] if name != program else args
    errors = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
        try:
            parser.parse_args(args)
        except SystemExit as exc:  # --help and --version end here too, with 0
            said = errors.getvalue().strip().splitlines()
            assert exc.code == 0, f"{line.where}: {line.text}\n  {said[-1] if said else ''}"


def _check_variables(program: str, command: Command, line: Line) -> None:
    """The AVAP_* variables set before a program are ones it reads (its table's rows)."""
    ours = {name for name in command.env if name.startswith("AVAP_")}
    rows = [row for name, parser in PARSERS.items() if name.split()[0] == program for row in configtable.rows(parser)]
    read = {row.variable.strip("`") for row in rows}
    assert ours <= read, f"{line.where}: {program} reads no {sorted(ours - read)}"


def _check_python(command: Command, line: Line) -> None:
    words = command.words[1:]
    assert words[:1] == ["-m"], f"{line.where}: python runs only modules in the docs: {line.text}"
    module = words[1]
    programs = {target.split(":")[0]: name for name, target in SCRIPTS.items()}
    if f"{module}.cli" in programs:  # python -m server: the same program as avap-server
        assert (ROOT / module / "__main__.py").exists(), f"{line.where}: no {module}/__main__.py"
        _parse(programs[f"{module}.cli"], words[2:], line)
    else:
        assert module in ("venv", "pytest"), f"{line.where}: an unknown module {module}"
        assert module != "pytest" or PYPROJECT["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]


def _check_grpcurl(command: Command, line: Line) -> None:
    """The method a grpcurl line calls exists, and its -d body is a request it takes."""
    words = command.words
    path = words[-1]
    if "/" not in path:
        assert path == "list", f"{line.where}: {line.text}"
        return
    service, method = path.split("/")
    found = descriptor_pool.Default().FindServiceByName(service).methods_by_name.get(method)
    assert found is not None, f"{line.where}: {service} has no {method}"
    if "-d" in words:
        request = message_factory.GetMessageClass(found.input_type)()
        json_format.Parse(words[words.index("-d") + 1], request)


def _check(command: Command, line: Line) -> None:
    program = command.program
    if program in SCRIPTS:
        _check_variables(program, command, line)
        _parse(program, command.words[1:], line)
    elif program in ("python", "python3"):
        _check_python(command, line)
    elif program == "pip":
        extras = re.findall(r"\.\[([\w,-]+)\]", " ".join(command.words))
        wanted = {extra for group in extras for extra in group.split(",")}
        assert wanted <= set(PYPROJECT["project"]["optional-dependencies"]), f"{line.where}: {line.text}"
    elif program == "grpcurl":
        _check_grpcurl(command, line)
    else:
        assert program in OTHERS, f"{line.where}: runs {program}, which is neither the package's nor known here"


def _problems(lines: list[Line]) -> list[str]:
    problems = []
    for line in lines:
        for command in line.commands:
            try:
                _check(command, line)
            except AssertionError as exc:  # all of them at once, not one a run
                problems.append(str(exc).split("\nassert ")[0])
    return problems


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_shown_is_a_program_with_options_it_takes(doc: str) -> None:
    problems = _problems(shown_lines(doc))
    assert not problems, "\n".join(problems)


def test_the_guides_show_commands() -> None:
    counts = {doc: len(shown_lines(doc)) for doc in DOCS}
    assert all(counts[doc] for doc in ("README.md", "docs/server.md", "docs/exporter.md", "docs/object-storage.md"))


def _inside(command: Command) -> Command | None:
    """What a docker or kubectl line runs in a container (``docker compose exec SERVICE ...``, ``kubectl ... --``)."""
    words = command.words
    if words[:3] == ["docker", "compose", "exec"]:
        return Command({}, words[4:])
    return Command({}, words[words.index("--") + 1 :]) if "--" in words else None


def test_the_commands_the_operations_guide_runs_in_containers_take_their_options() -> None:
    cluster = [
        line
        for block in blocks("docs/deploy.md")
        for line in block
        if line.commands[0].program in ("docker", "kubectl")
    ]
    inside = [(found, line) for line in cluster for found in map(_inside, line.commands) if found is not None]
    assert len(inside) >= 4, "avapctl info (compose, Kubernetes), avap-pin and --unpin, avap-pin in a pod"
    problems = _problems([Line(line.where, line.text, [found]) for found, line in inside])
    assert not problems, "\n".join(problems)


def test_a_renamed_flag_fails_the_check() -> None:
    line = Line("here", "avap-server --snapshot /srv", _commands("avap-server --snapshot /srv"))
    with pytest.raises(AssertionError, match="here: avap-server --snapshot"):
        _check(line.commands[0], line)
    line = Line("here", "AVAP_SNAPSHOT=/srv avap-server", _commands("AVAP_SNAPSHOT=/srv avap-server"))
    with pytest.raises(AssertionError, match=r"reads no \['AVAP_SNAPSHOT'\]"):
        _check(line.commands[0], line)


# --- README.md's commands, run -----------------------------------------------------------------


def _env(home: Path, **extra: str) -> dict[str, str]:
    return {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), **extra}


def _here(text: str, replacements: Mapping[str, str]) -> str:
    for old, new in replacements.items():
        text = text.replace(old, new)
    assert not _NOT_HERE.search(text), f"a command this test cannot run here as it stands: {text}"
    return text


def _run(text: str, env: Mapping[str, str], cwd: Path, code: int = 0) -> subprocess.CompletedProcess[str]:
    """Run one line with bash, as a reader would; it must end with ``code``."""
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", text], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == code, f"exit {done.returncode}: {text}\n{done.stdout}{done.stderr}"
    return done


@contextlib.contextmanager
def _started(text: str, env: Mapping[str, str], cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """Start a program that runs until stopped (its own process, so that the test signals it and nothing else)."""
    (command,) = _commands(text)
    program = command.words[0] if "/" in command.words[0] else shutil.which(command.words[0], path=env["PATH"])
    assert program is not None, f"{command.words[0]} is not on {env['PATH']}"
    argv = [program, *command.words[1:]]
    process = subprocess.Popen(
        argv, env={**env, **command.env}, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:  # the test failed on the way: stop it as an operator would
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait(30)
        for stream in (process.stdout, process.stderr):
            assert stream is not None
            stream.close()


@contextlib.contextmanager
def _server(text: str, env: Mapping[str, str], cwd: Path) -> Iterator[tuple[str, int, list[str]]]:
    """A server started by a line of the docs: (its address, the version it serves, its log so far)."""
    with _started(text, env, cwd) as process:
        lines, seen = log_lines(process), list[str]()
        match = wait_for_line(lines, r"serving catalog version (\d+) .* on 127\.0\.0\.1:(\d+)", seen)
        drain = threading.Thread(target=lambda: seen.extend(lines), daemon=True)  # keeps its log pipe from filling
        drain.start()
        yield f"127.0.0.1:{match[2]}", int(match[1]), seen
        process.terminate()
        assert process.wait(30) == 0, "".join(seen)
        drain.join(10)


def _first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, f"it ended without a line: exit {process.wait(30)}"
    return line


def test_the_setup_and_test_commands_name_what_the_project_has() -> None:
    # Installing needs the network and the suite cannot run itself; each is parsed and checked instead.
    setup, quick_start, tests, _, _ = blocks("README.md")
    assert [line.text for line in setup] == ["python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'"]
    assert [line.text for line in tests] == [".venv/bin/python -m pytest"]
    assert (BIN / "pip").exists() and (BIN / "python").exists()
    assert quick_start[0].text == ".venv/bin/avap-server", "the first command a reader runs"


def _grpcurl(command: Command, address: str) -> None:
    """What a grpcurl line of the docs asks, asked with grpcio: reflection lists, a method answers."""
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        if command.words[-1] == "list":
            services = ProtoReflectionDescriptorDatabase(channel).get_services()
            assert "avapdefs.v1.DefinitionService" in services and "grpc.health.v1.Health" in services
            return
        service, method = command.words[-1].split("/")
        found = descriptor_pool.Default().FindServiceByName(service).methods_by_name[method]
        request = message_factory.GetMessageClass(found.input_type)()
        if "-d" in command.words:
            json_format.Parse(command.words[command.words.index("-d") + 1], request)
        answer_type = message_factory.GetMessageClass(found.output_type)
        call = channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=answer_type.FromString,
        )
        call(request, timeout=10)


def test_the_quick_start_runs_and_so_does_calling_it(tmp_path: Path) -> None:
    """README's quick start, then docs/server.md's "Calling it" and both docs' Python, against that server."""
    _, quick_start, _, _, _ = blocks("README.md")
    assert len(quick_start) == 3, "the server, avap-get, avap-sync"
    serve, get, sync = quick_start
    somewhere = tmp_path / "elsewhere"  # "started from any other directory": the sample in the package
    somewhere.mkdir()
    launch = _here(serve.text, {".venv/bin/": f"{BIN}/"})
    with _server(launch, _env(tmp_path, AVAP_PORT="0"), somewhere) as (address, version, log):
        env = _env(tmp_path, AVAP_SERVER=address)
        here = {ADDRESS: address, "/tmp/avap-cache": str(tmp_path / "avap-cache"), ".venv/bin/": f"{BIN}/"}
        assert "addVar" in _run(_here(get.text, here), env, somewhere).stdout
        assert f"synced catalog version {version}" in _run(_here(sync.text, here), env, somewhere).stdout
        assert (tmp_path / "avap-cache" / f"catalog-{version:010d}.avsnap").exists()
        _the_server_guides_calls(address, version, env, tmp_path)
        _the_python_snippets(address, version, env, tmp_path)
    assert not any(" ERROR " in line or "Traceback" in line for line in log), "".join(log)


def _the_server_guides_calls(address: str, version: int, env: Mapping[str, str], tmp_path: Path) -> None:
    _, calling = blocks("docs/server.md")
    assert [line.commands[0].program for line in calling] == ["avap-get"] * 2 + ["avap-sync"] + ["grpcurl"] * 3
    here = {ADDRESS: address, ".venv/bin/": f"{BIN}/"}
    text, as_json, sync = (_run(_here(line.text, here), env, tmp_path).stdout for line in calling[:3])
    assert "addVar" in text and json.loads(as_json)["name"] == "addVar"
    assert f"synced catalog version {version}" in sync and (tmp_path / "cache").is_dir()
    for line in calling[3:]:  # grpcurl is not on this machine: the same calls, made with grpcio
        _grpcurl(line.commands[0], address)


def _python_blocks(doc: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", (ROOT / doc).read_text(), flags=re.MULTILINE | re.DOTALL)


def _the_python_snippets(address: str, version: int, env: Mapping[str, str], tmp_path: Path) -> None:
    (replica,) = _python_blocks("README.md")
    (client,) = _python_blocks("docs/server.md")
    # The README waits for version 42 as an example; here the served version is the one to wait for.
    here = {ADDRESS: address, "wait_for_version(42,": f"wait_for_version({version},"}
    for code in (replica, client):
        done = subprocess.run(
            [sys.executable, "-c", _here(code, here)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{code}\n{done.stdout}{done.stderr}"
    assert (tmp_path / ".cache" / "avap").is_dir(), "the replica's cache, under the home folder"


def test_running_it_for_real_runs(tmp_path: Path, pg_dsn: str) -> None:
    """README's cron line and both servers, then its avapctl and avap-sync lines against the watched one."""
    _, _, _, for_real, operators = blocks("README.md")
    assert len(for_real) == 3, "the cron export, the server, the watched server"
    export, plain, watched = for_real
    lib, cache = tmp_path / "lib", tmp_path / "cache"
    here = {
        "postgresql://...": shlex.quote(pg_dsn),
        "AVAP_SIGNING_KEY=...": "AVAP_SIGNING_KEY=docs-signing-key",
        "AVAP_API_KEY=...": f"AVAP_API_KEY={_SECRET}",
        "/var/lib/avap": str(lib),
        "/var/cache/avap": str(cache),
        "--host 0.0.0.0": "--host 127.0.0.1",
        "--metrics-port 9102": "--metrics-port 0",
    }
    env = _env(tmp_path, AVAP_PORT="0")
    _run(f"avap-export load-sample --dsn {shlex.quote(pg_dsn)}", env, tmp_path)  # the tables the cron line reads
    assert "published version 1" in _run(_here(export.text, here), env, tmp_path).stdout
    assert "unchanged at version 1" in _run(_here(export.text, here), env, tmp_path).stdout, "an unchanged table"
    with _server(_here(plain.text, here), env, tmp_path) as (_, version, _):
        assert version == 1
    with _server(_here(watched.text, here), env, tmp_path) as (address, version, log):
        assert any(line.startswith("{") and "serving metrics on http://127.0.0.1:" in line for line in log), log
        _the_operators_lines(operators, here, _env(tmp_path, AVAP_SERVER=address, AVAP_API_KEY=_SECRET), tmp_path)
    assert (cache / f"catalog-{version:010d}.avsnap").exists()


def _the_operators_lines(operators: list[Line], here: Mapping[str, str], env: Mapping[str, str], cwd: Path) -> None:
    words = [line.commands[0].words[:2] for line in operators]
    assert [word[-1] for word in words[:6]] == ["info", "ls", "get", "watch", "health", "info"], words
    assert len(operators) == 7 and operators[6].commands[0].program == "avap-sync"
    info, ls, get, watch, health, info_json, sync = (_here(line.text, here) for line in operators)
    assert re.search(r"^version +1$", _run(info, env, cwd).stdout, flags=re.MULTILINE)
    assert "addVar" in _run(ls, env, cwd).stdout.split()
    assert "addVar" in _run(get, env, cwd).stdout
    assert _run(health, env, cwd).stdout.strip() == "SERVING"
    assert float(_run(info_json, env, cwd).stdout) >= 0, "jq .age_s: a number"
    with _started(watch, env, cwd) as process:  # until Ctrl-C
        assert _first_line(process).startswith("version 1 live")
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 130
    with _started(sync, env, cwd) as process:  # until stopped
        assert _first_line(process).startswith("synced catalog version 1")
        process.terminate()
        assert process.wait(30) == 0


# --- The other guides' commands, run where they need nothing but the test's PostgreSQL ----------


def test_python_m_server_is_avap_server_and_says_its_version(tmp_path: Path) -> None:
    (running, _) = blocks("docs/server.md")
    assert [line.text.split("#")[0].strip() for line in running[2:]] == [
        "python -m server --help",
        "avap-server --version",
    ]
    env = _env(tmp_path)
    same = _run(running[2].text, env, tmp_path).stdout
    assert same == _run("avap-server --help", env, tmp_path).stdout and "--snapshots" in same
    version = _run(running[3].text, env, tmp_path).stdout
    assert "snapshot format" in version and "avapdefs.v1.DefinitionService" in version


def test_regenerating_the_sample_as_the_exporter_guide_shows(tmp_path: Path, pg_dsn: str) -> None:
    (regenerate,) = [block for block in blocks("docs/exporter.md") if block[0].text.startswith("rm snapshots/")]
    sample = ROOT / "snapshots" / "catalog-0000000001.avsnap"
    (tmp_path / "snapshots").mkdir()
    shutil.copy(sample, tmp_path / "snapshots")
    env = _env(tmp_path, DSN=pg_dsn)
    for line in regenerate:
        _run(line.text, env, tmp_path)
    assert (tmp_path / "snapshots" / sample.name).read_bytes() == sample.read_bytes()


def test_inspect_prints_what_the_exporter_guide_shows(tmp_path: Path) -> None:
    shown = (ROOT / "docs" / "exporter.md").read_text().split("$ avap-export inspect snapshots/catalog-0000000001")[1]
    expected = shown.split("\n\n")[0].splitlines()[1:]  # the output, up to the next command
    output = _run("avap-export inspect snapshots/catalog-0000000001.avsnap", _env(tmp_path), ROOT).stdout.splitlines()
    for line in expected:
        if "..." in line:  # elided: what precedes the dots is the start of a line
            prefix = line.split("...")[0]
            assert not prefix or any(printed.startswith(prefix) for printed in output), f"{line!r} in {output}"
        else:
            assert line in output, f"docs/exporter.md shows {line!r}; inspect prints:\n" + "\n".join(output)


def test_the_object_storage_guides_commands_run(tmp_path: Path, pg_dsn: str, seaweed: SeaweedS3, s3_url: str) -> None:
    """Publish, a server following the store, a worker pulling from it: docs/object-storage.md's lines, in order.

    The store is the test's SeaweedFS (its address stands for http://127.0.0.1:8333, a fresh prefix of its
    bucket for s3://avap/prod); the other AWS_* variables (keys, region) are the environment's, as the guide
    says, with no AWS_ALLOW_HTTP: a plain-HTTP AWS_ENDPOINT_URL is enough.
    """
    (publish,), (serve,), (once, follow) = blocks("docs/object-storage.md")
    store_env = {name: value for name, value in seaweed.env().items() if name != "AWS_ALLOW_HTTP"}
    env = _env(tmp_path, AVAP_PORT="0", **store_env)
    here = {
        "postgresql://...": shlex.quote(pg_dsn),
        "s3://avap/prod": s3_url,
        "http://127.0.0.1:8333": seaweed.endpoint,
        "/var/lib/avap": str(tmp_path / "exporter"),
    }
    _run(f"avap-export load-sample --dsn {shlex.quote(pg_dsn)}", env, tmp_path)
    assert f"announced version 1 in {s3_url}" in _run(_here(publish.text, here), env, tmp_path).stdout
    serving = {**here, "/var/cache/avap": str(tmp_path / "server")}
    with _server(_here(serve.text, serving), env, tmp_path) as (address, version, _):
        assert version == 1 and address
    assert (tmp_path / "server" / "catalog-0000000001.avsnap").exists()
    worker = {**here, "/var/cache/avap": str(tmp_path / "worker")}
    assert "synced catalog version 1" in _run(_here(once.text, worker), env, tmp_path).stdout
    following = {**here, "/var/cache/avap": str(tmp_path / "follower")}
    with _started(_here(follow.text, following), env, tmp_path) as process:  # until SIGTERM
        assert _first_line(process).startswith("synced catalog version 1")
        process.terminate()
        assert process.wait(30) == 0
