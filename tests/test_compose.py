"""The production deployment files: docker-compose.yml, Dockerfile, .dockerignore.

The compose file is checked by the real Compose implementation: ``docker compose config``
must accept it (with dummy secrets in the environment) and must refuse it without them.
Its fully resolved JSON rendering (``config --format json``, so no YAML parser is needed)
is then checked for the properties operators rely on: health checks, start-up order, the
internal listener kept off the host, named volumes for state, the Kafka version.

``config`` only parses and resolves; it needs no Docker engine. ``make test`` builds
Compose v2 once into the cache (``python -m devstack.fetch compose``) and sets
``SLUICE_REQUIRE_COMPOSE=1``, so there a missing Compose fails these tests; elsewhere,
with no Compose installed or cached, they are skipped, saying why. The Dockerfile and
.dockerignore checks need nothing and always run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.compose import cached_compose

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

SECRETS: Mapping[str, str] = {
    "STRIPE_WEBHOOK_SECRET": "whsec_compose_test",
    "RAZORPAY_WEBHOOK_SECRET": "rzp_compose_test",
    "INTERNAL_API_TOKEN": "internal_compose_test",
    "ADMIN_API_TOKEN": "admin_compose_test",
}
PUBLIC_PORT = 8080
INTERNAL_PORT = 8081
STATE_DIR = "/var/lib/sluice/state"
ONE_SHOTS = {"topics": ["topics", "create"], "migrate": ["migrate"]}
LONG_RUNNING = {"ingress": ["ingress"], "worker": ["worker"]}
STATEFUL = {
    "kafka": "/var/lib/kafka/data",
    "postgres": "/var/lib/postgresql/data",
    "redis": "/data",
    "elasticsearch": "/usr/share/elasticsearch/data",
    "worker": STATE_DIR,
}
SUBPROCESS_TIMEOUT_S = 120

Service = dict[str, Any]


# --------------------------------------------------------------------------- compose


@dataclass(frozen=True)
class Compose:
    """A Compose implementation that can render a project as JSON."""

    argv: tuple[str, ...]
    env_file: Path

    def run(self, *args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
        # --env-file pins interpolation to an empty file, so a developer's own .env
        # next to the compose file cannot change (or satisfy) what the tests see.
        return subprocess.run(
            [
                *self.argv,
                "--project-directory",
                str(ROOT),
                "-f",
                str(COMPOSE_FILE),
                "--env-file",
                str(self.env_file),
                *args,
            ],
            capture_output=True,
            text=True,
            env=dict(env),
            timeout=SUBPROCESS_TIMEOUT_S,
            check=False,
        )


def _find_compose() -> tuple[str, ...] | str:
    """The argv prefix of a usable Compose, or the reason there is none."""
    candidates: list[tuple[str, ...]] = []
    cached = cached_compose()  # built by `make test` from Compose's Go module
    if cached is not None:
        candidates.append((str(cached),))
    docker = shutil.which("docker")
    if docker is not None:
        candidates.append((docker, "compose"))
    standalone = shutil.which("docker-compose")
    if standalone is not None:
        candidates.append((standalone,))
    if not candidates:
        return "no `docker` client (nor `docker-compose`) on PATH to run `compose config`"
    for argv in candidates:
        probe = subprocess.run(
            [*argv, "config", "--help"],
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT_S,
            check=False,
        )
        # Compose v1 (the Python one) has no JSON output; it cannot serve these checks.
        if probe.returncode == 0 and "--format" in probe.stdout:
            return argv
    return "`docker` is installed but without a Compose v2 (`docker compose` plugin)"


def _base_env() -> dict[str, str]:
    """The caller's environment minus anything that would steer Compose or the file."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("COMPOSE_", "DOCKER_DEFAULT_PLATFORM")) and name not in SECRETS
    }
    env["COMPOSE_PROJECT_NAME"] = "sluice-compose-test"
    return env


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Compose:
    found = _find_compose()
    if isinstance(found, str):
        if os.environ.get("SLUICE_REQUIRE_COMPOSE") == "1":
            pytest.fail(f"{found}; `make compose` builds one into the cache")
        pytest.skip(found)
    env_file = tmp_path_factory.mktemp("compose") / "empty.env"
    env_file.write_text("")
    return Compose(argv=found, env_file=env_file)


@pytest.fixture(scope="module")
def config(compose: Compose) -> dict[str, Any]:
    """The project as Compose resolves it, with dummy secrets set."""
    result = compose.run("config", "--format", "json", env={**_base_env(), **SECRETS})
    assert result.returncode == 0, result.stderr
    rendered: dict[str, Any] = json.loads(result.stdout)
    return rendered


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, Service]:
    found: dict[str, Service] = config["services"]
    return found


