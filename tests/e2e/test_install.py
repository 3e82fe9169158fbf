"""The distributions as a user installs them, each into an empty virtual environment with plain `pip install`
(its dependencies resolved from pyproject.toml, not from the lock), then used against the real stack:

- `pip install .` (the whole of cloudimg): a working `cloudimg`, the services' entry points, and none of the
  dev tools (what the container image gets);
- `pip install ./clients/python` (cloudimg-client): the CLI, the typed wrapper and the generated public API
  alone, and a user's program using them passes `mypy --strict` (the stubs and py.typed are installed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

from catalog_service.domain.seed import seed_image_id
from devtools.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
GZ = "ap-guangzhou"
INSTANCE_TYPE = "S5.MEDIUM4"
INSTALL_TIMEOUT_S = 600


def make_venv(where: Path, *targets: str) -> Path:
    """A new virtual environment with targets pip-installed; returns its bin directory."""
    venv.EnvBuilder(with_pip=True).create(where)
    bin_dir = where / "bin"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", *targets], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    return bin_dir


def run(bin_dir: Path, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    """A command of that environment, run outside the checkout (so nothing is imported from it)."""
    clean = {name: value for name, value in os.environ.items()
             if not name.startswith("CLOUDIMG_") and name != "PYTHONPATH"}
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd or bin_dir, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_venv(tmp_path_factory.mktemp("whole") / "venv", str(ROOT))


@pytest.fixture(scope="module")
def client_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_venv(tmp_path_factory.mktemp("client") / "venv", str(ROOT / "clients" / "python"))


def cli(bin_dir: Path, stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return run(bin_dir, "cloudimg", *stack.cli_args(), "--api-key", stack.api_keys["alice"], *args)


def imported(bin_dir: Path, module: str) -> bool:
    return run(bin_dir, "python", "-c", f"import {module}").returncode == 0


def test_pip_install_of_the_repository_gives_a_working_cloudimg_and_the_services(whole: Path, stack: Stack) -> None:
    version = run(whole, "cloudimg", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout == "cloudimg 0.1.0\n"
    listed = cli(whole, stack, "--output", "json", "images", "--region", GZ)
    assert listed.returncode == 0, listed.stderr
    assert seed_image_id(GZ, "ubuntu-2204-x86") in listed.stdout
    for service in ("gateway", "catalog_service", "sharing_service", "billing_service", "devtools.healthcheck"):
        assert imported(whole, service), f"{service} is not importable from the installed distribution"
    # The Alembic revisions and the price book travel as package data.
    found = run(whole, "python", "-c", "import importlib.resources as r; print(sorted(p.name for p in "
                "r.files('billing_service').joinpath('migrations', 'versions').iterdir() if p.suffix == '.py')[0], "
                "r.files('billing_service').joinpath('data').is_dir())")
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == ["0001_initial.py", "True"]
    # Runtime only: none of the dev group came along.
    for tool in ("pytest", "ruff", "mypy", "grpc_tools", "hypothesis", "trustme"):
        assert not imported(whole, tool), f"{tool} was installed with the runtime dependencies"


def test_pip_install_of_the_client_gives_the_cli_and_the_api_alone(client_only: Path, stack: Stack) -> None:
    version = run(client_only, "cloudimg", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout == "cloudimg 0.1.0\n"
    quoted = cli(client_only, stack, "--output", "json", "quote", "--region", GZ, "--image",
                 seed_image_id(GZ, "ubuntu-2204-x86"), "--instance-type", INSTANCE_TYPE)
    assert quoted.returncode == 0, quoted.stderr
    assert '"total"' in quoted.stdout
    assert imported(client_only, "cloudimg.gateway.v1.image_service_pb2")
    for internal in ("cloudimg.catalog.v1.catalog_service_pb2", "gateway", "chassis", "sqlalchemy"):
        assert not imported(client_only, internal), f"{internal} came with the client"


USER_PROGRAM = '''
"""A user's program: typed against the installed distribution."""
import sys

import grpc
from cloudimg.gateway.v1 import image_service_pb2 as image_pb
from cloudimg.gateway.v1 import instance_service_pb2 as instance_pb
from cloudimg_client import Client, error_reason


def main(endpoint: str, key: str, ca: str, image_id: str) -> int:
    with Client(endpoint, key, ca_cert=ca) as cloud:
        names: list[str] = [image.name for image in
                            cloud.pages(cloud.images.ListImages, image_pb.ListImagesRequest(region="{gz}"), "images")]
        request = instance_pb.QuoteRunInstancesRequest(region="{gz}", image_id=image_id,
                                                       instance_type="{instance_type}", instance_count=2)
        quote: instance_pb.QuoteRunInstancesResponse = cloud.call(cloud.instances.QuoteRunInstances, request)
        try:
            cloud.call(cloud.images.GetImage, image_pb.GetImageRequest(image_id="img-00000000"))
        except grpc.RpcError as error:
            reason = error_reason(error)
        print(len(names), quote.quote.total.currency_code, reason)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
'''


def test_a_program_using_the_client_is_typed_and_runs(client_only: Path, stack: Stack, tmp_path: Path) -> None:
    program = tmp_path / "user_program.py"
    program.write_text(textwrap.dedent(USER_PROGRAM).format(gz=GZ, instance_type=INSTANCE_TYPE))
    # Not the repository's configuration; grpcio itself ships no types (as for any user of grpcio).
    (tmp_path / "mypy.ini").write_text("[mypy]\n[mypy-grpc.*]\nignore_missing_imports = True\n")
    # This checkout's mypy, judging the program against the client venv's packages (their py.typed and stubs).
    typed = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--config-file", "mypy.ini",
                            "--python-executable", str(client_only / "python"), "--no-incremental", program.name],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert typed.returncode == 0, typed.stdout + typed.stderr
    ran = run(client_only, "python", str(program), stack.gateway_addr, stack.api_keys["alice"],
              str(stack.cert_file("ca")), seed_image_id(GZ, "ubuntu-2204-x86"))
    assert ran.returncode == 0, ran.stderr
    count, currency, reason = ran.stdout.split()
    assert int(count) > 0
    assert (currency, reason) == ("USD", "IMAGE_NOT_FOUND")
