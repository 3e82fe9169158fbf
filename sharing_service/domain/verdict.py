"""The launch-permission verdict: may the caller see an image, launch it, and does its trust policy allow it."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from chassis.errors import InvalidArgument
from sharing_service.domain.model import ImageKind, ImageRef, Share, ShareState
from sharing_service.domain.trust import TrustPolicy, TrustPolicyMode

# A page of ListImages at most.
MAX_IMAGES_PER_CHECK = 1000


class LaunchBasis(enum.StrEnum):
    OWNER = "OWNER"
    PUBLIC = "PUBLIC"
    MARKETPLACE = "MARKETPLACE"
    SHARED = "SHARED"
    SHARE_PENDING = "SHARE_PENDING"
    NONE = "NONE"
    SHARE_REJECTED = "SHARE_REJECTED"


@dataclass(frozen=True)
class Verdict:
    visible: bool
    allowed: bool
    basis: LaunchBasis
    share_state: ShareState | None = None
    image_allowed: bool = True
    policy_mode: TrustPolicyMode = TrustPolicyMode.OFF
    # When image_allowed is false: the rule of the allow-list that the image fails, in words.
    policy_rule: str = ""


@dataclass(frozen=True)
class AllowList:
    """The caller's trust policy as far as the verdicts of some images need it: its mode, its platform flag,
    and which of those images' marketplace providers and owners are on its allow-list (a subset of the
    policy's lists is enough, as long as it holds every provider and owner of the images judged)."""

    mode: TrustPolicyMode = TrustPolicyMode.OFF
    allow_platform_images: bool = True
    allowed_marketplace_providers: frozenset[str] = frozenset()
    allowed_account_ids: frozenset[str] = frozenset()

    @classmethod
    def of(cls, policy: TrustPolicy) -> AllowList:
        return cls(policy.mode, policy.allow_platform_images, frozenset(policy.allowed_marketplace_providers),
                   frozenset(policy.allowed_account_ids))


def leasable(verdict: Verdict) -> bool:
    """Whether the asker may keep this verdict for a while: a public or marketplace image's, which depends only on
    the image's kind and provider (fixed for good) and on the caller's trust policy, whose updates wait out the
    leases (service_layer.verdicts.Leases). A share-based verdict changes with shares: it is asked for each time."""
    return verdict.basis in (LaunchBasis.PUBLIC, LaunchBasis.MARKETPLACE)


def check_batch_size(count: int) -> None:
    if count > MAX_IMAGES_PER_CHECK:
        raise InvalidArgument("TOO_MANY_IMAGES", f"at most {MAX_IMAGES_PER_CHECK} images per call, not {count}",
                              field="images")


def is_foreign_custom(image: ImageRef, caller_account_id: str) -> bool:
    """Another account's custom image: only a share makes it the caller's to see. A missing image is asked
    about as one of these (owner "", CUSTOM), so that it costs what a stranger's private image costs."""
    return image.kind is ImageKind.CUSTOM and image.owner_account_id != caller_account_id


def allow_list_lookups(images: Iterable[ImageRef], caller_account_id: str) -> tuple[set[str], set[str]]:
    """The marketplace providers and the owners whose place on the caller's allow-list the verdicts of these
    images depend on."""
    providers, owners = set(), set()
    for image in images:
        if image.kind is ImageKind.MARKET:
            providers.add(image.marketplace_provider)
        elif is_foreign_custom(image, caller_account_id):
            owners.add(image.owner_account_id)
    return providers, owners


def launch_verdict(image: ImageRef, caller_account_id: str, share: Share | None, allow_list: AllowList) -> Verdict:
    """May the caller launch the image: its own, public, marketplace, or shared with it in the region (and
    accepted); then, unless the image is the caller's own, what the caller's trust policy says of it."""
    if image.owner_account_id == caller_account_id and image.kind is ImageKind.CUSTOM:
        return Verdict(True, True, LaunchBasis.OWNER, policy_mode=allow_list.mode)
    if image.kind is ImageKind.PUBLIC:
        visible = Verdict(True, True, LaunchBasis.PUBLIC)
    elif image.kind is ImageKind.MARKET:
        visible = Verdict(True, True, LaunchBasis.MARKETPLACE)
    elif share is None or share.region != image.region:
        # Nothing to say about an image the caller cannot see, not even what its policy would make of it.
        return Verdict(False, False, LaunchBasis.NONE, policy_mode=allow_list.mode)
    elif share.state is ShareState.PENDING:
        visible = Verdict(True, False, LaunchBasis.SHARE_PENDING, share.state)
    elif share.state is ShareState.REJECTED:
        visible = Verdict(True, False, LaunchBasis.SHARE_REJECTED, share.state)
    else:
        visible = Verdict(True, True, LaunchBasis.SHARED, share.state)
    rule = policy_rule(image, allow_list)
    refused = bool(rule) and allow_list.mode is TrustPolicyMode.ENFORCE
    return Verdict(visible.visible, visible.allowed and not refused, visible.basis, visible.share_state,
                   image_allowed=not rule, policy_mode=allow_list.mode, policy_rule=rule)


def policy_rule(image: ImageRef, allow_list: AllowList) -> str:
    """The allow-list rule another account's image fails, in words; "" when it passes or the mode is OFF."""
    if allow_list.mode is TrustPolicyMode.OFF:
        return ""
    if image.kind is ImageKind.PUBLIC:
        if allow_list.allow_platform_images:
            return ""
        return "platform images are not allowed (allow_platform_images is false)"
    if image.kind is ImageKind.MARKET:
        if image.marketplace_provider in allow_list.allowed_marketplace_providers:
            return ""
        return f"marketplace provider '{image.marketplace_provider}' is not on allowed_marketplace_providers"
    if image.owner_account_id in allow_list.allowed_account_ids:
        return ""
    return f"images of account {image.owner_account_id} are not on allowed_account_ids"
