"""Metering on SQLite and PostgreSQL: replicas that settle, end and reset at once never charge an hour
twice; and the whole story (launch, usage, reset, termination, listings) through a real gRPC server."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, TypedDict, Unpack

import grpc
import pytest
from cloudimg.billing.v1 import billing_service_pb2 as pb
from cloudimg.billing.v1 import billing_service_pb2_grpc as pb_grpc
from google.protobuf import timestamp_pb2
from sqlalchemy import func, select

import billing_service
from billing_service.adapters.tables import CHARGES, SEGMENTS, TABLES
from billing_service.bootstrap import bootstrap
from billing_service.domain.model import Charge, ChargeKind, ChargeType
from billing_service.service_layer import usage
from billing_service.service_layer.unit_of_work import BillingUnitOfWork
from billing_service.settings import BillingSettings
from chassis.clock import FakeClock
from chassis.convert import decimal_of, timestamp
from chassis.db import Database
from chassis.migrations import migrate
from tests.conftest import ALICE, BOB, ServerFactory, internal_metadata, rich_status
from tests.integration.cloud import INTERNAL_SECRET
from tests.unit.test_billing_handlers import (
    INSTANCE_HOUR,
    LICENSE_HOUR,
    WINDOWS,
    Billing,
    assert_hours_tile,
    instance_ids,
    usage_hours,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture
def replicas(database_url: str) -> Iterator[Callable[[], Billing]]:
    """Handler sets on one database, each with its own engine, all on one FakeClock."""
    clock = FakeClock(T0)
    made: list[Database] = []

    def replica() -> Billing:
        db = Database(database_url)
        made.append(db)
        return Billing(db, clock)

    migrate(replica().db, Path(billing_service.__file__).parent, "billing", TABLES)
    yield replica
    for db in made:
        db.dispose()


def at_once(*calls: Callable[[], Any]) -> list[Any]:
    """Runs the calls in threads, released together."""
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(run, call) for call in calls]]


def usage_keys_are_unique(billing: Billing) -> None:
    with billing.db.engine.connect() as connection:
        keys = connection.execute(select(CHARGES.c.idempotency_key).where(CHARGES.c.kind == "USAGE")).scalars().all()
    assert len(keys) == len(set(keys))


def test_two_settlers_at_once_charge_each_hour_exactly_once(replicas: Callable[[], Billing]) -> None:
    one, two = replicas(), replicas()
    ids = instance_ids(200)
    for batch in (ids[:100], ids[100:]):
        one.launch(batch)
    for hours in (2, 3, 7):  # settled at 2 h 10 min, 3 h 10 min, 7 h 10 min
        one.clock.advance(hours=hours - (one.clock.now() - T0) // HOUR)
        settled = at_once(one.settle, two.settle)
        assert sum(settled) == 200  # each segment by one of them
        assert usage_hours(one.ledger()) == {i: hours - 1 for i in ids}
    assert at_once(one.settle, two.settle) == [0, 0]
    assert_hours_tile(one.ledger())
    usage_keys_are_unique(one)


def test_ending_usage_while_replicas_settle_never_charges_an_hour_twice(replicas: Callable[[], Billing]) -> None:
    settlers = [replicas(), replicas()]
    enders = [replicas(), replicas()]
    ids = instance_ids(200)
    for batch in (ids[:100], ids[100:]):
        settlers[0].launch(batch)
    settlers[0].clock.advance(hours=5, minutes=30)  # 6 started hours each, the first paid by the launch
    stop = threading.Event()
    ending = iter(range(len(enders)))

    def keep_settling(billing: Billing) -> int:
        runs = 0
        while not stop.is_set() or runs == 0:
            billing.settle()
            runs += 1
        return runs

    def end(billing: Billing, batches: list[list[str]]) -> list[Charge]:
        try:
            return [charge for batch in batches for charge in billing.end(batch)]
        finally:
            if next(ending) == len(enders) - 1:
                stop.set()

    # both enders end every instance, ten at a time, in opposite orders: each instance is ended by one of them,
    # and found ended by the other
    batches = [ids[n:n + 10] for n in range(0, len(ids), 10)]
    results = at_once(partial(keep_settling, settlers[0]), partial(keep_settling, settlers[1]),
                      partial(end, enders[0], batches), partial(end, enders[1], batches[::-1]))
    ended = results[2] + results[3]
    assert len({c.instance_ids[0] for c in ended}) == len(ended)
    assert usage_hours(settlers[0].ledger()) == {i: 5 for i in ids}
    assert_hours_tile(settlers[0].ledger())
    usage_keys_are_unique(settlers[0])
    assert at_once(settlers[0].settle, settlers[1].settle) == [0, 0]


def test_a_settlement_run_that_dies_midway_is_finished_by_the_next(replicas: Callable[[], Billing]) -> None:
    billing = replicas()
    ids = instance_ids(20)
    billing.launch(ids)
    billing.clock.advance(hours=4, minutes=1)

    class Killed(BaseException):
        pass

    commits = iter(range(100))

    class DyingUnitOfWork(BillingUnitOfWork):
        def commit(self) -> None:
            if next(commits) == 9:
                raise Killed
            super().commit()

    with pytest.raises(Killed):
        usage.settle_usage(new_uow=partial(DyingUnitOfWork, billing.db), clock=billing.clock)
    assert sum(usage_hours(billing.ledger()).values()) == 9 * 3
    assert billing.settle() == 11
    assert usage_hours(billing.ledger()) == {i: 3 for i in ids}
    usage_keys_are_unique(billing)


def test_resets_racing_on_replicas_record_each_key_once_and_chain_the_segments(replicas: Callable[[], Billing]) -> None:
    one, two = replicas(), replicas()
    one.launch(["ins-race0001"])
    one.clock.advance(hours=1, minutes=20)
    reset = one.reset_of("ins-race0001", WINDOWS)
    first, again = at_once(partial(one.reset, reset, "rst-same0001"), partial(two.reset, reset, "rst-same0001"))
    assert first == again
    one.clock.advance(minutes=10)
    others = at_once(*(partial(billing.reset, reset, f"rst-other{n:03d}") for n, billing in
                       enumerate([one, two, one, two])))
    assert len({c.charge_id for c in others}) == 4
    segments = one.segments("ins-race0001")
    assert [s.segment_no for s in segments] == [0, 1, 2, 3, 4, 5]
    assert [s.end_time is None for s in segments] == [False] * 5 + [True]
    for before, after in itertools.pairwise(segments):
        assert before.end_time == after.start_time
    assert len(one.ledger(ChargeKind.RESET)) == 5
    usage_keys_are_unique(one)


# --- through gRPC ---------------------------------------------------------------------------------------------


def pricing(count: int = 1, *, image: pb.ImagePricing | None = None,
            charge_type: pb.ChargeType.ValueType = pb.CHARGE_TYPE_POSTPAID_BY_HOUR, months: int = 0,
            region: str = "ap-singapore") -> pb.LaunchPricing:
    return pb.LaunchPricing(region=region, instance_type="S5.MEDIUM4", instance_count=count, charge_type=charge_type,
                            period_months=months,
                            image=image or pb.ImagePricing(image_id="img-linux001", os_kind=pb.OS_KIND_LINUX))


WINDOWS_PB = pb.ImagePricing(image_id="img-win00001", os_kind=pb.OS_KIND_WINDOWS)


def stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    return timestamp(moment)


class ChargeFilters(TypedDict, total=False):
    """The filters of a ListChargesRequest."""

    instance_id: str
    start_time: timestamp_pb2.Timestamp
    end_time: timestamp_pb2.Timestamp


class Server:
    def __init__(self, stub: pb_grpc.BillingServiceStub, clock: FakeClock):
        self.stub = stub
        self.clock = clock

    async def charges(self, account: str = ALICE, **filters: Unpack[ChargeFilters]) -> list[pb.Charge]:
        found: list[pb.Charge] = []
        token = ""
        while True:
            page: pb.ListChargesResponse = await self.stub.ListCharges(
                pb.ListChargesRequest(page_size=3, page_token=token, **filters), metadata=internal_metadata(account))
            found += page.charges
            token = page.next_page_token
            if not token:
                return found

    async def settled(self, count: int, account: str = ALICE, timeout: float = 30) -> list[pb.Charge]:
        """The ledger once it holds ``count`` usage charges (the server settles in the background)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            charges = await self.charges(account)
            found = [c for c in charges if c.kind == pb.CHARGE_KIND_USAGE]
            if len(found) >= count:
                assert len(found) == count
                return charges
            assert asyncio.get_running_loop().time() < deadline, f"{len(found)} usage charges, not {count}"
            await asyncio.sleep(0.02)


