"""The ``cloudimg`` distribution: the four services, the chassis, the devtools, the client and the CLI, and the
Python code of every proto, generated into gen/ at build time (clients/python/protogen.py). Static metadata
(name, version, dependencies, entry points) is in pyproject.toml; this file adds only what is computed."""

import sys
from pathlib import Path

from setuptools import find_namespace_packages, find_packages, setup

HERE = Path(__file__).resolve().parent
CLIENT_SRC = "clients/python/src"
sys.path.insert(0, str(HERE / "clients" / "python"))
from protogen import generate  # noqa: E402 (a build helper beside the client distribution)

generated = generate(HERE / "gen", HERE / "protos", HERE / "third_party" / "googleapis")
# Namespace discovery, so that the Alembic folders (no __init__.py) are packages too.
ours = find_namespace_packages(include=[f"{top}*" for top in ("chassis", "catalog_service", "sharing_service",
                                                              "billing_service", "gateway", "devtools")],
                               exclude=["*__pycache__*"])
client = find_packages(CLIENT_SRC)
migrations = ["migrations/*.py", "migrations/*.mako", "migrations/versions/*.py"]

setup(
    packages=[*ours, *client, *generated],
    package_dir={**{package: f"{CLIENT_SRC}/{package}" for package in client if "." not in package},
                 "cloudimg": "gen/cloudimg"},
    package_data={
        # Each context's Alembic environment and revisions travel with it (run at start-up).
        "catalog_service": migrations,
        "sharing_service": migrations,
        "billing_service": ["data/*.json", *migrations],
        "gateway": migrations,
        # PEP 561: typed packages; the generated ones with their mypy-protobuf stubs.
        **{package: ["py.typed"] for package in client if "." not in package},
        **{package: ["*.pyi", "py.typed"] for package in generated},
    },
)
