"""Sharing images with other accounts, accepting and rejecting what others share, and the trust policy that
decides which shares arrive accepted and which images may be launched. The rules are sharing's; the gateway
adds what only it knows (which accounts exist, which images the caller owns)."""

from __future__ import annotations

from chassis import ids
from chassis.context import Caller
from chassis.errors import InvalidArgument
from gateway.domain.model import ImageShare, TrustPolicy, trust_policy_paths
from gateway.service_layer.dependencies import Dependencies
from gateway.service_layer.images import own_custom_image

# An image is shared with at most 50 accounts (the sharing context enforces the limit itself).
MAX_SHARES_PER_CALL = 50


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


async def accept_image_share(image_id: str, request_id: str, deps: Dependencies) -> ImageShare:
    """The caller accepts a share of an image with it (sharing answers NOT_FOUND SHARE_NOT_FOUND alike for an
    image that is missing and one that is not shared with the caller)."""
    ids.check_request_id(request_id)
    ids.require_id("img", image_id, "image_id")
    return await deps.sharing.accept(image_id, request_id)


async def reject_image_share(image_id: str, request_id: str, deps: Dependencies) -> ImageShare:
    ids.check_request_id(request_id)
    ids.require_id("img", image_id, "image_id")
    return await deps.sharing.reject(image_id, request_id)


async def get_trust_policy(deps: Dependencies) -> TrustPolicy:
    return await deps.sharing.trust_policy()


async def update_trust_policy(policy: TrustPolicy, paths: list[str], request_id: str, deps: Dependencies
                              ) -> TrustPolicy:
    """Changes the fields of the caller's trust policy that the update_mask names (none or "*": all). Sharing
    reads the policy on every verdict, so the change applies to the very next call on every gateway."""
    ids.check_request_id(request_id)
    return await deps.sharing.update_trust_policy(policy, trust_policy_paths(paths), request_id)
