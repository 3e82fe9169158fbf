"""The deployment files (Dockerfile, docker-compose.yml, deploy/) checked by real validators (the
Kubernetes schemas of kubernetes-validate --strict, the compose spec's through check-jsonschema: see
devtools.validate_deploy), then against the services' settings (the settings classes themselves read
the environment each file gives a service, with certificates from devtools.certs), plus
devtools.healthcheck against real gRPC health servers, in plaintext and in mutual TLS.

The validators own the files' shape (which fields exist, their types); the assertions here own what
the schemas cannot say: that the files agree with each other and with the services."""

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from billing_service.settings import BillingSettings
from catalog_service.settings import CatalogSettings
from chassis.settings import ServiceSettings
from devtools import certs, healthcheck, validate_deploy
from gateway.settings import GatewaySettings
from sharing_service.settings import SharingSettings

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"

# A mapping parsed from YAML. Its shape is what the validators check; the tests read it by key.
Doc = dict[str, Any]


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
# The settings classes, by service, for the tests that load them from a file's env.
SETTINGS: dict[str, type[ServiceSettings]] = {
    "catalog": CatalogSettings,
    "sharing": SharingSettings,
    "billing": BillingSettings,
    "gateway": GatewaySettings,
}
# Plaintext settings: with TLS everywhere, no deployment file may set them.
PLAINTEXT_ONLY = ("CLOUDIMG_INTERNAL_TOKEN", "CLOUDIMG_ALLOW_PLAINTEXT")


def tls_env(service: Service) -> set[str]:
    """The variables that name a service's certificate files."""
    names = {f"{service.prefix}_TLS_CERT_FILE", f"{service.prefix}_TLS_KEY_FILE", "CLOUDIMG_INTERNAL_CA_FILE"}
    if service.name == "gateway":
        names |= {"GATEWAY_INTERNAL_CERT_FILE", "GATEWAY_INTERNAL_KEY_FILE"}
    return names


def required_env(service: Service) -> set[str]:
    names = {f"{service.prefix}_LISTEN_ADDR", f"{service.prefix}_DATABASE_URL", "CLOUDIMG_LOG_LEVEL"}
    names |= tls_env(service)
    if service.name == "gateway":
        names |= {f"{s.prefix}_ADDR" for s in INTERNAL}
    return names


def healthcheck_command(service: Service, port: int) -> list[str]:
    return ["python", "-m", "devtools.healthcheck", "--service", service.name, f"127.0.0.1:{port}"]


@pytest.fixture(scope="module")
def dev_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A development PKI as `python -m devtools.certs` writes it."""
    directory = tmp_path_factory.mktemp("certs") / "certs"
    assert certs.main([str(directory)]) == 0
    return directory


def load_settings(service: Service, env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> ServiceSettings:
    """The service's settings class, reading exactly env (and the defaults) from the repository root."""
    for variable in list(os.environ):
        if variable.startswith(("CLOUDIMG_", "CATALOG_", "SHARING_", "BILLING_", "GATEWAY_")):
            monkeypatch.delenv(variable)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.chdir(ROOT)  # defaults such as the price book are relative to it
    # pydantic-settings fills the fields from the environment; mypy sees only the required ones.
    return SETTINGS[service.name]()  # type: ignore[call-arg]


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


