"""The ``cloudimg-client`` distribution: cloudimg_client, cloudimg_cli, and the Python code of the public API's
protos (cloudimg.gateway.v1), generated at build time from the repository's protos/ (protogen.py).
Static metadata is in pyproject.toml. Build it from a checkout: ``pip install clients/python``."""

import sys
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent.parent
sys.path.insert(0, str(HERE))
from protogen import generate  # noqa: E402 (the build helper beside this file)

generated = generate(HERE / "build" / "gen", REPOSITORY / "protos", REPOSITORY / "third_party" / "googleapis",
                     ["cloudimg/gateway/v1"])
ours = find_packages("src")

setup(
    packages=[*ours, *generated],
    package_dir={**{package: f"src/{package}" for package in ours if "." not in package},
                 "cloudimg": "build/gen/cloudimg"},
    package_data={**{package: ["py.typed"] for package in ours},
                  **{package: ["*.pyi", "py.typed"] for package in generated}},
)
