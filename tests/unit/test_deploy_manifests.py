"""The deployment files (Dockerfile, docker-compose.yml, deploy/) parsed and checked against the
services' settings, plus devtools.healthcheck against a real gRPC health server."""

import re
import socket
import subprocess
import sys
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from devtools import healthcheck

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "k8s"


@dataclass(frozen=True)
class Service:
    name: str  # compose service, k8s Deployment/Service and database name
    module: str
    prefix: str
    port: int

    @property
    def command(self) -> list[str]:
        return ["python", "-m", self.module]


SERVICES = {
    s.name: s
    for s in (
        Service("catalog", "catalog_service", "CATALOG", 50051),
        Service("sharing", "sharing_service", "SHARING", 50052),
        Service("billing", "billing_service", "BILLING", 50053),
        Service("gateway", "gateway", "GATEWAY", 50050),
    )
}
INTERNAL = [s for s in SERVICES.values() if s.name != "gateway"]
TOKEN_DEFAULT = "${CLOUDIMG_INTERNAL_TOKEN:-dev-internal-token-change-me}"


def required_env(service: Service) -> set[str]:
    names = {f"{service.prefix}_LISTEN_ADDR", f"{service.prefix}_DATABASE_URL"}
    names |= {"CLOUDIMG_INTERNAL_TOKEN", "CLOUDIMG_LOG_LEVEL"}
    if service.name == "gateway":
        names |= {f"{s.prefix}_ADDR" for s in INTERNAL}
    return names


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def interpolate(value: str) -> str:
    """Compose's ${NAME:-default} and ${NAME-default}, with nothing set in the environment."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m[1] or "", value)


def database_of(url: str) -> tuple[str, str]:
    """(scheme, database name) of a SQLAlchemy URL."""
    parts = urlsplit(url)
    return parts.scheme, parts.path.lstrip("/")


# --- Dockerfile ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (op, _) in enumerate(instructions) if op == "FROM"]
    return instructions[starts[-1] :]


def test_dockerfile_builds_on_python_slim_and_runs_as_a_non_root_user(dockerfile):
    stages = [args.split()[0] for op, args in dockerfile if op == "FROM"]
    assert stages and all(image == "python:3.11-slim" for image in stages)
    users = [args for op, args in final_stage(dockerfile) if op == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_dockerfile_generates_the_grpc_code_and_installs_every_package(dockerfile):
    runs = " ".join(args for op, args in dockerfile if op == "RUN")
    assert "grpc_tools.protoc" in runs and "--grpc_python_out" in runs
    assert "pip install -r requirements.txt" in runs
    copied = {args.split()[0].rstrip("/") for op, args in dockerfile if op == "COPY"}
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"include\s*=\s*\[([^\]]*)\]", pyproject)[1]
    packages = {p.rstrip("*") for p in re.findall(r'"([^"]+)"', include)}
    assert packages and packages <= copied, f"not copied into the image: {packages - copied}"
    assert {"protos", "requirements.txt", "pyproject.toml"} <= copied


# --- docker-compose.yml --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: str(value) for name, value in env.items()}


def test_compose_runs_the_four_services_and_postgres_from_one_image(compose):
    assert set(compose) == {*SERVICES, "postgres"}
    assert compose["postgres"]["image"] == "postgres:16"
    for service in SERVICES.values():
        build = compose[service.name]["build"]
        assert (build if isinstance(build, str) else build["context"]) == "."
        assert compose[service.name]["image"] == compose["gateway"]["image"]
        assert compose[service.name]["command"] == service.command


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_compose_service_has_its_settings_and_listens_on_all_interfaces(compose, service):
    env = compose_env(compose[service.name])
    assert required_env(service) <= set(env), required_env(service) - set(env)
    host, port = split_addr(env[f"{service.prefix}_LISTEN_ADDR"])
    assert (host, port) == ("0.0.0.0", service.port)
    assert env["CLOUDIMG_INTERNAL_TOKEN"] == TOKEN_DEFAULT


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_compose_healthcheck_probes_the_port_the_service_listens_on(compose, service):
    test = compose[service.name]["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "devtools.healthcheck"]
    listen_port = split_addr(compose_env(compose[service.name])[f"{service.prefix}_LISTEN_ADDR"])[1]
    assert split_addr(test[4]) == ("127.0.0.1", listen_port)


def test_compose_postgres_has_a_healthcheck(compose):
    assert "pg_isready" in " ".join(compose["postgres"]["healthcheck"]["test"])


def test_compose_gateway_reaches_each_internal_service_by_name_and_listen_port(compose):
    gateway_env = compose_env(compose["gateway"])
    for service in INTERNAL:
        host, port = split_addr(gateway_env[f"{service.prefix}_ADDR"])
        assert compose[host]["command"] == service.command
        assert port == split_addr(compose_env(compose[host])[f"{service.prefix}_LISTEN_ADDR"])[1]


def test_compose_start_order_waits_on_health(compose):
    def waits_on(name: str) -> dict[str, str]:
        depends = compose[name]["depends_on"]
        assert isinstance(depends, dict), "the list form of depends_on cannot wait on health"
        return {dep: spec["condition"] for dep, spec in depends.items()}

    for service in INTERNAL:
        assert waits_on(service.name) == {"postgres": "service_healthy"}
    assert waits_on("gateway") == {
        name: "service_healthy" for name in ["postgres", *(s.name for s in INTERNAL)]
    }


def test_compose_publishes_only_the_gateway_port(compose):
    published = {name: svc["ports"] for name, svc in compose.items() if svc.get("ports")}
    assert set(published) == {"gateway"}
    (port,) = published["gateway"]
    target = port["target"] if isinstance(port, dict) else int(str(port).rsplit(":", 1)[1])
    assert target == SERVICES["gateway"].port


def init_sql_databases() -> list[str]:
    sql = (ROOT / "deploy" / "postgres" / "init.sql").read_text()
    return re.findall(r"^\s*CREATE\s+DATABASE\s+(\w+)", sql, flags=re.IGNORECASE | re.MULTILINE)


def test_init_sql_creates_one_database_per_service_and_postgres_runs_it(compose):
    databases = init_sql_databases()
    assert sorted(databases) == sorted(SERVICES)
    mounts = [str(v) for v in compose["postgres"]["volumes"]]
    assert any(
        m.startswith("./deploy/postgres/init.sql:/docker-entrypoint-initdb.d/") for m in mounts
    )


def test_compose_services_each_use_their_own_postgres_database(compose):
    postgres_env = {k: interpolate(v) for k, v in compose_env(compose["postgres"]).items()}
    for service in SERVICES.values():
        url = interpolate(compose_env(compose[service.name])[f"{service.prefix}_DATABASE_URL"])
        parts = urlsplit(url)
        assert parts.scheme == "postgresql+psycopg"
        assert (parts.hostname, parts.port) == ("postgres", 5432)
        assert (parts.username, parts.password) == (
            postgres_env["POSTGRES_USER"],
            postgres_env["POSTGRES_PASSWORD"],
        )
        assert database_of(url)[1] == service.name
        assert service.name in init_sql_databases()


# --- Kubernetes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> list[dict]:
    docs = [
        doc
        for path in sorted(K8S_DIR.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    assert docs
    return docs


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [
        d
        for d in docs
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = find(docs, kind, name)
    return doc


def container_of(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


def secret_values(docs: list[dict], name: str, namespace: str) -> dict[str, str]:
    (secret,) = [d for d in find(docs, "Secret", name) if d["metadata"]["namespace"] == namespace]
    return {**secret.get("data", {}), **secret.get("stringData", {})}


def test_k8s_everything_lives_in_the_namespace(k8s):
    (namespace,) = find(k8s, "Namespace")
    name = namespace["metadata"]["name"]
    for doc in k8s:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == name, doc["metadata"]["name"]


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(manifests)


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_k8s_deployment_runs_the_service_with_replicas_and_limits(k8s, service):
    deployment = one(k8s, "Deployment", service.name)
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert pod["terminationGracePeriodSeconds"] > 0
    assert pod["securityContext"]["runAsNonRoot"] is True
    if service.name == "catalog":
        # Image bytes: every replica mounts the one ReadWriteMany image store.
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
        store = one(k8s, "PersistentVolumeClaim", claims["image-store"])
        assert store["spec"]["accessModes"] == ["ReadWriteMany"]
        mounts = {m["name"]: m["mountPath"] for m in container_of(deployment)["volumeMounts"]}
        assert env_of(container_of(deployment))["CATALOG_IMAGE_STORE_DIR"]["value"] == mounts["image-store"]
    else:
        assert "volumes" not in pod, "replicas share state through their database only"
    container = container_of(deployment)
    assert container["command"] == service.command
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_k8s_grpc_probes_hit_the_port_the_service_listens_on(k8s, service):
    container = container_of(one(k8s, "Deployment", service.name))
    env = env_of(container)
    assert required_env(service) <= set(env), required_env(service) - set(env)
    host, listen_port = split_addr(env[f"{service.prefix}_LISTEN_ADDR"]["value"])
    assert (host, listen_port) == ("0.0.0.0", service.port)
    assert [p["containerPort"] for p in container["ports"]] == [listen_port]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == listen_port, probe
        assert container[probe]["grpc"].get("service", "") == ""


def target_container_port(docs: list[dict], k8s_service: dict, port: dict) -> tuple[dict, int]:
    """The single Deployment a Service selects, and the container port its `port` targets."""
    selector = k8s_service["spec"]["selector"]
    selected = [
        d
        for d in find(docs, "Deployment")
        if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert len(selected) == 1, f"{k8s_service['metadata']['name']} selects {len(selected)}"
    target = port.get("targetPort", port["port"])
    ports = container_of(selected[0])["ports"]
    if isinstance(target, str):
        (target,) = [p["containerPort"] for p in ports if p.get("name") == target]
    assert target in [p["containerPort"] for p in ports]
    return selected[0], target


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_k8s_service_targets_its_deployment_port(k8s, service):
    k8s_service = one(k8s, "Service", service.name)
    allowed = {"ClusterIP", "LoadBalancer"} if service.name == "gateway" else {"ClusterIP"}
    assert k8s_service["spec"].get("type", "ClusterIP") in allowed
    (port,) = k8s_service["spec"]["ports"]
    deployment, target = target_container_port(k8s, k8s_service, port)
    assert deployment["metadata"]["name"] == service.name
    assert target == service.port


def test_k8s_gateway_reaches_each_internal_service_through_its_service(k8s):
    env = env_of(container_of(one(k8s, "Deployment", "gateway")))
    for service in INTERNAL:
        host, port = split_addr(env[f"{service.prefix}_ADDR"]["value"])
        k8s_service = one(k8s, "Service", host.split(".")[0])
        (service_port,) = [p for p in k8s_service["spec"]["ports"] if p["port"] == port]
        deployment, target = target_container_port(k8s, k8s_service, service_port)
        assert container_of(deployment)["command"] == service.command
        if k8s_service["spec"].get("clusterIP") == "None":
            # Headless: clients dial the pod IPs, so the address must carry the container port.
            assert port == target


def test_k8s_every_secret_reference_exists(k8s):
    references = 0
    for deployment in find(k8s, "Deployment"):
        namespace = deployment["metadata"]["namespace"]
        for item in container_of(deployment).get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                references += 1
                assert ref["key"] in secret_values(k8s, ref["name"], namespace), ref
    assert references


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_k8s_token_and_database_come_from_the_secret(k8s, service):
    deployment = one(k8s, "Deployment", service.name)
    env = env_of(container_of(deployment))
    for name in ("CLOUDIMG_INTERNAL_TOKEN", f"{service.prefix}_DATABASE_URL"):
        assert "value" not in env[name], f"{name} must not be inline"
        assert "secretKeyRef" in env[name]["valueFrom"], name


def test_k8s_secret_holds_one_postgres_database_per_service(k8s):
    databases = {}
    for service in SERVICES.values():
        env = env_of(container_of(one(k8s, "Deployment", service.name)))
        ref = env[f"{service.prefix}_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        url = secret_values(k8s, ref["name"], "cloudimg")[ref["key"]]
        scheme, database = database_of(url)
        assert scheme == "postgresql+psycopg", "replicas must share a server database, not SQLite"
        databases[service.name] = database
    assert databases == {name: name for name in SERVICES}


# --- devtools.healthcheck ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def health_server():
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)]
    )
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_healthcheck_passes_when_serving(health_server):
    servicer, address = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main([address]) == 0


def test_healthcheck_fails_when_not_serving(health_server):
    servicer, address = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    servicer.set("some.Service", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main([address]) == 1


def test_healthcheck_fails_when_nothing_listens():
    with socket.socket() as reserved:  # bound but not listening: connections are refused
        reserved.bind(("127.0.0.1", 0))
        assert healthcheck.main([f"127.0.0.1:{reserved.getsockname()[1]}"]) == 1


def test_healthcheck_runs_as_a_module_and_exits_with_its_status(health_server):
    servicer, address = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    command = [sys.executable, "-m", "devtools.healthcheck", address]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done.stderr
    assert done.stdout == f"{address}: NOT_SERVING\n"
