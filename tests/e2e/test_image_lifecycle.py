"""The image lifecycle over the real processes, through the public API: an image made from an instance,
copied to other regions, shared, priced by its ancestry, deleted; hostile imports refused with their
reasons; ShareImage racing DeleteImage 200 times without ever leaving a share of a deleted image."""

from __future__ import annotations

import asyncio
import http.server
import random
import shutil
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from cloudimg.gateway.v1 import image_service_pb2 as pb
from cloudimg.gateway.v1 import image_service_pb2_grpc as pb_grpc
from cloudimg.gateway.v1 import image_share_service_pb2 as share_pb
from cloudimg.gateway.v1 import image_share_service_pb2_grpc as share_grpc
from cloudimg.gateway.v1 import instance_service_pb2 as ins_pb
from cloudimg.gateway.v1 import instance_service_pb2_grpc as ins_grpc
from google.protobuf import field_mask_pb2

from catalog_service.domain.seed import seed_image_id
from devtools.stack import Stack
from tests.conftest import BOB, rich_status
from tests.fixtures.disk_images import CASES, QEMU_MADE, QEMU_MISSING, DiskImages

IMPORT_LIMIT = 8 << 20  # every fixture is smaller; the test over HTTP sends one byte more

GZ, SH, HK = "ap-guangzhou", "ap-shanghai", "ap-hongkong"
BUSY = {pb.IMAGE_STATE_CREATING, pb.IMAGE_STATE_IMPORTING, pb.IMAGE_STATE_SYNCING}
FORMATS = {"raw": pb.IMAGE_FORMAT_RAW, "qcow2": pb.IMAGE_FORMAT_QCOW2, "vhd": pb.IMAGE_FORMAT_VHD,
           "vmdk": pb.IMAGE_FORMAT_VMDK}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    urls: dict[str, str] = {}
    if request.param == "postgres":
        new_database: Callable[[], str] = request.getfixturevalue("postgres_databases")
        urls = {service: new_database() for service in ("catalog", "sharing", "billing", "gateway")}
    env = {"CATALOG_DAILY_OPERATION_QUOTA": "1000", "CATALOG_CUSTOM_IMAGE_QUOTA": "1000",
           "CATALOG_IMPORT_MAX_BYTES": str(IMPORT_LIMIT), "CATALOG_JOB_CONCURRENCY": "4"}
    with Stack(tmp_path_factory.mktemp(f"lifecycle-{request.param}"), database_urls=urls, extra_env=env) as running:
        yield running


class Api:
    def __init__(self, channel: grpc.aio.Channel, key: str):
        self.images = pb_grpc.ImageServiceStub(channel)
        self.shares = share_grpc.ImageShareServiceStub(channel)
        self.instances = ins_grpc.InstanceServiceStub(channel)
        self.meta = (("authorization", f"Bearer {key}"),)

    async def wait(self, image_id: str, timeout: float = 60) -> pb.Image:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            image: pb.Image = (await self.images.GetImage(pb.GetImageRequest(image_id=image_id),
                                                          metadata=self.meta)).image
            if image.state not in BUSY:
                return image
            assert asyncio.get_running_loop().time() < deadline, f"{image_id} still {image.state}"
            await asyncio.sleep(0.05)

    async def launch(self, image_id: str, region: str = GZ) -> str:
        response: ins_pb.RunInstancesResponse = await self.instances.RunInstances(ins_pb.RunInstancesRequest(
            region=region, image_id=image_id, instance_type="S5.MEDIUM4", instance_count=1), metadata=self.meta)
        return response.instance_ids[0]

    async def image_of(self, instance_id: str, name: str) -> pb.Image:
        made = (await self.images.CreateImage(pb.CreateImageRequest(instance_id=instance_id, name=name),
                                              metadata=self.meta)).image
        return await self.wait(made.image_id)


@pytest.fixture
async def apis(stack: Stack) -> AsyncIterator[tuple[Api, Api]]:
    channel = stack.aio_channel()
    yield Api(channel, stack.api_keys["alice"]), Api(channel, stack.api_keys["bob"])
    await channel.close()


