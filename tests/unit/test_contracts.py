"""The contracts build on their own and the breaking-change check bites: protos/ plus the vendored
third_party/googleapis compile with protoc and buf from a copy holding nothing else; buf breaking
(the FILE rules of buf.yaml) fails on a deleted field or a renamed RPC of the public API and passes on
an unchanged copy; `make breaking` compares against a commit that predates the vendored module; the
protoset carries google.rpc.ErrorInfo for grpcurl."""

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

ROOT = Path(__file__).resolve().parents[2]
THIRD_PARTY = "third_party/googleapis"
BUF = ROOT / "build" / "tools" / "node_modules" / ".bin" / "buf"
PUBLIC_PROTO = Path("protos/cloudimg/gateway/v1/image_service.proto")
# A message field on one line (options and all), e.g. `string region = 1;`: type, name, number.
FIELD = re.compile(r"^\s*(?:optional |repeated )?[\w.]+ (\w+) = \d+\b[^;]*;\s*$", re.MULTILINE)
RPC = re.compile(r"\brpc (\w+)\(")


@pytest.fixture(scope="module")
def buf() -> Path:
    if not BUF.exists():
        pytest.skip(f"buf is not installed at {BUF.relative_to(ROOT)} (`make lint` installs it)")
    return BUF


def our_protos(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root / "protos")) for p in (root / "protos").rglob("*.proto"))


def vendored_protos(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root / THIRD_PARTY)) for p in (root / THIRD_PARTY).rglob("*.proto"))


def copy_contracts(dest: Path) -> Path:
    """protos/, the vendored module and buf.yaml, and nothing else of the repository."""
    dest.mkdir(parents=True)
    shutil.copytree(ROOT / "protos", dest / "protos")
    shutil.copytree(ROOT / THIRD_PARTY, dest / THIRD_PARTY)
    shutil.copy(ROOT / "buf.yaml", dest / "buf.yaml")
    return dest


def run(cmd: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=120)


def build_image(buf: Path, workspace: Path) -> Path:
    image = workspace / "image.binpb"
    built = run([buf, "build", "protos", "-o", image], workspace)
    assert built.returncode == 0, built.stdout + built.stderr
    return image


def delete_a_field(text: str) -> tuple[str, str]:
    field = FIELD.search(text)
    assert field, f"no one-line field in {PUBLIC_PROTO}"
    return text[: field.start()] + text[field.end() :].lstrip("\n"), field.group(1)


def rename_an_rpc(text: str) -> tuple[str, str]:
    rpc = RPC.search(text)
    assert rpc, f"no rpc in {PUBLIC_PROTO}"
    return text[: rpc.start(1)] + rpc.group(1) + "Renamed" + text[rpc.end(1) :], rpc.group(1)


def test_vendored_protos_are_those_of_the_pinned_googleapis_common_protos() -> None:
    """At runtime google.rpc and google.type come from the installed package; the vendored copies
    must describe the same messages (re-vendor when the lock's googleapis-common-protos moves)."""
    site = Path(descriptor_pb2.__file__).resolve().parents[2]  # .../site-packages
    vendored = vendored_protos(ROOT)
    assert {"google/type/money.proto", "google/rpc/status.proto", "google/rpc/error_details.proto",
            "google/rpc/code.proto", "google/api/field_behavior.proto"} <= set(vendored)
    for name in vendored:
        installed = site / name
        assert installed.exists(), f"{name} is not in the installed googleapis-common-protos"
        assert (ROOT / THIRD_PARTY / name).read_bytes() == installed.read_bytes(), f"{name} differs from {installed}"


def test_protoc_compiles_every_proto_from_protos_and_the_vendored_module(tmp_path: Path) -> None:
    workspace = copy_contracts(tmp_path / "checkout")
    out = tmp_path / "out"
    out.mkdir()
    compiled = run([sys.executable, "-m", "grpc_tools.protoc", "-I", "protos", "-I", THIRD_PARTY,
                    f"--python_out={out}", f"--descriptor_set_out={out / 'all.binpb'}",
                    *our_protos(workspace), *vendored_protos(workspace)], workspace)
    assert compiled.returncode == 0, compiled.stderr
    assert (out / "cloudimg" / "gateway" / "v1" / "instance_service_pb2.py").exists()


