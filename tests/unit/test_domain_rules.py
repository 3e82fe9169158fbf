"""The domain rules of billing, sharing and the launch, without any server or database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from billing_service.domain.model import ChargeType, ImagePricing, LaunchPricing, LineKind, OsKind
from billing_service.domain.price_book import load_price_book
from chassis.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from gateway.domain import api_keys
from gateway.domain.instances import (
    Instance,
    InstanceState,
    LaunchRequest,
    check_launchable,
    check_resettable,
    instance_ids_to_terminate,
    to_terminate,
)
from gateway.domain.model import (
    Architecture,
    CatalogKind,
    Image,
    ImageSource,
    ImageState,
    InstanceType,
    OsType,
    ShareState,
    TrustPolicyMode,
    Verdict,
    VerdictBasis,
    trust_policy_paths,
)
from gateway.domain.model import ChargeType as GatewayChargeType
from sharing_service.domain import model as sharing
from sharing_service.domain import verdict as sharing_verdict

BOOK = load_price_book()


def pricing(region: str = "ap-guangzhou", os_kind: OsKind = OsKind.LINUX, product: str = "",
            charge: ChargeType = ChargeType.POSTPAID_BY_HOUR, period: int = 0, count: int = 1,
            instance_type: str = "S5.MEDIUM4") -> LaunchPricing:
    return LaunchPricing(region, instance_type, count, charge, period, ImagePricing("img-00000001", os_kind, product))


class TestQuotes:
    def test_windows_pays_a_license_overseas_only(self) -> None:
        assert [l.kind for l in BOOK.quote(pricing("ap-hongkong", OsKind.WINDOWS)).lines] == [
            LineKind.INSTANCE, LineKind.IMAGE_LICENSE]
        assert [l.kind for l in BOOK.quote(pricing("ap-guangzhou", OsKind.WINDOWS)).lines] == [LineKind.INSTANCE]
        assert [l.kind for l in BOOK.quote(pricing("ap-hongkong", OsKind.LINUX)).lines] == [LineKind.INSTANCE]

    def test_a_marketplace_product_adds_its_price(self) -> None:
        quote = BOOK.quote(pricing(product="mp-bitnami-wordpress", count=3))
        assert quote.lines[1].kind is LineKind.MARKETPLACE
        assert quote.lines[1].unit_price == Decimal("0.0200")
        assert quote.total == 3 * (Decimal("0.0580") + Decimal("0.0200"))

    def test_prepaid_is_priced_per_month_for_the_whole_period(self) -> None:
        quote = BOOK.quote(pricing(charge=ChargeType.PREPAID, period=36, count=2))
        line = quote.lines[0]
        assert (line.quantity, line.unit) == (72, "instance-month")
        assert quote.total == line.unit_price * 72

    def test_spot_is_discounted(self) -> None:
        spot = BOOK.quote(pricing(charge=ChargeType.SPOTPAID)).total
        on_demand = BOOK.quote(pricing()).total
        assert Decimal(0) < spot < on_demand

    def test_totals_are_exact_decimals(self) -> None:
        quote = BOOK.quote(pricing("na-ashburn", OsKind.WINDOWS, count=7))
        assert quote.total == sum(l.unit_price * l.quantity for l in quote.lines)
        assert isinstance(quote.total, Decimal)

    @pytest.mark.parametrize(("launch", "reason"), [
        (pricing(count=0), "INVALID_INSTANCE_COUNT"),
        (pricing(count=101), "INVALID_INSTANCE_COUNT"),
        (pricing(charge=ChargeType.PREPAID, period=0), "INVALID_PERIOD"),
        (pricing(charge=ChargeType.PREPAID, period=18), "INVALID_PERIOD"),
        (pricing(period=1), "INVALID_PERIOD"),
        (pricing(instance_type="S9.HUGE"), "INSTANCE_TYPE_NOT_OFFERED"),
        (pricing(region="eu-frankfurt", instance_type="SR1.MEDIUM4"), "INSTANCE_TYPE_NOT_OFFERED"),
        (pricing(region="mars-1"), "UNKNOWN_REGION"),
        (pricing(product="mp-withdrawn"), "MARKETPLACE_PRODUCT_UNKNOWN"),
    ])
    def test_bad_launches(self, launch: LaunchPricing, reason: str) -> None:
        with pytest.raises(InvalidArgument) as refused:
            BOOK.quote(launch)
        assert refused.value.reason == reason

    def test_every_prepaid_period_is_accepted(self) -> None:
        for months in [*range(1, 13), 24, 36, 48, 60]:
            assert BOOK.quote(pricing(charge=ChargeType.PREPAID, period=months)).lines[0].quantity == months


ALICE, BOB = "100000000001", "100000000002"
CUSTOM = sharing.ImageRef("img-custom01", "ap-guangzhou", sharing.ImageKind.CUSTOM, ALICE)


def share(state: sharing.ShareState = sharing.ShareState.ACCEPTED, region: str = "ap-guangzhou") -> sharing.Share:
    return sharing.Share(CUSTOM.image_id, region, ALICE, BOB, state, datetime.now(UTC))


class TestSharingRules:
    def test_launch_verdicts(self) -> None:
        public = sharing.ImageRef("img-public01", "ap-guangzhou", sharing.ImageKind.PUBLIC, "platform")
        market = sharing.ImageRef("img-market01", "ap-guangzhou", sharing.ImageKind.MARKET, "200000000001")
        policy = sharing_verdict.AllowList()  # the default trust policy: mode OFF

        def verdict(image: sharing.ImageRef, caller: str, share: sharing.Share | None) -> sharing_verdict.Verdict:
            return sharing_verdict.launch_verdict(image, caller, share, policy)

        assert verdict(public, BOB, None).basis is sharing_verdict.LaunchBasis.PUBLIC
        assert verdict(market, BOB, None).basis is sharing_verdict.LaunchBasis.MARKETPLACE
        assert verdict(CUSTOM, ALICE, None).basis is sharing_verdict.LaunchBasis.OWNER
        assert verdict(CUSTOM, BOB, share()).allowed
        stranger = verdict(CUSTOM, BOB, None)
        assert not stranger.visible
        assert not stranger.allowed
        pending = verdict(CUSTOM, BOB, share(sharing.ShareState.PENDING))
        assert pending.visible
        assert not pending.allowed
        assert pending.basis is sharing_verdict.LaunchBasis.SHARE_PENDING
        assert not verdict(CUSTOM, BOB, share(region="ap-beijing")).visible
        # a rejected share stays visible (the recipient can still accept it), but is not launched
        rejected = verdict(CUSTOM, BOB, share(sharing.ShareState.REJECTED))
        assert rejected.visible
        assert not rejected.allowed
        assert rejected.basis is sharing_verdict.LaunchBasis.SHARE_REJECTED

    def test_only_the_owner_shares_custom_images(self) -> None:
        with pytest.raises(PermissionDenied):
            sharing.check_owner_may_share(CUSTOM, BOB)
        public = sharing.ImageRef("img-public01", "ap-guangzhou", sharing.ImageKind.PUBLIC, ALICE)
        with pytest.raises(FailedPrecondition):
            sharing.check_owner_may_share(public, ALICE)

    def test_recipients_are_distinct_well_formed_and_not_the_owner(self) -> None:
        assert sharing.recipients([BOB, BOB, "100000000003"], ALICE) == [BOB, "100000000003"]
        for bad in ([], [ALICE], ["bob"], [f"{300000000000 + i}" for i in range(51)]):
            with pytest.raises(InvalidArgument):
                sharing.recipients(bad, ALICE)

    def test_the_limit_counts_only_new_recipients(self) -> None:
        existing = {f"{300000000000 + i}" for i in range(50)}
        assert sharing.new_recipients(CUSTOM, sorted(existing)[:3], existing) == []
        with pytest.raises(ResourceExhausted):
            sharing.new_recipients(CUSTOM, [BOB], existing)
        assert sharing.new_recipients(CUSTOM, [BOB], set(sorted(existing)[:49])) == [BOB]


def image(**overrides: Any) -> Image:
    base = Image(image_id="img-abcdefgh", region="ap-guangzhou", kind=CatalogKind.PUBLIC, state=ImageState.NORMAL,
                 name="Ubuntu", description="", owner_account_id="platform", platform="Ubuntu", os_name="Ubuntu",
                 os_type=OsType.LINUX, architecture=Architecture.X86_64, size_gb=20, source=ImageSource.OFFICIAL,
                 base_image_id="", progress_percent=100, create_time=datetime.now(UTC))
    return replace(base, **overrides)


def request(**overrides: Any) -> LaunchRequest:
    base = LaunchRequest(region="ap-guangzhou", image_id="img-abcdefgh", instance_type="S5.MEDIUM4", instance_count=1,
                         charge_type=GatewayChargeType.POSTPAID_BY_HOUR, period_months=0, system_disk_gb=50)
    return replace(base, **overrides)


X86 = InstanceType("S5.MEDIUM4", "S5", Architecture.X86_64, 2, 4, frozenset({"ap-guangzhou"}))
OK = Verdict(True, True, VerdictBasis.PUBLIC)


class TestLaunchRules:
    def test_a_good_launch_passes(self) -> None:
        check_launchable(request(), image(), OK, X86)

    @pytest.mark.parametrize(("img", "verdict", "req", "error", "reason"), [
        (image(architecture=Architecture.ARM64), OK, request(), InvalidArgument, "ARCHITECTURE_MISMATCH"),
        (image(size_gb=60), OK, request(), InvalidArgument, "SYSTEM_DISK_TOO_SMALL"),
        (image(state=ImageState.CREATING), OK, request(), FailedPrecondition, "IMAGE_STATE_INVALID"),
        (image(), Verdict(False, False, VerdictBasis.NONE), request(), NotFound, "IMAGE_NOT_FOUND"),
        (image(region="ap-beijing"), OK, request(), NotFound, "IMAGE_NOT_FOUND"),
        (image(exists=False), OK, request(), NotFound, "IMAGE_NOT_FOUND"),
        (image(), Verdict(True, False, VerdictBasis.SHARE_PENDING, ShareState.PENDING), request(), FailedPrecondition,
         "SHARE_PENDING"),
        (image(), Verdict(True, False, VerdictBasis.SHARE_REJECTED, ShareState.REJECTED), request(),
         FailedPrecondition, "SHARE_REJECTED"),
        (image(), Verdict(True, False, VerdictBasis.PUBLIC, None, False, TrustPolicyMode.ENFORCE, "no platform"),
         request(), FailedPrecondition, "IMAGE_NOT_ALLOWED"),
    ])
    def test_refusals(self, img: Image, verdict: Verdict, req: LaunchRequest, error: type[DomainError],
                      reason: str) -> None:
        with pytest.raises(error) as refused:
            check_launchable(req, img, verdict, X86)
        assert refused.value.reason == reason

    @pytest.mark.parametrize(("overrides", "reason"), [
        ({"region": ""}, "REGION_REQUIRED"),
        ({"image_id": "img-ABCDEFGH"}, "INVALID_ID"),
        ({"instance_type": ""}, "INSTANCE_TYPE_REQUIRED"),
        ({"instance_count": 0}, "INVALID_INSTANCE_COUNT"),
        ({"instance_count": 101}, "INVALID_INSTANCE_COUNT"),
        ({"system_disk_gb": 19}, "INVALID_SYSTEM_DISK_SIZE"),
        ({"system_disk_gb": 1025}, "INVALID_SYSTEM_DISK_SIZE"),
        ({"instance_name": "n" * 61}, "INSTANCE_NAME_TOO_LONG"),
        ({"client_token": "t" * 65}, "INVALID_CLIENT_TOKEN"),
        ({"client_token": "tab\there"}, "INVALID_CLIENT_TOKEN"),
    ])
    def test_request_validation(self, overrides: dict[str, str | int], reason: str) -> None:
        with pytest.raises(InvalidArgument) as refused:
            request(**overrides).validate()
        assert refused.value.reason == reason

    def test_the_fingerprint_ignores_the_token_but_not_the_parameters(self) -> None:
        assert request(client_token="a").fingerprint() == request(client_token="b").fingerprint()
        assert request(instance_count=2).fingerprint() != request().fingerprint()

    def test_a_trust_policy_refusal_names_its_rule_and_mode(self) -> None:
        verdict = Verdict(True, False, VerdictBasis.SHARED, ShareState.ACCEPTED, False, TrustPolicyMode.ENFORCE,
                          "images of account 100000000002 are not on allowed_account_ids")
        with pytest.raises(FailedPrecondition) as refused:
            check_launchable(request(), image(), verdict, X86)
        assert "allowed_account_ids" in refused.value.message
        assert "ENFORCE" in refused.value.message
        assert refused.value.metadata == {"rule": verdict.policy_rule, "mode": "ENFORCE"}

    def test_an_audited_image_outside_the_policy_launches(self) -> None:
        check_launchable(request(), image(), Verdict(True, True, VerdictBasis.PUBLIC, None, False,
                                                     TrustPolicyMode.AUDIT, "no platform"), X86)


def instance(state: InstanceState, instance_id: str = "ins-abcdefgh") -> Instance:
    return Instance(instance_id, ALICE, "ap-guangzhou", "web", "S5.MEDIUM4", "img-abcdefgh", state,
                    GatewayChargeType.POSTPAID_BY_HOUR, 50, Architecture.X86_64, "lch-abcdefgh", datetime.now(UTC))


class TestInstanceLifecycleRules:
    @pytest.mark.parametrize(("state", "reason"), [(InstanceState.TERMINATED, "INSTANCE_TERMINATED"),
                                               (InstanceState.PENDING, "INSTANCE_BUSY"),
                                               (InstanceState.RESETTING, "INSTANCE_BUSY")])
    def test_what_cannot_be_reset(self, state: InstanceState, reason: str) -> None:
        with pytest.raises(FailedPrecondition) as refused:
            check_resettable(instance(state))
        assert refused.value.reason == reason
        check_resettable(instance(InstanceState.RUNNING))
        check_resettable(instance(InstanceState.STOPPED))

    def test_terminating_skips_the_terminated_and_refuses_the_busy(self) -> None:
        running, ended = instance(InstanceState.RUNNING, "ins-00000001"), instance(InstanceState.TERMINATED)
        assert to_terminate([running, ended]) == [running]
        with pytest.raises(FailedPrecondition):
            to_terminate([running, instance(InstanceState.RESETTING)])

    def test_termination_ids_are_distinct_and_bounded(self) -> None:
        assert instance_ids_to_terminate(["ins-00000002", "ins-00000001", "ins-00000002"]) == [
            "ins-00000002", "ins-00000001"]
        for bad in ([], ["ins-00000001"] * 101, ["ins-1"]):
            with pytest.raises(InvalidArgument):
                instance_ids_to_terminate(bad)

    def test_a_trust_policy_mask(self) -> None:
        assert trust_policy_paths([]) == trust_policy_paths(["*"]) == [
            "trusted_account_ids", "mode", "allow_platform_images", "allowed_marketplace_providers",
            "allowed_account_ids"]
        assert trust_policy_paths(["mode", "mode"]) == ["mode"]
        with pytest.raises(InvalidArgument):
            trust_policy_paths(["mode", "update_time"])


class TestApiKeys:
    def test_a_key_matches_only_its_own_secret(self) -> None:
        stored, plain = api_keys.new_api_key(ALICE)
        parsed = api_keys.parse(plain)
        assert parsed is not None
        key_id, secret = parsed
        assert key_id == stored.key_id
        assert api_keys.matches(stored, secret)
        assert not api_keys.matches(stored, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
        assert not api_keys.matches(None, secret)
        assert secret not in stored.secret_hash

    def test_malformed_keys_do_not_parse(self) -> None:
        for bad in ["", "cik_", "cik_short_x", "Bearer cik_abcdefgh_" + "a" * 43, "cik_abcdefgh_" + "a" * 42]:
            assert api_keys.parse(bad) is None
