"""The polyglot proof: clients/node/smoke.js, a Node.js client (@grpc/grpc-js and @grpc/proto-loader
loading only protos/ and third_party/googleapis/), run against the real stack over TLS. It lists, quotes,
launches with a client token and replays it, and decodes the google.rpc.Status of two refused calls; this
test holds what it saw to what the Python stubs see for the same calls."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any, TypedDict

import grpc
import pytest
from cloudimg.gateway.v1 import account_service_pb2, account_service_pb2_grpc, image_service_pb2, image_service_pb2_grpc
from cloudimg.gateway.v1 import instance_service_pb2 as pb
from cloudimg.gateway.v1 import instance_service_pb2_grpc as pb_grpc

from catalog_service.domain.seed import seed_image_id
from chassis.convert import decimal_of
from devtools.stack import Stack
from tests.conftest import rich_status

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DIR = ROOT / "clients" / "node"
GZ = "ap-guangzhou"
INSTANCE_TYPE = "S5.MEDIUM4"
COUNT = 2
MISSING_IMAGE_ID = "img-zz000000"  # the id smoke.js asks GetImage for


class Launch(TypedDict):
    """The fields a quote and a launch share."""

    region: str
    image_id: str
    instance_type: str
    instance_count: int


def node_modules() -> None:
    """The client's pinned modules (package-lock.json), installed when missing or older than the lock file
    (make test installs them first)."""
    installed = CLIENT_DIR / "node_modules" / ".package-lock.json"  # npm ci writes it last
    if installed.exists() and installed.stat().st_mtime >= (CLIENT_DIR / "package-lock.json").stat().st_mtime:
        return
    npm = shutil.which("npm")
    assert npm, "npm is needed to install clients/node's modules (npm ci)"
    subprocess.run([npm, "ci", "--silent", "--no-audit", "--no-fund"], cwd=CLIENT_DIR, check=True, timeout=300)


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        reason = "node is not installed on this machine: the Node.js client (clients/node) cannot run"
        if os.environ.get("CLOUDIMG_REQUIRE_NODE") == "1":
            pytest.fail(reason + " (CLOUDIMG_REQUIRE_NODE=1)")
        pytest.skip(reason)
    node_modules()
    return found


def run_client(node: str, stack: Stack, client_token: str,
               api_key: str | None = None,
               extra: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("CLOUDIMG_")}
    env.update({
        "CLOUDIMG_ENDPOINT": stack.gateway_addr,
        "CLOUDIMG_CA_CERT": str(stack.cert_file("ca")),
        "CLOUDIMG_API_KEY": api_key or stack.api_keys["alice"],
        "CLOUDIMG_REGION": GZ,
        "CLOUDIMG_IMAGE_ID": seed_image_id(GZ, "ubuntu-2204-x86"),
        "CLOUDIMG_ARM_IMAGE_ID": seed_image_id(GZ, "ubuntu-2204-arm"),
        "CLOUDIMG_INSTANCE_TYPE": INSTANCE_TYPE,
        "CLOUDIMG_INSTANCE_COUNT": str(COUNT),
        "CLOUDIMG_CLIENT_TOKEN": client_token,
        **(extra or {}),
    })
    done = subprocess.run([node, str(CLIENT_DIR / "smoke.js")], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    try:
        summary = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"smoke.js printed no JSON (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done, summary


def test_the_node_client_lists_quotes_launches_replays_and_decodes_refusals(node: str, stack: Stack) -> None:
    token = f"node-e2e-{os.urandom(6).hex()}"
    done, summary = run_client(node, stack, token)
    assert done.returncode == 0, f"{json.dumps(summary, indent=2)}\n{done.stderr}"
    assert summary["ok"], f"{json.dumps(summary, indent=2)}\n{done.stderr}"
    assert summary["tls"] is True
    assert summary["mismatches"] == []

    channel = stack.channel()
    metadata = (("authorization", f"Bearer {stack.api_keys['alice']}"),)
    images = image_service_pb2_grpc.ImageServiceStub(channel)
    instances = pb_grpc.InstanceServiceStub(channel)
    accounts = account_service_pb2_grpc.AccountServiceStub(channel)

    # 1. the images it listed: the public ones are exactly those the Python stub lists
    listed = images.ListImages(image_service_pb2.ListImagesRequest(region=GZ, page_size=100), metadata=metadata,
                               timeout=10).images
    public = [i for i in listed if i.image_type == image_service_pb2.IMAGE_TYPE_PUBLIC]
    assert summary["images"]["count"] > 0
    assert summary["images"]["image_listed"]
    assert summary["images"]["by_type"]["IMAGE_TYPE_PUBLIC"] == len(public)

    # 2. its quote is the Python stub's, to the nano
    request = Launch(region=GZ, image_id=seed_image_id(GZ, "ubuntu-2204-x86"), instance_type=INSTANCE_TYPE,
                     instance_count=COUNT)
    quote = instances.QuoteRunInstances(pb.QuoteRunInstancesRequest(**request), metadata=metadata, timeout=10).quote
    seen = summary["quote"]
    assert (seen["total"]["units"], seen["total"]["nanos"]) == (str(quote.total.units), quote.total.nanos)
    assert Decimal(seen["total_decimal"]) == decimal_of(quote.total) > 0
    assert seen["currency_code"] == quote.currency_code
    assert [line["kind"] for line in seen["lines"]] == [pb.QuoteLineKind.Name(line.kind) for line in quote.lines]

    # 3. the replay with its client token gave the same instances; they are alice's, RUNNING, charged once
    launch = summary["launch"]
    assert launch["client_token"] == token
    assert launch["instance_ids"] == launch["replay_instance_ids"]
    assert len(launch["instance_ids"]) == COUNT
    assert Decimal(launch["total_decimal"]) == decimal_of(quote.total)
    for instance_id in launch["instance_ids"]:
        instance = instances.GetInstance(pb.GetInstanceRequest(instance_id=instance_id), metadata=metadata,
                                         timeout=10).instance
        assert instance.state == pb.INSTANCE_STATE_RUNNING
        assert instance.instance_name == "node-smoke"
    replayed = instances.RunInstances(pb.RunInstancesRequest(**request, client_token=token,
                                                             instance_name="node-smoke"),
                                      metadata=metadata, timeout=10)
    assert list(replayed.instance_ids) == launch["instance_ids"]  # Python's replay of Node's token: the same
    charges = accounts.ListCharges(account_service_pb2.ListChargesRequest(page_size=1000), metadata=metadata,
                                   timeout=10).charges
    assert len([c for c in charges if set(c.instance_ids) == set(launch["instance_ids"])]) == 1

    # 4. the refusals it decoded are those the Python side decodes: code, message, ErrorInfo
    arm_request: Launch = {**request, "image_id": seed_image_id(GZ, "ubuntu-2204-arm"), "instance_count": 1}
    expected = {
        "GetImage": lambda: images.GetImage(image_service_pb2.GetImageRequest(image_id=MISSING_IMAGE_ID),
                                            metadata=metadata, timeout=10),
        "RunInstances": lambda: instances.RunInstances(
            pb.RunInstancesRequest(**arm_request), metadata=metadata, timeout=10),
    }
    assert [r["call"] for r in summary["refusals"]] == list(expected)
    for refusal in summary["refusals"]:
        with pytest.raises(grpc.RpcError) as raised:
            expected[refusal["call"]]()
        error = raised.value
        _status, info, details = rich_status(error)
        assert (refusal["code"], refusal["code_name"]) == (error.code().value[0], error.code().name)
        assert refusal["message"] == error.details() == refusal["status"]["message"]
        assert (refusal["domain"], refusal["reason"], refusal["metadata"]) == (info.domain, info.reason,
                                                                               dict(info.metadata))
        assert refusal["error_info_count"] == 1
        assert [d["type"] for d in refusal["details"] if d["type"] != "google.rpc.ErrorInfo"] == [
            d.DESCRIPTOR.full_name for d in details]
    reasons = {r["call"]: r["reason"] for r in summary["refusals"]}
    assert reasons == {"GetImage": "IMAGE_NOT_FOUND", "RunInstances": "ARCHITECTURE_MISMATCH"}
    mismatch = next(r for r in summary["refusals"] if r["call"] == "RunInstances")
    bad_request = next(d for d in mismatch["details"] if d["type"] == "google.rpc.BadRequest")
    assert bad_request["field_violations"][0]["field"] == "instance_type"


def test_the_node_client_fails_on_a_bad_api_key(node: str, stack: Stack) -> None:
    """Not a silent pass: a call refused where it must not be makes it exit 2, naming the step and reason."""
    done, summary = run_client(node, stack, f"node-e2e-{os.urandom(6).hex()}", api_key="cik_aaaaaaaa_" + "B" * 43)
    assert (done.returncode, summary["ok"], summary["step"]) == (2, False, "ListImages")
    assert (summary["status"]["code_name"], summary["status"]["reason"]) == ("UNAUTHENTICATED", "API_KEY_INVALID")
    assert "ListImages failed: UNAUTHENTICATED API_KEY_INVALID" in done.stderr


def test_the_node_client_exits_1_on_a_mismatch(node: str, stack: Stack) -> None:
    """An x86 image given as the one that must be refused on an x86 type is launched: a mismatch, exit 1."""
    done, summary = run_client(node, stack, f"node-e2e-{os.urandom(6).hex()}",
                               extra={"CLOUDIMG_ARM_IMAGE_ID": seed_image_id(GZ, "ubuntu-2204-x86")})
    assert (done.returncode, summary["ok"]) == (1, False)
    assert len(summary["mismatches"]) == 1
    assert summary["mismatches"][0].endswith("was not refused")
    assert "mismatch: RunInstances" in done.stderr
