"""Reads and writes the catalog's rows with SQLAlchemy Core and hands back domain objects."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from sqlalchemy import ColumnElement, Connection, and_, false, func, or_, select

from catalog_service.adapters.tables import IMAGES, REGIONS
from catalog_service.domain.model import (
    Architecture, Image, ImageQuery, ImageSource, ImageState, ImageType, OsType, Region,
)
from chassis.db import insert_ignoring_duplicates

_IMAGE_FIELDS = [f.name for f in dataclasses.fields(Image)]


def _to_image(row: object) -> Image:
    m = row._mapping  # type: ignore[attr-defined]
    return Image(
        image_id=m["image_id"], region=m["region"], image_type=ImageType(m["image_type"]),
        state=ImageState(m["state"]), name=m["name"], description=m["description"],
        owner_account_id=m["owner_account_id"], platform=m["platform"], os_name=m["os_name"],
        os_type=OsType(m["os_type"]), architecture=Architecture(m["architecture"]), size_gb=m["size_gb"],
        source=ImageSource(m["source"]), base_image_id=m["base_image_id"],
        progress_percent=m["progress_percent"], create_time=m["create_time"],
        marketplace_product_id=m["marketplace_product_id"], marketplace_provider=m["marketplace_provider"],
    )


def _to_row(image: Image) -> dict[str, object]:
    return {name: getattr(image, name) for name in _IMAGE_FIELDS}


class CatalogRepository:
    def __init__(self, connection: Connection):
        self._connection = connection

    def regions(self) -> list[Region]:
        rows = self._connection.execute(select(REGIONS).order_by(REGIONS.c.region_id))
        return [Region(r.region_id, r.display_name, r.mainland, r.sync_enabled) for r in rows]

    def add_missing_regions(self, regions: Iterable[Region]) -> None:
        values = [dataclasses.asdict(r) for r in regions]
        if values:
            self._connection.execute(insert_ignoring_duplicates(self._connection, REGIONS), values)

    def add_missing_images(self, images: Iterable[Image]) -> None:
        values = [_to_row(i) for i in images]
        if values:
            self._connection.execute(insert_ignoring_duplicates(self._connection, IMAGES), values)

    def get(self, image_id: str) -> Image | None:
        row = self._connection.execute(select(IMAGES).where(IMAGES.c.image_id == image_id)).first()
        return None if row is None else _to_image(row)

    def get_many(self, image_ids: Iterable[str]) -> list[Image]:
        rows = self._connection.execute(select(IMAGES).where(IMAGES.c.image_id.in_(list(image_ids))))
        return [_to_image(r) for r in rows]

    def page(self, query: ImageQuery, after: str | None, limit: int) -> list[Image]:
        """Up to ``limit`` images of the query with ids above ``after``, in id order."""
        c = IMAGES.c
        visible: list[ColumnElement[bool]] = []
        official = [t.value for t in query.image_types if t is not ImageType.CUSTOM]
        if official:
            visible.append(c.image_type.in_(official))
        if ImageType.CUSTOM in query.image_types:
            visible.append(and_(c.image_type == ImageType.CUSTOM.value,
                                c.owner_account_id == query.viewer_account_id))
        if query.shared_image_ids:
            visible.append(and_(c.image_type == ImageType.CUSTOM.value,
                                c.image_id.in_(sorted(query.shared_image_ids))))
        conditions: list[ColumnElement[bool]] = [c.region == query.region, or_(*visible) if visible else false()]
        if query.platform:
            conditions.append(func.lower(c.platform) == query.platform.lower())
        if query.name_filter:
            conditions.append(func.lower(c.name).contains(query.name_filter.lower(), autoescape=True))
        if after is not None:
            conditions.append(c.image_id > after)
        statement = select(IMAGES).where(*conditions).order_by(c.image_id).limit(limit)
        return [_to_image(r) for r in self._connection.execute(statement)]
