"""The catalog through a real in-process server and real SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import TypedDict, Unpack

import grpc
import pytest
from cloudimg.catalog.v1 import catalog_service_pb2 as pb
from cloudimg.catalog.v1 import catalog_service_pb2_grpc as pb_grpc

from catalog_service.bootstrap import bootstrap
from catalog_service.domain.seed import seed_image_id
from catalog_service.settings import CatalogSettings
from tests.conftest import ALICE, BOB, ServerFactory, Spawn, internal_metadata, rich_status
from tests.integration.cloud import INTERNAL_SECRET


@pytest.fixture
async def catalog(serve: ServerFactory, database_url: str) -> AsyncIterator[pb_grpc.CatalogServiceStub]:
    settings = CatalogSettings(database_url=database_url, internal_token=INTERNAL_SECRET)
    addr = await serve(bootstrap, settings)
    channel = grpc.aio.insecure_channel(addr)
    yield pb_grpc.CatalogServiceStub(channel)
    await channel.close()


class ImageFilters(TypedDict, total=False):
    """The fields of a ListImagesRequest but its page token."""

    region: str
    image_types: Iterable[pb.ImageType.ValueType]
    shared_image_ids: Iterable[str]
    platform: str
    name_filter: str
    page_size: int


async def list_all(catalog: pb_grpc.CatalogServiceStub, account: str = ALICE,
                   **request: Unpack[ImageFilters]) -> list[pb.Image]:
    images: list[pb.Image] = []
    token = ""
    while True:
        response: pb.ListImagesResponse = await catalog.ListImages(
            pb.ListImagesRequest(page_token=token, **request), metadata=internal_metadata(account))
        images.extend(response.images)
        token = response.next_page_token
        if not token:
            return images


async def test_regions_are_seeded(catalog: pb_grpc.CatalogServiceStub) -> None:
    response = await catalog.ListRegions(pb.ListRegionsRequest(), metadata=internal_metadata())
    regions = {r.region_id: r for r in response.regions}
    assert len(regions) == 8
    assert regions["ap-guangzhou"].mainland
    assert regions["ap-guangzhou"].sync_enabled
    assert not regions["ap-singapore"].mainland
    assert not regions["ap-singapore"].sync_enabled


async def test_get_image_and_its_errors(catalog: pb_grpc.CatalogServiceStub) -> None:
    image_id = seed_image_id("ap-singapore", "windows-2022-x86")
    image = (await catalog.GetImage(pb.GetImageRequest(image_id=image_id), metadata=internal_metadata())).image
    assert image.os_type == pb.OS_TYPE_WINDOWS
    assert image.region == "ap-singapore"
    assert image.image_type == pb.IMAGE_TYPE_PUBLIC
    assert image.state == pb.IMAGE_STATE_NORMAL

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await catalog.GetImage(pb.GetImageRequest(image_id="img-00000000"), metadata=internal_metadata())
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    _, info, details = rich_status(missing.value)
    assert info.reason == "IMAGE_NOT_FOUND"
    assert details[0].resource_name == "img-00000000"

    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await catalog.GetImage(pb.GetImageRequest(image_id="ami-1234"), metadata=internal_metadata())
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, info, details = rich_status(malformed.value)
    assert info.reason == "INVALID_ID"
    assert details[0].field_violations[0].field == "image_id"


async def test_batch_get_reports_missing_ids(catalog: pb_grpc.CatalogServiceStub) -> None:
    known = seed_image_id("ap-guangzhou", "ubuntu-2204-x86")
    response = await catalog.BatchGetImages(pb.BatchGetImagesRequest(image_ids=[known, "img-zzzzzzzz", known]),
                                            metadata=internal_metadata())
    assert [i.image_id for i in response.images] == [known]
    assert list(response.missing_image_ids) == ["img-zzzzzzzz"]


async def test_keyset_pages_walk_every_image_once(catalog: pb_grpc.CatalogServiceStub) -> None:
    everything = await list_all(catalog, region="ap-guangzhou",
                                image_types=[pb.IMAGE_TYPE_PUBLIC, pb.IMAGE_TYPE_MARKET], page_size=1000)
    paged = await list_all(catalog, region="ap-guangzhou",
                           image_types=[pb.IMAGE_TYPE_PUBLIC, pb.IMAGE_TYPE_MARKET], page_size=2)
    assert [i.image_id for i in paged] == [i.image_id for i in everything]
    assert len(everything) == 9  # 6 public, 3 marketplace
    assert [i.image_id for i in paged] == sorted(i.image_id for i in paged)


async def test_marketplace_images_are_mainland_only(catalog: pb_grpc.CatalogServiceStub) -> None:
    assert await list_all(catalog, region="ap-singapore", image_types=[pb.IMAGE_TYPE_MARKET]) == []
    market = await list_all(catalog, region="ap-beijing", image_types=[pb.IMAGE_TYPE_MARKET])
    assert {i.marketplace_provider for i in market} == {"Bitnami", "BT Panel"}


async def test_custom_images_are_visible_to_their_owner_and_listed_shares_only(
        catalog: pb_grpc.CatalogServiceStub) -> None:
    alice_web = seed_image_id("ap-guangzhou", "alice-web")
    mine = await list_all(catalog, ALICE, region="ap-guangzhou", image_types=[pb.IMAGE_TYPE_CUSTOM])
    assert alice_web in {i.image_id for i in mine}
    assert all(i.owner_account_id == ALICE for i in mine)
    strangers = await list_all(catalog, BOB, region="ap-guangzhou", image_types=[pb.IMAGE_TYPE_CUSTOM])
    assert alice_web not in {i.image_id for i in strangers}
    shared = await list_all(catalog, BOB, region="ap-guangzhou", shared_image_ids=[alice_web])
    assert [i.image_id for i in shared] == [alice_web]


async def test_filters_by_platform_and_name(catalog: pb_grpc.CatalogServiceStub) -> None:
    found = await list_all(catalog, region="ap-shanghai", image_types=[pb.IMAGE_TYPE_PUBLIC], platform="ubuntu")
    assert {i.platform for i in found} == {"Ubuntu"}
    assert len(found) == 2
    found = await list_all(catalog, region="ap-shanghai", image_types=[pb.IMAGE_TYPE_PUBLIC], name_filter="(ARM)")
    assert {i.architecture for i in found} == {pb.ARCHITECTURE_ARM64}
    assert await list_all(catalog, region="ap-shanghai", image_types=[pb.IMAGE_TYPE_PUBLIC], name_filter="%") == []


async def test_page_size_is_clamped_and_bad_pages_are_refused(catalog: pb_grpc.CatalogServiceStub) -> None:
    response = await catalog.ListImages(pb.ListImagesRequest(region="ap-guangzhou", image_types=[pb.IMAGE_TYPE_PUBLIC],
                                                             page_size=5000), metadata=internal_metadata())
    assert len(response.images) == 6
    assert response.next_page_token == ""
    first = await catalog.ListImages(pb.ListImagesRequest(region="ap-guangzhou", image_types=[pb.IMAGE_TYPE_PUBLIC],
                                                          page_size=1), metadata=internal_metadata())
    for request, reason in [
        (pb.ListImagesRequest(region="ap-guangzhou", page_size=-1), "INVALID_PAGE_SIZE"),
        (pb.ListImagesRequest(region="ap-guangzhou", page_token="garbage!"), "INVALID_PAGE_TOKEN"),
        # a token made for other filters
        (pb.ListImagesRequest(region="ap-guangzhou", image_types=[pb.IMAGE_TYPE_MARKET],
                              page_token=first.next_page_token), "INVALID_PAGE_TOKEN"),
        (pb.ListImagesRequest(region="mars-1"), "UNKNOWN_REGION"),
        (pb.ListImagesRequest(region="ap-guangzhou", name_filter="x" * 500), "FILTER_TOO_LONG"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await catalog.ListImages(request, metadata=internal_metadata())
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert rich_status(refused.value)[1].reason == reason


async def test_calls_without_the_internal_credential_are_refused(catalog: pb_grpc.CatalogServiceStub) -> None:
    request = pb.GetImageRequest(image_id=seed_image_id("ap-guangzhou", "alice-web"))
    for metadata in [(), internal_metadata(token="wrong-token-wrong-token"), (("x-cloudimg-account-id", ALICE),)]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await catalog.GetImage(request, metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert rich_status(refused.value)[1].reason == "INTERNAL_CREDENTIAL_INVALID"


@pytest.mark.postgres
def test_replicas_starting_at_once_on_one_postgres_database_all_serve(spawn: Spawn,
                                                                      postgres_database: Callable[[], str]) -> None:
    """Three catalogs start together on a new database: tables are created once, the seed is added once."""
    from sqlalchemy import create_engine, func, select

    from catalog_service.adapters.tables import IMAGES
    from catalog_service.adapters.tables import REGIONS as REGION_ROWS
    from catalog_service.domain.seed import REGIONS, demo_custom_images, seed_images
    from devtools.stack import wait_serving

    url = postgres_database()
    replicas = [spawn("catalog", {"CATALOG_DATABASE_URL": url}, wait=False) for _ in range(3)]
    for replica in replicas:
        wait_serving(replica.addr, 60)
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(REGION_ROWS)).scalar_one() == len(REGIONS)
        images = conn.execute(select(func.count()).select_from(IMAGES)).scalar_one()
    engine.dispose()
    assert images == len(seed_images()) + len(demo_custom_images())


@pytest.mark.parametrize("key", ["ubuntu-2204-x86", "wordpress"], ids=["public", "marketplace"])
async def test_an_official_image_cannot_be_changed_by_any_account(catalog: pb_grpc.CatalogServiceStub,
                                                                  key: str) -> None:
    """What the gateway's cache of official images rests on (gateway.adapters.contexts.MAX_OFFICIAL_IMAGES):
    no call updates, syncs or deletes a public or marketplace image, whoever asks."""
    region = "ap-guangzhou"
    image_id = seed_image_id(region, key)
    before = (await catalog.GetImage(pb.GetImageRequest(image_id=image_id), metadata=internal_metadata())).image
    assert before.image_type in (pb.IMAGE_TYPE_PUBLIC, pb.IMAGE_TYPE_MARKET)
    changes = [
        ("UpdateImage", pb.UpdateImageRequest(image_id=image_id, name="renamed", description="changed",
                                              update_paths=["name", "description"], request_id="upd-official-1")),
        ("DeleteImage", pb.DeleteImageRequest(image_id=image_id, request_id="del-official-1")),
        ("SyncImage", pb.SyncImageRequest(image_id=image_id, destination_regions=["ap-shanghai"],
                                          request_id="syn-official-1")),
    ]
    for account in (ALICE, BOB, before.owner_account_id or ALICE):
        for method, request in changes:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await getattr(catalog, method)(request, metadata=internal_metadata(account))
            assert refused.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
                                            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)
    after = (await catalog.GetImage(pb.GetImageRequest(image_id=image_id), metadata=internal_metadata())).image
    assert after == before