def test_buf_builds_a_clean_checkout(buf: Path, tmp_path: Path) -> None:
    workspace = copy_contracts(tmp_path / "checkout")
    built = run([buf, "build"], workspace)
    assert built.returncode == 0, built.stdout + built.stderr


def test_buf_breaking_passes_for_unchanged_protos(buf: Path, tmp_path: Path) -> None:
    baseline = build_image(buf, copy_contracts(tmp_path / "baseline"))
    workspace = copy_contracts(tmp_path / "checkout")
    checked = run([buf, "breaking", "protos", "--against", baseline], workspace)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("change", [delete_a_field, rename_an_rpc], ids=["deleted-field", "renamed-rpc"])
def test_buf_breaking_fails_for_a_breaking_change_of_the_public_api(buf: Path, tmp_path: Path,
                                                                    change: Callable[[str], tuple[str, str]]) -> None:
    baseline = build_image(buf, copy_contracts(tmp_path / "baseline"))
    workspace = copy_contracts(tmp_path / "checkout")
    proto = workspace / PUBLIC_PROTO
    changed, name = change(proto.read_text())
    proto.write_text(changed)
    build_image(buf, workspace)  # still a valid proto: what fails below is compatibility, not syntax

    checked = run([buf, "breaking", "protos", "--against", baseline], workspace)

    assert checked.returncode != 0
    assert f'"{name}"' in checked.stdout + checked.stderr, checked.stdout + checked.stderr


def git(repo: Path, *args: str) -> None:
    done = run(["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid",
                "-c", "init.defaultBranch=main", *args], repo)
    assert done.returncode == 0, done.stderr


def test_make_breaking_compares_with_a_commit_that_predates_the_vendored_module(buf: Path, tmp_path: Path) -> None:
    """A repository whose main holds protos/ only (imports resolved elsewhere, as before vendoring);
    the working tree adds the vendored module, buf.yaml and the Makefile. `make breaking` compares with
    the merge base until a v0.* tag exists, then with the tag."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(ROOT / "protos", repo / "protos")
    git(repo, "init", "-q")
    git(repo, "add", "protos")
    git(repo, "commit", "-q", "-m", "protos without the vendored module")
    shutil.copytree(ROOT / THIRD_PARTY, repo / THIRD_PARTY)
    shutil.copy(ROOT / "buf.yaml", repo / "buf.yaml")
    shutil.copy(ROOT / "Makefile", repo / "Makefile")
    (repo / "devtools").mkdir()
    shutil.copy(ROOT / "devtools" / "breaking.sh", repo / "devtools" / "breaking.sh")

    def make_breaking() -> subprocess.CompletedProcess[str]:
        return run(["make", "-s", "breaking", f"BUF={buf}"], repo)

    unchanged = make_breaking()
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert "compatible with merge base" in unchanged.stdout

    git(repo, "tag", "v0.1.0")
    tagged = make_breaking()
    assert tagged.returncode == 0, tagged.stdout + tagged.stderr
    assert "compatible with release v0.1.0" in tagged.stdout

    proto = repo / PUBLIC_PROTO
    changed, name = rename_an_rpc(proto.read_text())
    proto.write_text(changed)
    broken = make_breaking()
    assert broken.returncode != 0
    assert f'"{name}"' in broken.stderr, broken.stderr
    assert "breaks the API of release v0.1.0" in broken.stderr, broken.stderr


def test_protoset_carries_every_contract_and_the_error_details() -> None:
    protoset = ROOT / "build" / "cloudimg.protoset"
    assert protoset.exists(), "make gen builds build/cloudimg.protoset"
    files = descriptor_pb2.FileDescriptorSet.FromString(protoset.read_bytes()).file
    names = {f.name for f in files}
    assert set(our_protos(ROOT)) <= names
    assert {"google/rpc/status.proto", "google/rpc/error_details.proto", "google/type/money.proto"} <= names

    pool = descriptor_pool.DescriptorPool()
    for file in files:  # --include_imports lists every file after its imports
        pool.Add(file)
    assert pool.FindMessageTypeByName("google.rpc.ErrorInfo").fields_by_name["reason"]
    assert pool.FindMessageTypeByName("google.rpc.Status").fields_by_name["details"]
    assert pool.FindServiceByName("cloudimg.gateway.v1.ImageService").methods
