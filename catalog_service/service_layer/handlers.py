"""The catalog's use cases. Each takes plain values and its dependencies, and raises domain errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from catalog_service.domain.model import (
    Image,
    ImageQuery,
    Region,
    check_filter_length,
    image_not_found,
    unknown_region,
)
from catalog_service.service_layer.unit_of_work import CatalogUnitOfWork
from chassis import ids, pagination
from chassis.errors import InvalidArgument

MAX_BATCH = 1000

UnitOfWorkFactory = Callable[..., CatalogUnitOfWork]


def get_image(image_id: str, *, new_uow: UnitOfWorkFactory) -> Image:
    ids.require_id("img", image_id, "image_id")
    with new_uow(read_only=True) as uow:
        image = uow.images.get(image_id)
    if image is None:
        raise image_not_found(image_id)
    return image


def batch_get_images(image_ids: list[str], *, new_uow: UnitOfWorkFactory) -> tuple[list[Image], list[str]]:
    if len(image_ids) > MAX_BATCH:
        raise InvalidArgument("TOO_MANY_IDS", f"at most {MAX_BATCH} image ids per call", field="image_ids")
    for index, image_id in enumerate(image_ids):
        ids.require_id("img", image_id, f"image_ids[{index}]")
    wanted = list(dict.fromkeys(image_ids))
    with new_uow(read_only=True) as uow:
        found = {image.image_id: image for image in uow.images.get_many(wanted)}
    return [found[i] for i in wanted if i in found], [i for i in wanted if i not in found]


def list_images(query: ImageQuery, page_size: int, page_token: str, *, regions: Mapping[str, Region],
                new_uow: UnitOfWorkFactory) -> tuple[list[Image], str]:
    if query.region not in regions:
        raise unknown_region(query.region)
    check_filter_length("platform", query.platform)
    check_filter_length("name_filter", query.name_filter)
    size = pagination.clamp_page_size(page_size)
    fingerprint = pagination.fingerprint(*query.fingerprint_parts())
    after = pagination.decode_page_token(page_token, fingerprint)
    with new_uow(read_only=True) as uow:
        images = uow.images.page(query, after, size + 1)
    return pagination.page_of(images, size, fingerprint, lambda i: i.image_id)
