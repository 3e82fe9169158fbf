"""The life of a custom image: made from an instance or imported, renamed, synced, deleted; its quotas.

The catalog owns the images, their jobs and quotas, and checks that the caller owns what it changes;
the gateway adds what only it knows (the caller's instances), the caller's view of an image (a SHARED
image is read-only to its recipient: PERMISSION_DENIED; a stranger's is NOT_FOUND, like a missing
one), and the one step that spans two contexts: a delete that no share can slip past.
"""

from __future__ import annotations

import logging

from chassis import ids
from chassis.context import Caller
from chassis.errors import DomainError, InvalidArgument, NotFound, RemoteError, Unreached
from chassis.logs import fields
from gateway.domain.instances import check_imageable
from gateway.domain.model import Image, ImageImport, ImageQuota, image_update_paths
from gateway.service_layer.dependencies import Dependencies
from gateway.service_layer.images import own_custom_image
from gateway.service_layer.instances import get_instance

log = logging.getLogger("gateway.images")


async def create_image(caller: Caller, instance_id: str, name: str, description: str, request_id: str,
                       dry_run: bool, deps: Dependencies) -> Image:
    ids.check_request_id(request_id)
    instance = await get_instance(caller, instance_id, deps)  # another account's is NOT_FOUND, like a missing one
    check_imageable(instance)
    return await deps.catalog.create_image(instance, name, description, request_id, dry_run)


async def import_image(spec: ImageImport, request_id: str, dry_run: bool, deps: Dependencies) -> Image:
    ids.check_request_id(request_id)
    await _known_region(spec.region, deps)
    return await deps.catalog.import_image(spec, request_id, dry_run)


async def update_image(caller: Caller, image_id: str, name: str, description: str, paths: list[str],
                       request_id: str, deps: Dependencies) -> Image:
    ids.check_request_id(request_id)
    ids.require_id("img", image_id, "image.image_id")
    wanted = image_update_paths(paths)
    await own_custom_image(caller, image_id, deps, "rename or re-describe it")
    return await deps.catalog.update_image(image_id, name, description, wanted, request_id)


async def sync_image(caller: Caller, image_id: str, destination_regions: list[str], request_id: str,
                     dry_run: bool, deps: Dependencies) -> list[Image]:
    ids.check_request_id(request_id)
    await own_custom_image(caller, image_id, deps, "copy it to other regions")
    return await deps.catalog.sync_image(image_id, destination_regions, request_id, dry_run)


async def delete_image(caller: Caller, image_id: str, request_id: str, deps: Dependencies) -> None:
    """Deletes the caller's custom image, never while it is shared, and so that a ShareImage racing the
    delete cannot leave a share of a deleted image behind:

    1. the catalog checks that it could delete the image now (not while a job makes or copies it);
    2. sharing retires the image: refused while it has shares (IMAGE_SHARED), else it holds the image,
       and every ShareImage of it is refused until the hold ends;
    3. the catalog deletes it. Refused → the hold is released (RestoreImage). Outcome unknown → the hold
       stays and runs out on its own: the image may be gone, and must not gain a share meanwhile.
    """
    ids.check_request_id(request_id)
    try:
        image = await own_custom_image(caller, image_id, deps, "delete it")
    except NotFound as hidden:
        if not request_id:
            raise
        await _repeat_delete(image_id, request_id, hidden, deps)
        return
    await deps.catalog.delete_image(image_id, "", validate_only=True)
    await deps.sharing.retire(image)
    try:
        await deps.catalog.delete_image(image_id, request_id)
    except DomainError as exc:
        if _image_kept(exc):
            await _restore(image, deps)
        raise


async def _repeat_delete(image_id: str, request_id: str, hidden: NotFound, deps: Dependencies) -> None:
    """An image that is gone may be gone because this very request deleted it, and the answer was lost:
    the catalog's request ledger answers the repeat with the first answer. For any other image the caller
    does not own, missing or a stranger's, the catalog says NOT_FOUND, and the caller hears the same
    NOT_FOUND as without a request_id."""
    try:
        await deps.catalog.delete_image(image_id, request_id)
    except RemoteError as exc:
        if exc.code == "NOT_FOUND":
            raise hidden from None
        raise


def _image_kept(exc: DomainError) -> bool:
    """Whether a failed delete certainly left the image in place: the catalog refused it (but NOT_FOUND:
    then the image is gone, deleted by a concurrent call), or the call never left the gateway."""
    if isinstance(exc, RemoteError):
        return exc.code != "NOT_FOUND"
    return isinstance(exc, Unreached)


async def _restore(image: Image, deps: Dependencies) -> None:
    """Releases the delete hold; if sharing cannot be told, the hold runs out on its own, and the
    caller hears why the delete failed, not why the release did."""
    try:
        await deps.sharing.restore(image)
    except DomainError as exc:
        log.warning("delete hold not released; it runs out on its own",
                    extra=fields(image_id=image.image_id, reason=exc.reason))


async def get_image_quota(region: str, deps: Dependencies) -> ImageQuota:
    await _known_region(region, deps)
    return await deps.catalog.quota(region)


async def _known_region(region: str, deps: Dependencies) -> None:
    if not region:
        raise InvalidArgument("REGION_REQUIRED", "region is required", field="region")
    await deps.reference.region(region)
