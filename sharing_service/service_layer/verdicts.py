"""The launch-permission verdicts: of one image (a launch, a quote) or of a page of ListImages; and the leases
on them that let the gateway answer a platform image's verdict without asking again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import Histogram

from sharing_service.domain import verdict
from sharing_service.domain.model import ImageRef
from sharing_service.domain.verdict import Verdict
from sharing_service.service_layer.unit_of_work import UnitOfWorkFactory


def check_launch_permissions(images: list[ImageRef], caller_account_id: str, *,
                             new_uow: UnitOfWorkFactory) -> list[Verdict]:
    """The verdicts of the images, in their order. However many they are, one transaction reads the caller's
    policy once, the allow-list entries the page needs in one query and the caller's shares of the page's
    custom images in one query: which of these run depends on the kinds of the images and the caller's mode,
    never on whether an image exists or is shared (a missing image is asked about as a stranger's custom one)."""
    verdict.check_batch_size(len(images))
    if not images:
        return []
    foreign = [i.image_id for i in images if verdict.is_foreign_custom(i, caller_account_id)]
    providers, owners = verdict.allow_list_lookups(images, caller_account_id)
    # Nothing is cached in the process: a policy or share changed on any replica counts from the next call.
    # (The gateway may keep a leased verdict; the policy's update waits out those leases: see Leases.)
    with new_uow(read_only=True) as uow:
        allow_list = uow.trust.allow_list(caller_account_id, providers, owners)
        shares = uow.shares.received_of(caller_account_id, foreign) if foreign else {}
    return [verdict.launch_verdict(image, caller_account_id, shares.get(image.image_id), allow_list)
            for image in images]


def check_launch_permission(image: ImageRef, caller_account_id: str, *, new_uow: UnitOfWorkFactory) -> Verdict:
    return check_launch_permissions([image], caller_account_id, new_uow=new_uow)[0]


POLICY_UPDATE_WAIT = Histogram(
    "cloudimg_trust_policy_update_wait_seconds",
    "How long UpdateTrustPolicy waited, after its commit, for the verdict leases on the old policy to run out.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))


@dataclass(frozen=True)
class Leases:
    """Verdict leases (CheckLaunchPermissionResponse.lease). A leasable verdict (verdict.leasable) may be answered by
    the asker for ``seconds`` from when it sent its request, instead of asking again; so an update of a trust
    policy answers no sooner than ``seconds`` after its commit. Any verdict read from the old policy was asked for
    before the commit, so its lease has run out by then: once UpdateTrustPolicy answers, no replica of
    the gateway answers with the old policy, and no stale verdict lets a launch through that the new one refuses
    (nor refuses one it allows). Every replica of sharing must have the same ``seconds``. 0: no leases."""

    seconds: float
    # Room for the two processes' clocks running at slightly different rates, and for the scheduler.
    margin_seconds: float = 0.01
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, compare=False)

    def of(self, found: Verdict) -> float:
        """The lease this verdict comes with, in seconds (0: none)."""
        return self.seconds if verdict.leasable(found) else 0.0

    async def run_out(self) -> None:
        """Waits until every lease granted before now has run out."""
        if self.seconds > 0:
            started = time.monotonic()
            await self.sleep(self.seconds * 1.01 + self.margin_seconds)
            POLICY_UPDATE_WAIT.observe(time.monotonic() - started)