def _completed_dependencies(service: Service) -> set[str]:
    return {
        name
        for name, spec in (service.get("depends_on") or {}).items()
        if spec.get("condition") == "service_completed_successfully"
    }


def _healthy_dependencies(service: Service) -> set[str]:
    return {
        name
        for name, spec in (service.get("depends_on") or {}).items()
        if spec.get("condition") == "service_healthy"
    }


def _one_shots(services: Mapping[str, Service]) -> set[str]:
    """Services others wait on to *complete*: run once, never restarted."""
    names: set[str] = set()
    for service in services.values():
        names |= _completed_dependencies(service)
    return names


def _has_healthcheck(service: Service) -> bool:
    check = service.get("healthcheck") or {}
    test = check.get("test") or []
    return not check.get("disable", False) and bool(test) and test[0] != "NONE"


def _published_targets(service: Service) -> set[int]:
    return {int(port["target"]) for port in service.get("ports") or []}


def _published_host_ports(service: Service) -> set[str]:
    return {str(port.get("published", "")) for port in service.get("ports") or []}


def test_compose_config_is_valid(compose: Compose) -> None:
    result = compose.run("config", "--quiet", env={**_base_env(), **SECRETS})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_a_secret(compose: Compose, missing: str) -> None:
    env = {**_base_env(), **{k: v for k, v in SECRETS.items() if k != missing}}
    result = compose.run("config", "--quiet", env=env)
    assert result.returncode != 0
    assert f"set {missing}" in result.stderr


def test_compose_file_uses_the_spec_without_version_key(config: dict[str, Any]) -> None:
    assert "version" not in config
    assert not re.search(r"^version\s*:", COMPOSE_FILE.read_text(), flags=re.MULTILINE)


def test_expected_services_exist(services: dict[str, Service]) -> None:
    expected = {"kafka", "schema-registry", "postgres", "redis", "elasticsearch"}
    expected |= set(ONE_SHOTS) | set(LONG_RUNNING)
    assert expected <= set(services)


def test_every_service_has_a_healthcheck_or_is_a_one_shot(
    services: dict[str, Service],
) -> None:
    one_shots = _one_shots(services)
    assert set(ONE_SHOTS) <= one_shots
    missing = [
        name
        for name, service in services.items()
        if name not in one_shots and not _has_healthcheck(service)
    ]
    assert missing == [], f"services with neither a healthcheck nor one-shot role: {missing}"


@pytest.mark.parametrize(("name", "command"), sorted(ONE_SHOTS.items()))
def test_one_shots_run_their_command_once(
    services: dict[str, Service], name: str, command: list[str]
) -> None:
    service = services[name]
    assert service["command"] == command
    assert service.get("restart", "no") == "no"
    # Built from the project's own image, whose entrypoint is `sluice`.
    assert "build" in service
    assert service.get("entrypoint") is None


def test_one_shots_get_no_secrets(services: dict[str, Service]) -> None:
    for name in ONE_SHOTS:
        leaked = set(SECRETS) & set(services[name].get("environment") or {})
        assert leaked == set(), f"{name} receives {leaked}"


def test_start_up_order(services: dict[str, Service]) -> None:
    assert "kafka" in _healthy_dependencies(services["topics"])
    assert "postgres" in _healthy_dependencies(services["migrate"])
    assert "kafka" in _healthy_dependencies(services["schema-registry"])
    assert "topics" in _completed_dependencies(services["ingress"])
    assert {"topics", "migrate"} <= _completed_dependencies(services["worker"])


