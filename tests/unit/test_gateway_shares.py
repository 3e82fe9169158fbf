"""The gateway's share and trust-policy handlers with a fake sharing context: what the gateway checks itself
(ids, request ids, the update mask) before anything is asked, and what it passes on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from cloudimg.gateway.v1 import image_share_service_pb2 as share_pb

from chassis import context
from chassis.clock import FakeClock
from chassis.context import Caller
from chassis.errors import InvalidArgument, RemoteError
from gateway.bootstrap import open_database
from gateway.domain.model import ShareState, TrustPolicy, TrustPolicyMode
from gateway.entrypoints import convert
from gateway.service_layer import shares
from gateway.service_layer.dependencies import Dependencies, ReferenceData
from tests.unit.gateway_fakes import ALICES, NOW, FakeBilling, FakeCatalog, FakeSharing

BOB = Caller("100000000002")


@pytest.fixture
def sharing() -> FakeSharing:
    return FakeSharing()


@pytest.fixture
def deps(tmp_path: Path, sharing: FakeSharing) -> Dependencies:
    _, new_uow = open_database(f"sqlite:///{tmp_path}/gateway.db")
    catalog, billing = FakeCatalog(), FakeBilling()
    context.current_caller.set(BOB)
    return Dependencies(catalog, sharing, billing, ReferenceData(catalog, billing), new_uow, FakeClock(NOW))


async def test_a_recipient_accepts_and_rejects_what_was_shared_with_it(
        deps: Dependencies, sharing: FakeSharing) -> None:
    sharing.shared[(ALICES.image_id, BOB.account_id)] = ShareState.PENDING
    accepted = await shares.accept_image_share(ALICES.image_id, "r1", deps)
    assert accepted.state is ShareState.ACCEPTED
    rejected = await shares.reject_image_share(ALICES.image_id, "r2", deps)
    assert rejected.state is ShareState.REJECTED
    with pytest.raises(RemoteError) as refused:  # not shared with the caller: sharing's NOT_FOUND travels on
        await shares.accept_image_share("img-zz000000", "", deps)
    assert (refused.value.code, refused.value.reason) == ("NOT_FOUND", "SHARE_NOT_FOUND")


@pytest.mark.parametrize(("image_id", "request_id", "reason"), [
    ("img-1", "", "INVALID_ID"), (ALICES.image_id, "r" * 65, "INVALID_REQUEST_ID")])
async def test_bad_share_answers_are_refused_before_sharing_is_asked(
        deps: Dependencies, sharing: FakeSharing, image_id: str, request_id: str, reason: str) -> None:
    for answer in (shares.accept_image_share, shares.reject_image_share):
        with pytest.raises(InvalidArgument) as refused:
            await answer(image_id, request_id, deps)
        assert refused.value.reason == reason
    assert sharing.calls == []


@pytest.mark.parametrize("mask", [[], ["*"]])
async def test_an_update_without_a_mask_replaces_the_whole_policy(deps: Dependencies, mask: list[str]) -> None:
    wanted = TrustPolicy(trusted_account_ids=("100000000001",), mode=TrustPolicyMode.ENFORCE,
                         allow_platform_images=False, allowed_account_ids=("100000000001",))
    changed = await shares.update_trust_policy(wanted, mask, "", deps)
    assert changed == replace(wanted, update_time=NOW)
    assert await shares.get_trust_policy(deps) == changed


async def test_an_update_changes_only_the_fields_its_mask_names(deps: Dependencies) -> None:
    await shares.update_trust_policy(TrustPolicy(trusted_account_ids=("100000000001",)), ["trusted_account_ids"],
                                     "", deps)
    changed = await shares.update_trust_policy(TrustPolicy(mode=TrustPolicyMode.AUDIT), ["mode", "mode"], "", deps)
    assert (changed.trusted_account_ids, changed.mode, changed.allow_platform_images) == (
        ("100000000001",), TrustPolicyMode.AUDIT, True)


async def test_a_mask_naming_another_field_is_refused_before_sharing_is_asked(
        deps: Dependencies, sharing: FakeSharing) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await shares.update_trust_policy(TrustPolicy(), ["mode", "owner"], "", deps)
    assert refused.value.reason == "INVALID_UPDATE_MASK"
    assert sharing.calls == []


async def test_an_unspecified_mode_reaches_sharing_as_unspecified(deps: Dependencies) -> None:
    policy = convert.trust_policy_of(share_pb.TrustPolicy(allow_platform_images=True))
    assert policy.mode is None
    with pytest.raises(RemoteError) as refused:
        await shares.update_trust_policy(policy, ["mode"], "", deps)
    assert refused.value.reason == "MODE_REQUIRED"
