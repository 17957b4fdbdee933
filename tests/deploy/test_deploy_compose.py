"""compose.yaml, the PostgreSQL override deploy/compose.postgres.yaml and the clustered layout
deploy/compose.cluster.yaml, checked without a container engine:
valid against the Compose Specification's JSON schema (tests/data/compose-spec.json), and consistent with the
code: every service built from a Dockerfile target, only environment variables the config loader knows (with
values it accepts), a declared volume for every service's data, the ports the images expose, and a NATS
command line that the nats-server of the test suite really runs with JetStream and a health endpoint."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from test_deploy_dockerfile import DOCKERFILE, parse

from contracts.runtime.config import ENV_VARS, ConfigError, database_env_var, load_settings
from contracts.runtime.host_guard import policy_of
from hub_deploy.natsserver import free_port, nats_server_binary, wait_for_port
from hub_deploy.services import SERVICES

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE = REPO_ROOT / "compose.yaml"
POSTGRES_OVERRIDE = REPO_ROOT / "deploy" / "compose.postgres.yaml"
SCHEMA = json.loads((Path(__file__).parents[1] / "data" / "compose-spec.json").read_text())
METRICS_DIR = REPO_ROOT / "deploy" / "metrics"
METRICS_VOLUMES = {"prometheus-data", "grafana-data"}
SERVICE_NAMES = [name for name, _module in SERVICES]
KNOWN_VARIABLES = {name for name in ENV_VARS if "{service}" not in name} | {database_env_var(s) for s in SERVICE_NAMES}


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())  # YAML merge keys (<<) resolve as Compose resolves them


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} with the given variables."""

    def one(match: re.Match[str]) -> str:
        name, operator, default = match.group(1), match.group(2) or "", match.group(3) or ""
        if name in variables and (variables[name] or operator != ":-"):
            return variables[name]
        if operator.endswith("?"):
            raise ValueError(f"${{{name}}} is required: {default}")
        return default

    return re.sub(r"\$\{(\w+)(:?[-?])?([^}]*)\}", one, value)


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`docker compose -f base -f override`: mappings merge, other values are replaced."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def hub_services(document: dict[str, Any]) -> dict[str, Any]:
    """The services `docker compose up` starts: those of an opt-in profile (`metrics`) left out."""
    return {name: service for name, service in document["services"].items() if not service.get("profiles")}


def validator() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(SCHEMA)
    cls.check_schema(SCHEMA)
    return cls(SCHEMA)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


@pytest.mark.parametrize("path", [COMPOSE, POSTGRES_OVERRIDE], ids=lambda p: p.name)
def test_the_compose_files_are_valid_compose_specification_documents(path: Path, compose: dict[str, Any]) -> None:
    errors = [f"{e.json_path}: {e.message}" for e in validator().iter_errors(load(path))]
    assert errors == []
    if path == POSTGRES_OVERRIDE:
        assert [e.message for e in validator().iter_errors(merged(compose, load(path)))] == []