@pytest.fixture
async def billing(serve: ServerFactory, database_url: str) -> Server:
    clock = FakeClock(T0)
    settings = BillingSettings(database_url=database_url, internal_token=INTERNAL_SECRET,
                               usage_settle_interval_seconds=0.02)
    addr = await serve(partial(bootstrap, clock=clock), settings)
    return Server(pb_grpc.BillingServiceStub(grpc.aio.insecure_channel(addr)), clock)


def hours_of(charges: list[pb.Charge]) -> dict[str, int]:
    hours: dict[str, int] = {}
    for c in charges:
        if c.kind == pb.CHARGE_KIND_USAGE:
            hours[c.instance_ids[0]] = hours.get(c.instance_ids[0], 0) + c.quote.lines[0].quantity
    return hours


async def test_the_whole_story_through_the_rpcs(billing: Server) -> None:
    stub, md = billing.stub, internal_metadata()
    ids = instance_ids(3)
    launch = (await stub.CreateCharge(pb.CreateChargeRequest(launch=pricing(3), idempotency_key="lch-story001",
                                                             instance_ids=ids), metadata=md)).charge
    assert launch.kind == pb.CHARGE_KIND_LAUNCH

    billing.clock.advance(hours=1, minutes=30)  # ids[0] is reset to Windows at 1 h 30 min
    reset = pb.ResetPricing(instance_id=ids[0], launch=pricing(image=WINDOWS_PB), launch_time=stamp(T0))
    quoted = (await stub.QuoteReset(pb.QuoteResetRequest(reset=reset), metadata=md)).quote
    assert [l.kind for l in quoted.lines] == [pb.LINE_KIND_INSTANCE, pb.LINE_KIND_IMAGE_LICENSE]
    assert decimal_of(quoted.total) == INSTANCE_HOUR + LICENSE_HOUR
    charged = (await stub.ChargeReset(pb.ChargeResetRequest(reset=reset, idempotency_key="rst-story001"),
                                      metadata=md)).charge
    assert charged.kind == pb.CHARGE_KIND_RESET
    assert charged.quote == quoted
    assert list(charged.instance_ids) == ids[:1]
    again = (await stub.ChargeReset(pb.ChargeResetRequest(reset=reset, idempotency_key="rst-story001"),
                                    metadata=md)).charge
    assert again == charged

    listed = await billing.settled(1)  # ids[0]'s hour 1, at the old price, when it was reset
    old_hour = next(c for c in listed if c.kind == pb.CHARGE_KIND_USAGE)
    assert decimal_of(old_hour.quote.total) == INSTANCE_HOUR
    assert old_hour.usage_start_time.ToDatetime(tzinfo=UTC) == T0 + HOUR
    accrued = [c for c in listed if c.kind == pb.CHARGE_KIND_ACCRUED_USAGE]
    assert [(list(c.instance_ids), c.charge_id, c.quote.lines[0].quantity) for c in accrued] == [
        ([ids[1]], "", 1), ([ids[2]], "", 1)]  # hour 1 of the others has begun, not settled

    billing.clock.advance(minutes=40)  # 2 h 10 min: hour 1 of the others is over
    listed = await billing.settled(3)
    assert hours_of(listed) == {i: 1 for i in ids}

    billing.clock.advance(minutes=55)  # terminated at 3 h 5 min
    ended = (await stub.EndUsage(pb.EndUsageRequest(instance_ids=ids, end_time=stamp(billing.clock.now())),
                                 metadata=md)).charges
    by_instance = {c.instance_ids[0]: c for c in ended}
    assert decimal_of(by_instance[ids[0]].quote.total) == INSTANCE_HOUR + LICENSE_HOUR  # from 2 h 30 to 3 h 30
    assert by_instance[ids[0]].usage_start_time.ToDatetime(tzinfo=UTC) == T0 + timedelta(hours=2, minutes=30)
    # the others' started hours run to 4 h (the settler may have taken hour 2 before the end came)
    assert {c.usage_end_time.ToDatetime(tzinfo=UTC) for c in ended} == {T0 + timedelta(hours=3, minutes=30),
                                                                        T0 + 4 * HOUR}
    assert (await stub.EndUsage(pb.EndUsageRequest(instance_ids=ids), metadata=md)).charges == []

    final = await billing.charges()
    assert [c.kind for c in final[:3]] == [pb.CHARGE_KIND_LAUNCH, pb.CHARGE_KIND_USAGE, pb.CHARGE_KIND_RESET]
    assert {c.kind for c in final[3:]} == {pb.CHARGE_KIND_USAGE}  # nothing accrues once usage ended
    assert hours_of(final) == {ids[0]: 2, ids[1]: 3, ids[2]: 3}
    of_first = await billing.charges(instance_id=ids[0])
    assert [c.kind for c in of_first] == [pb.CHARGE_KIND_LAUNCH, pb.CHARGE_KIND_USAGE, pb.CHARGE_KIND_RESET,
                                          pb.CHARGE_KIND_USAGE]
    window = await billing.charges(start_time=stamp(T0 + HOUR), end_time=stamp(T0 + 2 * HOUR))
    assert [c.charge_id for c in window] == [old_hour.charge_id, charged.charge_id]
    assert await billing.charges(BOB) == []

    with pytest.raises(grpc.aio.AioRpcError) as ended_before:
        await stub.ChargeReset(pb.ChargeResetRequest(reset=reset, idempotency_key="rst-story002"), metadata=md)
    assert ended_before.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rich_status(ended_before.value)[1].reason == "INSTANCE_USAGE_ENDED"


