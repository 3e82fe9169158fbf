"""Check the deployment files with real validators, offline (both packages ship their schemas):

    python -m devtools.validate_deploy

- The Kubernetes manifests that deploy/k8s/kustomization.yaml lists: ``kubernetes-validate --strict``
  (a field the API does not define is an error, as ``kubectl apply`` makes it) against the schemas of
  Kubernetes K8S_VERSION that the package bundles. kubernetes-validate only warns, and exits 0, on an
  object whose kind and apiVersion have no schema in that version (a typo, or an API the version
  removed, such as policy/v1beta1): here that fails too, as the API server would refuse the object.
- docker-compose.yml: ``check-jsonschema`` against the compose-spec schema it vendors (SchemaStore's).

kustomization.yaml itself is kustomize's input, not a Kubernetes object, and neither package has a
schema for it (check-jsonschema vendors none for kustomize): tests/unit/test_deploy_manifests.py checks
what it says. The validators run from the interpreter's own bin directory (the venv's).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
KUSTOMIZATION = ROOT / "deploy" / "k8s" / "kustomization.yaml"
COMPOSE_FILE = ROOT / "docker-compose.yml"
# The manifests use GA APIs only (apps/v1, policy/v1, networking.k8s.io/v1, v1). kubernetes-validate 1.37
# bundles 1.25 to 1.37; 1.35 is the oldest of the three minors upstream maintains once 1.37 is out, so the
# manifests hold on every maintained cluster (newer minors keep the GA fields).
K8S_VERSION = "1.35.0"
COMPOSE_SCHEMA = "vendor.compose-spec"
TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Result:
    """One validator run over one file: its exit status and what it printed (stdout, then stderr)."""

    command: list[str]
    returncode: int
    output: str

    @property
    def unchecked(self) -> list[str]:
        """kubernetes-validate's warnings: objects it had no schema for, so did not check."""
        return [line for line in self.output.splitlines() if line.startswith("WARN ")]

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and not self.unchecked


def tool(name: str) -> str:
    """A console script installed beside this interpreter."""
    return str(Path(sys.executable).parent / name)


def k8s_manifests(kustomization: Path = KUSTOMIZATION) -> list[Path]:
    """The files the kustomization applies, in its order."""
    resources: list[str] = yaml.safe_load(kustomization.read_text())["resources"]
    return [kustomization.parent / name for name in resources]


def run(command: list[str]) -> Result:
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False)
    return Result(command, done.returncode, done.stdout + done.stderr)


def validate_k8s(path: Path, version: str = K8S_VERSION) -> Result:
    return run([tool("kubernetes-validate"), "--strict", "--kubernetes-version", version, str(path)])


def validate_compose(path: Path = COMPOSE_FILE) -> Result:
    return run([tool("check-jsonschema"), "--builtin-schema", COMPOSE_SCHEMA, str(path)])


def main() -> int:
    results = [*(validate_k8s(path) for path in k8s_manifests()), validate_compose()]
    for result in results:
        print(result.output, end="")
        if result.unchecked:
            print(f"FAILED {result.command[-1]}: an object that has no schema in Kubernetes {K8S_VERSION}")
    return 0 if all(result.passed for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