@pytest.mark.parametrize(("name", "command"), sorted(LONG_RUNNING.items()))
def test_long_running_processes_are_configured(
    services: dict[str, Service], name: str, command: list[str]
) -> None:
    service = services[name]
    assert service["command"] == command
    assert "build" in service
    env = service["environment"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["SCHEMA_REGISTRY_URL"] == "http://schema-registry:8081"
    assert env["DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in env["DATABASE_URL"]
    assert env["REDIS_URL"].startswith("redis://redis:6379")
    assert env["ELASTICSEARCH_URL"] == "http://elasticsearch:9200"
    # The secrets come from the environment, not from the file.
    for secret, value in SECRETS.items():
        assert env[secret] == value
    assert service.get("restart") in {"always", "unless-stopped"}


def test_ingress_publishes_the_public_port_only(services: dict[str, Service]) -> None:
    ingress = services["ingress"]
    env = ingress["environment"]
    assert env["INGRESS_PUBLIC_PORT"] == str(PUBLIC_PORT)
    assert env["INGRESS_INTERNAL_PORT"] == str(INTERNAL_PORT)
    assert {"INGRESS_PUBLIC_HOST", "INGRESS_INTERNAL_HOST"} <= set(env)
    assert PUBLIC_PORT in _published_targets(ingress)
    assert INTERNAL_PORT not in _published_targets(ingress)
    assert str(INTERNAL_PORT) not in _published_host_ports(ingress)


def test_ingress_healthcheck_probes_readyz_on_the_internal_listener(
    services: dict[str, Service],
) -> None:
    test = services["ingress"]["healthcheck"]["test"]
    probe = " ".join(test)
    assert f"http://127.0.0.1:{INTERNAL_PORT}/readyz" in probe
    # python:3.11-slim ships no curl.
    assert "curl" not in probe


def test_worker_keeps_its_state_on_a_named_volume(
    config: dict[str, Any], services: dict[str, Service]
) -> None:
    worker = services["worker"]
    assert worker["environment"]["SLUICE_STATE_DIR"] == STATE_DIR
    mounts = {m["target"]: m for m in worker.get("volumes") or []}
    assert STATE_DIR in mounts
    assert mounts[STATE_DIR]["type"] == "volume"
    assert mounts[STATE_DIR]["source"] in (config.get("volumes") or {})


@pytest.mark.parametrize(("name", "target"), sorted(STATEFUL.items()))
def test_stateful_services_use_named_volumes(
    config: dict[str, Any], services: dict[str, Service], name: str, target: str
) -> None:
    mounts = {m["target"]: m for m in services[name].get("volumes") or []}
    assert target in mounts, f"{name} has no volume at {target}"
    assert mounts[target]["type"] == "volume"
    assert mounts[target]["source"] in (config.get("volumes") or {})


def test_kafka_is_apache_kafka_3_9_in_kraft_mode(services: dict[str, Service]) -> None:
    kafka = services["kafka"]
    assert re.fullmatch(r"apache/kafka:3\.9\.\d+", kafka["image"]), kafka["image"]
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert env["CLUSTER_ID"]
    for name, value in env.items():
        if name.endswith("REPLICATION_FACTOR") or name.endswith("MIN_ISR"):
            assert value == "1", name


def test_kafka_host_listener_is_loopback_only(services: dict[str, Service]) -> None:
    for port in services["kafka"].get("ports") or []:
        assert port.get("host_ip") == "127.0.0.1", port


def test_only_the_public_listener_and_kafka_reach_the_host(
    services: dict[str, Service],
) -> None:
    publishing = {name for name, service in services.items() if service.get("ports")}
    assert publishing <= {"ingress", "kafka"}


def test_images_come_from_docker_hub_names(services: dict[str, Service]) -> None:
    """Third-party images are named without a registry host (Docker Hub names)."""
    for name, service in services.items():
        if "build" in service:
            continue  # the project's own image: its name is the deployer's choice
        image = service.get("image", "")
        first = image.split("/", 1)[0] if "/" in image else ""
        # A registry host is the first path part and contains a dot or a port.
        assert not re.search(r"[.:]", first), f"{name}: {image}"


# --------------------------------------------------------------------------- image


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        if whole:
            keyword, _, rest = whole.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _final_stage() -> Iterator[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    yield from instructions[last_from:]


def _resolve_args(text: str, instructions: list[tuple[str, str]]) -> str:
    defaults: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults.setdefault(name.strip(), value.strip().strip('"'))
    return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), text)


def _wheel_packages() -> list[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages: list[str] = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    return packages


def test_image_is_python_311_slim() -> None:
    instructions = _dockerfile_instructions()
    bases = [
        _resolve_args(rest.split()[0], instructions)
        for keyword, rest in instructions
        if keyword == "FROM"
    ]
    assert bases
    assert all(base == "python:3.11-slim" for base in bases), bases


def test_image_installs_from_the_lock_without_dev_dependencies() -> None:
    runs = [rest for keyword, rest in _dockerfile_instructions() if keyword == "RUN"]
    syncs = [run for run in runs if "uv sync" in run]
    assert syncs
    for run in syncs:
        assert "--frozen" in run
        assert "--no-dev" in run


def test_image_runs_sluice_as_a_non_root_user() -> None:
    final = list(_final_stage())
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the final stage never switches away from root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    entrypoints = [rest for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert entrypoints
    assert json.loads(entrypoints[-1]) == ["sluice"]


def test_image_contains_every_wheel_package() -> None:
    copies = " ".join(rest for keyword, rest in _dockerfile_instructions() if keyword == "COPY")
    allowed = {
        line.strip()[1:]
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip().startswith("!")
    }
    for package in _wheel_packages():
        assert re.search(rf"(^|\s){re.escape(package)}(\s|$)", copies), package
        assert package in allowed, f".dockerignore does not let {package} into the context"


def test_build_context_is_an_allow_list() -> None:
    """Anything not named (.env, .git, .venv, local data) stays out of the image."""
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert not allowed & {".env", ".git", ".venv", ".data", ".cache", "tests", "sluice.env"}
    assert {"pyproject.toml", "uv.lock"} <= allowed
