"""Images and their shares, as the caller sees them."""

from __future__ import annotations

from dataclasses import replace

from chassis import ids
from chassis.context import Caller
from chassis.errors import InvalidArgument, PermissionDenied
from gateway.domain.model import (
    CatalogKind, Image, ImageShare, ImageType, Region, ShareState, image_not_found,
)
from gateway.service_layer.dependencies import Dependencies

# An image is shared with at most 50 accounts (the sharing context enforces the limit itself).
MAX_SHARES_PER_CALL = 50


async def list_regions(deps: Dependencies) -> list[Region]:
    return list((await deps.reference.regions()).values())


async def list_images(caller: Caller, region: str, image_types: set[ImageType], platform: str, name_filter: str,
                      page_size: int, page_token: str, deps: Dependencies) -> tuple[list[Image], str]:
    await deps.reference.region(region)
    wanted = image_types or set(ImageType)
    kinds = {CatalogKind(t.value) for t in wanted & {ImageType.PUBLIC, ImageType.MARKET}}
    if ImageType.PRIVATE in wanted:
        kinds.add(CatalogKind.CUSTOM)
    received = await deps.sharing.received(region) if ImageType.SHARED in wanted else {}
    images, next_token = await deps.catalog.images(region, kinds, sorted(received), platform, name_filter,
                                                   page_size, page_token)
    return [_seen(image, caller, received) for image in images], next_token


def _seen(image: Image, caller: Caller, received: dict[str, ShareState]) -> Image:
    state = received.get(image.image_id)
    if state is None or image.owner_account_id == caller.account_id:
        return image
    return replace(image, share_state=state)


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


async def share_image(caller: Caller, image_id: str, account_ids: list[str], request_id: str,
                      deps: Dependencies) -> list[ImageShare]:
    ids.check_request_id(request_id)
    if len(account_ids) > MAX_SHARES_PER_CALL:
        raise InvalidArgument("TOO_MANY_ACCOUNTS", f"at most {MAX_SHARES_PER_CALL} account ids per call",
                              field="account_ids")
    for index, account_id in enumerate(account_ids):
        ids.require_account_id(account_id, f"account_ids[{index}]")
    image = await own_custom_image(caller, image_id, deps)
    with deps.new_uow(read_only=True) as uow:
        known = uow.accounts.existing(account_ids)
    unknown = [a for a in account_ids if a not in known]
    if unknown:
        raise InvalidArgument("UNKNOWN_ACCOUNT", f"account {unknown[0]} does not exist",
                              field=f"account_ids[{account_ids.index(unknown[0])}]")
    return await deps.sharing.share(image, account_ids, request_id)


async def unshare_image(caller: Caller, image_id: str, account_ids: list[str], request_id: str,
                        deps: Dependencies) -> list[ImageShare]:
    ids.check_request_id(request_id)
    image = await own_custom_image(caller, image_id, deps)
    return await deps.sharing.unshare(image, account_ids, request_id)


async def list_image_shares(caller: Caller, image_id: str, page_size: int, page_token: str,
                            deps: Dependencies) -> tuple[list[ImageShare], str]:
    image = await own_custom_image(caller, image_id, deps)
    return await deps.sharing.shares_of(image, page_size, page_token)
