"""The catalog's read handlers (get, batch get, list) on a real SQLite file holding the seed: visibility, paging,
filters and their bounds, without gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TypedDict, Unpack

import pytest

import catalog_service
from catalog_service.adapters.tables import TABLES
from catalog_service.domain import seed
from catalog_service.domain.model import ImageQuery, ImageType, Region
from catalog_service.service_layer import handlers
from catalog_service.service_layer.handlers import UnitOfWorkFactory
from catalog_service.service_layer.unit_of_work import CatalogUnitOfWork
from chassis.db import Database
from chassis.errors import InvalidArgument, NotFound
from chassis.migrations import migrate

GZ = "ap-guangzhou"
ALICE, BOB = seed.DEMO_ACCOUNT_IDS
ALICE_WEB = seed.seed_image_id(GZ, "alice-web")
BOB_ARM = seed.seed_image_id(GZ, "bob-arm")


@pytest.fixture
def new_uow(tmp_path: Path) -> Iterator[UnitOfWorkFactory]:
    db = Database(f"sqlite:///{tmp_path}/catalog.db")
    migrate(db, Path(catalog_service.__file__).parent, "catalog", TABLES)
    factory = partial(CatalogUnitOfWork, db)
    with factory() as uow:
        uow.images.add_missing_regions(seed.REGIONS)
        uow.images.add_missing_images(seed.seed_images() + seed.demo_custom_images())
        uow.commit()
    yield factory
    db.dispose()


def regions() -> dict[str, Region]:
    return {r.region_id: r for r in seed.REGIONS}


class Filters(TypedDict, total=False):
    """The optional filters of an ImageQuery."""

    platform: str
    name_filter: str


def query(viewer: str = ALICE, types: frozenset[ImageType] = frozenset(ImageType), shared: frozenset[str] = frozenset(),
          **filters: Unpack[Filters]) -> ImageQuery:
    return ImageQuery(GZ, viewer, types, shared, **filters)


def test_an_image_is_read_by_its_id_and_a_missing_one_is_not_found(new_uow: UnitOfWorkFactory) -> None:
    assert handlers.get_image(ALICE_WEB, new_uow=new_uow).owner_account_id == ALICE
    with pytest.raises(NotFound) as missing:
        handlers.get_image("img-zz000000", new_uow=new_uow)
    assert missing.value.reason == "IMAGE_NOT_FOUND"
    with pytest.raises(InvalidArgument):
        handlers.get_image("img-1", new_uow=new_uow)


def test_a_batch_answers_found_and_missing_ids_once_each_in_order(new_uow: UnitOfWorkFactory) -> None:
    found, missing = handlers.batch_get_images([BOB_ARM, "img-zz000000", ALICE_WEB, BOB_ARM], new_uow=new_uow)
    assert [i.image_id for i in found] == [BOB_ARM, ALICE_WEB]
    assert missing == ["img-zz000000"]
    with pytest.raises(InvalidArgument) as refused:
        handlers.batch_get_images(["img-zz000000"] * (handlers.MAX_BATCH + 1), new_uow=new_uow)
    assert refused.value.reason == "TOO_MANY_IDS"


def test_a_caller_lists_the_official_images_its_own_and_those_shared_with_it(new_uow: UnitOfWorkFactory) -> None:
    mine, _ = handlers.list_images(query(), 1000, "", regions=regions(), new_uow=new_uow)
    ids = {i.image_id for i in mine}
    assert ALICE_WEB in ids
    assert BOB_ARM not in ids
    assert {i.image_type for i in mine} == {ImageType.PUBLIC, ImageType.MARKET, ImageType.CUSTOM}
    shared, _ = handlers.list_images(query(BOB, frozenset(), frozenset({ALICE_WEB})), 1000, "", regions=regions(),
                                     new_uow=new_uow)
    assert [i.image_id for i in shared] == [ALICE_WEB]


def test_pages_follow_one_another_and_their_tokens_are_bound_to_the_filters(new_uow: UnitOfWorkFactory) -> None:
    seen, token = [], ""
    while True:
        page, token = handlers.list_images(query(), 2, token, regions=regions(), new_uow=new_uow)
        seen += [i.image_id for i in page]
        if not token:
            break
    everything, _ = handlers.list_images(query(), 1000, "", regions=regions(), new_uow=new_uow)
    assert seen == [i.image_id for i in everything] == sorted(seen)
    _, token = handlers.list_images(query(), 2, "", regions=regions(), new_uow=new_uow)
    with pytest.raises(InvalidArgument) as refused:
        handlers.list_images(query(platform="Ubuntu"), 2, token, regions=regions(), new_uow=new_uow)
    assert refused.value.reason == "INVALID_PAGE_TOKEN"


@pytest.mark.parametrize(("filters", "reason"), [
    ({"platform": "p" * 129}, "FILTER_TOO_LONG"), ({"name_filter": "n" * 129}, "FILTER_TOO_LONG")])
def test_filters_are_bounded(new_uow: UnitOfWorkFactory, filters: Filters, reason: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        handlers.list_images(query(**filters), 10, "", regions=regions(), new_uow=new_uow)
    assert refused.value.reason == reason


def test_an_unknown_region_is_refused(new_uow: UnitOfWorkFactory) -> None:
    with pytest.raises(InvalidArgument) as refused:
        handlers.list_images(ImageQuery("mars-1", ALICE, frozenset(ImageType), frozenset()), 10, "",
                             regions=regions(), new_uow=new_uow)
    assert refused.value.reason == "UNKNOWN_REGION"


def test_platform_and_name_filters_are_case_insensitive(new_uow: UnitOfWorkFactory) -> None:
    ubuntu, _ = handlers.list_images(query(platform="ubuntu", name_filter="SERVER"), 1000, "", regions=regions(),
                                     new_uow=new_uow)
    assert ubuntu
    assert all(i.platform == "Ubuntu" and "server" in i.name.lower() for i in ubuntu)
