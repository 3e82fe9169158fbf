"""The sharing context's domain: shares, the share limit and the launch-permission verdict."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from chassis import ids
from chassis.errors import FailedPrecondition, InvalidArgument, PermissionDenied, ResourceExhausted

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


class LaunchBasis(enum.StrEnum):
    OWNER = "OWNER"
    PUBLIC = "PUBLIC"
    MARKETPLACE = "MARKETPLACE"
    SHARED = "SHARED"
    SHARE_PENDING = "SHARE_PENDING"
    NONE = "NONE"


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


@dataclass(frozen=True)
class Verdict:
    visible: bool
    allowed: bool
    basis: LaunchBasis
    share_state: ShareState | None = None
    image_allowed: bool = True


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


def launch_verdict(image: ImageRef, caller_account_id: str, share: Share | None) -> Verdict:
    """May the caller launch the image: its own, public, marketplace, or shared with it in the region."""
    if image.owner_account_id == caller_account_id and image.kind is ImageKind.CUSTOM:
        return Verdict(True, True, LaunchBasis.OWNER)
    if image.kind is ImageKind.PUBLIC:
        return Verdict(True, True, LaunchBasis.PUBLIC)
    if image.kind is ImageKind.MARKET:
        return Verdict(True, True, LaunchBasis.MARKETPLACE)
    if share is None or share.region != image.region or share.state is ShareState.REJECTED:
        return Verdict(False, False, LaunchBasis.NONE)
    if share.state is ShareState.PENDING:
        return Verdict(True, False, LaunchBasis.SHARE_PENDING, share.state)
    return Verdict(True, True, LaunchBasis.SHARED, share.state)
