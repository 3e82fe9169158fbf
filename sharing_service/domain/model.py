"""The sharing context's domain: shares, their state, the share limit and the delete hold."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from chassis import ids
from chassis.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted

MAX_SHARES_PER_IMAGE = 50
# How long RetireImage holds an image for its deletion: longer than any call's deadline, so that the
# delete that asked for it has ended (done, refused or lost) before the hold runs out.
DELETE_HOLD = timedelta(minutes=5)


class ImageKind(enum.StrEnum):
    PUBLIC = "PUBLIC"
    MARKET = "MARKET"
    CUSTOM = "CUSTOM"


class ShareState(enum.StrEnum):
    PENDING = "PENDING"
    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"


# What ListReceivedShares answers when no state is asked for: the shares a recipient can act on or launch.
DEFAULT_RECEIVED_STATES = frozenset({ShareState.PENDING, ShareState.ACCEPTED})


class ShareDecision(enum.StrEnum):
    """What a recipient does with a share it received (AcceptImageShare / RejectImageShare)."""

    ACCEPT = "ACCEPT"
    REJECT = "REJECT"


@dataclass(frozen=True)
class ImageRef:
    """What sharing knows of an image: the facts the gateway read from the catalog."""

    image_id: str
    region: str
    kind: ImageKind
    owner_account_id: str
    marketplace_provider: str = ""
    launchable_state: bool = True


@dataclass(frozen=True)
class Share:
    image_id: str
    region: str
    owner_account_id: str
    recipient_account_id: str
    state: ShareState
    create_time: datetime


def check_owner_may_share(image: ImageRef, caller_account_id: str) -> None:
    if image.owner_account_id != caller_account_id:
        raise PermissionDenied("NOT_IMAGE_OWNER", f"only the owner of image {image.image_id} can change its shares",
                               resource_type="image", resource_name=image.image_id)
    if image.kind is not ImageKind.CUSTOM:
        raise FailedPrecondition("IMAGE_NOT_SHAREABLE", f"image {image.image_id} is not a custom image; "
                                 "only custom images can be shared", subject=f"image:{image.image_id}")


def check_owner_may_delete(image: ImageRef, caller_account_id: str) -> None:
    if image.owner_account_id != caller_account_id:
        raise PermissionDenied("NOT_IMAGE_OWNER", f"only the owner of image {image.image_id} can delete it",
                               resource_type="image", resource_name=image.image_id)


def check_unshared(image: ImageRef, share_count: int) -> None:
    """An image that is shared (in any share state) cannot be deleted until its sharing is cancelled."""
    if share_count:
        accounts = "account" if share_count == 1 else "accounts"
        raise FailedPrecondition("IMAGE_SHARED", f"image {image.image_id} is shared with {share_count} {accounts}; "
                                 "unshare it first", subject=f"image:{image.image_id}")


def check_not_being_deleted(image: ImageRef, retired_until: datetime | None, now: datetime) -> None:
    """No share is made of an image held for its deletion."""
    if retired_until is not None and now < retired_until:
        raise FailedPrecondition("IMAGE_BEING_DELETED", f"image {image.image_id} is being deleted; it cannot be "
                                 "shared", subject=f"image:{image.image_id}")


def recipients(account_ids: list[str], owner_account_id: str) -> list[str]:
    """The distinct, well-formed recipients of a share request, in the order given."""
    if not account_ids:
        raise InvalidArgument("ACCOUNT_IDS_REQUIRED", "account_ids must name at least one account",
                              field="account_ids")
    if len(account_ids) > MAX_SHARES_PER_IMAGE:
        raise InvalidArgument("TOO_MANY_ACCOUNTS", f"at most {MAX_SHARES_PER_IMAGE} account ids per call",
                              field="account_ids")
    for index, account_id in enumerate(account_ids):
        ids.require_account_id(account_id, f"account_ids[{index}]")
        if account_id == owner_account_id:
            raise InvalidArgument("CANNOT_SHARE_WITH_OWNER", "an image cannot be shared with its owner",
                                  field=f"account_ids[{index}]")
    return list(dict.fromkeys(account_ids))


def new_recipients(image: ImageRef, requested: list[str], existing: set[str]) -> list[str]:
    """Who gets a new share; sharing again with an account that has it changes nothing."""
    added = [a for a in requested if a not in existing]
    if added and not image.launchable_state:
        raise FailedPrecondition("IMAGE_STATE_INVALID", f"image {image.image_id} is not NORMAL; only NORMAL "
                                 "images can be shared", subject=f"image:{image.image_id}")
    if len(existing) + len(added) > MAX_SHARES_PER_IMAGE:
        raise ResourceExhausted(
            "SHARE_LIMIT_EXCEEDED",
            f"image {image.image_id} can be shared with at most {MAX_SHARES_PER_IMAGE} accounts; it has "
            f"{len(existing)} and the call adds {len(added)}",
            subject=f"image:{image.image_id}",
        )
    return added


def new_share_state(recipient_trusts_owner: bool) -> ShareState:
    """A new share is accepted at once when its recipient's trust policy trusts the image's owner; otherwise it
    waits for the recipient (shared images are not reviewed, so nobody is handed one unasked)."""
    return ShareState.ACCEPTED if recipient_trusts_owner else ShareState.PENDING


def decided(share: Share, decision: ShareDecision) -> Share:
    """The share after its recipient's decision: either decision may be taken, or taken again, in any state."""
    state = ShareState.ACCEPTED if decision is ShareDecision.ACCEPT else ShareState.REJECTED
    return share if share.state is state else replace(share, state=state)


def share_not_found(image_id: str) -> NotFound:
    """The one answer for an image that does not exist and one that is not shared with the caller."""
    return NotFound("SHARE_NOT_FOUND", f"image {image_id} is not shared with you", resource_type="image",
                    resource_name=image_id)


def received_states(states: list[ShareState]) -> frozenset[ShareState]:
    """The share states a ListReceivedShares asks for: exactly those named, or by default PENDING and ACCEPTED."""
    return frozenset(states) if states else DEFAULT_RECEIVED_STATES
