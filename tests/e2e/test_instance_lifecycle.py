"""Instances with a life, end to end with the four services as real processes: the backup story through the CLI
(launch, make an image of the instance, reset it and another instance to that image, both run it), the trust
tour (a share waits for acceptance; an ENFORCE policy refuses what it does not list), and a gateway SIGKILLed
in the middle of a reset, which a restarted gateway finishes, charged once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from cloudimg.gateway.v1 import image_service_pb2 as image_pb
from cloudimg.gateway.v1 import image_service_pb2_grpc as image_grpc
from cloudimg.gateway.v1 import instance_service_pb2 as pb
from cloudimg.gateway.v1 import instance_service_pb2_grpc as pb_grpc
from sqlalchemy import create_engine, text

from catalog_service.domain.seed import seed_image_id
from devtools.stack import Stack
from tests.conftest import ALICE, BOB, BOTH_DATABASES, billing_writes_held, running_stack

GZ = "ap-guangzhou"
UBUNTU = seed_image_id(GZ, "ubuntu-2204-x86")
DEBIAN = seed_image_id(GZ, "debian-12-x86")
ALICE_WEB = seed_image_id(GZ, "alice-web")


def _cli(stack: Stack, who: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLOUDIMG_API_KEY": stack.api_keys[who], "CLOUDIMG_CONFIG_FILE": os.devnull,
           "CLOUDIMG_CREDENTIALS_FILE": os.devnull}  # no profile of the user's
    return subprocess.run([sys.executable, "-m", "cloudimg_cli.main", *stack.cli_args(), *args], env=env,
                          capture_output=True, text=True, timeout=60)


def cloudimg(stack: Stack, who: str, *args: str) -> Any:
    """Runs the CLI against the stack and returns its --output json output."""
    done = _cli(stack, who, "--output", "json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def cloudimg_fails(stack: Stack, who: str, *args: str) -> str:
    done = _cli(stack, who, *args)
    assert done.returncode == 1, done.stdout
    return done.stderr.strip()


def test_the_backup_story_through_the_cli(stack: Stack) -> None:
    launched = cloudimg(stack, "alice", "run", "--region", GZ, "--image", UBUNTU, "--instance-type", "S5.MEDIUM4",
                        "--count", "2")
    first, second = launched["instance_ids"]
    backup = cloudimg(stack, "alice", "create-image", "--instance", first, "--name", f"backup-{first}", "--wait")
    image_id = backup["image"]["image_id"]
    assert backup["image"]["state"] == "IMAGE_STATE_NORMAL"
    assert backup["image"]["base_image_id"] == UBUNTU
    quote = cloudimg(stack, "alice", "quote-reset", second, "--image", image_id)
    assert quote["quote"]["lines"][0]["kind"] == "QUOTE_LINE_KIND_INSTANCE"
    for instance_id in (first, second):
        reset = cloudimg(stack, "alice", "reset", instance_id, "--image", image_id)
        assert (reset["instance"]["state"], reset["instance"]["image_id"]) == ("INSTANCE_STATE_RUNNING", image_id)
    listed = cloudimg(stack, "alice", "instances", "--state", "RUNNING")
    assert {i["instance_id"]: i["image_id"] for i in listed["instances"] if i["instance_id"] in (first, second)} == {
        first: image_id, second: image_id}
    resets = [c for c in cloudimg(stack, "alice", "charges", "--instance", second, "--all")["charges"]
              if c.get("kind") == "CHARGE_KIND_RESET"]
    assert len(resets) == 1
    ended = cloudimg(stack, "alice", "terminate", first, second)
    assert {i["state"] for i in ended["instances"]} == {"INSTANCE_STATE_TERMINATED"}
    error = cloudimg_fails(stack, "alice", "reset", first, "--image", image_id)
    assert error.startswith("error: FAILED_PRECONDITION INSTANCE_TERMINATED")


def test_the_trust_tour_through_the_cli(stack: Stack) -> None:
    cloudimg(stack, "alice", "share", ALICE_WEB, BOB)
    launch = ("run", "--region", GZ, "--image", ALICE_WEB, "--instance-type", "S5.MEDIUM4")
    assert "SHARE_PENDING" in cloudimg_fails(stack, "bob", *launch)
    # by name: test_launch_path shares alice-blog with bob on the same session's stack
    pending = cloudimg(stack, "bob", "images", "--region", GZ, "--image-type", "SHARED", "--name", "alice web")
    assert [(i["image_id"], i["share_state"]) for i in pending["images"]] == [(ALICE_WEB, "SHARE_STATE_PENDING")]
    assert cloudimg(stack, "bob", "accept-share", ALICE_WEB)["share"]["state"] == "SHARE_STATE_ACCEPTED"
    assert cloudimg(stack, "bob", *launch)["instance_ids"]
    policy = cloudimg(stack, "bob", "trust-policy", "update", "--mode", "ENFORCE", "--allowed-accounts", ALICE)
    assert policy["policy"]["mode"] == "TRUST_POLICY_MODE_ENFORCE"
    assert cloudimg(stack, "bob", *launch)["instance_ids"]
    cloudimg(stack, "bob", "trust-policy", "update", "--allowed-accounts", "")
    assert "IMAGE_NOT_ALLOWED" in cloudimg_fails(stack, "bob", *launch)
    assert cloudimg(stack, "bob", "trust-policy")["policy"]["mode"] == "TRUST_POLICY_MODE_ENFORCE"
    cloudimg(stack, "bob", "trust-policy", "update", "--mode", "OFF")
    owner_view = cloudimg(stack, "alice", "shares", ALICE_WEB)
    assert [(s["recipient_account_id"], s["state"]) for s in owner_view["shares"]] == [(BOB, "SHARE_STATE_ACCEPTED")]
    cloudimg(stack, "alice", "unshare", ALICE_WEB, BOB)


@pytest.fixture(params=BOTH_DATABASES)
def own_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    with running_stack(request, tmp_path, "postgres_database") as running:
        yield running


def reset_charges(stack: Stack, instance_id: str) -> int:
    url = stack.database_urls.get("billing") or f"sqlite:///{stack.data_dir / 'billing.db'}"
    engine = create_engine(url)
    with engine.connect() as connection:
        found = connection.execute(text(
            "SELECT count(*) FROM billing_charge WHERE kind = 'RESET' AND instance_id = :i"), {"i": instance_id})
        count = int(found.scalar_one())
    engine.dispose()
    return count


def test_a_gateway_killed_mid_reset_leaves_the_instance_resetting_only_until_a_restart_finishes_it(
        own_stack: Stack) -> None:
    channel = own_stack.channel()
    instances = pb_grpc.InstanceServiceStub(channel)
    alice = (("authorization", f"Bearer {own_stack.api_keys['alice']}"),)
    (instance_id,) = instances.RunInstances(pb.RunInstancesRequest(
        region=GZ, image_id=UBUNTU, instance_type="S5.MEDIUM4", instance_count=1), metadata=alice).instance_ids

    def state() -> tuple[int, str]:
        found = instances.GetInstance(pb.GetInstanceRequest(instance_id=instance_id), metadata=alice, timeout=5)
        return found.instance.state, found.instance.image_id

    with ThreadPoolExecutor(1) as pool, billing_writes_held(own_stack):
        pending = pool.submit(instances.ResetInstance, pb.ResetInstanceRequest(
            instance_id=instance_id, image_id=DEBIAN, request_id="reset-1"), metadata=alice, timeout=20)
        deadline = time.monotonic() + 15
        while state()[0] != pb.INSTANCE_STATE_RESETTING:  # priced, claimed, and now waiting on billing's charge
            assert time.monotonic() < deadline, "the reset never started"
            time.sleep(0.05)
        own_stack.kill("gateway")
        with pytest.raises(grpc.RpcError) as lost:
            pending.result()
        assert lost.value.code() == grpc.StatusCode.UNAVAILABLE  # the caller lost its answer with the gateway
    own_stack.start_service("gateway")  # billing writes again (maybe the charge of the dead call lands now)
    own_stack.wait("gateway")
    deadline = time.monotonic() + 40
    while state()[0] != pb.INSTANCE_STATE_RUNNING:  # the restarted gateway's worker finishes it
        assert time.monotonic() < deadline, own_stack.log_tail("gateway")
        time.sleep(0.2)
    assert state() == (pb.INSTANCE_STATE_RUNNING, DEBIAN)
    assert reset_charges(own_stack, instance_id) == 1
    again = instances.ResetInstance(pb.ResetInstanceRequest(instance_id=instance_id, image_id=DEBIAN,
                                                            request_id="reset-1"), metadata=alice)
    assert (again.instance.state, again.instance.image_id) == (pb.INSTANCE_STATE_RUNNING, DEBIAN)
    assert reset_charges(own_stack, instance_id) == 1
    images = image_grpc.ImageServiceStub(channel)
    assert images.GetImage(image_pb.GetImageRequest(image_id=DEBIAN), metadata=alice).image.image_id == DEBIAN
