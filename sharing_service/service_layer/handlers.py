"""The sharing context's use cases of shares: an owner shares and unshares, a recipient accepts or rejects,
both list them; and the delete hold of an image. Trust policies and verdicts have their own modules."""

from __future__ import annotations

from chassis import ids, pagination
from chassis.clock import Clock, SystemClock
from chassis.errors import InvalidArgument
from sharing_service.domain import model
from sharing_service.domain.model import ImageRef, Share, ShareDecision, ShareState
from sharing_service.service_layer.unit_of_work import UnitOfWorkFactory

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
        trusting = uow.trust.trusting(image.owner_account_id, added)
        uow.shares.add(Share(image.image_id, image.region, image.owner_account_id, recipient,
                             model.new_share_state(recipient in trusting), now) for recipient in added)
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


def list_received_shares(caller_account_id: str, region: str, states: list[ShareState], page_size: int,
                         page_token: str, *, new_uow: UnitOfWorkFactory) -> tuple[list[Share], str]:
    if not region:
        raise InvalidArgument("REGION_REQUIRED", "region is required", field="region")
    wanted = model.received_states(states)
    size = pagination.clamp_page_size(page_size)
    fingerprint = pagination.fingerprint("received", caller_account_id, region, sorted(s.value for s in wanted))
    after = pagination.decode_page_token(page_token, fingerprint)
    with new_uow(read_only=True) as uow:
        shares = uow.shares.received(caller_account_id, region, wanted, after, size + 1)
    return pagination.page_of(shares, size, fingerprint, lambda s: s.image_id)


def decide_share(image_id: str, decision: ShareDecision, caller_account_id: str, request_id: str, *,
                 new_uow: UnitOfWorkFactory) -> Share:
    """The recipient accepts or rejects the share of an image with it. A missing image and one not shared with
    the caller get the same answer, at the same cost (the lock row and the share are read either way)."""
    ids.require_id("img", image_id, "image_id")
    method = "AcceptImageShare" if decision is ShareDecision.ACCEPT else "RejectImageShare"
    with new_uow() as uow:
        claim = uow.decision_requests.claim(caller_account_id, request_id, method, image_id=image_id)
        if claim.repeated:
            return claim.response
        # On the image's lock, so that the decision lands wholly before or after a share or unshare of it.
        uow.shares.lock_shared_image(image_id)
        share = uow.shares.get(image_id, caller_account_id)
        if share is None:
            raise model.share_not_found(image_id)
        decided = model.decided(share, decision)
        if decided.state is not share.state:
            uow.shares.set_state(image_id, caller_account_id, decided.state)
        claim.answer(decided)
        uow.commit()
    return decided
