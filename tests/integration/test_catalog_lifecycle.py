"""The image lifecycle through real catalog servers (two replicas on one database and one image store),
on SQLite and on PostgreSQL: create, import, sync, update, delete, quotas, request ids, jobs."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypedDict, Unpack

import grpc
import pytest
from cloudimg.catalog.v1 import catalog_service_pb2 as pb
from cloudimg.catalog.v1 import catalog_service_pb2_grpc as pb_grpc

from catalog_service.bootstrap import bootstrap
from catalog_service.domain.seed import seed_checksum, seed_image_id
from catalog_service.settings import CatalogSettings
from chassis.clock import FakeClock
from tests.conftest import ALICE, BOB, CAROL, ServerFactory, internal_metadata, rich_status
from tests.integration.cloud import INTERNAL_SECRET

GZ, SH, BJ, SG = "ap-guangzhou", "ap-shanghai", "ap-beijing", "ap-singapore"
UBUNTU = seed_image_id(GZ, "ubuntu-2204-x86")
WORDPRESS = seed_image_id(GZ, "wordpress")


class CreateOptions(TypedDict, total=False):
    """The fields of a CreateImageRequest that Catalogs.create passes on as they are."""

    description: str
    request_id: str
    dry_run: bool


class CreateCase(CreateOptions, total=False):
    """The arguments of one refused Catalogs.create."""

    name: str
    base: str


class UpdateCase(TypedDict):
    """The fields of one refused UpdateImageRequest, beside its image id."""

    name: str
    update_paths: list[str]


class Catalogs:
    """Two catalog replicas on one database and one image store, and a clock both read."""

    def __init__(self, stubs: list[pb_grpc.CatalogServiceStub], clock: FakeClock, store: Path, imports: Path):
        self.stubs, self.clock, self.store, self.imports = stubs, clock, store, imports
        self.one = stubs[0]

    async def wait_done(self, image_id: str, account: str = CAROL, timeout: float = 30) -> pb.Image:
        """The image once its job is over (NORMAL or failed)."""
        busy = {pb.IMAGE_STATE_CREATING, pb.IMAGE_STATE_IMPORTING, pb.IMAGE_STATE_SYNCING}
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            image: pb.Image = (await self.one.GetImage(pb.GetImageRequest(image_id=image_id),
                                                       metadata=internal_metadata(account))).image
            if image.state not in busy:
                return image
            assert asyncio.get_running_loop().time() < deadline, f"{image_id} still {image.state} after {timeout}s"
            await asyncio.sleep(0.05)

    async def create(self, name: str, account: str = CAROL, base: str = UBUNTU, stub: int = 0,
                     **extra: Unpack[CreateOptions]) -> pb.Image:
        request = pb.CreateImageRequest(region=GZ, instance_id="ins-0000000a", name=name, base_image_id=base,
                                        size_gb=50, **extra)
        response: pb.CreateImageResponse = await self.stubs[stub].CreateImage(request,
                                                                              metadata=internal_metadata(account))
        return response.image


@pytest.fixture
async def catalogs(serve: ServerFactory, database_url: str, tmp_path: Path) -> AsyncIterator[Catalogs]:
    clock = FakeClock(datetime.now(UTC).replace(hour=12, minute=0))
    imports = tmp_path / "imports"
    imports.mkdir()
    settings = CatalogSettings(database_url=database_url, internal_token=INTERNAL_SECRET,
                               image_store_dir=tmp_path / "images", import_root=imports, job_lease_seconds=5)
    addrs = [await serve(partial(bootstrap, clock=clock), settings) for _ in range(2)]
    channels = [grpc.aio.insecure_channel(addr) for addr in addrs]
    yield Catalogs([pb_grpc.CatalogServiceStub(c) for c in channels], clock, tmp_path / "images", imports)
    for channel in channels:
        await channel.close()


def _reason(error: grpc.aio.AioRpcError) -> str:
    reason: str = rich_status(error)[1].reason
    return reason


async def test_an_image_made_from_an_instance_copies_the_bytes_and_inherits_pricing_facts(catalogs: Catalogs) -> None:
    made = await catalogs.create("web", base=WORDPRESS)
    assert made.state == pb.IMAGE_STATE_CREATING
    assert made.checksum_sha256 == ""
    assert made.image_type == pb.IMAGE_TYPE_CUSTOM
    assert made.owner_account_id == CAROL
    done = await catalogs.wait_done(made.image_id)
    assert done.state == pb.IMAGE_STATE_NORMAL
    assert done.progress_percent == 100
    assert done.checksum_sha256 == seed_checksum("wordpress")
    assert done.source == pb.IMAGE_SOURCE_INSTANCE
    assert done.base_image_id == WORDPRESS
    assert done.marketplace_product_id == "mp-bitnami-wordpress"
    assert done.size_gb == 50
    blob = catalogs.store / GZ / "sha256" / done.checksum_sha256[:2] / done.checksum_sha256
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == done.checksum_sha256

    # A copy in another region keeps the ancestry (and so the price) of the marketplace image.
    copies = (await catalogs.one.SyncImage(pb.SyncImageRequest(image_id=made.image_id, destination_regions=[SH, BJ]),
                                           metadata=internal_metadata(CAROL))).images
    assert {c.region for c in copies} == {SH, BJ}
    assert all(c.state == pb.IMAGE_STATE_SYNCING and c.source == pb.IMAGE_SOURCE_SYNC for c in copies)
    for copy in copies:
        synced = await catalogs.wait_done(copy.image_id)
        assert synced.state == pb.IMAGE_STATE_NORMAL
        assert synced.checksum_sha256 == done.checksum_sha256
        assert synced.base_image_id == made.image_id
        assert synced.marketplace_product_id == "mp-bitnami-wordpress"
        assert synced.name == "web"
        assert synced.image_id != made.image_id
        assert (catalogs.store / synced.region / "sha256" / done.checksum_sha256[:2] / done.checksum_sha256).exists()


async def test_thirty_concurrent_creates_on_two_replicas_use_exactly_the_daily_quota(catalogs: Catalogs) -> None:
    async def create(n: int) -> str:
        try:
            await catalogs.create(f"img-{n}", stub=n % 2, request_id=f"r-{n}")
            return "ok"
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            _, info, details = rich_status(error)
            reason: str = info.reason
            assert reason == "DAILY_OPERATION_QUOTA_EXCEEDED"
            assert info.metadata["limit"] == "5"
            assert details[0].violations[0].subject == f"daily-image-operations:{GZ}"
            return reason

    outcomes = await asyncio.gather(*(create(n) for n in range(30)))
    assert outcomes.count("ok") == 5
    quota = await catalogs.one.GetImageQuota(pb.GetImageQuotaRequest(region=GZ), metadata=internal_metadata(CAROL))
    assert (quota.daily_operation_used, quota.daily_operation_limit) == (5, 5)
    assert (quota.custom_image_used, quota.custom_image_limit) == (5, 10)

    # The day boundary is the injected clock's: tomorrow (UTC) five more.
    with pytest.raises(grpc.aio.AioRpcError):
        await catalogs.create("one-more")
    catalogs.clock.advance(hours=12)
    await catalogs.create("tomorrow")
    quota = await catalogs.one.GetImageQuota(pb.GetImageQuotaRequest(region=GZ), metadata=internal_metadata(CAROL))
    assert (quota.daily_operation_used, quota.custom_image_used) == (1, 6)


async def test_the_custom_image_quota_counts_every_image_but_failed_and_deleted_ones(catalogs: Catalogs) -> None:
    made: list[pb.Image] = []
    for day in range(2):
        for n in range(5):
            made.append(await catalogs.create(f"d{day}-{n}"))
        catalogs.clock.advance(days=1)
    with pytest.raises(grpc.aio.AioRpcError) as over:
        await catalogs.create("eleventh")
    assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _reason(over.value) == "CUSTOM_IMAGE_QUOTA_EXCEEDED"
    await catalogs.wait_done(made[0].image_id)
    await catalogs.one.DeleteImage(pb.DeleteImageRequest(image_id=made[0].image_id), metadata=internal_metadata(CAROL))
    await catalogs.create("eleventh")


async def test_dry_runs_and_replays_count_nothing_and_a_reused_request_id_must_match(catalogs: Catalogs) -> None:
    dry = await catalogs.create("dry", dry_run=True)
    assert dry.state == pb.IMAGE_STATE_CREATING
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await catalogs.one.GetImage(pb.GetImageRequest(image_id=dry.image_id), metadata=internal_metadata(CAROL))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    first = await catalogs.create("real", request_id="same")
    again = await asyncio.gather(*(catalogs.create("real", request_id="same", stub=n % 2) for n in range(6)))
    assert {a.image_id for a in again} == {first.image_id}
    quota = await catalogs.one.GetImageQuota(pb.GetImageQuotaRequest(region=GZ), metadata=internal_metadata(CAROL))
    assert (quota.daily_operation_used, quota.custom_image_used) == (1, 1)

    with pytest.raises(grpc.aio.AioRpcError) as mismatch:
        await catalogs.create("other name", request_id="same")
    assert mismatch.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _reason(mismatch.value) == "IDEMPOTENCY_PARAMETER_MISMATCH"


async def test_create_refuses_what_it_cannot_make(catalogs: Catalogs) -> None:
    cases: list[tuple[CreateCase, grpc.StatusCode, str]] = [
        ({"name": ""}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_IMAGE_NAME"),
        ({"name": "x" * 61}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_IMAGE_NAME"),
        ({"name": "ok", "description": "d" * 257}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_DESCRIPTION"),
        ({"name": "ok", "base": seed_image_id(SH, "ubuntu-2204-x86")}, grpc.StatusCode.FAILED_PRECONDITION,
         "BASE_IMAGE_UNAVAILABLE"),
        ({"name": "ok", "base": "img-zzzzzzzz"}, grpc.StatusCode.FAILED_PRECONDITION, "BASE_IMAGE_UNAVAILABLE"),
    ]
    for kwargs, code, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await catalogs.create(**kwargs)
        assert (refused.value.code(), _reason(refused.value)) == (code, reason), kwargs
    await catalogs.create("taken")
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await catalogs.create("taken")
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert _reason(taken.value) == "IMAGE_NAME_TAKEN"
    quota = await catalogs.one.GetImageQuota(pb.GetImageQuotaRequest(region=GZ), metadata=internal_metadata(CAROL))
    assert quota.daily_operation_used == 1


async def test_sync_rules(catalogs: Catalogs) -> None:
    made = await catalogs.create("src")
    await catalogs.wait_done(made.image_id)
    cases = [
        ([GZ], grpc.StatusCode.INVALID_ARGUMENT, "SAME_REGION", CAROL),
        ([SG], grpc.StatusCode.FAILED_PRECONDITION, "REGION_NOT_SYNC_ENABLED", CAROL),
        (["mars-1"], grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_REGION", CAROL),
        ([], grpc.StatusCode.INVALID_ARGUMENT, "NO_DESTINATION", CAROL),
        ([SH], grpc.StatusCode.NOT_FOUND, "IMAGE_NOT_FOUND", BOB),
    ]
    for regions, code, reason, account in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await catalogs.one.SyncImage(pb.SyncImageRequest(image_id=made.image_id, destination_regions=regions),
                                         metadata=internal_metadata(account))
        assert (refused.value.code(), _reason(refused.value)) == (code, reason), regions
    with pytest.raises(grpc.aio.AioRpcError) as public:
        await catalogs.one.SyncImage(pb.SyncImageRequest(image_id=UBUNTU, destination_regions=[SH]),
                                     metadata=internal_metadata(CAROL))
    assert public.value.code() == grpc.StatusCode.NOT_FOUND


async def test_update_renames_and_describes_only_the_owners_image(catalogs: Catalogs) -> None:
    made = await catalogs.create("before")
    await catalogs.create("taken")
    meta = internal_metadata(CAROL)
    updated = (await catalogs.one.UpdateImage(pb.UpdateImageRequest(
        image_id=made.image_id, name="after", description="new words", update_paths=["name", "description"]),
        metadata=meta)).image
    assert (updated.name, updated.description) == ("after", "new words")
    stored = (await catalogs.one.GetImage(pb.GetImageRequest(image_id=made.image_id), metadata=meta)).image
    assert stored.name == "after"
    cases: list[tuple[UpdateCase, grpc.StatusCode, str, str]] = [
        ({"name": "taken", "update_paths": ["name"]}, grpc.StatusCode.ALREADY_EXISTS, "IMAGE_NAME_TAKEN", CAROL),
        ({"name": "x", "update_paths": ["size_gb"]}, grpc.StatusCode.INVALID_ARGUMENT, "FIELD_NOT_UPDATABLE", CAROL),
        ({"name": "x", "update_paths": []}, grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_UPDATE_MASK", CAROL),
        ({"name": "", "update_paths": ["name"]}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_IMAGE_NAME", CAROL),
        ({"name": "mine", "update_paths": ["name"]}, grpc.StatusCode.NOT_FOUND, "IMAGE_NOT_FOUND", BOB),
    ]
    for kwargs, code, reason, account in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await catalogs.one.UpdateImage(pb.UpdateImageRequest(image_id=made.image_id, **kwargs),
                                           metadata=internal_metadata(account))
        assert (refused.value.code(), _reason(refused.value)) == (code, reason), kwargs
    # Only the name was asked to change: the description stays.
    renamed = (await catalogs.one.UpdateImage(pb.UpdateImageRequest(
        image_id=made.image_id, name="again", description="ignored", update_paths=["name"]), metadata=meta)).image
    assert (renamed.name, renamed.description) == ("again", "new words")


async def test_delete_waits_for_jobs_and_is_idempotent_by_request_id(serve: ServerFactory, database_url: str,
                                                                     tmp_path: Path) -> None:
    # A slow store: a sync of the 64 KiB seed bytes takes about two seconds, long enough to try a delete.
    settings = CatalogSettings(database_url=database_url, internal_token=INTERNAL_SECRET,
                               image_store_dir=tmp_path / "images", copy_bytes_per_second=32 << 10)
    stub = pb_grpc.CatalogServiceStub(grpc.aio.insecure_channel(await serve(bootstrap, settings)))
    catalogs = Catalogs([stub], FakeClock(), tmp_path / "images", tmp_path)
    meta = internal_metadata(CAROL)
    made = await catalogs.create("slow")
    with pytest.raises(grpc.aio.AioRpcError) as busy:
        await stub.DeleteImage(pb.DeleteImageRequest(image_id=made.image_id), metadata=meta)
    assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _reason(busy.value) == "IMAGE_BUSY"
    await catalogs.wait_done(made.image_id)
    copies = (await stub.SyncImage(pb.SyncImageRequest(image_id=made.image_id, destination_regions=[SH]),
                                   metadata=meta)).images
    with pytest.raises(grpc.aio.AioRpcError) as syncing:
        await stub.DeleteImage(pb.DeleteImageRequest(image_id=made.image_id), metadata=meta)
    assert _reason(syncing.value) == "SYNC_RUNNING"
    await catalogs.wait_done(copies[0].image_id)

    await stub.DeleteImage(pb.DeleteImageRequest(image_id=made.image_id, validate_only=True), metadata=meta)
    assert (await stub.GetImage(pb.GetImageRequest(image_id=made.image_id), metadata=meta)).image.name == "slow"
    await stub.DeleteImage(pb.DeleteImageRequest(image_id=made.image_id, request_id="del-1"), metadata=meta)
    await stub.DeleteImage(pb.DeleteImageRequest(image_id=made.image_id, request_id="del-1"), metadata=meta)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stub.GetImage(pb.GetImageRequest(image_id=made.image_id), metadata=meta)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await stub.DeleteImage(pb.DeleteImageRequest(image_id=made.image_id, request_id="del-2"), metadata=meta)
    assert again.value.code() == grpc.StatusCode.NOT_FOUND
    for public in (UBUNTU, copies[0].image_id):
        account = BOB if public == copies[0].image_id else CAROL
        with pytest.raises(grpc.aio.AioRpcError) as not_yours:
            await stub.DeleteImage(pb.DeleteImageRequest(image_id=public), metadata=internal_metadata(account))
        assert not_yours.value.code() == grpc.StatusCode.NOT_FOUND
    # The copy lives on without its source.
    assert (await stub.GetImage(pb.GetImageRequest(image_id=copies[0].image_id), metadata=meta)).image.state == \
        pb.IMAGE_STATE_NORMAL


async def test_imports_from_the_import_root_are_inspected_and_sized(catalogs: Catalogs) -> None:
    raw = catalogs.imports / "disk.raw"
    raw.write_bytes(b"\0" * (3 << 20))
    meta = internal_metadata(CAROL)
    request = pb.ImportImageRequest(region=GZ, name="imported", format=pb.IMAGE_FORMAT_RAW, os_name="Ubuntu 24.04",
                                    os_type=pb.OS_TYPE_LINUX, architecture=pb.ARCHITECTURE_X86_64,
                                    source_uri=raw.as_uri())
    made = (await catalogs.one.ImportImage(request, metadata=meta)).image
    assert made.state == pb.IMAGE_STATE_IMPORTING
    assert made.source == pb.IMAGE_SOURCE_IMPORT
    done = await catalogs.wait_done(made.image_id)
    assert done.state == pb.IMAGE_STATE_NORMAL, done.state_reason
    assert done.checksum_sha256 == hashlib.sha256(raw.read_bytes()).hexdigest()
    assert done.size_gb == 1
    assert done.platform == "Ubuntu"

    # Declared qcow2, found raw: refused by the inspection, with the reason on the image.
    request.name, request.format = "disguised", pb.IMAGE_FORMAT_QCOW2
    failed = await catalogs.wait_done((await catalogs.one.ImportImage(request, metadata=meta)).image.image_id)
    assert failed.state == pb.IMAGE_STATE_IMPORT_FAILED
    assert failed.state_reason.startswith("FORMAT_MISMATCH")
    quota = await catalogs.one.GetImageQuota(pb.GetImageQuotaRequest(region=GZ), metadata=meta)
    assert (quota.custom_image_used, quota.daily_operation_used) == (1, 2)  # the failed one does not count

    for uri, reason in [("http://169.254.169.254/latest/meta-data", "SOURCE_NOT_ALLOWED"),
                        ("file:///etc/passwd", "SOURCE_NOT_ALLOWED"), ("ftp://example.com/x", "SOURCE_NOT_ALLOWED")]:
        request.name, request.source_uri = "bad", uri
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await catalogs.one.ImportImage(request, metadata=meta)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, uri
        assert _reason(refused.value) == reason, uri


async def test_a_job_whose_replica_died_is_taken_over_when_its_lease_expires(
        catalogs: Catalogs, database_url: str) -> None:
    """A job claimed by a replica that then vanished (its lease held, never heartbeated again) is
    finished by another once the lease runs out."""
    from catalog_service.adapters.tables import JOBS
    from chassis.db import Database
    from chassis.jobs import JobQueue

    made = await catalogs.create("orphan")
    db = Database(database_url)
    dead = JobQueue(db, JOBS, catalogs.clock, "dead-replica", lease=timedelta(hours=1))
    # The real replicas may claim it first on a fast machine; then there is nothing to take over.
    job = dead.claim(["create-image"])
    if job is not None:
        await asyncio.sleep(1)
        image = (await catalogs.one.GetImage(pb.GetImageRequest(image_id=made.image_id),
                                             metadata=internal_metadata(CAROL))).image
        assert image.state == pb.IMAGE_STATE_CREATING  # held by the dead replica
        catalogs.clock.advance(hours=2)
    done = await catalogs.wait_done(made.image_id)
    assert done.state == pb.IMAGE_STATE_NORMAL
    if job is not None:
        assert not dead.heartbeat(job)
    db.dispose()


async def test_quota_of_an_unknown_region_is_refused(catalogs: Catalogs) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await catalogs.one.GetImageQuota(pb.GetImageQuotaRequest(region="mars-1"), metadata=internal_metadata(ALICE))
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
