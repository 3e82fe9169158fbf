"""Verdict leases, both halves: sharing grants a lease only on the verdicts that nothing but the caller's trust
policy changes, and waits them out before a policy update answers; the gateway's sharing client answers from a
lease while it lasts, per caller and image, and asks again once it has run out. And the quotes the gateway keeps."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from cloudimg.billing.v1 import billing_service_pb2 as billing_pb
from cloudimg.sharing.v1 import sharing_service_pb2 as sharing_pb
from google.type import money_pb2

from chassis import context
from chassis.context import Caller
from gateway.adapters import contexts
from gateway.adapters.contexts import Billing, Sharing
from gateway.domain.instances import LaunchRequest
from gateway.domain.model import CatalogKind, ChargeType, Image
from sharing_service.domain.model import ShareState
from sharing_service.domain.trust import TrustPolicyMode
from sharing_service.domain.verdict import LaunchBasis, Verdict, leasable
from sharing_service.service_layer.verdicts import Leases
from tests.unit.test_gateway_image_ops import ALICES, PUBLIC, RecordingDownstream, image

ALICE, BOB = Caller("100000000001"), Caller("100000000002")
MARKET = image("img-market01", CatalogKind.MARKET, marketplace_provider="Bitnami")


def _answer(lease_seconds: float | None) -> sharing_pb.CheckLaunchPermissionResponse:
    answer = sharing_pb.CheckLaunchPermissionResponse(visible=True, allowed=True, basis=sharing_pb.LAUNCH_BASIS_PUBLIC,
                                                      image_allowed=True)
    if lease_seconds is not None:
        answer.lease.FromTimedelta(timedelta(seconds=lease_seconds))
    return answer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _client(lease_seconds: float | None) -> tuple[Sharing, RecordingDownstream, Clock]:
    downstream, clock = RecordingDownstream({"CheckLaunchPermission": _answer(lease_seconds)}), Clock()
    return Sharing(downstream, clock), downstream, clock  # type: ignore[arg-type]


def _asked(downstream: RecordingDownstream) -> int:
    return sum(1 for method, _ in downstream.sent if method == "CheckLaunchPermission")


@pytest.mark.parametrize(("basis", "leased"), [
    (LaunchBasis.PUBLIC, True), (LaunchBasis.MARKETPLACE, True), (LaunchBasis.OWNER, False),
    (LaunchBasis.SHARED, False), (LaunchBasis.SHARE_PENDING, False), (LaunchBasis.SHARE_REJECTED, False),
    (LaunchBasis.NONE, False),
])
def test_only_a_platform_image_verdict_is_leased(basis: LaunchBasis, leased: bool) -> None:
    share = ShareState.ACCEPTED if basis is LaunchBasis.SHARED else None
    for found in (Verdict(True, True, basis, share), Verdict(True, False, basis, share, False, TrustPolicyMode.ENFORCE,
                                                             "platform images are not allowed")):
        assert leasable(found) is leased
        assert Leases(0.5).of(found) == (0.5 if leased else 0.0)
        assert Leases(0.0).of(found) == 0.0


async def test_an_update_waits_out_the_lease_and_a_bit_more() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    await Leases(1.0, sleep=sleep).run_out()
    await Leases(0.0, sleep=sleep).run_out()
    assert len(slept) == 1
    assert slept[0] >= 1.0 * 1.01


async def test_the_gateway_answers_from_a_lease_while_it_lasts() -> None:
    sharing, downstream, clock = _client(1.0)
    context.current_caller.set(ALICE)
    first = await sharing.verdict(PUBLIC)
    clock.now += 0.99
    assert await sharing.verdict(PUBLIC) == first
    assert _asked(downstream) == 1
    clock.now += 0.01  # the lease counts from the first request's sending: it has run out
    assert await sharing.verdict(PUBLIC) == first
    assert _asked(downstream) == 2


async def test_a_lease_is_the_callers_and_the_images_own() -> None:
    sharing, downstream, _ = _client(1.0)
    context.current_caller.set(ALICE)
    await sharing.verdict(PUBLIC)
    await sharing.verdict(MARKET)
    context.current_caller.set(BOB)
    await sharing.verdict(PUBLIC)
    assert _asked(downstream) == 3
    for caller in (ALICE, BOB):
        context.current_caller.set(caller)
        await sharing.verdict(PUBLIC)
    assert _asked(downstream) == 3


@pytest.mark.parametrize("wanted", [PUBLIC, ALICES])
async def test_a_verdict_without_a_lease_is_asked_for_every_time(wanted: Image) -> None:
    sharing, downstream, _ = _client(None)
    context.current_caller.set(ALICE)
    for _ in range(3):
        await sharing.verdict(wanted)
    assert _asked(downstream) == 3


async def test_outside_a_call_nothing_is_kept() -> None:
    sharing, downstream, _ = _client(1.0)
    context.current_caller.set(None)
    await sharing.verdict(PUBLIC)
    await sharing.verdict(PUBLIC)
    assert _asked(downstream) == 2


async def test_the_leases_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(contexts, "MAX_LEASED_VERDICTS", 3)
    sharing, downstream, clock = _client(1.0)
    images: list[Any] = [image(f"img-public0{i}", CatalogKind.PUBLIC) for i in range(5)]
    context.current_caller.set(ALICE)
    for found in images[:3]:
        await sharing.verdict(found)
    clock.now += 0.5
    await sharing.verdict(images[3])  # full of live leases: they are dropped, the new one kept
    assert len(sharing._leased) == 1
    await sharing.verdict(images[3])
    assert _asked(downstream) == 4
    clock.now += 0.5
    for found in images[:2]:
        await sharing.verdict(found)
    clock.now += 0.6  # the lease on images[3] has run out, the two newest have not
    await sharing.verdict(images[4])  # full: the expired one goes, the live ones stay
    assert set(key[1] for key in sharing._leased) == {"img-public00", "img-public01", "img-public04"}


def _quote_answer(total: str) -> billing_pb.QuoteResponse:
    return billing_pb.QuoteResponse(quote=billing_pb.Quote(
        currency_code="USD", charge_type=billing_pb.CHARGE_TYPE_POSTPAID_BY_HOUR,
        total=money_pb2.Money(currency_code="USD", units=0, nanos=int(Decimal(total) * 10**9))))


async def test_the_gateway_asks_billing_for_each_quote_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quotes are no lease: billing's price book is read when billing starts and no call changes it."""
    monkeypatch.setattr(contexts, "MAX_QUOTES", 2)
    downstream = RecordingDownstream({"Quote": _quote_answer("0.0696")})
    billing = Billing(downstream)  # type: ignore[arg-type]
    one = LaunchRequest("ap-guangzhou", PUBLIC.image_id, "S5.MEDIUM4", 1, ChargeType.POSTPAID_BY_HOUR, 0, 50)
    three = replace(one, instance_count=3)
    first = await billing.quote(one, PUBLIC)
    assert await billing.quote(replace(one, instance_name="web", client_token="t-1"), PUBLIC) == first
    assert len(downstream.sent) == 1  # a name or a token prices nothing
    await billing.quote(three, PUBLIC)
    market = replace(one, image_id=MARKET.image_id)
    await billing.quote(market, MARKET)  # another image's pricing: asked (and the two kept are dropped: at most 2)
    assert len(downstream.sent) == 3
    await billing.quote(market, MARKET)
    await billing.quote(one, PUBLIC)
    assert len(downstream.sent) == 4
    assert [request.launch.instance_count for _, request in downstream.sent] == [1, 3, 1, 1]
