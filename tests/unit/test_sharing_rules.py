"""Sharing's pure rules: the launch verdict under every trust-policy mode, the trust policy's validation and
update mask, and the share state transitions; no server, no database."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import pytest

from chassis.errors import InvalidArgument, NotFound
from sharing_service.domain import model, trust, verdict
from sharing_service.domain.model import ImageKind, ImageRef, Share, ShareDecision, ShareState
from sharing_service.domain.trust import PolicyDraft, PolicyField, PolicyUpdate, TrustPolicy, TrustPolicyMode
from sharing_service.domain.verdict import AllowList, LaunchBasis

ALICE, BOB, CAROL = "100000000001", "100000000002", "100000000003"
REGION = "ap-guangzhou"
NOW = datetime(2026, 1, 1, tzinfo=UTC)

# Bob asks about each of these; Carol owns the custom images that are not Bob's.
OWN = ImageRef("img-own00001", REGION, ImageKind.CUSTOM, BOB)
PUBLIC = ImageRef("img-public01", REGION, ImageKind.PUBLIC, "")
MARKET = ImageRef("img-market01", REGION, ImageKind.MARKET, "", "Bitnami")
CAROLS = ImageRef("img-carol001", REGION, ImageKind.CUSTOM, CAROL)


def share_of(image: ImageRef, state: ShareState, region: str = REGION) -> Share:
    return Share(image.image_id, region, image.owner_account_id, BOB, state, NOW)


# case: (image, Bob's share of it, visible, allowed without a policy, basis, share_state)
CASES = {
    "own": (OWN, None, True, True, LaunchBasis.OWNER, None),
    "public": (PUBLIC, None, True, True, LaunchBasis.PUBLIC, None),
    "market": (MARKET, None, True, True, LaunchBasis.MARKETPLACE, None),
    "shared-pending": (CAROLS, share_of(CAROLS, ShareState.PENDING), True, False, LaunchBasis.SHARE_PENDING,
                       ShareState.PENDING),
    "shared-accepted": (CAROLS, share_of(CAROLS, ShareState.ACCEPTED), True, True, LaunchBasis.SHARED,
                        ShareState.ACCEPTED),
    "shared-rejected": (CAROLS, share_of(CAROLS, ShareState.REJECTED), True, False, LaunchBasis.SHARE_REJECTED,
                        ShareState.REJECTED),
    "not-shared": (CAROLS, None, False, False, LaunchBasis.NONE, None),
}
RULES = {
    PUBLIC.image_id: "platform images are not allowed (allow_platform_images is false)",
    MARKET.image_id: "marketplace provider 'Bitnami' is not on allowed_marketplace_providers",
    CAROLS.image_id: f"images of account {CAROL} are not on allowed_account_ids",
}


def allow_list(mode: TrustPolicyMode, listed: bool) -> AllowList:
    """Bob's policy: with the public, market and Carol's images all on its allow-list, or none of them."""
    if listed:
        return AllowList(mode, True, frozenset({"Bitnami"}), frozenset({CAROL}))
    return AllowList(mode, False, frozenset({"Other"}), frozenset({ALICE}))


@pytest.mark.parametrize("listed", [True, False], ids=["listed", "unlisted"])
@pytest.mark.parametrize("mode", list(TrustPolicyMode))
@pytest.mark.parametrize("case", CASES)
def test_the_verdict_matrix(case: str, mode: TrustPolicyMode, listed: bool) -> None:
    image, share, visible, allowed, basis, share_state = CASES[case]
    found = verdict.launch_verdict(image, BOB, share, allow_list(mode, listed))
    # The policy speaks of an image that the caller sees and that is not its own, in AUDIT and ENFORCE only.
    judged = visible and case != "own" and mode is not TrustPolicyMode.OFF
    image_allowed = listed or not judged
    assert found.visible is visible
    assert found.basis is basis
    assert found.share_state is share_state
    assert found.policy_mode is mode
    assert found.image_allowed is image_allowed
    assert found.policy_rule == ("" if image_allowed else RULES[image.image_id])
    # ENFORCE refuses what the policy does not allow; AUDIT only says so
    assert found.allowed is (allowed and (image_allowed or mode is not TrustPolicyMode.ENFORCE))


def test_spot_checks_of_the_matrix() -> None:
    enforce = allow_list(TrustPolicyMode.ENFORCE, listed=False)
    audit = allow_list(TrustPolicyMode.AUDIT, listed=False)
    assert verdict.launch_verdict(OWN, BOB, None, enforce) == verdict.Verdict(
        True, True, LaunchBasis.OWNER, policy_mode=TrustPolicyMode.ENFORCE)
    assert verdict.launch_verdict(PUBLIC, BOB, None, audit) == verdict.Verdict(
        True, True, LaunchBasis.PUBLIC, image_allowed=False, policy_mode=TrustPolicyMode.AUDIT,
        policy_rule="platform images are not allowed (allow_platform_images is false)")
    assert verdict.launch_verdict(CAROLS, BOB, share_of(CAROLS, ShareState.ACCEPTED), enforce) == verdict.Verdict(
        True, False, LaunchBasis.SHARED, ShareState.ACCEPTED, image_allowed=False,
        policy_mode=TrustPolicyMode.ENFORCE, policy_rule=f"images of account {CAROL} are not on allowed_account_ids")


def test_a_missing_image_is_judged_as_a_strangers_private_one() -> None:
    missing = ImageRef("img-missing1", REGION, ImageKind.CUSTOM, "")
    for mode in TrustPolicyMode:
        policy = allow_list(mode, listed=False)
        assert verdict.launch_verdict(missing, BOB, None, policy) == \
            verdict.launch_verdict(CAROLS, BOB, None, policy) == \
            verdict.Verdict(False, False, LaunchBasis.NONE, policy_mode=mode)


def test_a_share_holds_in_its_region_only() -> None:
    elsewhere = share_of(CAROLS, ShareState.ACCEPTED, region="ap-beijing")
    found = verdict.launch_verdict(CAROLS, BOB, elsewhere, AllowList())
    assert (found.visible, found.allowed, found.basis) == (False, False, LaunchBasis.NONE)


def test_a_policy_is_judged_as_its_allow_list() -> None:
    policy = TrustPolicy(mode=TrustPolicyMode.ENFORCE, allow_platform_images=False,
                         allowed_marketplace_providers=("Bitnami",), allowed_account_ids=(CAROL,))
    assert AllowList.of(policy) == AllowList(TrustPolicyMode.ENFORCE, False, frozenset({"Bitnami"}),
                                             frozenset({CAROL}))
    assert AllowList.of(trust.DEFAULT_POLICY) == AllowList()


def test_what_a_page_of_verdicts_looks_up() -> None:
    missing = ImageRef("img-missing1", REGION, ImageKind.CUSTOM, "")
    images = [OWN, PUBLIC, MARKET, CAROLS, missing, CAROLS]
    assert verdict.allow_list_lookups(images, BOB) == ({"Bitnami"}, {CAROL, ""})
    assert [verdict.is_foreign_custom(i, BOB) for i in images] == [False, False, False, True, True, True]


def test_a_batch_holds_at_most_1000_images() -> None:
    verdict.check_batch_size(1000)
    with pytest.raises(InvalidArgument) as refused:
        verdict.check_batch_size(1001)
    assert (refused.value.reason, refused.value.violations[0].field) == ("TOO_MANY_IMAGES", "images")


# The update mask.

def test_no_path_names_every_field_and_paths_are_the_policy_s_field_names() -> None:
    assert trust.update_fields([]) == frozenset(PolicyField)
    assert trust.update_fields(["mode", "mode", "allowed_account_ids"]) == {PolicyField.MODE,
                                                                            PolicyField.ALLOWED_ACCOUNT_IDS}
    for bad in (["update_time"], ["policy.mode"], ["mode", "Mode"], [""]):
        with pytest.raises(InvalidArgument) as refused:
            trust.update_fields(bad)
        assert (refused.value.reason, refused.value.violations[0].field) == ("INVALID_UPDATE_MASK", "update_mask")


def draft(trusted: Iterable[str] = (), mode: TrustPolicyMode | None = TrustPolicyMode.AUDIT,
          allow_platform: bool = False, providers: Iterable[str] = (), accounts: Iterable[str] = ()) -> PolicyDraft:
    return PolicyDraft(list(trusted), mode, allow_platform, list(providers), list(accounts))


def accounts(count: int, start: int = 0) -> list[str]:
    return [f"{300000000000 + start + i}" for i in range(count)]


def refusal(draft_: PolicyDraft, fields: frozenset[PolicyField] = frozenset(PolicyField)) -> tuple[str, list[str]]:
    with pytest.raises(InvalidArgument) as refused:
        trust.checked_update(draft_, fields)
    return refused.value.reason, [v.field for v in refused.value.violations]


# Validation.

def test_only_the_named_fields_are_checked_and_changed() -> None:
    update = trust.checked_update(draft(trusted=[BOB], mode=None, providers=[""]),
                                  frozenset({PolicyField.TRUSTED_ACCOUNT_IDS}))
    assert update == PolicyUpdate(trusted_account_ids=(BOB,))
    stored = TrustPolicy(mode=TrustPolicyMode.ENFORCE, allowed_account_ids=(CAROL,), update_time=NOW)
    later = datetime(2026, 2, 1, tzinfo=UTC)
    assert trust.updated(stored, update, later) == TrustPolicy(
        trusted_account_ids=(BOB,), mode=TrustPolicyMode.ENFORCE, allowed_account_ids=(CAROL,), update_time=later)
    # a field named with its zero value is changed to it
    update = trust.checked_update(draft(allow_platform=False), frozenset({PolicyField.ALLOW_PLATFORM_IMAGES}))
    assert trust.updated(trust.DEFAULT_POLICY, update, NOW) == TrustPolicy(allow_platform_images=False,
                                                                           update_time=NOW)


def test_every_field_at_once() -> None:
    update = trust.checked_update(draft([BOB, CAROL, BOB], TrustPolicyMode.ENFORCE, True, ["B", "A", "B"], [CAROL]),
                                  frozenset(PolicyField))
    assert trust.updated(trust.DEFAULT_POLICY, update, NOW) == TrustPolicy(
        (BOB, CAROL), TrustPolicyMode.ENFORCE, True, ("B", "A"), (CAROL,), NOW)


def test_the_mode_is_required_when_it_is_changed() -> None:
    assert refusal(draft(mode=None)) == ("MODE_REQUIRED", ["policy.mode"])
    assert refusal(draft(mode=None), frozenset({PolicyField.MODE})) == ("MODE_REQUIRED", ["policy.mode"])
    assert trust.checked_update(draft(mode=None), frozenset({PolicyField.ALLOWED_ACCOUNT_IDS})) == PolicyUpdate(
        allowed_account_ids=())


def test_account_ids_are_well_formed_and_named_by_their_index() -> None:
    bad = [BOB, CAROL, ALICE, "10000000000x"]
    assert refusal(draft(trusted=bad)) == ("INVALID_ACCOUNT_ID", ["policy.trusted_account_ids[3]"])
    assert refusal(draft(accounts=["", BOB])) == ("INVALID_ACCOUNT_ID", ["policy.allowed_account_ids[0]"])


def test_providers_are_1_to_64_characters() -> None:
    assert refusal(draft(providers=["Bitnami", ""])) == ("INVALID_MARKETPLACE_PROVIDER",
                                                         ["policy.allowed_marketplace_providers[1]"])
    assert refusal(draft(providers=["x" * 65])) == ("INVALID_MARKETPLACE_PROVIDER",
                                                    ["policy.allowed_marketplace_providers[0]"])
    update = trust.checked_update(draft(providers=["x" * 64, "y"]), frozenset(PolicyField))
    assert update.allowed_marketplace_providers == ("x" * 64, "y")


def test_duplicates_are_dropped_and_the_order_is_kept() -> None:
    update = trust.checked_update(draft(trusted=[CAROL, BOB, CAROL], providers=["b", "a", "b", "B"],
                                        accounts=[CAROL, ALICE, ALICE]), frozenset(PolicyField))
    assert update.trusted_account_ids == (CAROL, BOB)
    assert update.allowed_marketplace_providers == ("b", "a", "B")
    assert update.allowed_account_ids == (CAROL, ALICE)


def test_at_most_200_trusted_accounts_counted_without_duplicates() -> None:
    update = trust.checked_update(draft(trusted=accounts(200) + accounts(5)), frozenset(PolicyField))
    assert update.trusted_account_ids == tuple(accounts(200))
    assert refusal(draft(trusted=accounts(201))) == ("TOO_MANY_TRUSTED_ACCOUNTS", ["policy.trusted_account_ids"])


def test_at_most_200_allow_list_entries_counting_providers_and_accounts_together() -> None:
    fits = trust.checked_update(draft(providers=[f"p{i}" for i in range(120)], accounts=accounts(80)),
                                frozenset(PolicyField))
    stored = trust.updated(trust.DEFAULT_POLICY, fits, NOW)
    assert len(stored.allowed_marketplace_providers) + len(stored.allowed_account_ids) == 200
    over = trust.checked_update(draft(accounts=accounts(81)), frozenset({PolicyField.ALLOWED_ACCOUNT_IDS}))
    with pytest.raises(InvalidArgument) as refused:
        trust.updated(stored, over, NOW)  # 120 stored providers and 81 accounts
    assert refused.value.reason == "TOO_MANY_ALLOWED_ENTRIES"
    assert [v.field for v in refused.value.violations] == ["policy.allowed_account_ids"]
    both = trust.checked_update(draft(providers=["p"] * 3 + [f"q{i}" for i in range(101)], accounts=accounts(100)),
                                frozenset(PolicyField))
    with pytest.raises(InvalidArgument) as refused:
        trust.updated(trust.DEFAULT_POLICY, both, NOW)
    assert [v.field for v in refused.value.violations] == ["policy.allowed_marketplace_providers",
                                                           "policy.allowed_account_ids"]
    # fewer providers make room again
    fewer = trust.checked_update(draft(providers=["p"]), frozenset({PolicyField.ALLOWED_MARKETPLACE_PROVIDERS}))
    assert len(trust.updated(stored, fewer, NOW).allowed_marketplace_providers) == 1


def test_the_fingerprint_names_the_changed_fields_and_their_values() -> None:
    update = trust.checked_update(draft(trusted=[BOB, BOB], mode=TrustPolicyMode.OFF),
                                  frozenset({PolicyField.TRUSTED_ACCOUNT_IDS, PolicyField.MODE}))
    assert update.fingerprint_fields() == {
        "trusted_account_ids": [BOB], "mode": "OFF", "allow_platform_images": None,
        "allowed_marketplace_providers": None, "allowed_account_ids": None}


# Shares.

def test_a_new_share_is_accepted_only_when_the_recipient_trusts_the_owner() -> None:
    assert model.new_share_state(True) is ShareState.ACCEPTED
    assert model.new_share_state(False) is ShareState.PENDING


@pytest.mark.parametrize("state", list(ShareState))
def test_a_recipient_accepts_or_rejects_a_share_in_any_state(state: ShareState) -> None:
    share = share_of(CAROLS, state)
    accepted, rejected = model.decided(share, ShareDecision.ACCEPT), model.decided(share, ShareDecision.REJECT)
    assert (accepted.state, rejected.state) == (ShareState.ACCEPTED, ShareState.REJECTED)
    assert accepted.create_time == rejected.create_time == share.create_time


def test_a_share_not_found_names_the_image_only() -> None:
    error = model.share_not_found("img-carol001")
    assert isinstance(error, NotFound)
    assert (error.reason, error.message, error.resource_type, error.resource_name) == (
        "SHARE_NOT_FOUND", "image img-carol001 is not shared with you", "image", "img-carol001")


def test_received_shares_are_pending_and_accepted_unless_states_are_named() -> None:
    assert model.received_states([]) == {ShareState.PENDING, ShareState.ACCEPTED}
    assert model.received_states([ShareState.REJECTED, ShareState.REJECTED]) == {ShareState.REJECTED}