async def test_a_prepaid_instance_through_the_rpcs(billing: Server) -> None:
    stub, md = billing.stub, internal_metadata()
    prepaid = pricing(charge_type=pb.CHARGE_TYPE_PREPAID, months=3)
    await stub.CreateCharge(pb.CreateChargeRequest(launch=prepaid, idempotency_key="lch-prepaid1",
                                                   instance_ids=["ins-pre00001"]), metadata=md)
    billing.clock.advance(days=40)
    reset = pb.ResetPricing(instance_id="ins-pre00001", launch=pricing(image=WINDOWS_PB,
                                                                       charge_type=pb.CHARGE_TYPE_PREPAID, months=3),
                            launch_time=stamp(T0), effective_time=stamp(billing.clock.now()))
    charge = (await stub.ChargeReset(pb.ChargeResetRequest(reset=reset, idempotency_key="rst-prepaid1"),
                                     metadata=md)).charge
    assert [(l.kind, l.quantity, l.unit, decimal_of(l.amount)) for l in charge.quote.lines] == [
        (pb.LINE_KIND_IMAGE_LICENSE, 2, "instance-month", Decimal("47.00"))]
    assert charge.quote.charge_type == pb.CHARGE_TYPE_PREPAID
    assert (await stub.EndUsage(pb.EndUsageRequest(instance_ids=["ins-pre00001"]), metadata=md)).charges == []
    assert [c.kind for c in await billing.charges()] == [pb.CHARGE_KIND_LAUNCH, pb.CHARGE_KIND_RESET]


