"""Regions and images as the caller sees them: which it may see, whether it may launch them, and what its
trust policy says of each."""

from __future__ import annotations

from collections.abc import Collection

from chassis import ids
from chassis.context import Caller
from chassis.errors import PermissionDenied
from gateway.domain.model import (
    DEFAULT_SHARE_STATES,
    CatalogKind,
    Image,
    ImageType,
    Region,
    ShareState,
    image_not_found,
)
from gateway.service_layer.dependencies import Dependencies


async def list_regions(deps: Dependencies) -> list[Region]:
    return list((await deps.reference.regions()).values())


async def list_images(caller: Caller, region: str, image_types: set[ImageType], share_states: Collection[ShareState],
                      platform: str, name_filter: str, page_size: int, page_token: str, deps: Dependencies
                      ) -> tuple[list[Image], str]:
    """One page of the images the caller may see in a region; SHARED ones in the share states asked for
    (PENDING and ACCEPTED unless others are). Three calls whatever the page's size: the shares received
    (sharing), the page (catalog), and the verdicts of the whole page (sharing, one call)."""
    await deps.reference.region(region)
    wanted = image_types or set(ImageType)
    kinds = {CatalogKind(t.value) for t in wanted & {ImageType.PUBLIC, ImageType.MARKET}}
    if ImageType.PRIVATE in wanted:
        kinds.add(CatalogKind.CUSTOM)
    states = frozenset(share_states) or DEFAULT_SHARE_STATES
    received = await deps.sharing.received(region, states) if ImageType.SHARED in wanted else {}
    images, next_token = await deps.catalog.images(region, kinds, sorted(received), platform, name_filter,
                                                   page_size, page_token)
    verdicts = await deps.sharing.verdicts(images)
    return [image.seen_with(verdict) for image, verdict in zip(images, verdicts, strict=True)], next_token


async def get_image(caller: Caller, image_id: str, deps: Dependencies) -> Image:
    ids.require_id("img", image_id, "image_id")
    image = await deps.catalog.image(image_id)
    verdict = await deps.sharing.verdict(image)  # asked for a missing image too: see Image.missing
    if not verdict.visible or not image.exists:
        raise image_not_found(image_id)
    return image.seen_with(verdict)


async def own_custom_image(caller: Caller, image_id: str, deps: Dependencies,
                           action: str = "change who it is shared with") -> Image:
    """The caller's own custom image, for a change only its owner may make (``action``, in words):
    NOT_FOUND when the caller cannot see it, PERMISSION_DENIED when it can but may not change it (a
    public, marketplace or SHARED image)."""
    ids.require_id("img", image_id, "image_id")
    image = await deps.catalog.image(image_id)
    if image.kind is CatalogKind.CUSTOM and image.owner_account_id == caller.account_id:
        return image
    verdict = await deps.sharing.verdict(image)  # asked for a missing image too: see Image.missing
    if not verdict.visible or not image.exists:
        raise image_not_found(image_id)
    reason = "SHARED_IMAGE_READ_ONLY" if image.kind is CatalogKind.CUSTOM else "NOT_IMAGE_OWNER"
    raise PermissionDenied(reason, f"only the owner of image {image_id} can {action}",
                           resource_type="image", resource_name=image_id)
