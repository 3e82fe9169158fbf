"""The launch-permission verdicts: of one image (a launch, a quote) or of a page of ListImages."""

from __future__ import annotations

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
    with new_uow(read_only=True) as uow:
        allow_list = uow.trust.allow_list(caller_account_id, providers, owners)
        shares = uow.shares.received_of(caller_account_id, foreign) if foreign else {}
    return [verdict.launch_verdict(image, caller_account_id, shares.get(image.image_id), allow_list)
            for image in images]


def check_launch_permission(image: ImageRef, caller_account_id: str, *, new_uow: UnitOfWorkFactory) -> Verdict:
    return check_launch_permissions([image], caller_account_id, new_uow=new_uow)[0]