async def test_two_replicas_settling_in_the_background_charge_each_hour_once(serve: ServerFactory,
                                                                             database_url: str) -> None:
    clock = FakeClock(T0)
    settings = BillingSettings(database_url=database_url, internal_token=INTERNAL_SECRET,
                               usage_settle_interval_seconds=0.01)
    stubs = [pb_grpc.BillingServiceStub(grpc.aio.insecure_channel(await serve(partial(bootstrap, clock=clock),
                                                                              settings))) for _ in range(2)]
    ids = instance_ids(200)
    await asyncio.gather(*(stubs[n].CreateCharge(pb.CreateChargeRequest(
        launch=pricing(100), idempotency_key=f"lch-bulk{n:04d}", instance_ids=ids[n * 100:(n + 1) * 100]),
        metadata=internal_metadata()) for n in range(2)))
    clock.advance(hours=4, minutes=30)
    server = Server(stubs[0], clock)
    await server.settled(200)
    # an hour later, ending them on both replicas at once while both settle the hour that is now over
    clock.advance(hours=1)
    ended = await asyncio.gather(*(stubs[n % 2].EndUsage(pb.EndUsageRequest(instance_ids=ids[n * 50:n * 50 + 100]),
                                                         metadata=internal_metadata()) for n in range(3)))
    assert len({c.instance_ids[0] for e in ended for c in e.charges}) == sum(len(e.charges) for e in ended)
    engine = Database(database_url).engine
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(SEGMENTS).where(
            SEGMENTS.c.end_time.is_(None))).scalar_one() == 0
    engine.dispose()
    final = await server.charges()
    assert hours_of(final) == {i: 5 for i in ids}  # 6 started hours, the first paid by the launch
    spans = [(c.instance_ids[0], c.usage_start_time.seconds) for c in final if c.kind == pb.CHARGE_KIND_USAGE]
    assert len(spans) == len(set(spans))