async def test_the_lifecycle_of_an_image_made_from_an_instance(apis: tuple[Api, Api]) -> None:
    alice, bob = apis
    instance = await alice.launch(seed_image_id(GZ, "wordpress"))
    image = await alice.image_of(instance, "blog golden")
    assert image.state == pb.IMAGE_STATE_NORMAL
    assert image.image_type == pb.IMAGE_TYPE_PRIVATE
    assert image.source == pb.IMAGE_SOURCE_INSTANCE
    assert len(image.checksum_sha256) == 64

    copies = (await alice.images.SyncImage(pb.SyncImageRequest(image_id=image.image_id, destination_regions=[SH]),
                                           metadata=alice.meta)).images
    copy = await alice.wait(copies[0].image_id)
    assert copy.state == pb.IMAGE_STATE_NORMAL
    assert copy.checksum_sha256 == image.checksum_sha256
    assert copy.region == SH
    assert copy.base_image_id == image.image_id
    assert copy.source == pb.IMAGE_SOURCE_SYNC

    # A synced copy of a custom image of a marketplace image still pays the marketplace product.
    quote = (await alice.instances.QuoteRunInstances(ins_pb.QuoteRunInstancesRequest(
        region=SH, image_id=copy.image_id, instance_type="S5.MEDIUM4", instance_count=1),
        metadata=alice.meta)).quote
    kinds = [line.kind for line in quote.lines]
    assert ins_pb.QUOTE_LINE_KIND_MARKETPLACE in kinds
    assert ins_pb.QUOTE_LINE_KIND_INSTANCE in kinds

    # Shared, it cannot be deleted; its recipient can neither rename, sync nor delete it.
    await alice.shares.ShareImage(share_pb.ShareImageRequest(image_id=image.image_id, account_ids=[BOB]),
                                  metadata=alice.meta)
    seen = (await bob.images.GetImage(pb.GetImageRequest(image_id=image.image_id), metadata=bob.meta)).image
    assert seen.image_type == pb.IMAGE_TYPE_SHARED
    with pytest.raises(grpc.aio.AioRpcError) as shared:
        await alice.images.DeleteImage(pb.DeleteImageRequest(image_id=image.image_id), metadata=alice.meta)
    assert shared.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rich_status(shared.value)[1].reason == "IMAGE_SHARED"
    assert "1" in shared.value.details()
    for call in (partial(bob.images.DeleteImage, pb.DeleteImageRequest(image_id=image.image_id)),
                 partial(bob.images.SyncImage, pb.SyncImageRequest(image_id=image.image_id,
                                                                   destination_regions=[HK]))):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await call(metadata=bob.meta)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    renamed = (await alice.images.UpdateImage(pb.UpdateImageRequest(
        image=pb.Image(image_id=image.image_id, name="blog v2"), update_mask=field_mask_pb2.FieldMask(paths=["name"])),
        metadata=alice.meta)).image
    assert renamed.name == "blog v2"

    await alice.shares.UnshareImage(share_pb.UnshareImageRequest(image_id=image.image_id, account_ids=[BOB]),
                                    metadata=alice.meta)
    await alice.images.DeleteImage(pb.DeleteImageRequest(image_id=image.image_id, request_id="del-blog"),
                                   metadata=alice.meta)
    await alice.images.DeleteImage(pb.DeleteImageRequest(image_id=image.image_id, request_id="del-blog"),
                                   metadata=alice.meta)  # a replay answers as the first call did
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await alice.images.GetImage(pb.GetImageRequest(image_id=image.image_id), metadata=alice.meta)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    # The instance it was made from runs on; so does the copy.
    running = (await alice.instances.GetInstance(ins_pb.GetInstanceRequest(instance_id=instance),
                                                 metadata=alice.meta)).instance
    assert running.state == ins_pb.INSTANCE_STATE_RUNNING
    assert (await alice.wait(copy.image_id)).state == pb.IMAGE_STATE_NORMAL

    quota = await alice.images.GetImageQuota(pb.GetImageQuotaRequest(region=SH), metadata=alice.meta)
    assert quota.custom_image_used >= 1
    assert quota.daily_operation_used >= 1