def documents(path: Path) -> list[Doc]:
    """The YAML documents of a file, empty ones dropped."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def set_at(doc: Doc, keys: Sequence[str | int], value: object) -> None:
    """doc[keys[0]][keys[1]]... = value (an int key indexes a list)."""
    *parents, last = keys
    target: Any = doc
    for key in parents:
        target = target[key]
    target[last] = value


# --- The validators ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", validate_deploy.k8s_manifests(), ids=lambda p: p.name)
def test_k8s_manifest_passes_strict_kubernetes_validation(path: Path) -> None:
    result = validate_deploy.validate_k8s(path)
    assert result.returncode == 0, result.output
    assert not result.unchecked, result.output  # a kind/apiVersion with no schema: nothing was checked
    passed = [line for line in result.output.splitlines() if line.startswith("INFO ") and " passed " in line]
    assert len(passed) == len(documents(path)), result.output


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        # A misspelt field, which a lenient apply drops silently: the pods would run without a readiness probe.
        (("spec", "template", "spec", "containers", 0, "readinessprobe"), {}, "'readinessprobe' was unexpected"),
        (("spec", "replicas"), "2", "'2' is not of type 'integer'"),
        # An API long removed (1.16): kubernetes-validate only warns, and exits 0; validate_deploy fails it.
        (("apiVersion",), "apps/v1beta2", "Couldn't find schema for kind Deployment"),
    ],
    ids=["unknown field", "wrong type", "removed api"],
)
def test_k8s_validation_rejects_a_broken_deployment(
    tmp_path: Path, field: tuple[str | int, ...], value: object, message: str
) -> None:
    docs = documents(K8S_DIR / "catalog.yaml")
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    set_at(deployment, field, value)
    broken = tmp_path / "catalog.yaml"
    broken.write_text(yaml.safe_dump_all(docs))
    result = validate_deploy.validate_k8s(broken)
    assert not result.passed, result.output
    assert message in result.output, result.output


def test_compose_file_passes_the_compose_spec_schema() -> None:
    result = validate_deploy.validate_compose(COMPOSE_FILE)
    assert result.returncode == 0, result.output


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (("services", "catalog", "helthcheck"), {"disable": True}, "'helthcheck' was unexpected"),
        (("services", "gateway", "ports"), "50050:50050", "'50050:50050' is not of type 'array'"),
    ],
    ids=["unknown field", "wrong type"],
)
def test_compose_validation_rejects_a_broken_file(
    tmp_path: Path, field: tuple[str, ...], value: object, message: str
) -> None:
    compose: Doc = yaml.safe_load(COMPOSE_FILE.read_text())
    set_at(compose, field, value)
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(compose))
    result = validate_deploy.validate_compose(broken)
    assert result.returncode == 1, result.output
    assert message in result.output, result.output


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


def test_dockerfile_builds_on_python_slim_and_runs_as_a_non_root_user(dockerfile: list[tuple[str, str]]) -> None:
    stages = [args.split()[0] for op, args in dockerfile if op == "FROM"]
    assert stages
    assert all(image == "python:3.11-slim" for image in stages)
    users = [args for op, args in final_stage(dockerfile) if op == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_dockerfile_installs_the_locked_runtime_and_the_built_wheel_only(dockerfile: list[tuple[str, str]]) -> None:
    runs = " ".join(args for op, args in dockerfile if op == "RUN")
    assert "pip install --require-hashes -r requirements/runtime.txt" in runs
    assert "pip wheel --no-deps" in runs  # setup.py generates the protos' code in the wheel's build
    assert "pip install --no-deps /wheels/cloudimg-" in runs
    assert "requirements/dev.txt" not in " ".join(args for _, args in dockerfile)
    # Every source folder setup.py packages (and what it generates the code from) is copied into the build.
    copied = {source.rstrip("/") for op, args in dockerfile if op == "COPY" and "--from" not in args
              for source in args.split()[:-1]}
    setup_py = (ROOT / "setup.py").read_text()
    packaged = set(re.findall(r'"(chassis|catalog_service|sharing_service|billing_service|gateway|devtools)"',
                              setup_py))
    assert len(packaged) == 6
    missing = (packaged | {"protos", "third_party", "clients/python", "setup.py", "pyproject.toml"}) - copied
    assert not missing, f"not copied into the image: {missing}"
    # The final stage takes the virtual environment alone from the build stage.
    taken = [args for op, args in final_stage(dockerfile) if op == "COPY"]
    assert taken == ["--from=build /opt/venv /opt/venv"]


# --- docker-compose.yml --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_file() -> Doc:
    file: Doc = yaml.safe_load(COMPOSE_FILE.read_text())
    return file


@pytest.fixture(scope="module")
def compose(compose_file: Doc) -> dict[str, Doc]:
    services: dict[str, Doc] = compose_file["services"]
    return services


def compose_env(service: Doc) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # NAME=value items
        env = dict(item.split("=", 1) for item in env)
    return {name: str(value) for name, value in env.items()}


def test_compose_runs_the_four_services_and_postgres_from_one_image(compose: dict[str, Doc]) -> None:
    assert set(compose) == {*SERVICES, "postgres"}
    assert compose["postgres"]["image"] == "postgres:16"
    for service in SERVICES.values():
        build = compose[service.name]["build"]
        assert (build if isinstance(build, str) else build["context"]) == "."
        assert compose[service.name]["image"] == compose["gateway"]["image"]
        assert compose[service.name]["command"] == service.command


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_compose_service_has_its_settings_and_listens_on_all_interfaces(
    compose: dict[str, Doc], service: Service
) -> None:
    env = compose_env(compose[service.name])
    assert required_env(service) <= set(env), required_env(service) - set(env)
    host, port = split_addr(env[f"{service.prefix}_LISTEN_ADDR"])
    assert (host, port) == ("0.0.0.0", service.port)


DEPLOYMENT_FILES = ["docker-compose.yml", *(f"deploy/k8s/{p.name}" for p in sorted(K8S_DIR.glob("*.yaml")))]


@pytest.mark.parametrize("path", DEPLOYMENT_FILES)
def test_no_deployment_file_sets_plaintext_settings(path: str) -> None:
    text = (ROOT / path).read_text()
    for variable in PLAINTEXT_ONLY:
        assert variable not in text, f"{path} sets {variable}: the services speak TLS"


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_compose_healthcheck_probes_the_port_the_service_listens_on(compose: dict[str, Doc], service: Service) -> None:
    test = compose[service.name]["healthcheck"]["test"]
    listen_port = split_addr(compose_env(compose[service.name])[f"{service.prefix}_LISTEN_ADDR"])[1]
    # --service: over TLS with the service's own certificate variables (devtools.healthcheck).
    assert test == ["CMD", *healthcheck_command(service, listen_port)]


def compose_secret_targets(service: Doc) -> dict[str, str]:
    """The secrets a compose service mounts: /run/secrets/<target> -> secret name."""
    targets: dict[str, str] = {}
    for entry in service.get("secrets", []):
        name = entry if isinstance(entry, str) else entry["source"]
        target = name if isinstance(entry, str) else entry.get("target", name)
        targets[target if target.startswith("/") else f"/run/secrets/{target}"] = name
    return targets


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_compose_service_reads_its_certificates_from_its_secrets(
    compose_file: Doc, compose: dict[str, Doc], service: Service
) -> None:
    top = compose_file["secrets"]
    mounted = compose_secret_targets(compose[service.name])
    env = compose_env(compose[service.name])
    files: dict[str, str] = {}
    for variable in tls_env(service):
        assert env[variable] in mounted, f"{variable}={env[variable]} is not one of its secrets"
        source = top[mounted[env[variable]]]["file"]
        assert source.startswith("./deploy/certs/"), source
        files[variable] = source.removeprefix("./deploy/certs/")
    assert files[f"{service.prefix}_TLS_CERT_FILE"] == f"{service.name}.pem"
    assert files[f"{service.prefix}_TLS_KEY_FILE"] == f"{service.name}.key"
    assert files["CLOUDIMG_INTERNAL_CA_FILE"] == "ca.pem"
    if service.name == "gateway":  # the development certificate names "gateway": the client one too
        internal = (files["GATEWAY_INTERNAL_CERT_FILE"], files["GATEWAY_INTERNAL_KEY_FILE"])
        assert internal == ("gateway.pem", "gateway.key")


def test_compose_secrets_are_the_files_devtools_certs_writes_and_git_ignores(
    compose_file: Doc, dev_certs: Path
) -> None:
    top = compose_file["secrets"]
    files = {spec["file"].removeprefix("./deploy/certs/") for spec in top.values()}
    assert files == {p.name for p in dev_certs.iterdir()}
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/certs/ca.pem"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, "deploy/certs/ holds private keys: git must ignore it"


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_compose_environment_is_valid_settings_with_real_certificates(
    compose_file: Doc, compose: dict[str, Doc], service: Service, dev_certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    top = compose_file["secrets"]
    mounted = compose_secret_targets(compose[service.name])
    env: dict[str, str] = {}
    for variable, value in compose_env(compose[service.name]).items():
        value = interpolate(value)
        if value in mounted:  # a secret's path in the container: the file devtools.certs wrote
            value = str(dev_certs / Path(top[mounted[value]]["file"]).name)
        env[variable] = value
    settings = load_settings(service, env, monkeypatch)
    assert settings.serves_tls


def test_compose_postgres_has_a_healthcheck(compose: dict[str, Doc]) -> None:
    assert "pg_isready" in " ".join(compose["postgres"]["healthcheck"]["test"])


def test_compose_gateway_reaches_each_internal_service_by_name_and_listen_port(compose: dict[str, Doc]) -> None:
    gateway_env = compose_env(compose["gateway"])
    for service in INTERNAL:
        host, port = split_addr(gateway_env[f"{service.prefix}_ADDR"])
        assert compose[host]["command"] == service.command
        assert port == split_addr(compose_env(compose[host])[f"{service.prefix}_LISTEN_ADDR"])[1]


def test_compose_start_order_waits_on_health(compose: dict[str, Doc]) -> None:
    def waits_on(name: str) -> dict[str, str]:
        depends = compose[name]["depends_on"]
        assert isinstance(depends, dict), "the list form of depends_on cannot wait on health"
        return {dep: spec["condition"] for dep, spec in depends.items()}

    for service in INTERNAL:
        assert waits_on(service.name) == {"postgres": "service_healthy"}
    assert waits_on("gateway") == {
        name: "service_healthy" for name in ["postgres", *(s.name for s in INTERNAL)]
    }


def test_compose_publishes_only_the_gateway_port(compose: dict[str, Doc]) -> None:
    published = {name: svc["ports"] for name, svc in compose.items() if svc.get("ports")}
    assert set(published) == {"gateway"}
    (port,) = published["gateway"]
    target = port["target"] if isinstance(port, dict) else int(str(port).rsplit(":", 1)[1])
    assert target == SERVICES["gateway"].port


def init_sql_databases() -> list[str]:
    sql = (ROOT / "deploy" / "postgres" / "init.sql").read_text()
    return re.findall(r"^\s*CREATE\s+DATABASE\s+(\w+)", sql, flags=re.IGNORECASE | re.MULTILINE)


def test_init_sql_creates_one_database_per_service_and_postgres_runs_it(compose: dict[str, Doc]) -> None:
    databases = init_sql_databases()
    assert sorted(databases) == sorted(SERVICES)
    mounts = [str(v) for v in compose["postgres"]["volumes"]]
    assert any(
        m.startswith("./deploy/postgres/init.sql:/docker-entrypoint-initdb.d/") for m in mounts
    )


def test_compose_services_each_use_their_own_postgres_database(compose: dict[str, Doc]) -> None:
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
def k8s() -> list[Doc]:
    """The objects of every manifest the kustomization applies."""
    docs = [doc for path in validate_deploy.k8s_manifests() for doc in documents(path)]
    assert docs
    return docs


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [
        d
        for d in docs
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    (doc,) = find(docs, kind, name)
    return doc


def container_of(deployment: Doc) -> Doc:
    containers: list[Doc] = deployment["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


def env_of(container: Doc) -> dict[str, Doc]:
    return {item["name"]: item for item in container.get("env", [])}


def secret_values(docs: list[Doc], name: str, namespace: str) -> dict[str, str]:
    (secret,) = [d for d in find(docs, "Secret", name) if d["metadata"]["namespace"] == namespace]
    return {**secret.get("data", {}), **secret.get("stringData", {})}


def test_k8s_everything_lives_in_the_namespace(k8s: list[Doc]) -> None:
    (namespace,) = find(k8s, "Namespace")
    name = namespace["metadata"]["name"]
    for doc in k8s:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == name, doc["metadata"]["name"]


# kustomization.yaml is kustomize's input, not a Kubernetes object: kubernetes-validate has no schema for
# it, and check-jsonschema vendors no kustomization schema. What it says is checked here.
@pytest.fixture(scope="module")
def kustomization() -> Doc:
    file: Doc = yaml.safe_load(validate_deploy.KUSTOMIZATION.read_text())
    return file


def test_kustomization_lists_every_manifest(kustomization: Doc) -> None:
    assert (kustomization["apiVersion"], kustomization["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    manifests = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(manifests)


def test_kustomization_sets_the_image_every_deployment_runs(k8s: list[Doc], kustomization: Doc) -> None:
    """Else the cluster would pull the placeholder name (docker.io/library/cloudimg)."""
    images = {image["name"]: image for image in kustomization["images"]}
    for deployment in find(k8s, "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert container["image"] in images, deployment["metadata"]["name"]
            assert "newName" in images[container["image"]], container["image"]


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_k8s_deployment_runs_the_service_with_replicas_and_limits(k8s: list[Doc], service: Service) -> None:
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
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        store = one(k8s, "PersistentVolumeClaim", claims["image-store"])
        assert store["spec"]["accessModes"] == ["ReadWriteMany"]
        mounts = {m["name"]: m["mountPath"] for m in container_of(deployment)["volumeMounts"]}
        assert env_of(container_of(deployment))["CATALOG_IMAGE_STORE_DIR"]["value"] == mounts["image-store"]
    else:
        # Certificates only: replicas share state through their database.
        for volume in pod.get("volumes", []):
            assert volume.keys() & {"secret", "configMap"}, volume["name"]
    container = container_of(deployment)
    assert container["command"] == service.command
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_k8s_grpc_probes_hit_the_port_the_service_listens_on(k8s: list[Doc], service: Service) -> None:
    container = container_of(one(k8s, "Deployment", service.name))
    env = env_of(container)
    assert required_env(service) <= set(env), required_env(service) - set(env)
    host, listen_port = split_addr(env[f"{service.prefix}_LISTEN_ADDR"]["value"])
    assert (host, listen_port) == ("0.0.0.0", service.port)
    assert [p["containerPort"] for p in container["ports"]] == [listen_port]
    # The kubelet's gRPC probes speak plaintext only: the health check runs in the container, over TLS.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == healthcheck_command(service, listen_port), probe
        assert container[probe]["timeoutSeconds"] > healthcheck.TIMEOUT_SECONDS, probe


# The objects the TLS files come from (made outside the manifests: see kustomization.yaml), and the
# development file of devtools.certs each is made from.
def tls_sources(service: Service) -> dict[str, tuple[str, str, str]]:
    """variable -> (kind, name, key) of the object its file is mounted from."""
    own = f"cloudimg-tls-{service.name}"
    sources = {
        f"{service.prefix}_TLS_CERT_FILE": ("Secret", own, "tls.crt"),
        f"{service.prefix}_TLS_KEY_FILE": ("Secret", own, "tls.key"),
        "CLOUDIMG_INTERNAL_CA_FILE": ("ConfigMap", "cloudimg-internal-ca", "ca.crt"),
    }
    if service.name == "gateway":
        sources["GATEWAY_INTERNAL_CERT_FILE"] = ("Secret", "cloudimg-tls-gateway-internal", "tls.crt")
        sources["GATEWAY_INTERNAL_KEY_FILE"] = ("Secret", "cloudimg-tls-gateway-internal", "tls.key")
    return sources


def dev_file(source: tuple[str, str, str]) -> str:
    """The file of devtools.certs that the documented `kubectl create` makes this object's key from."""
    kind, name, key = source
    if kind == "ConfigMap":
        return {"ca.crt": "ca.pem"}[key]
    owner = name.removeprefix("cloudimg-tls-").removesuffix("-internal")
    return owner + {"tls.crt": ".pem", "tls.key": ".key"}[key]