async def expect(call: Awaitable[object], code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert refused.value.code() == code, refused.value.details()
    assert rich_status(refused.value)[1].reason == reason


async def test_the_metering_rpcs_refuse_bad_requests(billing: Server) -> None:
    stub, md = billing.stub, internal_metadata()
    bad = grpc.StatusCode.INVALID_ARGUMENT
    reset = pb.ResetPricing(instance_id="ins-r0000001", launch=pricing(image=WINDOWS_PB), launch_time=stamp(T0))
    await expect(stub.EndUsage(pb.EndUsageRequest(), metadata=md), bad, "INVALID_INSTANCE_IDS")
    await expect(stub.EndUsage(pb.EndUsageRequest(instance_ids=["ins-a"]), metadata=md), bad, "INVALID_ID")
    await expect(stub.EndUsage(pb.EndUsageRequest(instance_ids=instance_ids(101)), metadata=md), bad,
                 "INVALID_INSTANCE_IDS")
    await expect(stub.QuoteReset(pb.QuoteResetRequest(reset=pb.ResetPricing(
        instance_id="ins-r0000001", launch=pricing(2))), metadata=md), bad, "INVALID_INSTANCE_COUNT")
    await expect(stub.QuoteReset(pb.QuoteResetRequest(reset=pb.ResetPricing(
        instance_id="img-r0000001", launch=pricing())), metadata=md), bad, "INVALID_ID")
    await expect(stub.QuoteReset(pb.QuoteResetRequest(reset=pb.ResetPricing(
        instance_id="ins-r0000001", launch=pricing(charge_type=pb.CHARGE_TYPE_PREPAID, months=1))), metadata=md),
        bad, "LAUNCH_TIME_REQUIRED")
    await expect(stub.ChargeReset(pb.ChargeResetRequest(reset=reset), metadata=md), bad, "INVALID_IDEMPOTENCY_KEY")
    await expect(stub.ChargeReset(pb.ChargeResetRequest(reset=pb.ResetPricing(
        instance_id="ins-r0000001", launch=pb.LaunchPricing(region="ap-singapore", instance_type="S5.MEDIUM4",
                                                            instance_count=1, charge_type=pb.ChargeType.ValueType(9))),
        idempotency_key="rst-1"), metadata=md), bad, "INVALID_ENUM_VALUE")
    await stub.ChargeReset(pb.ChargeResetRequest(reset=reset, idempotency_key="rst-1"), metadata=md)
    other = pb.ResetPricing(instance_id="ins-r0000001", launch=pricing(), launch_time=stamp(T0))
    await expect(stub.ChargeReset(pb.ChargeResetRequest(reset=other, idempotency_key="rst-1"), metadata=md),
                 grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_PARAMETER_MISMATCH")
    spot = pb.ResetPricing(instance_id="ins-r0000001", launch=pricing(charge_type=pb.CHARGE_TYPE_SPOTPAID))
    await expect(stub.ChargeReset(pb.ChargeResetRequest(reset=spot, idempotency_key="rst-2"), metadata=md),
                 grpc.StatusCode.FAILED_PRECONDITION, "INSTANCE_PRICING_MISMATCH")
    far = pb.ResetPricing(instance_id="ins-r0000001", launch=pricing(),
                          effective_time=timestamp_pb2.Timestamp(seconds=10**12))
    await expect(stub.QuoteReset(pb.QuoteResetRequest(reset=far), metadata=md), bad, "INVALID_TIMESTAMP")

    await expect(stub.ListCharges(pb.ListChargesRequest(instance_id="ins-%%%%%%%%"), metadata=md), bad, "INVALID_ID")
    await expect(stub.ListCharges(pb.ListChargesRequest(start_time=stamp(T0 + HOUR), end_time=stamp(T0)),
                                  metadata=md), bad, "INVALID_TIME_RANGE")
    await expect(stub.ListCharges(pb.ListChargesRequest(page_token="garbage!"), metadata=md), bad,
                 "INVALID_PAGE_TOKEN")
    await stub.CreateCharge(pb.CreateChargeRequest(launch=pricing(), idempotency_key="lch-1",
                                                   instance_ids=["ins-r0000002"]), metadata=md)
    page = await stub.ListCharges(pb.ListChargesRequest(page_size=1), metadata=md)
    assert page.next_page_token  # the reset, then the launch
    await expect(stub.ListCharges(pb.ListChargesRequest(page_size=1, page_token=page.next_page_token,
                                                        instance_id="ins-r0000001"), metadata=md),
                 bad, "INVALID_PAGE_TOKEN")
    await expect(stub.ListCharges(pb.ListChargesRequest(page_size=1, page_token=page.next_page_token),
                                  metadata=internal_metadata(BOB)), bad, "INVALID_PAGE_TOKEN")


async def test_prices_are_listed_from_the_book(billing: Server) -> None:
    stub, md = billing.stub, internal_metadata()
    seen: list[pb.Price] = []
    token = ""
    while True:
        page: pb.ListPricesResponse = await stub.ListPrices(
            pb.ListPricesRequest(region="ap-singapore", page_size=10, page_token=token), metadata=md)
        seen += page.prices
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len({(p.kind, p.region, p.instance_type, p.marketplace_product_id, p.charge_type)
                             for p in seen})
    license_ = [p for p in seen if p.kind == pb.LINE_KIND_IMAGE_LICENSE]
    assert [(p.region, p.charge_type, decimal_of(p.unit_price), p.unit, p.description) for p in license_] == [
        ("ap-singapore", pb.CHARGE_TYPE_POSTPAID_BY_HOUR, LICENSE_HOUR, "instance-hour",
         "Windows Server license in ap-singapore"),
        ("ap-singapore", pb.CHARGE_TYPE_PREPAID, Decimal("23.50"), "instance-month",
         "Windows Server license in ap-singapore"),
        ("ap-singapore", pb.CHARGE_TYPE_SPOTPAID, LICENSE_HOUR, "instance-hour",
         "Windows Server license in ap-singapore")]
    assert {p.marketplace_product_id for p in seen if p.kind == pb.LINE_KIND_MARKETPLACE} == {
        "mp-bitnami-wordpress", "mp-bitnami-lamp", "mp-btpanel-linux"}
    instance = (await stub.ListPrices(pb.ListPricesRequest(region="ap-singapore", instance_type="S5.MEDIUM4",
                                                           charge_type=pb.CHARGE_TYPE_POSTPAID_BY_HOUR),
                                      metadata=md)).prices
    assert [(p.kind, p.instance_type, decimal_of(p.unit_price), p.unit_price.currency_code, p.description)
            for p in instance] == [(pb.LINE_KIND_INSTANCE, "S5.MEDIUM4", INSTANCE_HOUR, "USD",
                                    "S5.MEDIUM4 in ap-singapore (POSTPAID_BY_HOUR)")]
    await expect(stub.ListPrices(pb.ListPricesRequest(region="mars-1"), metadata=md), grpc.StatusCode.INVALID_ARGUMENT,
                 "UNKNOWN_REGION")
    await expect(stub.ListPrices(pb.ListPricesRequest(charge_type=pb.ChargeType.ValueType(7)), metadata=md),
                 grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ENUM_VALUE")
    await expect(stub.ListPrices(pb.ListPricesRequest(page_token="AAAA"), metadata=md),
                 grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


def test_the_settle_interval_must_be_positive() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        BillingSettings(internal_token=INTERNAL_SECRET, usage_settle_interval_seconds=0)
    assert BillingSettings(internal_token=INTERNAL_SECRET).usage_settle_interval_seconds == 60
    assert ChargeType.PREPAID.unit == "instance-month"
