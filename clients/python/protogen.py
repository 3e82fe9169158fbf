"""Generates the Python code of cloudimg's protos: messages (*_pb2.py), gRPC stubs (*_pb2_grpc.py) and their
typed stubs (*.pyi, by mypy-protobuf), in one package tree ``cloudimg.<context>.v1`` with a ``py.typed`` in
every leaf package (PEP 561; the tree is a namespace package, so the marker goes in the leaves).

One generator for every build of that code: ``make gen`` (the whole API into gen/), the ``cloudimg``
distribution (the repository's setup.py, into gen/) and the ``cloudimg-client`` distribution
(clients/python/setup.py, the public API only, into its build/). Needs grpcio-tools and mypy-protobuf,
which the builds declare as build requirements.

    python clients/python/protogen.py OUT_DIR PROTO_ROOT THIRD_PARTY_ROOT [PACKAGE_DIR ...]
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path


def proto_files(proto_root: Path, package_dirs: list[str] | None = None) -> list[Path]:
    """The .proto files under proto_root (or under its package_dirs, e.g. "cloudimg/gateway/v1"), sorted."""
    roots = [proto_root / d for d in package_dirs] if package_dirs else [proto_root]
    found = sorted(p for root in roots for p in root.rglob("*.proto"))
    if not found:
        raise FileNotFoundError(f"no .proto files under {', '.join(map(str, roots))}")
    return found


def _plugin(name: str) -> str:
    """A protoc plugin of mypy-protobuf from this interpreter's scripts (a build environment's own), else PATH."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (pip install mypy-protobuf)")
    return found


def generate(out_dir: Path, proto_root: Path, third_party: Path, package_dirs: list[str] | None = None) -> list[str]:
    """Makes out_dir hold exactly the code of the protos (files whose content is unchanged are left alone, so
    that a process importing from it meanwhile never finds it missing); returns the packages' dotted names."""
    with tempfile.TemporaryDirectory() as scratch:
        packages = _generate(Path(scratch), proto_root, third_party, proto_files(proto_root, package_dirs))
        _sync(Path(scratch), out_dir)
    # The namespace packages above the leaves ("cloudimg", "cloudimg.gateway"), which setuptools must list too.
    parents = {".".join(p.split(".")[:i]) for p in packages for i in range(1, p.count(".") + 1)}
    return sorted(parents | set(packages))


def _sync(made: Path, out_dir: Path) -> None:
    wanted = {path.relative_to(made) for path in made.rglob("*") if path.is_file()}
    for relative in sorted(wanted):
        target = out_dir / relative
        content = (made / relative).read_bytes()
        if not target.is_file() or target.read_bytes() != content:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    for stale in sorted(out_dir.rglob("*"), reverse=True) if out_dir.exists() else ():
        relative = stale.relative_to(out_dir)
        if "__pycache__" in relative.parts or relative.name == ".stamp":
            continue
        if stale.is_file() and relative not in wanted:
            stale.unlink()
        elif stale.is_dir() and not any(stale.iterdir()):
            stale.rmdir()


def _generate(out_dir: Path, proto_root: Path, third_party: Path, files: list[Path]) -> list[str]:
    from grpc_tools import protoc  # a build requirement, imported only when generating

    well_known = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto, shipped with grpcio-tools
    args = ["grpc_tools.protoc", f"-I{proto_root}", f"-I{third_party}", f"-I{well_known}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", f"--mypy_out={out_dir}",
            f"--mypy_grpc_out={out_dir}", *(str(f.relative_to(proto_root)) for f in files)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {proto_root}")
    packages = sorted({str(f.parent.relative_to(proto_root)).replace(os.sep, ".") for f in files})
    for package in packages:
        (out_dir.joinpath(*package.split(".")) / "py.typed").touch()
    return packages


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__.rsplit("\n\n", 1)[1].strip())
    generated = generate(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:] or None)
    print(f"protogen: {len(generated)} packages into {sys.argv[1]}")
