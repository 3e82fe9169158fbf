"""End to end, the four services as real processes with sharing's default verdict lease (1 s): the gateway answers
a public image's launch verdict from a lease instead of asking sharing, and no lease outlives the trust policy it
was read from. The policy is changed behind the gateway's back (at sharing, as another gateway replica would), while
launches keep coming: every launch that starts once the update has answered is refused, none is let through."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from cloudimg.gateway.v1 import image_service_pb2, image_service_pb2_grpc
from cloudimg.gateway.v1 import image_share_service_pb2 as share_pb
from cloudimg.gateway.v1 import image_share_service_pb2_grpc as share_grpc
from cloudimg.gateway.v1 import instance_service_pb2 as pb
from cloudimg.gateway.v1 import instance_service_pb2_grpc as pb_grpc
from cloudimg.sharing.v1 import sharing_service_pb2 as sharing_pb
from cloudimg.sharing.v1 import sharing_service_pb2_grpc as sharing_grpc
from google.protobuf import field_mask_pb2
from prometheus_client.parser import text_string_to_metric_families

from catalog_service.domain.seed import seed_image_id
from devtools.stack import Stack, free_port
from tests.conftest import ALICE, BOTH_DATABASES, rich_status, running_stack

GZ = "ap-guangzhou"
UBUNTU = seed_image_id(GZ, "ubuntu-2204-x86")
LEASE_SECONDS = 1.0  # SharingSettings.verdict_lease_seconds' default
LAUNCH = pb.RunInstancesRequest(region=GZ, image_id=UBUNTU, instance_type="S5.MEDIUM4", instance_count=1)


@dataclass(frozen=True)
class Leased:
    stack: Stack
    metrics_url: str

    def verdicts(self) -> dict[str, float]:
        """cloudimg_launch_verdicts_total by answer (leased, asked), read off the gateway's /metrics."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        return {sample.labels["answer"]: sample.value for family in text_string_to_metric_families(text)
                if family.name == "cloudimg_launch_verdicts" for sample in family.samples
                if sample.name == "cloudimg_launch_verdicts_total"}


@pytest.fixture(scope="module", params=BOTH_DATABASES)
def leased(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leased]:
    metrics = f"127.0.0.1:{free_port()}"
    env = {"SHARING_VERDICT_LEASE_SECONDS": str(LEASE_SECONDS), "GATEWAY_METRICS_ADDR": metrics}
    with running_stack(request, tmp_path_factory.mktemp(f"leases-{request.param}"), extra_env=env) as stack:
        yield Leased(stack, f"http://{metrics}/metrics")


def _alice(stack: Stack) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {stack.api_keys['alice']}"),)


def _update_at_sharing(stack: Stack, **fields: object) -> float:
    """Changes Alice's trust policy at sharing itself (the gateway hears nothing of it); how long it took."""
    sharing = sharing_grpc.SharingServiceStub(stack.channel("sharing"))
    started = time.monotonic()
    sharing.UpdateTrustPolicy(sharing_pb.UpdateTrustPolicyRequest(
        policy=sharing_pb.TrustPolicy(**fields), update_paths=sorted(fields)),  # type: ignore[arg-type]
        metadata=stack.internal_metadata(ALICE), timeout=10)
    return time.monotonic() - started


def test_a_public_image_verdict_is_asked_for_once_a_lease(leased: Leased) -> None:
    images = image_service_pb2_grpc.ImageServiceStub(leased.stack.channel())
    before = leased.verdicts()
    for _ in range(3):
        images.GetImage(image_service_pb2.GetImageRequest(image_id=UBUNTU), metadata=_alice(leased.stack), timeout=10)
    after = leased.verdicts()
    # One call to sharing; the two calls after it answered from its lease (three calls take far less than 1 s).
    assert after.get("asked", 0) - before.get("asked", 0) == 1
    assert after.get("leased", 0) - before.get("leased", 0) == 2
    time.sleep(LEASE_SECONDS)
    images.GetImage(image_service_pb2.GetImageRequest(image_id=UBUNTU), metadata=_alice(leased.stack), timeout=10)
    assert leased.verdicts().get("asked", 0) - after.get("asked", 0) == 1  # the lease ran out: asked again


def test_no_launch_that_starts_after_a_policy_update_answers_is_let_through(leased: Leased) -> None:
    stack = leased.stack
    instances = pb_grpc.InstanceServiceStub(stack.channel())
    outcomes: list[tuple[float, str]] = []  # (when the launch was sent, its code and reason)
    stop = threading.Event()

    def launch_in_a_loop() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                instances.RunInstances(LAUNCH, metadata=_alice(stack), timeout=10)
                outcomes.append((sent, "OK"))
            except grpc.RpcError as exc:
                outcomes.append((sent, f"{exc.code().name} {rich_status(exc)[1].reason}"))

    launchers = [threading.Thread(target=launch_in_a_loop) for _ in range(4)]
    before = leased.verdicts()
    for launcher in launchers:
        launcher.start()
    try:
        time.sleep(0.5)  # launching, on a lease
        took = _update_at_sharing(stack, mode=sharing_pb.TRUST_POLICY_MODE_ENFORCE, allow_platform_images=False)
        answered = time.monotonic()
        time.sleep(0.5)  # launching after the update answered
    finally:
        stop.set()
        for launcher in launchers:
            launcher.join()
    try:
        assert took >= LEASE_SECONDS  # the update waited out the leases on the old policy
        launched_before = [code for sent, code in outcomes if sent < answered - took]
        after = [code for sent, code in outcomes if sent >= answered]
        assert launched_before
        assert set(launched_before) == {"OK"}
        assert leased.verdicts().get("leased", 0) > before.get("leased", 0)  # the launches did use the lease
        assert after
        assert set(after) == {"FAILED_PRECONDITION IMAGE_NOT_ALLOWED"}, after
    finally:
        # Back to no policy, through the gateway's public API this time: in force when it answers, there too.
        shares = share_grpc.ImageShareServiceStub(stack.channel())
        shares.UpdateTrustPolicy(share_pb.UpdateTrustPolicyRequest(
            policy=share_pb.TrustPolicy(mode=share_pb.TRUST_POLICY_MODE_OFF, allow_platform_images=True),
            update_mask=field_mask_pb2.FieldMask(paths=["mode", "allow_platform_images"])),
            metadata=_alice(stack), timeout=10)
    assert instances.RunInstances(LAUNCH, metadata=_alice(stack), timeout=10).instance_ids