async def test_a_windows_image_pays_the_license_wherever_its_copies_go_overseas(apis: tuple[Api, Api]) -> None:
    alice, _ = apis
    instance = await alice.launch(seed_image_id(GZ, "windows-2022-x86"))
    image = await alice.image_of(instance, "windows golden")
    copy = await alice.wait((await alice.images.SyncImage(pb.SyncImageRequest(
        image_id=image.image_id, destination_regions=[HK]), metadata=alice.meta)).images[0].image_id)
    quote = (await alice.instances.QuoteRunInstances(ins_pb.QuoteRunInstancesRequest(
        region=HK, image_id=copy.image_id, instance_type="S5.MEDIUM4", instance_count=1),
        metadata=alice.meta)).quote
    assert ins_pb.QUOTE_LINE_KIND_IMAGE_LICENSE in [line.kind for line in quote.lines]


@pytest.mark.parametrize("case", sorted(CASES))
async def test_imports_are_inspected_and_hostile_images_refused_with_their_reason(
        case: str, apis: tuple[Api, Api], stack: Stack, disk_images: DiskImages) -> None:
    alice, _ = apis
    spec = CASES[case]
    if spec.image in QEMU_MADE and spec.image not in disk_images:
        pytest.skip(QEMU_MISSING)
    source = stack.imports_dir / f"{case}-{Path(disk_images[spec.image]).name}"
    shutil.copyfile(disk_images[spec.image], source)
    made = (await alice.images.ImportImage(pb.ImportImageRequest(
        region=GZ, name=f"import {case}", format=FORMATS[spec.declared], os_name="Debian 12",
        os_type=pb.OS_TYPE_LINUX, architecture=pb.ARCHITECTURE_X86_64, source_uri=source.as_uri()),
        metadata=alice.meta)).image
    done = await alice.wait(made.image_id)
    if spec.refused is None:
        assert done.state == pb.IMAGE_STATE_NORMAL, done.state_reason
        assert len(done.checksum_sha256) == 64
        assert done.size_gb >= 1
    else:
        assert done.state == pb.IMAGE_STATE_IMPORT_FAILED
        assert done.state_reason.startswith(spec.refused + ":"), done.state_reason


def _fill_served(served: Path, disk: Path) -> None:
    """The folder served over HTTP: a raw disk, and a (sparse) file one byte over the import limit."""
    served.mkdir(exist_ok=True)
    shutil.copyfile(disk, served / "disk.raw")
    with open(served / "big.raw", "wb") as big:
        big.truncate(IMPORT_LIMIT + 1)


async def test_an_import_over_http_and_the_sources_refused_at_once(apis: tuple[Api, Api], stack: Stack,
                                                                   disk_images: DiskImages) -> None:
    alice, _ = apis
    served = stack.imports_dir / "served"
    await asyncio.to_thread(_fill_served, served, disk_images["raw"])
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        request = pb.ImportImageRequest(region=GZ, name="over http", format=pb.IMAGE_FORMAT_RAW,
                                        os_type=pb.OS_TYPE_LINUX, architecture=pb.ARCHITECTURE_X86_64,
                                        source_uri=f"{base}/disk.raw")
        done = await alice.wait((await alice.images.ImportImage(request, metadata=alice.meta)).image.image_id)
        assert done.state == pb.IMAGE_STATE_NORMAL, done.state_reason
        request.name, request.source_uri = "too big", f"{base}/big.raw"
        big = await alice.wait((await alice.images.ImportImage(request, metadata=alice.meta)).image.image_id)
        assert big.state == pb.IMAGE_STATE_IMPORT_FAILED
        assert big.state_reason.startswith("SOURCE_TOO_LARGE")
    finally:
        server.shutdown()
    for uri in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/disk.raw", "file:///etc/passwd"):
        request.name, request.source_uri = "refused", uri
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await alice.images.ImportImage(request, metadata=alice.meta)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert rich_status(refused.value)[1].reason == "SOURCE_NOT_ALLOWED", uri


