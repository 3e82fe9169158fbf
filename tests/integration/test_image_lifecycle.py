"""The image lifecycle through the public API: the gateway composing real in-process catalog, sharing and billing
servers on SQLite — an image made from an instance, changed only by its owner, and deleted only when no share is
left, and never together with a share that races it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from cloudimg.gateway.v1 import image_service_pb2 as pb
from cloudimg.gateway.v1 import image_service_pb2_grpc as pb_grpc
from cloudimg.gateway.v1 import image_share_service_pb2 as share_pb
from cloudimg.gateway.v1 import image_share_service_pb2_grpc as share_grpc
from cloudimg.gateway.v1 import instance_service_pb2 as instance_pb
from cloudimg.gateway.v1 import instance_service_pb2_grpc as instance_grpc
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from sqlalchemy import create_engine, func, select

from catalog_service.domain.seed import seed_image_id
from sharing_service.adapters.tables import SHARES
from tests.conftest import BOB, ServerFactory, rich_status
from tests.integration.cloud import SERVICES, start_services

UBUNTU = seed_image_id("ap-guangzhou", "ubuntu-2204-x86")
ALICE_WEB = seed_image_id("ap-guangzhou", "alice-web")
ALICE_BLOG = seed_image_id("ap-guangzhou", "alice-blog")


class Cloud:
    def __init__(self, addr: str, keys: dict[str, str], urls: dict[str, str]):
        channel = grpc.aio.insecure_channel(addr)
        self.images = pb_grpc.ImageServiceStub(channel)
        self.shares = share_grpc.ImageShareServiceStub(channel)
        self.instances = instance_grpc.InstanceServiceStub(channel)
        self.keys = keys
        self.urls = urls

    def auth(self, who: str = "alice") -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.keys[who]}"),)

    async def refused(self, call: Callable[..., Awaitable[object]], request: Message,
                      who: str = "alice") -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request, metadata=self.auth(who))
        return refused.value.code(), rich_status(refused.value)[1].reason

    def shares_of(self, image_id: str) -> int:
        engine = create_engine(self.urls["sharing"])
        with engine.connect() as conn:
            found = conn.execute(select(func.count()).select_from(SHARES).where(SHARES.c.image_id == image_id))
            count = found.scalar_one()
        engine.dispose()
        return count


@pytest.fixture
async def cloud(serve: ServerFactory, tmp_path: Path) -> Cloud:
    urls = {name: f"sqlite:///{tmp_path}/{name}.db" for name in SERVICES}
    addrs, keys = await start_services(serve, urls)
    return Cloud(addrs["gateway"], keys, urls)


async def normal(cloud: Cloud, image_id: str, seconds: float = 30.0) -> pb.Image:
    deadline = time.monotonic() + seconds
    while True:
        image: pb.Image = (await cloud.images.GetImage(pb.GetImageRequest(image_id=image_id),
                                                       metadata=cloud.auth())).image
        assert image.state not in (pb.IMAGE_STATE_CREATE_FAILED, pb.IMAGE_STATE_IMPORT_FAILED), image.state_reason
        if image.state == pb.IMAGE_STATE_NORMAL:
            return image
        assert time.monotonic() < deadline, f"{image_id} is still {pb.ImageState.Name(image.state)}"
        await asyncio.sleep(0.1)


async def test_an_image_made_from_an_instance_is_deleted_only_once_it_is_shared_with_no_one(cloud: Cloud) -> None:
    launched = await cloud.instances.RunInstances(instance_pb.RunInstancesRequest(
        region="ap-guangzhou", image_id=UBUNTU, instance_type="S5.MEDIUM4", instance_count=1, client_token="t1"),
        metadata=cloud.auth())
    instance_id = launched.instance_ids[0]
    assert await cloud.refused(cloud.images.CreateImage, pb.CreateImageRequest(instance_id=instance_id, name="x"),
                               "bob") == (grpc.StatusCode.NOT_FOUND, "INSTANCE_NOT_FOUND")
    quota = await cloud.images.GetImageQuota(pb.GetImageQuotaRequest(region="ap-guangzhou"), metadata=cloud.auth())
    dry = await cloud.images.CreateImage(pb.CreateImageRequest(instance_id=instance_id, name="web-base",
                                                               dry_run=True), metadata=cloud.auth())
    assert dry.image.name == "web-base"
    assert dry.image.base_image_id == UBUNTU
    assert await cloud.images.GetImageQuota(pb.GetImageQuotaRequest(region="ap-guangzhou"),
                                            metadata=cloud.auth()) == quota  # a dry run counts nothing

    made = await cloud.images.CreateImage(pb.CreateImageRequest(instance_id=instance_id, name="web-base",
                                                                request_id="c1"), metadata=cloud.auth())
    assert made.image.state == pb.IMAGE_STATE_CREATING
    assert made.image.image_type == pb.IMAGE_TYPE_PRIVATE
    image_id = made.image.image_id
    ready = await normal(cloud, image_id)
    assert len(ready.checksum_sha256) == 64
    assert ready.state_reason == ""
    after = await cloud.images.GetImageQuota(pb.GetImageQuotaRequest(region="ap-guangzhou"), metadata=cloud.auth())
    assert (after.region, after.custom_image_used, after.daily_operation_used) == (
        "ap-guangzhou", quota.custom_image_used + 1, quota.daily_operation_used + 1)

    renamed = await cloud.images.UpdateImage(pb.UpdateImageRequest(
        image=pb.Image(image_id=image_id, name="web-base-2"), update_mask=field_mask_pb2.FieldMask(paths=["name"])),
        metadata=cloud.auth())
    assert renamed.image.name == "web-base-2"

    await cloud.shares.ShareImage(share_pb.ShareImageRequest(image_id=image_id, account_ids=[BOB]),
                                  metadata=cloud.auth())
    call: Callable[..., Awaitable[object]]
    request: Message
    for call, request in (
        (cloud.images.DeleteImage, pb.DeleteImageRequest(image_id=image_id)),
        (cloud.images.SyncImage, pb.SyncImageRequest(image_id=image_id, destination_regions=["ap-beijing"])),
        (cloud.images.UpdateImage, pb.UpdateImageRequest(image=pb.Image(image_id=image_id, name="mine"),
                                                         update_mask=field_mask_pb2.FieldMask(paths=["name"]))),
    ):
        assert await cloud.refused(call, request, "bob") == (grpc.StatusCode.PERMISSION_DENIED,
                                                             "SHARED_IMAGE_READ_ONLY")
    assert await cloud.refused(cloud.images.DeleteImage, pb.DeleteImageRequest(image_id=image_id)) == (
        grpc.StatusCode.FAILED_PRECONDITION, "IMAGE_SHARED")

    # the refused delete left no hold: sharing goes on
    await cloud.shares.ShareImage(share_pb.ShareImageRequest(image_id=image_id, account_ids=[BOB]),
                                  metadata=cloud.auth())
    await cloud.shares.UnshareImage(share_pb.UnshareImageRequest(image_id=image_id, account_ids=[BOB]),
                                    metadata=cloud.auth())
    for _ in range(2):  # a repeat of the same request succeeds too
        await cloud.images.DeleteImage(pb.DeleteImageRequest(image_id=image_id, request_id="d1"),
                                       metadata=cloud.auth())
    for call, request in ((cloud.images.DeleteImage, pb.DeleteImageRequest(image_id=image_id, request_id="d2")),
                          (cloud.images.GetImage, pb.GetImageRequest(image_id=image_id))):
        assert await cloud.refused(call, request) == (grpc.StatusCode.NOT_FOUND, "IMAGE_NOT_FOUND")


async def test_a_share_and_a_delete_racing_through_the_gateway_never_both_win(cloud: Cloud) -> None:
    async def outcome(call: Awaitable[object]) -> str:
        try:
            await call
            return "OK"
        except grpc.aio.AioRpcError as exc:
            reason: str = rich_status(exc)[1].reason
            return reason

    for image_id in (ALICE_WEB, ALICE_BLOG):
        share, delete = await asyncio.gather(
            outcome(cloud.shares.ShareImage(share_pb.ShareImageRequest(image_id=image_id, account_ids=[BOB]),
                                            metadata=cloud.auth())),
            outcome(cloud.images.DeleteImage(pb.DeleteImageRequest(image_id=image_id), metadata=cloud.auth())),
        )
        assert (share, delete) in {("OK", "IMAGE_SHARED"), ("IMAGE_BEING_DELETED", "OK"),
                                   ("IMAGE_NOT_FOUND", "OK")}
        assert cloud.shares_of(image_id) == (1 if share == "OK" else 0)
