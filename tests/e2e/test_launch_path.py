"""End to end: the four services as real processes, driven through the public API's generated stubs."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypedDict, Unpack

import grpc
import pytest
from cloudimg.gateway.v1 import (
    account_service_pb2,
    account_service_pb2_grpc,
    image_service_pb2,
    image_service_pb2_grpc,
    image_share_service_pb2,
    image_share_service_pb2_grpc,
)
from cloudimg.gateway.v1 import instance_service_pb2 as pb
from cloudimg.gateway.v1 import instance_service_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from catalog_service.domain.seed import seed_image_id
from chassis.convert import decimal_of
from devtools.stack import Stack
from tests.conftest import BOB, Spawn, rich_status

GZ = "ap-guangzhou"
P = ParamSpec("P")


class Launch(TypedDict, total=False):
    """The fields of a RunInstancesRequest (and of a QuoteRunInstancesRequest) that the tests set."""

    region: str
    image_id: str
    instance_type: str
    instance_count: int
    charge_type: pb.ChargeType.ValueType
    period_months: int
    instance_name: str


class Api:
    def __init__(self, stack: Stack, who: str = "alice"):
        channel = stack.channel()
        self.images = image_service_pb2_grpc.ImageServiceStub(channel)
        self.shares = image_share_service_pb2_grpc.ImageShareServiceStub(channel)
        self.instances = pb_grpc.InstanceServiceStub(channel)
        self.accounts = account_service_pb2_grpc.AccountServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {stack.api_keys[who]}"),)

    def run(self, **fields: Unpack[Launch]) -> pb.RunInstancesResponse:
        launched: pb.RunInstancesResponse = self.instances.RunInstances(pb.RunInstancesRequest(**fields),
                                                                        metadata=self.metadata, timeout=10)
        return launched

    def quote(self, **fields: Unpack[Launch]) -> pb.Quote:
        quoted: pb.QuoteRunInstancesResponse = self.instances.QuoteRunInstances(
            pb.QuoteRunInstancesRequest(**fields), metadata=self.metadata, timeout=10)
        return quoted.quote


@pytest.fixture
def alice(stack: Stack) -> Api:
    return Api(stack, "alice")


@pytest.fixture
def bob(stack: Stack) -> Api:
    return Api(stack, "bob")


def refused(call: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(*args, **kwargs)
    return error.value


def test_launch_of_a_public_image_is_charged_once(alice: Api) -> None:
    launched = alice.run(region=GZ, image_id=seed_image_id(GZ, "ubuntu-2204-x86"), instance_type="S5.MEDIUM4",
                         instance_count=3, instance_name="web")
    assert len(launched.instance_ids) == 3
    assert all(re.fullmatch(r"ins-[a-z0-9]{8}", i) for i in launched.instance_ids)
    assert [l.kind for l in launched.quote.lines] == [pb.QUOTE_LINE_KIND_INSTANCE]  # public Linux: no image line
    instance = alice.instances.GetInstance(pb.GetInstanceRequest(instance_id=launched.instance_ids[0]),
                                           metadata=alice.metadata).instance
    assert instance.state == pb.INSTANCE_STATE_RUNNING
    assert instance.region == GZ
    charges = alice.accounts.ListCharges(account_service_pb2.ListChargesRequest(page_size=1000),
                                         metadata=alice.metadata).charges
    mine = [c for c in charges if set(c.instance_ids) == set(launched.instance_ids)]
    assert len(mine) == 1
    assert mine[0].quote.total == launched.quote.total


def test_a_windows_quote_overseas_has_a_license_line_and_mainland_has_none(alice: Api) -> None:
    overseas = alice.quote(region="ap-singapore", image_id=seed_image_id("ap-singapore", "windows-2022-x86"),
                           instance_type="S5.MEDIUM4", instance_count=2)
    assert [l.kind for l in overseas.lines] == [pb.QUOTE_LINE_KIND_INSTANCE, pb.QUOTE_LINE_KIND_IMAGE_LICENSE]
    assert decimal_of(overseas.total) == sum(decimal_of(l.amount) for l in overseas.lines)
    assert all(l.quantity == 2 and l.unit == "instance-hour" for l in overseas.lines)
    mainland = alice.quote(region=GZ, image_id=seed_image_id(GZ, "windows-2022-x86"), instance_type="S5.MEDIUM4",
                           instance_count=2)
    assert [l.kind for l in mainland.lines] == [pb.QUOTE_LINE_KIND_INSTANCE]


def test_a_marketplace_image_and_its_custom_descendant_carry_the_providers_price(alice: Api) -> None:
    for image in ("wordpress", "alice-blog"):
        quote = alice.quote(region=GZ, image_id=seed_image_id(GZ, image), instance_type="S5.MEDIUM4",
                            instance_count=1, charge_type=pb.CHARGE_TYPE_PREPAID, period_months=12)
        assert [l.kind for l in quote.lines] == [pb.QUOTE_LINE_KIND_INSTANCE, pb.QUOTE_LINE_KIND_MARKETPLACE]
        assert quote.lines[1].quantity == 12
        assert quote.lines[1].unit == "instance-month"


def test_an_arm64_image_is_refused_on_an_x86_64_type(alice: Api) -> None:
    error = refused(alice.run, region=GZ, image_id=seed_image_id(GZ, "ubuntu-2204-arm"), instance_type="S5.MEDIUM4",
                    instance_count=1)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, info, details = rich_status(error)
    assert info.reason == "ARCHITECTURE_MISMATCH"
    assert details[0].field_violations[0].field == "instance_type"
    assert alice.run(region=GZ, image_id=seed_image_id(GZ, "ubuntu-2204-arm"), instance_type="SR1.MEDIUM4",
                     instance_count=1).instance_ids


def test_a_private_image_is_not_found_for_a_stranger_exactly_like_a_missing_one(bob: Api) -> None:
    private, missing = seed_image_id(GZ, "alice-web"), "img-zz000000"
    answers = []
    for image_id in (private, missing):
        for call in (lambda i: bob.run(region=GZ, image_id=i, instance_type="S5.MEDIUM4", instance_count=1),
                     lambda i: bob.images.GetImage(image_service_pb2.GetImageRequest(image_id=i),
                                                   metadata=bob.metadata)):
            error = refused(call, image_id)
            status, _info, _details = rich_status(error)
            answers.append((error.code(), error.details().replace(image_id, "ID"),
                            status.SerializeToString().replace(image_id.encode(), b"ID")))
    assert answers[0] == answers[2]
    assert answers[1] == answers[3]
    assert answers[0][0] == grpc.StatusCode.NOT_FOUND


def test_a_shared_image_can_be_launched_by_the_recipient(alice: Api, bob: Api) -> None:
    image_id = seed_image_id(GZ, "alice-blog")
    assert refused(bob.run, region=GZ, image_id=image_id, instance_type="S5.MEDIUM4",
                   instance_count=1).code() == grpc.StatusCode.NOT_FOUND
    shares = alice.shares.ShareImage(image_share_service_pb2.ShareImageRequest(image_id=image_id, account_ids=[BOB]),
                                     metadata=alice.metadata).shares
    assert [(s.recipient_account_id, s.state) for s in shares] == [(BOB, image_service_pb2.SHARE_STATE_PENDING)]
    # bob does not trust alice: the share waits for his acceptance
    error = refused(bob.run, region=GZ, image_id=image_id, instance_type="S5.MEDIUM4", instance_count=1)
    assert (error.code(), rich_status(error)[1].reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SHARE_PENDING")
    bob.shares.AcceptImageShare(image_share_service_pb2.AcceptImageShareRequest(image_id=image_id),
                                metadata=bob.metadata)
    launched = bob.run(region=GZ, image_id=image_id, instance_type="S5.MEDIUM4", instance_count=2)
    assert len(launched.instance_ids) == 2
    seen = bob.images.GetImage(image_service_pb2.GetImageRequest(image_id=image_id), metadata=bob.metadata).image
    assert seen.image_type == image_service_pb2.IMAGE_TYPE_SHARED
    assert seen.share_state == image_service_pb2.SHARE_STATE_ACCEPTED
    # the recipient cannot re-share it; only in its region can it be launched
    error = refused(bob.shares.ShareImage, image_share_service_pb2.ShareImageRequest(image_id=image_id,
                                                                                      account_ids=[BOB]),
                    metadata=bob.metadata)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused(bob.run, region="ap-beijing", image_id=image_id, instance_type="S5.MEDIUM4",
                   instance_count=1).code() == grpc.StatusCode.NOT_FOUND


def test_a_bad_api_key_is_refused(stack: Stack) -> None:
    api = Api(stack)
    api.metadata = (("authorization", "Bearer cik_aaaaaaaa_" + "B" * 43),)
    error = refused(api.images.ListRegions, image_service_pb2.ListRegionsRequest(), metadata=api.metadata)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert rich_status(error)[1].reason == "API_KEY_INVALID"


def test_every_service_serves_health_and_reflection(stack: Stack) -> None:
    for service in ("catalog", "sharing", "billing", "gateway"):
        channel = stack.channel(service)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                  timeout=5)
        names = {s.name for answer in answers for s in answer.list_services_response.service}
        assert "grpc.health.v1.Health" in names
        if service == "gateway":
            assert {"cloudimg.gateway.v1.InstanceService", "cloudimg.gateway.v1.ImageService"} <= names


def test_a_killed_dependency_is_unavailable_and_recovers_when_it_is_back(stack: Stack, alice: Api) -> None:
    """Down: UNAVAILABLE within about a second, not at the deadline. Back (SERVING): the very next call
    is served, whatever step of its reconnect backoff the gateway's channel is at. (Alice's own image: a custom
    image's verdict is asked for every time; a platform image's is leased, and its launches go on for the rest of
    the lease.)"""
    request = Launch(region=GZ, image_id=seed_image_id(GZ, "alice-web"), instance_type="S5.MEDIUM4",
                     instance_count=1)
    stack.kill("sharing")
    try:
        started = time.monotonic()
        error = refused(alice.run, **request)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert rich_status(error)[1].reason == "DEPENDENCY_UNAVAILABLE"
        assert time.monotonic() - started < 5  # the call's deadline is 10 s
    finally:
        stack.start_service("sharing")
        stack.wait("sharing")  # SERVING now (it watches health with a short reconnect backoff)
    assert alice.run(**request).instance_ids


def test_sigterm_turns_health_not_serving_then_exits_cleanly(spawn: Spawn, tmp_path: Path) -> None:
    billing = spawn("billing", {"BILLING_DATABASE_URL": f"sqlite:///{tmp_path}/billing.db"})
    watch = health_pb2_grpc.HealthStub(grpc.insecure_channel(billing.addr)).Watch(health_pb2.HealthCheckRequest(),
                                                                                  timeout=30)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    billing.send_signal(signal.SIGTERM)
    # the next update says NOT_SERVING; then the watch (an in-flight call) ends and the process exits
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()
    assert billing.wait(30) == 0


def test_the_cli_quotes_and_launches(stack: Stack) -> None:
    # No profile of the user's: CLOUDIMG_CONFIG_FILE and CLOUDIMG_CREDENTIALS_FILE name empty files.
    env = {"CLOUDIMG_API_KEY": stack.api_keys["alice"], "PATH": "/usr/bin", "CLOUDIMG_CONFIG_FILE": "/dev/null",
           "CLOUDIMG_CREDENTIALS_FILE": "/dev/null"}
    cli = [sys.executable, "-m", "cloudimg_cli.main", *stack.cli_args()]
    quote = subprocess.run([*cli, "quote", "--region", "ap-hongkong", "--image",
                            seed_image_id("ap-hongkong", "windows-2022-x86"), "--instance-type", "S5.LARGE8",
                            "--count", "2"],
                           env=env, capture_output=True, text=True, timeout=30)
    assert quote.returncode == 0, quote.stderr
    assert "IMAGE_LICENSE" in quote.stdout
    assert "INSTANCE" in quote.stdout
    assert "total" in quote.stdout
    run = subprocess.run([*cli, "--output", "json", "run", "--region", GZ, "--image",
                          seed_image_id(GZ, "debian-12-x86"), "--instance-type", "S5.MEDIUM4"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert re.search(r'"ins-[a-z0-9]{8}"', run.stdout)
    bad = subprocess.run([*cli, "image", "img-nothere0"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1
    assert "NOT_FOUND IMAGE_NOT_FOUND" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_an_operator_issues_a_key_for_a_new_account(stack: Stack) -> None:
    key = stack.issue_key("100000000009", "dave")
    api = Api(stack, "dave")
    assert api.metadata == (("authorization", f"Bearer {key}"),)
    identity = api.accounts.GetCallerIdentity(account_service_pb2.GetCallerIdentityRequest(), metadata=api.metadata,
                                              timeout=10)
    assert (identity.account_id, identity.display_name) == ("100000000009", "dave")
    for bad in (["issue-key", "12345", "dave"], ["issue-key", "100000000009", " "], ["issue-key", "100000000009"]):
        done = subprocess.run([sys.executable, "-m", "gateway", *bad], env=stack.env("gateway"), capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
