"""ListImages reads only what the caller may see, on SQLite and PostgreSQL: each visible set (official images
of a type, the caller's own, those shared with it) by an index that holds exactly it, never a walk of the
region's images filtered afterwards (EXPLAIN says so, with many images of other accounts in the region);
and the merged pages are exactly the visible images in id order, page after page."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

import catalog_service
from catalog_service.adapters.repository import CatalogRepository, listing_statement
from catalog_service.adapters.tables import TABLES
from catalog_service.domain.model import ImageQuery, ImageType
from chassis.db import Database, is_postgres
from chassis.migrations import migrate
from devtools.seed_images import analyze, image_rows, insert_rows, seed

REGION = "ap-guangzhou"
VIEWER = "100000000001"
FRIEND = "100000000002"
OTHERS = 6000
OWN = 40
OUR_INDEXES = {"ix_catalog_image_region_type_id", "ix_catalog_image_region_owner_type_id"}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def catalog(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A migrated catalog database holding many images of other accounts, the viewer's own, a friend's
    (some shared with the viewer) and a few official ones of each type."""
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_databases")()
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('listing') / 'catalog.db'}"
    database = Database(url)
    migrate(database, Path(catalog_service.__file__).parent, "catalog", TABLES)
    seed(database.engine, REGION, OTHERS, OWN, VIEWER, owners=60)
    insert_rows(database.engine, image_rows(REGION, FRIEND, 30))
    insert_rows(database.engine, image_rows("ap-shanghai", VIEWER, 20))  # another region's: never listed
    for kind in ("PUBLIC", "MARKET"):
        insert_rows(database.engine, image_rows(REGION, "", 7, image_type=kind))
    analyze(database.engine)
    yield database.engine
    database.dispose()


def shared_ids() -> frozenset[str]:
    return frozenset(str(row["image_id"]) for row in list(image_rows(REGION, FRIEND, 30))[::3])


def every_row(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as connection:
        return [dict(r._mapping) for r in connection.execute(text("SELECT * FROM catalog_image"))]


def expected(rows: list[dict[str, object]], query: ImageQuery) -> list[str]:
    """The visible images, by the rule itself (not by the statement)."""
    seen = []
    for row in rows:
        if row["region"] != query.region:
            continue
        kind = ImageType(str(row["image_type"]))
        own = kind is ImageType.CUSTOM and row["owner_account_id"] == query.viewer_account_id
        visible = ((kind is not ImageType.CUSTOM and kind in query.image_types)
                   or (own and ImageType.CUSTOM in query.image_types)
                   or (kind is ImageType.CUSTOM and row["image_id"] in query.shared_image_ids and not own))
        if visible:
            seen.append(str(row["image_id"]))
    return sorted(seen)


QUERIES = [
    ImageQuery(REGION, VIEWER, frozenset(ImageType), shared_ids()),
    ImageQuery(REGION, VIEWER, frozenset({ImageType.CUSTOM}), frozenset()),
    ImageQuery(REGION, VIEWER, frozenset({ImageType.PUBLIC, ImageType.MARKET}), frozenset()),
    ImageQuery(REGION, VIEWER, frozenset(), shared_ids()),  # SHARED only
    ImageQuery(REGION, FRIEND, frozenset(ImageType), frozenset()),
]


@pytest.mark.parametrize("query", QUERIES, ids=["all", "own", "official", "shared", "friend"])
@pytest.mark.parametrize("page_size", [1, 7, 50])
def test_pages_are_the_visible_images_in_id_order(catalog: Engine, query: ImageQuery, page_size: int) -> None:
    listed: list[str] = []
    after: str | None = None
    with catalog.connect() as connection:
        repository = CatalogRepository(connection)
        while True:
            page = repository.page(query, after, page_size)
            listed += [image.image_id for image in page]
            if len(page) < page_size:
                break
            after = page[-1].image_id
    assert listed == expected(every_row(catalog), query)


@pytest.mark.parametrize("name_filter", ["-1", "%", "_", "/"])
def test_a_name_filter_and_a_platform_apply_to_every_set(catalog: Engine, name_filter: str) -> None:
    """The filter is a substring, its LIKE wildcards and the escape character taken as themselves."""
    query = ImageQuery(REGION, VIEWER, frozenset(ImageType), shared_ids(), platform="ubuntu", name_filter=name_filter)
    with catalog.connect() as connection:
        page = CatalogRepository(connection).page(query, None, 1000)
    wanted = expected(every_row(catalog), query)
    names = {str(r["image_id"]): str(r["name"]) for r in every_row(catalog)}
    assert [i.image_id for i in page] == [i for i in wanted if name_filter in names[i]]


def plan(engine: Engine, query: ImageQuery, after: str | None) -> list[str]:
    listing = listing_statement(query, after, 51)
    assert listing is not None
    statement, parameters = listing
    compiled = statement.params(**parameters).compile(engine, compile_kwargs={"literal_binds": True,
                                                                              "render_postcompile": True})
    with engine.connect() as connection:
        if is_postgres(engine):
            return [str(r[0]) for r in connection.execute(text(f"EXPLAIN {compiled}"))]
        return [str(r[3]) for r in connection.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))]


@pytest.mark.parametrize("query", QUERIES, ids=["all", "own", "official", "shared", "friend"])
@pytest.mark.parametrize("deep", [False, True], ids=["first page", "deep page"])
def test_each_visible_set_is_read_by_its_own_index(catalog: Engine, query: ImageQuery, deep: bool) -> None:
    after = random.Random(7).choice(expected(every_row(catalog), query)) if deep else None
    lines = plan(catalog, query, after)
    text_of_plan = "\n".join(lines)
    if is_postgres(catalog):
        assert "Seq Scan on catalog_image" not in text_of_plan, text_of_plan
        used = {name for name in OUR_INDEXES | {"catalog_image_pkey"} if name in text_of_plan}
    else:
        scans = [line for line in lines if "catalog_image" in line]
        assert scans, text_of_plan
        assert all(line.startswith("SEARCH") for line in scans), text_of_plan
        used = {name for name in OUR_INDEXES | {"PRIMARY KEY"} if name in text_of_plan}
    wanted = set()
    if query.image_types - {ImageType.CUSTOM}:
        wanted.add("ix_catalog_image_region_type_id")
    if ImageType.CUSTOM in query.image_types:
        wanted.add("ix_catalog_image_region_owner_type_id")
    assert wanted <= used, text_of_plan