def mounted_file(deployment: Doc, path: str) -> tuple[str, str, str]:
    """(kind, name, key) of the Secret or ConfigMap key that a file in the container comes from."""
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container_of(deployment).get("volumeMounts", []):
        directory = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(directory) and "subPath" not in mount:
            assert mount.get("readOnly") is True, mount["name"]
            volume = volumes[mount["name"]]
            key = path.removeprefix(directory)
            if "secret" in volume:
                return "Secret", volume["secret"]["secretName"], key
            if "configMap" in volume:
                return "ConfigMap", volume["configMap"]["name"], key
    raise AssertionError(f"{path} is not in a mounted Secret or ConfigMap")


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_k8s_deployment_mounts_its_tls_secret_and_points_its_settings_at_it(k8s: list[Doc], service: Service) -> None:
    deployment = one(k8s, "Deployment", service.name)
    env = env_of(container_of(deployment))
    for variable, source in tls_sources(service).items():
        assert mounted_file(deployment, env[variable]["value"]) == source, variable
    pod = deployment["spec"]["template"]["spec"]
    for volume in pod["volumes"]:
        if "secret" in volume:  # keys: readable by the service's group, not by every user
            assert volume["secret"]["defaultMode"] & 0o007 == 0, volume["name"]
            assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_k8s_environment_is_valid_settings_with_real_certificates(
    k8s: list[Doc], service: Service, dev_certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = one(k8s, "Deployment", service.name)
    env = {}
    for name, item in env_of(container_of(deployment)).items():
        if "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            env[name] = secret_values(k8s, ref["name"], deployment["metadata"]["namespace"])[ref["key"]]
        elif item["value"].startswith("/etc/cloudimg/"):
            env[name] = str(dev_certs / dev_file(mounted_file(deployment, item["value"])))
        else:
            env[name] = item["value"]
    settings = load_settings(service, env, monkeypatch)
    assert settings.serves_tls


def target_container_port(docs: list[Doc], k8s_service: Doc, port: Doc) -> tuple[Doc, int]:
    """The single Deployment a Service selects, and the container port its `port` targets."""
    selector = k8s_service["spec"]["selector"]
    selected = [
        d
        for d in find(docs, "Deployment")
        if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert len(selected) == 1, f"{k8s_service['metadata']['name']} selects {len(selected)}"
    ports: list[Doc] = container_of(selected[0])["ports"]
    target: int | str = port["targetPort"] if "targetPort" in port else port["port"]
    if isinstance(target, str):  # a port's name
        (target,) = [p["containerPort"] for p in ports if p.get("name") == target]
    assert isinstance(target, int)
    assert target in [p["containerPort"] for p in ports]
    return selected[0], target


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_k8s_service_targets_its_deployment_port(k8s: list[Doc], service: Service) -> None:
    k8s_service = one(k8s, "Service", service.name)
    allowed = {"ClusterIP", "LoadBalancer"} if service.name == "gateway" else {"ClusterIP"}
    assert k8s_service["spec"].get("type", "ClusterIP") in allowed
    (port,) = k8s_service["spec"]["ports"]
    deployment, target = target_container_port(k8s, k8s_service, port)
    assert deployment["metadata"]["name"] == service.name
    assert target == service.port


def test_k8s_gateway_reaches_each_internal_service_through_its_service(k8s: list[Doc]) -> None:
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


def test_k8s_every_secret_reference_exists(k8s: list[Doc]) -> None:
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
def test_k8s_database_comes_from_the_secret(k8s: list[Doc], service: Service) -> None:
    deployment = one(k8s, "Deployment", service.name)
    env = env_of(container_of(deployment))
    name = f"{service.prefix}_DATABASE_URL"
    assert "value" not in env[name], f"{name} must not be inline"
    assert "secretKeyRef" in env[name]["valueFrom"], name


def test_k8s_secret_holds_one_postgres_database_per_service(k8s: list[Doc]) -> None:
    databases = {}
    for service in SERVICES.values():
        env = env_of(container_of(one(k8s, "Deployment", service.name)))
        ref = env[f"{service.prefix}_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        url = secret_values(k8s, ref["name"], "cloudimg")[ref["key"]]
        scheme, database = database_of(url)
        assert scheme == "postgresql+psycopg", "replicas must share a server database, not SQLite"
        databases[service.name] = database
    assert databases == {name: name for name in SERVICES}


def selects(selector: Doc, labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels only: the manifests use no expressions) selects these labels."""
    assert set(selector) <= {"matchLabels"}, selector
    match_labels: dict[str, str] = selector.get("matchLabels", {})
    return match_labels.items() <= labels.items()


def pod_labels(deployment: Doc) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def ingress_rules(docs: list[Doc], deployment: Doc) -> list[Doc] | None:
    """Every ingress rule that admits connections to the deployment's pods; None when no policy isolates
    them (everything is admitted)."""
    policies = [
        p for p in find(docs, "NetworkPolicy")
        if p["metadata"]["namespace"] == deployment["metadata"]["namespace"]
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], pod_labels(deployment))
    ]
    if not policies:
        return None
    return [rule for p in policies for rule in p["spec"].get("ingress", [])]


@pytest.mark.parametrize("service", INTERNAL, ids=lambda s: s.name)
def test_k8s_network_policy_admits_only_the_gateway_pods_to_an_internal_service(
    k8s: list[Doc], service: Service
) -> None:
    rules = ingress_rules(k8s, one(k8s, "Deployment", service.name))
    assert rules, f"no NetworkPolicy admits the gateway to {service.name}"
    deployments = find(k8s, "Deployment")
    for rule in rules:
        assert rule.get("ports") == [{"protocol": "TCP", "port": service.port}], rule
        assert rule.get("from"), "a rule without `from` admits every source"
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"}, f"only pods of the namespace: {peer}"
            admitted = [d["metadata"]["name"] for d in deployments if selects(peer["podSelector"], pod_labels(d))]
            assert admitted == ["gateway"], peer


def test_k8s_network_policy_keeps_the_gateway_reachable_on_its_port_only(k8s: list[Doc]) -> None:
    rules = ingress_rules(k8s, one(k8s, "Deployment", "gateway"))
    assert rules is not None, "the default deny must cover the gateway too, leaving its port open"
    assert rules, rules
    assert all(rule.get("ports") == [{"protocol": "TCP", "port": SERVICES["gateway"].port}] for rule in rules), rules
    assert any("from" not in rule for rule in rules), "the public API must be reachable from anywhere"


def test_k8s_default_denies_ingress_to_every_pod_of_the_namespace(k8s: list[Doc]) -> None:
    denies = [p for p in find(k8s, "NetworkPolicy")
              if p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"]
              and not p["spec"].get("ingress")]
    assert len(denies) == 1


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_k8s_disruption_budget_covers_its_deployment_and_lets_a_drain_proceed(k8s: list[Doc], service: Service) -> None:
    budgets = [b for b in find(k8s, "PodDisruptionBudget")
               if selects(b["spec"]["selector"], pod_labels(one(k8s, "Deployment", service.name)))]
    assert len(budgets) == 1, f"{service.name}: {len(budgets)} PodDisruptionBudgets"
    (budget,) = budgets
    selected = [d["metadata"]["name"] for d in find(k8s, "Deployment")
                if selects(budget["spec"]["selector"], pod_labels(d))]
    assert selected == [service.name]
    replicas = one(k8s, "Deployment", service.name)["spec"]["replicas"]
    spec = budget["spec"]
    if "maxUnavailable" in spec:
        assert spec["maxUnavailable"] == 1
    else:
        assert spec["minAvailable"] == replicas - 1 >= 1


# --- devtools.healthcheck ------------------------------------------------------------------------


class HealthStatus(Protocol):
    """What the tests set on grpc_health's HealthServicer (the package ships no type information)."""

    def set(self, service: str, status: int) -> None: ...


HealthServer = tuple[HealthStatus, str]  # the servicer, and the address it serves on


@pytest.fixture(scope="module")
def health_server() -> Iterator[HealthServer]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)]
    )
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_healthcheck_passes_when_serving(health_server: HealthServer) -> None:
    servicer, address = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main([address], env={}) == 0