async def test_share_and_delete_raced_200_times_never_leave_a_share_of_a_deleted_image(apis: tuple[Api, Api]
                                                                                        ) -> None:
    alice, bob = apis
    instance = await alice.launch(seed_image_id(GZ, "debian-12-x86"))

    async def create(n: int) -> str:
        # As a client would: retried with its request_id when the answer is lost on a busy machine.
        request = pb.CreateImageRequest(instance_id=instance, name=f"race {n}", request_id=f"race-{n}")
        for _ in range(10):
            try:
                made: pb.CreateImageResponse = await alice.images.CreateImage(request, metadata=alice.meta,
                                                                              timeout=30)
                return made.image.image_id
            except grpc.aio.AioRpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise AssertionError(error) from error
                await asyncio.sleep(0.5)
        raise AssertionError(f"CreateImage race-{n} never succeeded")

    images: list[str] = []
    for start in range(0, 200, 20):
        images += await asyncio.gather(*(create(n) for n in range(start, start + 20)))
    for image_id in images:
        await alice.wait(image_id, timeout=120)

    rng = random.Random(5)
    errors: Counter[str] = Counter()

    async def after(seconds: float, call: Callable[[], Awaitable[object]]) -> object:
        await asyncio.sleep(seconds)  # before the call starts: a gRPC call starts when it is made
        return await call()

    async def race(image_id: str) -> tuple[bool, bool]:
        # A delete makes three calls and a share two, so started together the share nearly always wins;
        # a head start of a few milliseconds for one or the other lets both orders happen.
        head_start = rng.uniform(0, 0.02)
        share_delay, delete_delay = (head_start, 0.0) if rng.random() < 0.5 else (0.0, head_start)
        share, delete = await asyncio.gather(
            after(share_delay, partial(alice.shares.ShareImage, share_pb.ShareImageRequest(
                image_id=image_id, account_ids=[BOB]), metadata=alice.meta)),
            after(delete_delay, partial(alice.images.DeleteImage, pb.DeleteImageRequest(image_id=image_id),
                                        metadata=alice.meta)),
            return_exceptions=True)
        for outcome in (share, delete):
            if isinstance(outcome, BaseException):
                assert isinstance(outcome, grpc.aio.AioRpcError), outcome
                assert outcome.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND), outcome
                errors[rich_status(outcome)[1].reason] += 1
        return not isinstance(share, BaseException), not isinstance(delete, BaseException)

    outcomes: list[tuple[bool, bool]] = []
    for start in range(0, len(images), 20):
        outcomes += await asyncio.gather(*(race(i) for i in images[start:start + 20]))
    assert not any(shared and deleted for shared, deleted in outcomes)
    print("race outcomes (shared, deleted):", Counter(outcomes), errors)
    assert any(shared for shared, _ in outcomes)
    assert any(deleted for _, deleted in outcomes)
    listed: list[str] = []
    token = ""
    while True:
        page = await bob.images.ListImages(pb.ListImagesRequest(region=GZ, image_types=[pb.IMAGE_TYPE_SHARED],
                                                                page_size=1000, page_token=token), metadata=bob.meta)
        listed += [i.image_id for i in page.images]
        token = page.next_page_token
        if not token:
            break
    # Every image bob received still exists, and every share made is one he sees.
    for image_id, (shared, deleted) in zip(images, outcomes, strict=True):
        exists = True
        try:
            await alice.images.GetImage(pb.GetImageRequest(image_id=image_id), metadata=alice.meta)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise AssertionError(error) from error
            exists = False
        assert exists != deleted
        assert (image_id in listed) == shared
        if not exists:
            with pytest.raises(grpc.aio.AioRpcError):
                await bob.images.GetImage(pb.GetImageRequest(image_id=image_id), metadata=bob.meta)
