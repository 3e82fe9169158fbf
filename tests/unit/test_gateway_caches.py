"""The gateway's catalog adapter keeps official images (which never change) and asks again for everything else:
a custom image, which its owner may change or delete at any moment, and an id the catalog did not have."""

from __future__ import annotations

from typing import Any

import pytest
from cloudimg.catalog.v1 import catalog_service_pb2 as catalog_pb

from chassis.errors import RemoteError
from gateway.adapters import contexts
from gateway.domain.model import CatalogKind


class Stub:
    """The catalog stub's methods, as names the fake downstream answers by."""

    GetImage = "GetImage"
    ListImages = "ListImages"


class FakeCatalog:
    """A Downstream whose catalog holds the images given, counting the calls it answers."""

    def __init__(self, *images: catalog_pb.Image):
        self.stub = Stub()
        self.images = {image.image_id: image for image in images}
        self.calls: list[str] = []

    async def call(self, method: str, request: Any) -> Any:
        self.calls.append(method)
        if method == "ListImages":
            return catalog_pb.ListImagesResponse(images=list(self.images.values()))
        if request.image_id not in self.images:
            raise RemoteError("NOT_FOUND", "IMAGE_NOT_FOUND", "no such image", b"")
        return catalog_pb.GetImageResponse(image=self.images[request.image_id])


def image(image_id: str, kind: catalog_pb.ImageType.ValueType, owner: str = "") -> catalog_pb.Image:
    return catalog_pb.Image(image_id=image_id, region="ap-guangzhou", image_type=kind, owner_account_id=owner,
                            state=catalog_pb.IMAGE_STATE_NORMAL, os_type=catalog_pb.OS_TYPE_LINUX,
                            architecture=catalog_pb.ARCHITECTURE_X86_64, source=catalog_pb.IMAGE_SOURCE_IMPORT,
                            size_gb=20)


PUBLIC, MARKET, CUSTOM = "img-pub00001", "img-mkt00001", "img-cus00001"


@pytest.fixture
def downstream() -> FakeCatalog:
    return FakeCatalog(image(PUBLIC, catalog_pb.IMAGE_TYPE_PUBLIC), image(MARKET, catalog_pb.IMAGE_TYPE_MARKET),
                       image(CUSTOM, catalog_pb.IMAGE_TYPE_CUSTOM, "100000000001"))


async def test_an_official_image_is_asked_for_once(downstream: FakeCatalog) -> None:
    catalog = contexts.Catalog(downstream)  # type: ignore[arg-type]
    for _ in range(3):
        assert (await catalog.image(PUBLIC)).kind is CatalogKind.PUBLIC
        assert (await catalog.image(MARKET)).kind is CatalogKind.MARKET
    assert downstream.calls == ["GetImage", "GetImage"]


async def test_a_custom_image_is_asked_for_every_time_and_its_deletion_seen_at_once(downstream: FakeCatalog) -> None:
    catalog = contexts.Catalog(downstream)  # type: ignore[arg-type]
    assert (await catalog.image(CUSTOM)).exists
    assert (await catalog.image(CUSTOM)).exists
    del downstream.images[CUSTOM]
    assert not (await catalog.image(CUSTOM)).exists
    assert downstream.calls == ["GetImage"] * 3


async def test_a_missing_id_is_asked_for_every_time(downstream: FakeCatalog) -> None:
    catalog = contexts.Catalog(downstream)  # type: ignore[arg-type]
    assert not (await catalog.image("img-nothere1")).exists
    downstream.images["img-nothere1"] = image("img-nothere1", catalog_pb.IMAGE_TYPE_CUSTOM, "100000000002")
    assert (await catalog.image("img-nothere1")).exists
    assert downstream.calls == ["GetImage", "GetImage"]


async def test_a_listing_teaches_it_the_official_images_it_holds(downstream: FakeCatalog) -> None:
    catalog = contexts.Catalog(downstream)  # type: ignore[arg-type]
    await catalog.images("ap-guangzhou", set(CatalogKind), [], "", "", 50, "")
    await catalog.image(PUBLIC)
    await catalog.image(CUSTOM)
    assert downstream.calls == ["ListImages", "GetImage"]


async def test_it_keeps_at_most_its_limit(downstream: FakeCatalog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(contexts, "MAX_OFFICIAL_IMAGES", 1)
    catalog = contexts.Catalog(downstream)  # type: ignore[arg-type]
    for _ in range(2):
        await catalog.image(PUBLIC)
        await catalog.image(MARKET)
    assert downstream.calls == ["GetImage", "GetImage", "GetImage"]