def test_healthcheck_fails_when_not_serving(health_server: HealthServer) -> None:
    servicer, address = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    servicer.set("some.Service", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main([address], env={}) == 1


def test_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as reserved:  # bound but not listening: connections are refused
        reserved.bind(("127.0.0.1", 0))
        assert healthcheck.main([f"127.0.0.1:{reserved.getsockname()[1]}"], env={}) == 1


def test_healthcheck_runs_as_a_module_and_exits_with_its_status(health_server: HealthServer) -> None:
    servicer, address = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    command = [sys.executable, "-m", "devtools.healthcheck", address]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done.stderr
    assert done.stdout == f"{address}: NOT_SERVING\n"


# --- devtools.healthcheck over mutual TLS ---------------------------------------------------------


@pytest.fixture(scope="module")
def mtls_health_server(dev_certs: Path) -> Iterator[HealthServer]:
    """A health server that serves as an internal service does: catalog's certificate, and callers
    must present a certificate of the development CA."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)]
    )
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [((dev_certs / "catalog.key").read_bytes(), (dev_certs / "catalog.pem").read_bytes())],
        root_certificates=(dev_certs / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def catalog_env(dev_certs: Path, service: str = "catalog") -> dict[str, str]:
    """What the catalog's container environment says about its certificates."""
    return {
        "CATALOG_TLS_CERT_FILE": str(dev_certs / f"{service}.pem"),
        "CATALOG_TLS_KEY_FILE": str(dev_certs / f"{service}.key"),
        "CLOUDIMG_INTERNAL_CA_FILE": str(dev_certs / "ca.pem"),
    }


def test_healthcheck_reads_the_services_certificates_from_its_environment(
    mtls_health_server: HealthServer, dev_certs: Path
) -> None:
    servicer, address = mtls_health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main(["--service", "catalog", address], env=catalog_env(dev_certs)) == 0
    # Without --service: the one service whose certificate variable is set.
    assert healthcheck.main([address], env=catalog_env(dev_certs)) == 0


def test_healthcheck_over_tls_fails_when_not_serving(mtls_health_server: HealthServer, dev_certs: Path) -> None:
    servicer, address = mtls_health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert healthcheck.main(["--service", "catalog", address], env=catalog_env(dev_certs)) == 1


def test_healthcheck_flags_give_the_files_and_the_name_to_verify(
    mtls_health_server: HealthServer, dev_certs: Path
) -> None:
    servicer, address = mtls_health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    flags = ["--ca-cert", str(dev_certs / "ca.pem"), "--cert", str(dev_certs / "gateway.pem"),
             "--key", str(dev_certs / "gateway.key")]
    assert healthcheck.main([*flags, address], env={}) == 0  # the address's host, 127.0.0.1, is in it
    assert healthcheck.main([*flags, "--server-name", "catalog.cloudimg.svc", address], env={}) == 0
    assert healthcheck.main([*flags, "--server-name", "sharing", address], env={}) == 1


@pytest.mark.parametrize("case", ["no client certificate", "another CA", "plaintext", "wrong service"])
def test_healthcheck_fails_when_the_tls_handshake_does(
    mtls_health_server: HealthServer, dev_certs: Path, tmp_path: Path, case: str
) -> None:
    servicer, address = mtls_health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    if case == "no client certificate":
        argv, env = ["--ca-cert", str(dev_certs / "ca.pem"), address], {}
    elif case == "another CA":
        assert certs.main([str(tmp_path / "other")]) == 0
        argv, env = [address], {**catalog_env(dev_certs), "CLOUDIMG_INTERNAL_CA_FILE": str(tmp_path / "other/ca.pem")}
    elif case == "plaintext":
        argv, env = ["--service", "catalog", address], {}
    else:  # the sharing check verifies the name "sharing", which catalog's certificate does not carry
        argv, env = ["--service", "sharing", address], {
            name.replace("CATALOG_", "SHARING_"): value for name, value in catalog_env(dev_certs).items()
        }
    assert healthcheck.main(argv, env=env) == 1


def test_healthcheck_says_which_file_it_cannot_read(
    mtls_health_server: HealthServer, dev_certs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, address = mtls_health_server
    env = {**catalog_env(dev_certs), "CATALOG_TLS_KEY_FILE": str(tmp_path / "missing.key")}
    assert healthcheck.main([address], env=env) == 1
    assert "missing.key" in capsys.readouterr().out


def test_healthcheck_asks_which_service_when_several_have_certificates(
    dev_certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**catalog_env(dev_certs), "SHARING_TLS_CERT_FILE": str(dev_certs / "sharing.pem")}
    with pytest.raises(SystemExit) as exited:
        healthcheck.main(["127.0.0.1:1"], env=env)
    assert exited.value.code == 2
    assert "--service" in capsys.readouterr().err


def test_healthcheck_runs_over_tls_as_a_module_with_the_containers_environment(
    mtls_health_server: HealthServer, dev_certs: Path
) -> None:
    servicer, address = mtls_health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    env = {**os.environ, **catalog_env(dev_certs)}
    command = [sys.executable, "-m", "devtools.healthcheck", "--service", "catalog", address]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == f"{address}: SERVING\n"
