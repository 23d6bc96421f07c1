"""The deployment files hang together: docker-compose.yml and the Kubernetes manifests in deploy/k8s/.

No Docker engine or Kubernetes cluster runs here, so the files are read, not
deployed. What can run does: every program they start must be an entry point
of this package ([project.scripts] in pyproject.toml) and accept the options
given to it (its own ``--help`` is asked); the health checks and probes are
run against a real server started with the deployed command line; the
exporter's health check runs on real snapshot folders.

Kubernetes: every manifest file that is a whole object is validated against
the Kubernetes schemas (kubernetes-validate, strict: an unknown field fails)
on every run. ``kubectl kustomize`` renders the three variants, and their
objects are validated the same way and checked for consistency, only where
kubectl is installed (CI has it; without it the checks that need the rendered
variants run on the base alone). ``kubectl apply --dry-run=client`` needs an
API server even in client mode (it asks the server which kinds exist: "unable
to recognize ... connection refused" with none), so it runs only where kubectl
has a current context. The bucket variant's exporter and server run here as
deployed (their commands, and the variables its ConfigMap and Secrets give
them) against the tests' PostgreSQL and SeaweedFS: the exporter announces a
version in the bucket and the server serves it, answering the probes; and
the exporter's claim, once lost, is refilled from the bucket as
docs/deploy.md says.
"""

from __future__ import annotations

import functools
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import psycopg
import pytest
import yaml
from grpc_health.v1 import health_pb2

from tests.helpers import MakeSnapshot
from tests.objectstore import SeaweedS3
from tests.server.helpers import health_status, log_lines, wait_for_line

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
VARIANTS = ("shared-volume", "sidecar", "bucket")
BIN = Path(sys.executable).parent
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
# The oldest Kubernetes the manifests are for (preStop's sleep action is on by default from 1.30),
# and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
# Shell words the compose file's short script (the exporter's health check) may use besides entry
# points: keywords only, and no utility at all (the exporter's schedule is `avap-export --every`, no
# shell loop). Nothing else may appear.
SHELL_KEYWORDS = frozenset({"for", "while", "do", "done", "if", "then", "else", "fi", "!"})
SHELL_UTILITIES: frozenset[str] = frozenset()
SEPARATORS = frozenset({";", "&&", "||", "|", "&", "(", ")"})


# ---- reading commands ----------------------------------------------------------------------