def test_the_schema_check_rejects_a_broken_compose_file(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["gateway"]["port"] = ["8600:8600"]  # a typo of `ports`
    broken["services"]["ui"]["healthcheck"] = {"interval": 30}  # a number where a duration is required
    messages = "\n".join(e.message for e in validator().iter_errors(broken))
    assert "'port' was unexpected" in messages and "30 is not of type 'string'" in messages


def test_every_service_is_built_from_its_dockerfile_target(compose: dict[str, Any]) -> None:
    targets = set(parse(DOCKERFILE.read_text()).stages)
    services = hub_services(compose)
    assert set(services) == {"nats", *SERVICE_NAMES}
    for name in SERVICE_NAMES:
        build = services[name]["build"]
        assert (REPO_ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["target"] == name and name in targets
        assert services[name]["image"] == f"genimage-hub/{name}"
        assert services[name]["depends_on"]["nats"] == {"condition": "service_healthy"}
        assert services[name]["restart"] == "unless-stopped"


@pytest.mark.parametrize("path", [COMPOSE, POSTGRES_OVERRIDE], ids=lambda p: p.name)
def test_the_environment_uses_only_known_variables_with_values_the_services_accept(path: Path) -> None:
    document = merged(load(COMPOSE), load(path)) if path != COMPOSE else load(COMPOSE)
    variables = {"HUB_ADMIN_PASSWORD": "pw", "POSTGRES_PASSWORD": "pw"}
    for name in SERVICE_NAMES:
        environment = document["services"][name]["environment"]
        assert isinstance(environment, dict), f"{name}: environment as a mapping, so overrides merge"
        unknown = set(environment) - KNOWN_VARIABLES
        assert not unknown, f"{name}: {sorted(unknown)} are not settings of contracts/runtime/config.py"
        env = {key: interpolate(str(value), variables) for key, value in environment.items()}
        try:
            settings = load_settings(name, env)
        except ConfigError as exc:
            pytest.fail(f"{path.name}, {name}: {exc}")
        assert settings.nats_servers == ["nats://nats:4222"]
        stop_grace = int(document["services"][name]["stop_grace_period"].removesuffix("s"))
        assert stop_grace > settings.shutdown_timeout_s, f"{name}: stopping replicas are killed mid-request"
        if path == POSTGRES_OVERRIDE:
            assert settings.database_url == f"postgresql://hub:pw@postgres:5432/hub_{name}"


def test_every_service_keeps_its_data_in_a_volume_of_its_own(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"]) - METRICS_VOLUMES
    mounts: dict[str, str] = {}
    for name, service in hub_services(compose).items():
        for mount in service["volumes"]:
            volume, target = mount.split(":")[:2]
            assert volume in declared, f"{name}: volume {volume!r} is not declared"
            assert target == "/data", f"{name}: {mount}"
            assert volume not in mounts, f"{name} and {mounts.get(volume)} share {volume}"
            mounts[volume] = name
    assert set(mounts.values()) == set(hub_services(compose))
    assert declared == set(mounts)  # no volume left unused


@pytest.mark.parametrize("service", ["gateway", "ui"])
def test_the_http_ports_are_published_to_the_port_the_service_listens_on(compose: dict[str, Any], service: str) -> None:
    environment = compose["services"][service]["environment"]
    settings = load_settings(service, {k: interpolate(str(v), {}) for k, v in environment.items()})
    port = settings.gateway_port if service == "gateway" else settings.ui_port
    host = settings.gateway_host if service == "gateway" else settings.ui_host
    assert host == "0.0.0.0"
    assert compose["services"][service]["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert [i.arguments for i in parse(DOCKERFILE.read_text()).stages[service].all("EXPOSE")] == [str(port)]


def test_comfyui_and_llm_servers_on_the_host_are_reachable(compose: dict[str, Any]) -> None:
    for name in ("dispatch", "prompt"):
        assert "host.docker.internal:host-gateway" in compose["services"][name]["extra_hosts"]
    assert "http://host.docker.internal:8188" in COMPOSE.read_text()


def test_the_ui_takes_the_admin_password_from_the_environment(compose: dict[str, Any]) -> None:
    value = compose["services"]["ui"]["environment"]["HUB_ADMIN_PASSWORD"]
    assert interpolate(value, {"HUB_ADMIN_PASSWORD": "s3cret"}) == "s3cret"
    assert interpolate(value, {}) == ""  # unset: the UI starts and its login page says how to set it


def test_the_postgres_override_creates_the_database_of_every_service() -> None:
    override = load(POSTGRES_OVERRIDE)
    script = (REPO_ROOT / "deploy" / "postgres" / "create-databases.sql").read_text()
    created = set(re.findall(r"CREATE DATABASE (\w+);", script))
    assert created == {f"hub_{name}" for name in SERVICE_NAMES}
    postgres = override["services"]["postgres"]
    mounted = [m.split(":")[0] for m in postgres["volumes"]]
    assert "./deploy/postgres/create-databases.sql" in mounted  # relative to compose.yaml's folder
    assert (REPO_ROOT / "deploy" / "postgres" / "create-databases.sql").is_file()
    assert "postgres-data" in override["volumes"] and "postgres-data" in mounted
    for name in SERVICE_NAMES:
        assert override["services"][name]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        interpolate(postgres["environment"]["POSTGRES_PASSWORD"], {})


def test_nats_runs_with_jetstream_on_its_volume_and_its_health_check_answers(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """The compose command line, on the suite's own nats-server: JetStream on, the store in the volume, and the
    health check's URL answering ok."""
    nats = compose["services"]["nats"]
    assert nats["image"].startswith("nats:") and nats["image"].split(":")[1] not in ("", "latest")
    command: list[str] = nats["command"]
    assert "--jetstream" in command and command[command.index("--store_dir") + 1] == "/data"
    assert nats["volumes"] == ["nats-data:/data"]
    check = nats["healthcheck"]["test"]
    url = next(word for word in check if word.startswith("http://"))
    monitor_port = command[command.index("--http_port") + 1]
    assert f":{monitor_port}/healthz" in url and "js-enabled-only=true" in url

    port, monitor = free_port(), free_port()
    local = [str(tmp_path / "js") if w == "/data" else str(monitor) if w == monitor_port else w for w in command]
    log = (tmp_path / "nats.log").open("wb")
    server = subprocess.Popen(
        [str(nats_server_binary()), *local, "--port", str(port), "--addr", "127.0.0.1"], stdout=log, stderr=log
    )
    try:
        wait_for_port("127.0.0.1", monitor, 15, server)
        local_url = url.replace("127.0.0.1:" + monitor_port, f"127.0.0.1:{monitor}")
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(local_url, timeout=2) as response:
                    assert response.status == 200 and json.loads(response.read())["status"] == "ok"
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert (tmp_path / "js" / "jetstream").is_dir()
    finally:
        server.terminate()
        server.wait(10)
        log.close()


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI")
def test_docker_compose_accepts_the_files_when_it_is_installed(tmp_path: Path) -> None:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker CLI has no compose plugin")
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "HUB_ADMIN_PASSWORD": "x", "POSTGRES_PASSWORD": "x"}
    for files in (
        ["-f", "compose.yaml"],
        ["-f", "compose.yaml", "-f", "deploy/compose.postgres.yaml"],
        ["-f", "deploy/compose.cluster.yaml"],
    ):
        checked = subprocess.run(
            ["docker", "compose", *files, "config", "-q"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stderr


CLUSTER = REPO_ROOT / "deploy" / "compose.cluster.yaml"


def test_the_cluster_compose_file_runs_three_nats_servers_postgres_and_replicas() -> None:
    cluster = load(CLUSTER)
    assert [f"{e.json_path}: {e.message}" for e in validator().iter_errors(cluster)] == []
    services = cluster["services"]
    nats_names = ["nats-1", "nats-2", "nats-3"]
    for index, name in enumerate(nats_names, start=1):
        config_mount = next(m for m in services[name]["volumes"] if m.endswith(":/etc/nats/nats.conf:ro"))
        config = (CLUSTER.parent / config_mount.split(":")[0]).resolve()
        assert config == REPO_ROOT / "deploy" / "cluster" / f"nats-{index}.conf"  # tested by test_deploy_files.py
        assert "/data/jetstream" in config.read_text() and f"{name}-data:/data" in services[name]["volumes"]
        assert services[name]["command"] == ["--config", "/etc/nats/nats.conf"] and "healthcheck" in services[name]
    targets = set(parse(DOCKERFILE.read_text()).stages)
    script = (CLUSTER.parent / services["postgres"]["volumes"][1].split(":")[0]).resolve()
    assert script == REPO_ROOT / "deploy" / "postgres" / "create-databases.sql"
    for name in SERVICE_NAMES:
        service = services[name]
        build = service["build"]
        assert (CLUSTER.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["target"] == name and name in targets
        assert set(service["depends_on"]) == {*nats_names, "postgres"}
        unknown = set(service["environment"]) - KNOWN_VARIABLES
        assert not unknown, f"{name}: {sorted(unknown)}"
        env = {k: interpolate(str(v), {"POSTGRES_PASSWORD": "pw"}) for k, v in service["environment"].items()}
        settings = load_settings(name, env)
        assert settings.nats_servers == [f"nats://{n}:4222" for n in nats_names]
        assert settings.jetstream_replicas == 3
        assert settings.database_url == f"postgresql://hub:pw@postgres:5432/hub_{name}"
        assert f"hub_{name}" in script.read_text()
    replicas = {name: services[name].get("deploy", {}).get("replicas", 1) for name in SERVICE_NAMES}
    assert replicas == {"registry": 1, "prompt": 2, "stats": 1, "dispatch": 2, "gateway": 2, "ui": 1}
    low, high = services["gateway"]["ports"][0].split(":")[1].split("-")
    assert int(high) - int(low) + 1 == replicas["gateway"]  # one host port per gateway replica
    declared = set(cluster["volumes"])
    used = {m.split(":")[0] for s in services.values() for m in s.get("volumes", []) if not m.startswith(".")}
    assert used == declared


@pytest.mark.parametrize("path", [COMPOSE, CLUSTER], ids=lambda p: p.name)
@pytest.mark.parametrize(("service", "port"), [("gateway", 8600), ("ui", 8601)])
def test_gateway_and_ui_answer_to_localhost_their_service_name_and_the_public_name_from_env(
    path: Path, service: str, port: int
) -> None:
    """The containers listen on 0.0.0.0 behind published ports and other containers' service names: the host
    allowlist (DNS-rebinding protection) must let those through, and the admin's public name from .env."""
    environment = load(path)["services"][service]["environment"]
    variable = f"HUB_{service.upper()}_ALLOWED_HOSTS"
    variables = {"POSTGRES_PASSWORD": "pw", "HUB_ADMIN_PASSWORD": "pw"}
    plain = policy_of(
        load_settings(service, {k: interpolate(str(v), variables) for k, v in environment.items()}), service
    )
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"{service}:{port}"):
        assert plain.host_problem(host) is None, host
    assert plain.host_problem(f"hub.example.com:{port}") is not None
    assert plain.host_problem(f"0.0.0.0:{port}") is not None  # the bind address is no name
    public = {**variables, variable: "hub.example.com"}
    env = {k: interpolate(str(v), public) for k, v in environment.items()}
    assert policy_of(load_settings(service, env), service).host_problem(f"hub.example.com:{port}") is None


def test_the_metrics_profile_scrapes_the_gateway_from_an_allowed_network_into_grafana(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {n for n, s in services.items() if s.get("profiles")} == {"prometheus", "grafana"}
    assert all(services[n]["profiles"] == ["metrics"] for n in ("prometheus", "grafana"))
    for name in ("prometheus", "grafana"):
        for mount in services[name]["volumes"]:
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (REPO_ROOT / source).is_file(), f"{name}: {source} is missing"
            else:
                assert source in METRICS_VOLUMES and source in compose["volumes"], mount
    scrape = yaml.safe_load((METRICS_DIR / "prometheus.yml").read_text())["scrape_configs"]
    gateway_env = {k: interpolate(str(v), {}) for k, v in services["gateway"]["environment"].items()}
    gateway = load_settings("gateway", gateway_env)
    assert [(j["metrics_path"], j["static_configs"][0]["targets"]) for j in scrape] == [
        ("/metrics", [f"gateway:{gateway.gateway_port}"])
    ]
    # Prometheus reaches the gateway as `gateway` (an allowed Host) from the project's subnet (an allowed client).
    assert policy_of(gateway, "gateway").host_problem(f"gateway:{gateway.gateway_port}") is None
    subnet = compose["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert subnet in gateway.metrics_allow
    datasource = yaml.safe_load((METRICS_DIR / "grafana-datasource.yaml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    dashboard = json.loads((METRICS_DIR / "genimage-hub.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {datasource["uid"]}
