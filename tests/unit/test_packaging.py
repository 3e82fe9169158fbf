"""The distributions' declarations and the lock agree: every dependency pyproject.toml declares is locked at a
version its range admits, with hashes; the runtime half is the dev lock's own subset and holds no dev tool;
cloudimg-client declares the same ranges as the whole; and the code generator makes the typed package tree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"
DEV_TOOLS = {"pytest", "ruff", "mypy", "grpcio-tools", "hypothesis", "trustme", "uv", "mypy-protobuf",
             "kubernetes-validate", "check-jsonschema"}


def project(path: Path) -> dict[str, object]:
    document: dict[str, object] = tomllib.loads(path.read_text())
    return document


def declared(path: Path) -> list[Requirement]:
    table = project(path)["project"]
    assert isinstance(table, dict)
    return [Requirement(text) for text in table["dependencies"]]


def dev_group() -> list[Requirement]:
    groups = project(ROOT / "pyproject.toml")["dependency-groups"]
    assert isinstance(groups, dict)
    return [Requirement(text) for text in groups["dev"]]


def locked(name: str) -> dict[str, tuple[str, list[str]]]:
    """requirements/<name>.txt: canonical name -> (version, hashes)."""
    text = (ROOT / "requirements" / f"{name}.txt").read_text()
    pins: dict[str, tuple[str, list[str]]] = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", re.sub(r"(?m)^\s*#.*\n", "", text)):
        if not entry.strip():
            continue
        head = entry.split()[0]
        assert "==" in head, f"not pinned exactly: {head}"
        package, version = head.split("==")
        pins[canonicalize_name(package.split("[")[0])] = (version, re.findall(r"--hash=sha256:([0-9a-f]{64})", entry))
    return pins


@pytest.mark.parametrize("name", ["runtime", "dev"])
def test_every_locked_package_is_pinned_with_its_hashes(name: str) -> None:
    pins = locked(name)
    assert pins
    unhashed = [package for package, (_, hashes) in pins.items() if not hashes]
    assert not unhashed, f"{name}.txt: no hash for {unhashed} (pip --require-hashes would refuse them)"


@pytest.mark.parametrize(("name", "requirements"), [("runtime", declared(ROOT / "pyproject.toml")),
                                                    ("dev", declared(ROOT / "pyproject.toml") + dev_group())],
                         ids=["runtime", "dev"])
def test_every_declared_dependency_is_locked_within_its_range(name: str, requirements: list[Requirement]) -> None:
    pins = locked(name)
    for requirement in requirements:
        package = canonicalize_name(requirement.name)
        assert package in pins, f"{requirement} is declared but not in requirements/{name}.txt (make lock)"
        version = pins[package][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{requirement} is locked at {version} in requirements/{name}.txt (make lock)")


def test_the_runtime_lock_is_the_dev_locks_subset_without_dev_tools() -> None:
    runtime, dev = locked("runtime"), locked("dev")
    assert {package: pin[0] for package, pin in runtime.items()} == {
        package: dev[package][0] for package in runtime}, "the two locks disagree on a version"
    assert not DEV_TOOLS & set(runtime), f"dev tools in the runtime lock: {DEV_TOOLS & set(runtime)}"


def test_the_client_declares_the_same_ranges_as_the_whole() -> None:
    whole = {canonicalize_name(r.name): r for r in declared(ROOT / "pyproject.toml")}
    for requirement in declared(CLIENT / "pyproject.toml"):
        ours = whole.get(canonicalize_name(requirement.name))
        assert ours is not None, f"{requirement.name} is declared by cloudimg-client only"
        assert requirement.specifier == ours.specifier, f"{requirement} vs {ours}"


def test_both_distributions_have_one_version_and_one_cli() -> None:
    import cloudimg_client

    whole, client = project(ROOT / "pyproject.toml")["project"], project(CLIENT / "pyproject.toml")["project"]
    assert isinstance(whole, dict)
    assert isinstance(client, dict)
    assert whole["version"] == client["version"] == cloudimg_client.FALLBACK_VERSION
    assert whole["scripts"] == client["scripts"] == {"cloudimg": "cloudimg_cli.main:main"}


def test_the_generator_makes_typed_namespace_packages(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(CLIENT))
    try:
        from protogen import generate
    finally:
        sys.path.remove(str(CLIENT))
    out = tmp_path / "gen"
    packages = generate(out, ROOT / "protos", ROOT / "third_party" / "googleapis", ["cloudimg/gateway/v1"])
    assert packages == ["cloudimg", "cloudimg.gateway", "cloudimg.gateway.v1"]
    leaf = out / "cloudimg" / "gateway" / "v1"
    assert (leaf / "py.typed").is_file()
    assert sorted(p.name for p in leaf.glob("image_service_pb2*")) == [
        "image_service_pb2.py", "image_service_pb2.pyi", "image_service_pb2_grpc.py", "image_service_pb2_grpc.pyi"]
    assert not (out / "cloudimg" / "__init__.py").exists()  # a namespace package: the two distributions share it
    # Generating again changes nothing and drops what is no longer generated.
    stale = leaf / "removed_service_pb2.py"
    stale.write_text("")
    before = {p: p.stat().st_mtime_ns for p in leaf.iterdir() if p != stale}
    generate(out, ROOT / "protos", ROOT / "third_party" / "googleapis", ["cloudimg/gateway/v1"])
    assert not stale.exists()
    assert {p: p.stat().st_mtime_ns for p in leaf.iterdir()} == before