def commands_of(argv: list[str]) -> list[list[str]]:
    """The command lines ``argv`` runs: itself, or each command of its ``sh -c`` script."""
    if argv[:2] in (["sh", "-c"], ["/bin/sh", "-c"]):
        lexer = shlex.shlex(argv[2], posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        return _split_commands(list(lexer))
    return [argv]


def _split_commands(tokens: list[str]) -> list[list[str]]:
    commands: list[list[str]] = [[]]
    for token in tokens:
        if token in SEPARATORS:
            commands.append([])
        elif commands[-1] or not _runs_nothing(token):
            commands[-1].append(token)
    return [command for command in commands if command and command[0] != "for"]  # a for list runs nothing


def _runs_nothing(token: str) -> bool:
    # A keyword or an assignment where a command would start (``for`` starts its list, dropped above).
    return token in SHELL_KEYWORDS - {"for"} or re.fullmatch(r"[A-Za-z_]\w*=.*", token) is not None


def help_text(argv: list[str]) -> str:
    """What ``argv[0] --help`` says, and ``argv[0] argv[1] --help`` when argv[1] is a subcommand."""
    assert (BIN / argv[0]).exists(), f"{argv[0]} is not installed in {BIN}: run pip install -e '.[dev]'"
    texts = [_help(argv[0])]
    if len(argv) > 1 and re.fullmatch(r"[a-z][a-z-]*", argv[1]) and f" {argv[1]}" in texts[0]:
        texts.append(_help(argv[0], argv[1]))
    return "\n".join(texts)


@functools.cache
def _help(program: str, *words: str) -> str:
    done = subprocess.run([BIN / program, *words, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{program} {' '.join(words)} --help exited {done.returncode}: {done.stderr}"
    return done.stdout


def check_entry_point(argv: list[str], env_names: set[str]) -> None:
    """``argv`` runs only entry points (and the shell words allowed), each with options its help names.

    ``env_names``: the AVAP_* variables set for it; each must be one its tools read, or its script.
    """
    script = argv[2] if argv[:2] == ["sh", "-c"] else ""
    helps = []
    for command in commands_of(argv):
        program = command[0]
        if program in SHELL_UTILITIES:
            continue
        assert program in SCRIPTS, f"{program!r} ({' '.join(argv)}) is not an entry point of the package"
        text = help_text(command)
        helps.append(text)
        for flag in (word.split("=", 1)[0] for word in command if word.startswith("--")):
            assert re.search(rf"{re.escape(flag)}(?![\w-])", text), (
                f"{program} does not take {flag} ({' '.join(command)})"
            )
    for name in env_names:
        assert any(name in text for text in helps) or f"${name}" in script, f"nothing in {argv} reads {name}"


# ---- docker-compose.yml --------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _unescape(text: str) -> str:
    # Compose interpolates $VAR from the host and turns $$ into $; every $ in our commands is meant for the container.
    assert not re.search(r"(?<!\$)\$(?!\$)", text.replace("$$", "")), f"a bare $ compose would interpolate: {text}"
    return text.replace("$$", "$")


def compose_argv(value: list[str] | str) -> list[str]:
    """A compose command or healthcheck test as the container runs it."""
    if isinstance(value, str):
        return ["sh", "-c", _unescape(value)]
    if value[0] == "CMD-SHELL":
        return ["sh", "-c", _unescape(value[1])]
    words = value[1:] if value[0] == "CMD" else value
    return [_unescape(word) for word in words]


def option(argv: list[str], flag: str, default: str | None = None) -> str | None:
    """The value after ``flag`` in ``argv`` (``--flag VALUE`` or ``--flag=VALUE``), else ``default``."""
    for index, word in enumerate(argv):
        if word == flag and index + 1 < len(argv):
            return argv[index + 1]
        if word.startswith(f"{flag}="):
            return word.split("=", 1)[1]
    return default


def ours(service: dict[str, Any]) -> bool:
    """A service built from this repository's Dockerfile."""
    return service.get("build") in (".", {"context": "."})


def test_compose_services_volumes_and_ports_hang_together(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "sample", "exporter", "server"}
    declared = set(compose["volumes"])
    used = {mount.split(":")[0] for service in services.values() for mount in service.get("volumes", [])}
    assert used == declared, "every named volume is declared, and every declared one is used"
    for name, service in services.items():
        for target, condition in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on {target}, which is no service"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy; it has no check"
            if condition["condition"] == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} must run once for {name} to start"
    exporter, server = services["exporter"], services["server"]
    server_argv = compose_argv(server["command"])
    folder = option(server_argv, "--snapshots")
    assert exporter["environment"]["AVAP_SNAPSHOTS"] == folder, "the exporter publishes where the server serves"
    assert f"snapshots:{folder}" in exporter["volumes"] and f"snapshots:{folder}" in server["volumes"]
    assert option(server_argv, "--host") == "0.0.0.0", "the server must listen beyond the container's loopback"
    port = option(server_argv, "--port", "50051")
    published = [mapping.split(":")[-1] for mapping in server["ports"]]
    assert published == [port, option(server_argv, "--metrics-port")], "gRPC and metrics, nothing else"
    health = compose_argv(server["healthcheck"]["test"])
    assert health[:2] == ["avapctl", "health"] and option(health, "--server") == f"127.0.0.1:{port}"
    assert f"{folder}/" in exporter["healthcheck"]["test"][1], "the exporter's check reads the shared folder"


def test_compose_runs_only_entry_points_with_options_they_take(compose: dict[str, Any]) -> None:
    checked = 0
    for service in compose["services"].values():
        if not ours(service):
            continue
        env = {key for key in service.get("environment", {}) if key.startswith("AVAP_")}
        check_entry_point(compose_argv(service["command"]), env)
        if "healthcheck" in service:
            check_entry_point(compose_argv(service["healthcheck"]["test"]), set())
        checked += 1
    assert checked == 3


def test_compose_exporter_health_check_verifies_the_newest_snapshot(
    compose: dict[str, Any], make_snapshot: MakeSnapshot, tmp_path: Path
) -> None:
    script = compose_argv(compose["services"]["exporter"]["healthcheck"]["test"])[2]

    def check(folder: Path) -> int:
        done = subprocess.run(
            ["sh", "-c", script.replace("/snapshots/", f"{folder}/")],
            env={"PATH": f"{BIN}:/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.returncode

    folder = tmp_path / "snapshots"
    folder.mkdir()
    assert check(folder) != 0, "an empty folder is not healthy"
    make_snapshot(folder=folder, version=9)
    newest = make_snapshot(folder=folder, version=10)  # 10 after 9: names sort by version
    assert check(folder) == 0
    newest.write_bytes(newest.read_bytes()[:-7])  # the newest is truncated; an older good one does not count
    assert check(folder) == 9


# ---- Kubernetes ----------------------------------------------------------------------------


def kustomization(folder: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return loaded


def resource_files(folder: Path) -> Iterator[Path]:
    """The whole-object files of a kustomization and of the kustomizations it includes."""
    for entry in kustomization(folder).get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            yield from resource_files(path)
        else:
            yield path


def patch_files(folder: Path) -> list[Path]:
    return [folder / patch["path"] for patch in kustomization(folder).get("patches", [])]


def validate(document: dict[str, Any], where: str) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            raise AssertionError(
                f"{where}: {document['kind']} at {path}: {exc.message} (Kubernetes {version})"
            ) from None


def rendered(variant: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        ["kubectl", "kustomize", str(K8S / variant)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {variant}: {done.stderr}"
    return [document for document in yaml.safe_load_all(done.stdout) if document]


KUBECTL = shutil.which("kubectl")


def variants() -> dict[str, list[dict[str, Any]]]:
    """Each variant's objects, rendered by kubectl; without kubectl, the base's objects alone."""
    if KUBECTL is None:
        base = [yaml.safe_load(path.read_text()) for path in resource_files(K8S / "base")]
        return {"base": base}
    return {variant: rendered(variant) for variant in VARIANTS}


def test_every_kustomization_names_files_that_exist() -> None:
    folders = [K8S / "base", *(K8S / variant for variant in VARIANTS)]
    for folder in folders:
        for entry in kustomization(folder).get("resources", []):
            path = folder / entry
            assert path.is_file() or (path / "kustomization.yaml").is_file(), f"{folder.name}: {entry} is missing"
        for path in patch_files(folder):
            assert path.is_file(), f"{folder.name}: patch {path.name} is missing"
    listed = {path for folder in folders for path in [*resource_files(folder), *patch_files(folder)]}
    on_disk = {path.resolve() for path in K8S.rglob("*.yaml") if path.name != "kustomization.yaml"}
    assert on_disk == listed, "every manifest file is part of a kustomization"


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    files = {path for variant in VARIANTS for path in resource_files(K8S / variant)}
    assert len(files) == 8
    for path in sorted(files):
        validate(yaml.safe_load(path.read_text()), str(path.relative_to(ROOT)))
    objects = {(doc["kind"], doc["metadata"]["name"]) for path in files for doc in [yaml.safe_load(path.read_text())]}
    for variant in VARIANTS:
        for path in patch_files(K8S / variant):
            patch = yaml.safe_load(path.read_text())
            assert (patch["kind"], patch["metadata"]["name"]) in objects, f"{path.name} patches nothing"
    if KUBECTL is None:
        return  # the rendered variants are validated where kubectl is installed
    for variant, documents in variants().items():
        for document in documents:
            validate(document, f"kubectl kustomize {variant}")
        _dry_run(variant, documents)


def _dry_run(variant: str, documents: list[dict[str, Any]]) -> None:
    context = subprocess.run(["kubectl", "config", "current-context"], capture_output=True, timeout=30, check=False)
    if context.returncode != 0:
        return  # no cluster to ask which kinds exist (see the module docstring)
    done = subprocess.run(
        ["kubectl", "apply", "--dry-run=client", "-f", "-"],
        input=yaml.safe_dump_all(documents),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"kubectl apply --dry-run=client ({variant}): {done.stderr}"


def pod_specs(documents: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(object, pod spec) of every Deployment and CronJob."""
    for document in documents:
        if document["kind"] == "Deployment":
            yield document, document["spec"]["template"]["spec"]
        elif document["kind"] == "CronJob":
            yield document, document["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [*pod.get("initContainers", []), *pod.get("containers", [])]
    return found


def pod_labels(documents: list[dict[str, Any]], pod: dict[str, Any]) -> dict[str, str]:
    """The labels of the pod template whose spec is ``pod``."""
    for document in documents:
        if document["kind"] == "Deployment" and document["spec"]["template"]["spec"] is pod:
            labels: dict[str, str] = document["spec"]["template"]["metadata"]["labels"]
            return labels
        if document["kind"] == "CronJob" and document["spec"]["jobTemplate"]["spec"]["template"]["spec"] is pod:
            labels = document["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
            return labels
    raise AssertionError("no such pod template")


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [document for document in documents if document["kind"] == kind]


def server_deployment(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """The avap-server Deployment (the bucket variant has the exporter's beside it)."""
    (deployment,) = [d for d in by_kind(documents, "Deployment") if d["metadata"]["name"] == "avap-server"]
    return deployment


def server_container(pod: dict[str, Any]) -> dict[str, Any]:
    servers: list[dict[str, Any]] = [c for c in pod["containers"] if c["command"][0] == "avap-server"]
    assert len(servers) == 1
    return servers[0]


def mount_of(container: dict[str, Any], path: str | None) -> str:
    """The volume mounted at ``path`` in ``container``."""
    volumes: list[str] = [mount["name"] for mount in container["volumeMounts"] if mount["mountPath"] == path]
    assert len(volumes) == 1, f"{container['name']}: {len(volumes)} volumes at {path}"
    return volumes[0]


def test_server_deployment_service_budget_and_autoscaler_hang_together() -> None:
    for variant, documents in variants().items():
        deployment = server_deployment(documents)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
        pod = deployment["spec"]["template"]["spec"]
        server = server_container(pod)
        argv = server["command"]
        port = int(option(argv, "--port", "50051") or 0)
        assert option(argv, "--processes") == "1", f"{variant}: one process per pod (server-deployment.yaml says why)"
        assert [p["containerPort"] for p in server["ports"]] == [port, int(option(argv, "--metrics-port") or 0)]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == option(argv, "--metrics-port")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert server[probe]["grpc"]["port"] == port, f"{variant}: {probe} asks another port"
        (service,) = by_kind(documents, "Service")
        assert service["spec"]["selector"].items() <= labels.items()
        for _, pod in pod_specs([d for d in documents if d is not deployment]):
            assert not service["spec"]["selector"].items() <= pod_labels(documents, pod).items(), "only servers"
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in server["ports"]}
        (budget,) = by_kind(documents, "PodDisruptionBudget")
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
        (scaler,) = by_kind(documents, "HorizontalPodAutoscaler")
        assert scaler["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert scaler["spec"]["minReplicas"] > budget["spec"]["maxUnavailable"], "a drain leaves a server up"
        assert [m["resource"]["name"] for m in scaler["spec"]["metrics"]] == ["cpu"]
        _check_pods(variant, documents)


def _check_pods(variant: str, documents: list[dict[str, Any]]) -> None:
    for document, pod in pod_specs(documents):
        volumes = {volume["name"] for volume in pod["volumes"]}
        for container in containers(pod):
            where = f"{variant}: {document['metadata']['name']}/{container['name']}"
            assert {mount["name"] for mount in container["volumeMounts"]} <= volumes, f"{where}: unknown volume"
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys() and "memory" in resources["limits"], where
            assert container["securityContext"]["readOnlyRootFilesystem"], where
        assert pod["securityContext"]["runAsNonRoot"]


def test_each_variant_fills_the_folder_the_server_serves() -> None:
    if KUBECTL is None:
        return  # the variants exist only rendered (see the module docstring)
    rendered_variants = variants()
    shared, sidecar = rendered_variants["shared-volume"], rendered_variants["sidecar"]
    (deployment,) = by_kind(shared, "Deployment")
    (cronjob,) = by_kind(shared, "CronJob")
    (claim,) = by_kind(shared, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "servers on many nodes share it"
    for document, pod in pod_specs(shared):
        (container,) = [c for c in containers(pod) if c["command"][0] in ("avap-server", "avap-export")]
        volume = mount_of(container, option(container["command"], "--snapshots"))
        (source,) = [v for v in pod["volumes"] if v["name"] == volume]
        assert source["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"], document["kind"]
    assert {"name": "AVAP_POLL", "value": "1"} in server_container(deployment["spec"]["template"]["spec"])["env"]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    (deployment,) = by_kind(sidecar, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    server = server_container(pod)
    folder_volume = mount_of(server, option(server["command"], "--snapshots"))
    syncs = [c for c in containers(pod) if c["command"][0] == "avap-sync"]
    assert [("--watch" in c["command"]) for c in syncs] == [False, True], "a first sync, then the follower"
    assert syncs[0] in pod["initContainers"], "the server starts only once a snapshot is there"
    for sync in syncs:
        assert mount_of(sync, option(sync["command"], "--dest")) == folder_volume
    (origin,) = by_kind(sidecar, "ConfigMap")
    assert "AVAP_SERVER" in origin["data"]
    assert not by_kind(sidecar, "CronJob") and not by_kind(sidecar, "PersistentVolumeClaim")
    _check_bucket(rendered_variants["bucket"])


def _check_bucket(documents: list[dict[str, Any]]) -> None:
    """The servers pull from the bucket the exporter publishes to, each into its own folder; no shared volume."""
    (bucket,) = by_kind(documents, "ConfigMap")
    assert set(bucket["data"]) == {"AVAP_SOURCE", "AWS_REGION"} and bucket["data"]["AVAP_SOURCE"].startswith("s3://")
    pod = server_deployment(documents)["spec"]["template"]["spec"]
    server = server_container(pod)
    assert [c["name"] for c in containers(pod)] == ["server"], "no sidecar: the server's supervisor pulls"
    (folder,) = [v for v in pod["volumes"] if v["name"] == mount_of(server, option(server["command"], "--snapshots"))]
    assert "emptyDir" in folder and "persistentVolumeClaim" not in folder, "each pod's own folder"
    sources = server["envFrom"]
    assert {"configMapRef": {"name": bucket["metadata"]["name"]}} in sources
    assert {"secretRef": {"name": "avap-bucket-reader", "optional": True}} in sources
    assert {"secretRef": {"name": "avap-api-key", "optional": True}} in sources, "the base's key is kept"
    (exporter,) = [d for d in by_kind(documents, "Deployment") if d["metadata"]["name"] == "avap-exporter"]
    assert exporter["spec"]["replicas"] == 1 and exporter["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = containers(exporter["spec"]["template"]["spec"])
    assert option(container["command"], "--every"), "one long-lived exporter on a schedule"
    env = {item["name"]: item["valueFrom"]["configMapKeyRef"] for item in container["env"]}
    assert env["AVAP_EXPORT_PUBLISH"] == {"name": bucket["metadata"]["name"], "key": "AVAP_SOURCE"}
    assert env["AWS_REGION"] == {"name": bucket["metadata"]["name"], "key": "AWS_REGION"}
    assert {"secretRef": {"name": "avap-bucket-writer", "optional": True}} in container["envFrom"]
    (claim,) = by_kind(documents, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"], "one exporter pod"
    volume = mount_of(container, option(container["command"], "--snapshots"))
    (source,) = [v for v in exporter["spec"]["template"]["spec"]["volumes"] if v["name"] == volume]
    assert source["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert not by_kind(documents, "CronJob")


def manifest_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every container in every manifest file (patches included), with its file's name."""
    for path in sorted(K8S.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            yield from ((path.name, container) for container in _walk_containers(document))


def _walk_containers(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers"):
                yield from value
            else:
                yield from _walk_containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_containers(item)


def test_manifests_run_only_entry_points_with_options_they_take() -> None:
    whole = {container["name"]: container for _, container in manifest_containers() if "image" in container}
    for name, container in manifest_containers():
        # A patch that changes a container defined elsewhere names it and gives no image: check it as merged.
        command = container.get("command") or whole[container["name"]].get("command")
        assert command, f"{name}: {container['name']} runs the image's default command"
        env = {item["name"] for item in container.get("env", []) if item["name"].startswith("AVAP_")}
        check_entry_point(command, env)
    assert {container["command"][0] for container in whole.values()} == {"avap-server", "avap-export", "avap-sync"}
    generated = kustomization(K8S / "sidecar")["configMapGenerator"][0]["literals"]
    check_entry_point(["avap-sync", "--watch"], {literal.split("=", 1)[0] for literal in generated})
    bucket = {
        literal.split("=", 1)[0] for literal in kustomization(K8S / "bucket")["configMapGenerator"][0]["literals"]
    }
    check_entry_point(["avap-server"], {name for name in bucket if name.startswith("AVAP_")})


# ---- the checks against a server started as deployed ---------------------------------------


def test_health_checks_and_probes_ask_what_the_deployed_server_answers(
    compose: dict[str, Any], make_snapshot: MakeSnapshot
) -> None:
    deployment = yaml.safe_load((K8S / "base" / "server-deployment.yaml").read_text())
    server = server_container(deployment["spec"]["template"]["spec"])
    folder = make_snapshot(version=1).parent
    argv = _local(server["command"], folder)
    process = subprocess.Popen([BIN / argv[0], *argv[1:]], stderr=subprocess.PIPE, text=True)
    try:
        seen: list[str] = []
        port = int(wait_for_line(log_lines(process), r"serving catalog version .* on 127\.0\.0\.1:(\d+)", seen)[1])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            service = server[probe]["grpc"].get("service", "")
            assert health_status(port, service) == health_pb2.HealthCheckResponse.SERVING, probe
        health = compose_argv(compose["services"]["server"]["healthcheck"]["test"])
        assert _run(health, port) == 0
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert process.stderr is not None
        process.stderr.close()
    assert _run(health, port) == 3, "nothing listens: the check fails (exit 3, unreachable)"


def _local(argv: list[str], folder: Path) -> list[str]:
    """``argv`` on loopback, any free ports, serving ``folder``."""
    values = {"--host": "127.0.0.1", "--port": "0", "--metrics-port": "0", "--snapshots": str(folder)}
    return [values.get(argv[index - 1], word) if index else word for index, word in enumerate(argv)]


def _run(health: list[str], port: int) -> int:
    argv = [word.replace(":50051", f":{port}") for word in health]
    return subprocess.run([BIN / argv[0], *argv[1:]], capture_output=True, timeout=60, check=False).returncode


def bucket_values() -> dict[str, str]:
    """The bucket variant's ConfigMap, as its kustomization generates it."""
    literals = kustomization(K8S / "bucket")["configMapGenerator"][0]["literals"]
    return dict(literal.split("=", 1) for literal in literals)


def test_the_bucket_variants_exporter_and_server_run_as_deployed(
    pg_dsn: str, seaweed: SeaweedS3, s3_url: str, tmp_path: Path
) -> None:
    """The exporter's command publishes into the bucket; the server's command, given the same variables, serves it.

    The test's store and a fresh prefix stand for the ConfigMap's bucket; the store's AWS_* (the Secrets' keys
    and the endpoint) are in the environment. The exporter's --every run is stopped, as Kubernetes stops it,
    with SIGTERM (exit 0) once it has announced.
    """
    values = bucket_values()
    assert values["AVAP_SOURCE"].startswith("s3://")
    exporter = yaml.safe_load((K8S / "bucket" / "exporter-deployment.yaml").read_text())
    (container,) = exporter["spec"]["template"]["spec"]["containers"]
    argv = _local(container["command"], tmp_path / "exporter")
    loaded = subprocess.run([BIN / "avap-export", "load-sample", "--dsn", pg_dsn], capture_output=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    env = {**seaweed.env(), "PATH": f"{BIN}:/usr/bin:/bin", "AVAP_PG_DSN": pg_dsn, "AVAP_EXPORT_PUBLISH": s3_url}
    process = subprocess.Popen([BIN / argv[0], *argv[1:]], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        wait_for_line(iter(process.stdout), rf"announced version 1 in {re.escape(s3_url)}", [])
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert process.stdout is not None
        process.stdout.close()
    deployment = yaml.safe_load((K8S / "base" / "server-deployment.yaml").read_text())
    server = server_container(deployment["spec"]["template"]["spec"])
    argv = _local(server["command"], tmp_path / "server")
    env = {**seaweed.env(), "PATH": f"{BIN}:/usr/bin:/bin", **values, "AVAP_SOURCE": s3_url}
    process = subprocess.Popen([BIN / argv[0], *argv[1:]], env=env, stderr=subprocess.PIPE, text=True)
    lines, seen = log_lines(process), list[str]()  # held: dropping the generator would close the server's stderr
    try:
        port = int(wait_for_line(lines, r"serving catalog version 1 .* on 127\.0\.0\.1:(\d+)", seen)[1])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            service = server[probe]["grpc"].get("service", "")
            assert health_status(port, service) == health_pb2.HealthCheckResponse.SERVING, probe
    finally:
        process.send_signal(signal.SIGTERM)
        seen.extend(lines)  # to the end of its log: it has stopped
        code = process.wait(30)
        assert process.stderr is not None
        process.stderr.close()
    assert code == 0, "".join(seen)
    assert (tmp_path / "server" / "catalog-0000000001.avsnap").read_bytes() == (
        tmp_path / "exporter" / "catalog-0000000001.avsnap"
    ).read_bytes(), "the server serves the exporter's file, pulled from the bucket"


def test_the_bucket_variants_exporter_claim_once_lost_is_refilled_from_the_bucket(
    pg_dsn: str, seaweed: SeaweedS3, s3_url: str, tmp_path: Path
) -> None:
    """docs/deploy.md, "The bucket variant": an empty folder is refused by the bucket; avap-sync --from refills it."""
    env = {**seaweed.env(), "PATH": f"{BIN}:/usr/bin:/bin", "AVAP_PG_DSN": pg_dsn, "AVAP_EXPORT_PUBLISH": s3_url}

    def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([BIN / argv[0], *argv[1:]], env=env, capture_output=True, text=True, timeout=60)

    assert run("avap-export", "load-sample", "--dsn", pg_dsn).returncode == 0
    assert run("avap-export", "--snapshots", tmp_path / "lost").returncode == 0
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE obex_dapl_functions SET code = code || '-- changed' WHERE id = 1")
    assert "announced version 2" in run("avap-export", "--snapshots", tmp_path / "lost").stdout
    empty = run("avap-export", "--snapshots", tmp_path / "claim")
    assert empty.returncode == 10 and "newer than this folder's newest (1)" in empty.stderr
    assert run("avap-sync", "--from", s3_url, "--dest", tmp_path / "refilled").returncode == 0
    again = run("avap-export", "--snapshots", tmp_path / "refilled")
    assert again.returncode == 0 and f"{s3_url} already announces version 2" in again.stdout
