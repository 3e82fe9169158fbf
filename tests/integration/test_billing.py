"""Billing through a real in-process server: quotes, the charge ledger and its idempotency."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import TypedDict, Unpack

import grpc
import pytest
from alembic import command
from cloudimg.billing.v1 import billing_service_pb2 as pb
from cloudimg.billing.v1 import billing_service_pb2_grpc as pb_grpc
from sqlalchemy import create_engine, func, select, text

import billing_service
from billing_service.adapters.tables import CHARGES, SEGMENTS
from billing_service.bootstrap import bootstrap
from billing_service.settings import BillingSettings
from chassis.clock import FakeClock
from chassis.convert import decimal_of, timestamp
from chassis.db import Database
from chassis.migrations import config
from tests.conftest import ALICE, BOB, ServerFactory, Spawn, internal_metadata, rich_status
from tests.integration.cloud import INTERNAL_SECRET


class LaunchFields(TypedDict, total=False):
    """The fields of a LaunchPricing."""

    region: str
    instance_type: str
    instance_count: int
    charge_type: pb.ChargeType.ValueType
    period_months: int
    image: pb.ImagePricing


def launch(**overrides: Unpack[LaunchFields]) -> pb.LaunchPricing:
    fields: LaunchFields = {"region": "ap-singapore", "instance_type": "S5.MEDIUM4", "instance_count": 2,
                            "charge_type": pb.CHARGE_TYPE_POSTPAID_BY_HOUR,
                            "image": pb.ImagePricing(image_id="img-win00001", os_kind=pb.OS_KIND_WINDOWS)}
    fields.update(overrides)
    return pb.LaunchPricing(**fields)


@pytest.fixture
async def billing(serve: ServerFactory, database_url: str) -> pb_grpc.BillingServiceStub:
    addr = await serve(bootstrap, BillingSettings(database_url=database_url, internal_token=INTERNAL_SECRET))
    return pb_grpc.BillingServiceStub(grpc.aio.insecure_channel(addr))


async def test_instance_types_of_both_architectures(billing: pb_grpc.BillingServiceStub) -> None:
    response = await billing.ListInstanceTypes(pb.ListInstanceTypesRequest(region="ap-guangzhou"),
                                               metadata=internal_metadata())
    assert {t.architecture for t in response.instance_types} == {pb.CPU_ARCHITECTURE_X86_64, pb.CPU_ARCHITECTURE_ARM64}


async def test_quote_lines_are_exact(billing: pb_grpc.BillingServiceStub) -> None:
    quote = (await billing.Quote(pb.QuoteRequest(launch=launch()), metadata=internal_metadata())).quote
    assert quote.currency_code == "USD"
    assert [l.kind for l in quote.lines] == [pb.LINE_KIND_INSTANCE, pb.LINE_KIND_IMAGE_LICENSE]
    for line in quote.lines:
        assert decimal_of(line.amount) == decimal_of(line.unit_price) * line.quantity
    assert decimal_of(quote.total) == sum(decimal_of(l.amount) for l in quote.lines)
    assert decimal_of(quote.total) == Decimal("0.2312")  # 2 x (0.0696 + 0.0460)


async def test_a_charge_is_recorded_once_per_key_even_when_retries_race(billing: pb_grpc.BillingServiceStub,
                                                                        database_url: str) -> None:
    request = pb.CreateChargeRequest(launch=launch(), idempotency_key="lch-race0001", instance_ids=["ins-a", "ins-b"])
    charges = await asyncio.gather(*(billing.CreateCharge(request, metadata=internal_metadata()) for _ in range(20)))
    assert len({c.charge.charge_id for c in charges}) == 1
    engine = create_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CHARGES)).scalar_one() == 1
        # the one charge metered its instances once
        assert conn.execute(select(SEGMENTS.c.instance_id).order_by(SEGMENTS.c.instance_id)).scalars().all() == [
            "ins-a", "ins-b"]
    engine.dispose()

    other = pb.CreateChargeRequest(launch=launch(instance_count=3), idempotency_key="lch-race0001",
                                   instance_ids=["ins-a", "ins-b", "ins-c"])
    with pytest.raises(grpc.aio.AioRpcError) as mismatch:
        await billing.CreateCharge(other, metadata=internal_metadata())
    assert mismatch.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rich_status(mismatch.value)[1].reason == "IDEMPOTENCY_PARAMETER_MISMATCH"


async def test_charges_are_listed_per_account_in_pages(billing: pb_grpc.BillingServiceStub) -> None:
    for n in range(5):
        await billing.CreateCharge(pb.CreateChargeRequest(launch=launch(), idempotency_key=f"lch-page{n:04d}"),
                                   metadata=internal_metadata(ALICE))
    await billing.CreateCharge(pb.CreateChargeRequest(launch=launch(), idempotency_key="lch-bob00001"),
                               metadata=internal_metadata(BOB))
    seen: list[str] = []
    token = ""
    while True:
        page = await billing.ListCharges(pb.ListChargesRequest(page_size=2, page_token=token),
                                         metadata=internal_metadata(ALICE))
        seen.extend(c.charge_id for c in page.charges)
        assert all(c.account_id == ALICE for c in page.charges)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 5


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"instance_type": "S5.GIGANTIC"}, "INSTANCE_TYPE_NOT_OFFERED"),
    ({"instance_type": "SR1.MEDIUM4", "region": "eu-frankfurt"}, "INSTANCE_TYPE_NOT_OFFERED"),
    ({"instance_count": 101}, "INVALID_INSTANCE_COUNT"),
    ({"charge_type": pb.CHARGE_TYPE_PREPAID, "period_months": 13}, "INVALID_PERIOD"),
    ({"period_months": 3}, "INVALID_PERIOD"),
    ({"charge_type": 42}, "INVALID_ENUM_VALUE"),
])
async def test_bad_launches_are_refused(billing: pb_grpc.BillingServiceStub, overrides: LaunchFields,
                                        reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await billing.Quote(pb.QuoteRequest(launch=launch(**overrides)), metadata=internal_metadata())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rich_status(refused.value)[1].reason == reason


async def test_resolving_a_key_returns_its_charge_or_voids_it_for_good(billing: pb_grpc.BillingServiceStub,
                                                                       database_url: str) -> None:
    charged = pb.CreateChargeRequest(launch=launch(), idempotency_key="lch-charged1", instance_ids=["ins-a"])
    first = (await billing.CreateCharge(charged, metadata=internal_metadata())).charge
    for _ in range(2):  # asking again gives the same answer
        resolved = await billing.ResolveCharge(pb.ResolveChargeRequest(idempotency_key="lch-charged1"),
                                               metadata=internal_metadata())
        assert not resolved.voided
        assert resolved.charge == first
        void = await billing.ResolveCharge(pb.ResolveChargeRequest(idempotency_key="lch-nothing1"),
                                           metadata=internal_metadata())
        assert void.voided
        assert not void.HasField("charge")
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await billing.CreateCharge(pb.CreateChargeRequest(launch=launch(), idempotency_key="lch-nothing1"),
                                   metadata=internal_metadata())
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rich_status(late.value)[1].reason == "LAUNCH_VOIDED"
    engine = create_engine(database_url)
    with engine.connect() as conn:  # the voided launch has no meter: only the charged one has
        assert conn.execute(select(SEGMENTS.c.instance_id)).scalars().all() == ["ins-a"]
    engine.dispose()
    # keys are per account: another account's key of the same name is its own
    other = await billing.CreateCharge(pb.CreateChargeRequest(launch=launch(), idempotency_key="lch-nothing1"),
                                       metadata=internal_metadata(BOB))
    assert other.charge.account_id == BOB


async def test_a_charge_and_its_resolution_racing_on_two_replicas_never_both_win(spawn: Spawn,
                                                                                 database_url: str) -> None:
    """Per launch id, either the charge lands and resolving returns it, or resolving voids it and the
    charge is refused: never a charge that resolution said does not exist."""
    env = {"BILLING_DATABASE_URL": database_url}
    replicas = [pb_grpc.BillingServiceStub(grpc.aio.insecure_channel(spawn("billing", env).addr)) for _ in range(2)]
    keys = [f"lch-rac{n:05d}" for n in range(40)]

    async def charge(key: str, replica: int) -> pb.Charge | None:
        try:
            charged: pb.Charge = (await replicas[replica].CreateCharge(
                pb.CreateChargeRequest(launch=launch(), idempotency_key=key), metadata=internal_metadata(),
                timeout=30)).charge
        except grpc.aio.AioRpcError as refused:
            if rich_status(refused)[1].reason != "LAUNCH_VOIDED":
                raise
            return None
        return charged

    async def resolve(key: str, replica: int) -> pb.ResolveChargeResponse:
        resolved: pb.ResolveChargeResponse = await replicas[replica].ResolveCharge(
            pb.ResolveChargeRequest(idempotency_key=key), metadata=internal_metadata(), timeout=30)
        return resolved

    answers = await asyncio.gather(*(
        asyncio.gather(charge(key, n % 2), resolve(key, (n + 1) % 2)) for n, key in enumerate(keys)))
    for charged, resolved in answers:
        assert (charged is None) == resolved.voided
        if charged is not None:
            assert resolved.charge.charge_id == charged.charge_id
    engine = create_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CHARGES)).scalar_one() == sum(
            1 for charged, _ in answers if charged is not None)
    engine.dispose()


async def test_a_ledger_from_before_meters_is_upgraded_and_its_launches_kept(serve: ServerFactory,
                                                                             database_url: str) -> None:
    """A charge written at revision 0002 (lines as a bare list, no kind) is a LAUNCH after the upgrade; its
    instance was never metered, so ending its usage records nothing and a reset starts its meter."""
    db = Database(database_url)
    with db.engine.begin() as connection:
        command.upgrade(config(Path(billing_service.__file__).parent, "billing", connection), "0002")
        connection.execute(text(
            "INSERT INTO billing_charge (charge_id, account_id, idempotency_key, request_fingerprint, region, "
            "currency, charge_type, total, lines, instance_ids, create_time) VALUES ('chg-00000001', :account, "
            "'lch-00000001', 'f', 'ap-guangzhou', 'USD', 'POSTPAID_BY_HOUR', '0.0580', :lines, "
            "'[\"ins-00000001\"]', :created)"),
            {"account": ALICE, "created": datetime(2025, 12, 31, 23, tzinfo=UTC), "lines": (
                '[{"kind": "INSTANCE", "description": "S5.MEDIUM4 in ap-guangzhou (POSTPAID_BY_HOUR)", '
                '"unit_price": "0.0580", "quantity": 1, "unit": "instance-hour"}]')})
    db.dispose()
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    addr = await serve(partial(bootstrap, clock=clock), BillingSettings(database_url=database_url,
                                                                        internal_token=INTERNAL_SECRET))
    billing = pb_grpc.BillingServiceStub(grpc.aio.insecure_channel(addr))
    md = internal_metadata()
    (old,) = (await billing.ListCharges(pb.ListChargesRequest(instance_id="ins-00000001"), metadata=md)).charges
    assert (old.charge_id, old.kind, decimal_of(old.quote.total)) == ("chg-00000001", pb.CHARGE_KIND_LAUNCH,
                                                                      Decimal("0.0580"))
    assert old.quote.lines[0].description == "S5.MEDIUM4 in ap-guangzhou (POSTPAID_BY_HOUR)"
    assert (await billing.EndUsage(pb.EndUsageRequest(instance_ids=["ins-00000001", "ins-00000002"]),
                                   metadata=md)).charges == []
    reset = pb.ResetPricing(instance_id="ins-00000002", launch=launch(region="ap-guangzhou", instance_count=1),
                            effective_time=timestamp(clock.now()))
    await billing.ChargeReset(pb.ChargeResetRequest(reset=reset, idempotency_key="rst-00000001"), metadata=md)
    clock.advance(hours=1, minutes=1)
    (usage,) = (await billing.EndUsage(pb.EndUsageRequest(instance_ids=["ins-00000002"]), metadata=md)).charges
    assert usage.usage_end_time.ToDatetime(tzinfo=UTC) - usage.usage_start_time.ToDatetime(tzinfo=UTC) == timedelta(
        hours=1)
