"""The sharing context's use cases."""

from __future__ import annotations

from collections.abc import Callable
from chassis import pagination
from chassis.clock import Clock, SystemClock
from chassis.errors import InvalidArgument
from sharing_service.domain import model
from sharing_service.domain.model import ImageRef, Share, ShareState, Verdict
from sharing_service.service_layer.unit_of_work import SharingUnitOfWork

UnitOfWorkFactory = Callable[..., SharingUnitOfWork]
_SYSTEM_CLOCK = SystemClock()


def share_image(image: ImageRef, account_ids: list[str], caller_account_id: str, request_id: str, *,
                new_uow: UnitOfWorkFactory, clock: Clock = _SYSTEM_CLOCK) -> list[Share]:
    model.check_owner_may_share(image, caller_account_id)
    requested = model.recipients(account_ids, image.owner_account_id)
    with new_uow() as uow:
        # The accounts as a set: the same accounts in another order or repeated are the same request.
        claim = uow.share_requests.claim(caller_account_id, request_id, "ShareImage",
                                         image_id=image.image_id, account_ids=sorted(requested))
        if claim.repeated:
            return claim.response
        retired_until = uow.shares.lock_image(image.image_id)
        now = clock.now()
        model.check_not_being_deleted(image, retired_until, now)
        added = model.new_recipients(image, requested, uow.shares.recipients_of(image.image_id))
        # Trust policies arrive with the sharing issue; until then every share is accepted at once.
        uow.shares.add(Share(image.image_id, image.region, image.owner_account_id, recipient,
                             ShareState.ACCEPTED, now) for recipient in added)
        shares = uow.shares.of_image(image.image_id)
        claim.answer(shares)
        uow.commit()
    return shares


def unshare_image(image: ImageRef, account_ids: list[str], caller_account_id: str, request_id: str, *,
                  new_uow: UnitOfWorkFactory) -> list[Share]:
    model.check_owner_may_share(image, caller_account_id)
    requested = model.recipients(account_ids, image.owner_account_id)
    with new_uow() as uow:
        claim = uow.share_requests.claim(caller_account_id, request_id, "UnshareImage",
                                         image_id=image.image_id, account_ids=sorted(requested))
        if claim.repeated:
            return claim.response
        uow.shares.lock_image(image.image_id)
        uow.shares.remove(image.image_id, requested)
        shares = uow.shares.of_image(image.image_id)
        claim.answer(shares)
        uow.commit()
    return shares


def retire_image(image: ImageRef, caller_account_id: str, *, new_uow: UnitOfWorkFactory,
                 clock: Clock = _SYSTEM_CLOCK) -> None:
    """Holds an image that has no shares for its deletion; on the image's lock, so that a ShareImage
    runs wholly before (and this is refused: IMAGE_SHARED) or wholly after (and it is refused:
    IMAGE_BEING_DELETED). Retiring a retired image again extends its hold."""
    model.check_owner_may_delete(image, caller_account_id)
    with new_uow() as uow:
        uow.shares.lock_image(image.image_id)
        model.check_unshared(image, uow.shares.count(image.image_id))
        uow.shares.hold_for_deletion(image.image_id, clock.now() + model.DELETE_HOLD)
        uow.commit()


def restore_image(image: ImageRef, caller_account_id: str, *, new_uow: UnitOfWorkFactory) -> None:
    """Ends the delete hold of an image that was not deleted after all (nothing to do without one)."""
    model.check_owner_may_delete(image, caller_account_id)
    with new_uow() as uow:
        uow.shares.lock_image(image.image_id)
        uow.shares.hold_for_deletion(image.image_id, None)
        uow.commit()


def list_image_shares(image: ImageRef, caller_account_id: str, page_size: int, page_token: str, *,
                      new_uow: UnitOfWorkFactory) -> tuple[list[Share], str]:
    model.check_owner_may_share(image, caller_account_id)
    size = pagination.clamp_page_size(page_size)
    fingerprint = pagination.fingerprint("image", image.image_id)
    after = pagination.decode_page_token(page_token, fingerprint)
    with new_uow(read_only=True) as uow:
        shares = uow.shares.of_image(image.image_id, after, size + 1)
    return pagination.page_of(shares, size, fingerprint, lambda s: s.recipient_account_id)


def list_received_shares(caller_account_id: str, region: str, page_size: int, page_token: str, *,
                         new_uow: UnitOfWorkFactory) -> tuple[list[Share], str]:
    if not region:
        raise InvalidArgument("REGION_REQUIRED", "region is required", field="region")
    size = pagination.clamp_page_size(page_size)
    fingerprint = pagination.fingerprint("received", caller_account_id, region)
    after = pagination.decode_page_token(page_token, fingerprint)
    with new_uow(read_only=True) as uow:
        shares = uow.shares.received(caller_account_id, region, after, size + 1)
    return pagination.page_of(shares, size, fingerprint, lambda s: s.image_id)


def check_launch_permission(image: ImageRef, caller_account_id: str, *, new_uow: UnitOfWorkFactory) -> Verdict:
    share = None
    if image.kind is model.ImageKind.CUSTOM and image.owner_account_id != caller_account_id:
        with new_uow(read_only=True) as uow:
            share = uow.shares.get(image.image_id, caller_account_id)
    return model.launch_verdict(image, caller_account_id, share)
