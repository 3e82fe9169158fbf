"""Billing through a real in-process server: quotes, the charge ledger and its idempotency."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import grpc
import pytest
from sqlalchemy import create_engine, func, select

from billing_service.adapters.tables import CHARGES
from billing_service.bootstrap import bootstrap
from billing_service.settings import BillingSettings
from chassis.convert import decimal_of
from cloudimg.billing.v1 import billing_service_pb2 as pb
from cloudimg.billing.v1 import billing_service_pb2_grpc as pb_grpc
from tests.conftest import ALICE, BOB, INTERNAL_TOKEN, internal_metadata, rich_status


def launch(**overrides) -> pb.LaunchPricing:
    fields = dict(region="ap-singapore", instance_type="S5.MEDIUM4", instance_count=2,
                  charge_type=pb.CHARGE_TYPE_POSTPAID_BY_HOUR,
                  image=pb.ImagePricing(image_id="img-win00001", os_kind=pb.OS_KIND_WINDOWS))
    fields.update(overrides)
    return pb.LaunchPricing(**fields)


@pytest.fixture
async def billing(serve, database_url) -> pb_grpc.BillingServiceStub:
    addr = await serve(bootstrap, BillingSettings(database_url=database_url, internal_token=INTERNAL_TOKEN))
    return pb_grpc.BillingServiceStub(grpc.aio.insecure_channel(addr))


async def test_instance_types_of_both_architectures(billing):
    response = await billing.ListInstanceTypes(pb.ListInstanceTypesRequest(region="ap-guangzhou"),
                                               metadata=internal_metadata())
    assert {t.architecture for t in response.instance_types} == {pb.CPU_ARCHITECTURE_X86_64, pb.CPU_ARCHITECTURE_ARM64}


async def test_quote_lines_are_exact(billing):
    quote = (await billing.Quote(pb.QuoteRequest(launch=launch()), metadata=internal_metadata())).quote
    assert quote.currency_code == "USD"
    assert [l.kind for l in quote.lines] == [pb.LINE_KIND_INSTANCE, pb.LINE_KIND_IMAGE_LICENSE]
    for line in quote.lines:
        assert decimal_of(line.amount) == decimal_of(line.unit_price) * line.quantity
    assert decimal_of(quote.total) == sum(decimal_of(l.amount) for l in quote.lines)
    assert decimal_of(quote.total) == Decimal("0.2312")  # 2 x (0.0696 + 0.0460)


async def test_a_charge_is_recorded_once_per_key_even_when_retries_race(billing, database_url):
    request = pb.CreateChargeRequest(launch=launch(), idempotency_key="lch-race0001", instance_ids=["ins-a", "ins-b"])
    charges = await asyncio.gather(*(billing.CreateCharge(request, metadata=internal_metadata()) for _ in range(20)))
    assert len({c.charge.charge_id for c in charges}) == 1
    engine = create_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CHARGES)).scalar_one() == 1
    engine.dispose()

    with pytest.raises(grpc.aio.AioRpcError) as mismatch:
        other = pb.CreateChargeRequest(launch=launch(instance_count=3), idempotency_key="lch-race0001",
                                       instance_ids=["ins-a", "ins-b", "ins-c"])
        await billing.CreateCharge(other, metadata=internal_metadata())
    assert mismatch.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rich_status(mismatch.value)[1].reason == "IDEMPOTENCY_PARAMETER_MISMATCH"


async def test_charges_are_listed_per_account_in_pages(billing):
    for n in range(5):
        await billing.CreateCharge(pb.CreateChargeRequest(launch=launch(), idempotency_key=f"lch-page{n:04d}"),
                                   metadata=internal_metadata(ALICE))
    await billing.CreateCharge(pb.CreateChargeRequest(launch=launch(), idempotency_key="lch-bob00001"),
                               metadata=internal_metadata(BOB))
    seen, token = [], ""
    while True:
        page = await billing.ListCharges(pb.ListChargesRequest(page_size=2, page_token=token),
                                         metadata=internal_metadata(ALICE))
        seen.extend(c.charge_id for c in page.charges)
        assert all(c.account_id == ALICE for c in page.charges)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 5


@pytest.mark.parametrize("overrides, reason", [
    ({"instance_type": "S5.GIGANTIC"}, "INSTANCE_TYPE_NOT_OFFERED"),
    ({"instance_type": "SR1.MEDIUM4", "region": "eu-frankfurt"}, "INSTANCE_TYPE_NOT_OFFERED"),
    ({"instance_count": 101}, "INVALID_INSTANCE_COUNT"),
    ({"charge_type": pb.CHARGE_TYPE_PREPAID, "period_months": 13}, "INVALID_PERIOD"),
    ({"period_months": 3}, "INVALID_PERIOD"),
    ({"charge_type": 42}, "INVALID_ENUM_VALUE"),
])
async def test_bad_launches_are_refused(billing, overrides, reason):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await billing.Quote(pb.QuoteRequest(launch=launch(**overrides)), metadata=internal_metadata())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rich_status(refused.value)[1].reason == reason
