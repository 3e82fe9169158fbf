"""Billing's metering, resets, listings and price list through its handlers, on a real SQLite database, with a
clock that moves by hours without sleeping."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, TypedDict, Unpack

import pytest
from sqlalchemy import delete, event, func, select

import billing_service
from billing_service.adapters.tables import CHARGES, SEGMENTS, TABLES
from billing_service.domain.metering import HOUR, Segment
from billing_service.domain.model import (
    Charge,
    ChargeFilter,
    ChargeKind,
    ChargeType,
    ImagePricing,
    LaunchPricing,
    LineKind,
    OsKind,
    Quote,
)
from billing_service.domain.price_book import load_price_book
from billing_service.domain.price_list import Price, PriceFilter, all_prices
from billing_service.domain.resets import ResetPricing
from billing_service.service_layer import handlers, ledger, usage
from billing_service.service_layer.handlers import UnitOfWorkFactory
from billing_service.service_layer.unit_of_work import BillingUnitOfWork
from chassis import pagination
from chassis.clock import FakeClock
from chassis.db import Database
from chassis.errors import DomainError, FailedPrecondition, InvalidArgument
from chassis.migrations import migrate

BOOK = load_price_book()
ALICE, BOB = "100000000001", "100000000002"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
LINUX = ImagePricing("img-linux001", OsKind.LINUX)
WINDOWS = ImagePricing("img-win00001", OsKind.WINDOWS)
# ap-singapore, S5.MEDIUM4, POSTPAID_BY_HOUR: the instance and the Windows license an hour
INSTANCE_HOUR, LICENSE_HOUR = Decimal("0.0696"), Decimal("0.0460")


class ChargeFilters(TypedDict, total=False):
    """ChargeFilter's fields, as keyword arguments."""

    instance_id: str
    start_time: datetime
    end_time: datetime


def instance_ids(n: int, prefix: str = "a") -> list[str]:
    return [f"ins-{prefix}{i:07d}" for i in range(n)]


@dataclass
class Billing:
    """The billing handlers of one replica: its own engine on a shared database, and a clock."""

    db: Database
    clock: FakeClock
    keys: Iterator[int] = field(default_factory=lambda: iter(range(1, 1_000_000)))

    @property
    def new_uow(self) -> UnitOfWorkFactory:
        return partial(BillingUnitOfWork, self.db)

    def launch(self, ids: list[str], *, charge_type: ChargeType = ChargeType.POSTPAID_BY_HOUR,
               image: ImagePricing = LINUX, region: str = "ap-singapore", months: int = 0, key: str = "",
               account: str = ALICE) -> Charge:
        pricing = LaunchPricing(region, "S5.MEDIUM4", len(ids), charge_type, months, image)
        return handlers.create_charge(pricing, key or f"lch-{next(self.keys):08d}", ids, account, book=BOOK,
                                      new_uow=self.new_uow, clock=self.clock)

    def settle(self, batch_size: int = usage.SETTLE_BATCH) -> int:
        return usage.settle_usage(new_uow=self.new_uow, clock=self.clock, batch_size=batch_size)

    def end(self, ids: list[str], end_time: datetime | None = None, account: str = ALICE) -> list[Charge]:
        return usage.end_usage(ids, end_time, account, new_uow=self.new_uow, clock=self.clock)

    def reset_of(self, instance_id: str, image: ImagePricing = WINDOWS, *,
                 charge_type: ChargeType = ChargeType.POSTPAID_BY_HOUR, region: str = "ap-singapore", months: int = 0,
                 effective: datetime | None = None, launched: datetime | None = T0) -> ResetPricing:
        return ResetPricing(instance_id, LaunchPricing(region, "S5.MEDIUM4", 1, charge_type, months, image), launched,
                            effective)

    def quote_reset(self, reset: ResetPricing, account: str = ALICE) -> Quote:
        return usage.quote_reset(reset, account, book=BOOK, new_uow=self.new_uow, clock=self.clock)

    def reset(self, reset: ResetPricing, key: str = "rst-00000001", account: str = ALICE) -> Charge:
        return usage.charge_reset(reset, key, account, book=BOOK, new_uow=self.new_uow, clock=self.clock)

    def list_charges(self, page_size: int = 0, page_token: str = "", account: str = ALICE,
                     **filters: Unpack[ChargeFilters]) -> tuple[list[Charge], str]:
        return ledger.list_charges(account, page_size, page_token, ChargeFilter(**filters), new_uow=self.new_uow,
                                   clock=self.clock)

    def charges(self, account: str = ALICE, **filters: Unpack[ChargeFilters]) -> list[Charge]:
        found, token = self.list_charges(1000, account=account, **filters)
        assert not token
        return found

    def ledger(self, kind: ChargeKind | None = None) -> list[Charge]:
        """Every stored charge of every account, in ledger order."""
        with self.new_uow(read_only=True) as uow:
            charges = [c for account in (ALICE, BOB) for _, c in uow.charges.of_account(account, None, 100_000)]
        return [c for c in charges if kind is None or c.kind is kind]

    def segments(self, instance_id: str, account: str = ALICE) -> list[Segment]:
        with self.new_uow(read_only=True) as uow:
            return uow.meters.of_instance(account, instance_id)


def usage_hours(charges: list[Charge]) -> dict[str, int]:
    """Instance-hours of usage per instance (the INSTANCE line's quantity of each USAGE charge)."""
    hours: dict[str, int] = {}
    for charge in charges:
        if charge.kind is ChargeKind.USAGE:
            line = next(l for l in charge.quote.lines if l.kind is LineKind.INSTANCE)
            hours[charge.instance_ids[0]] = hours.get(charge.instance_ids[0], 0) + line.quantity
    return hours


def assert_hours_tile(charges: list[Charge]) -> None:
    """Per instance, the usage charges cover back-to-back hours, none twice."""
    by_instance: dict[str, list[Charge]] = {}
    for charge in charges:
        if charge.kind is ChargeKind.USAGE:
            by_instance.setdefault(charge.instance_ids[0], []).append(charge)
    for found in by_instance.values():
        spans = sorted((c.usage_start_time, c.usage_end_time) for c in found)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end is not None
            assert start is not None
            assert end <= start


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/billing.db")
    migrate(database, Path(billing_service.__file__).parent, "billing", TABLES)
    yield database
    database.dispose()


@pytest.fixture
def billing(db: Database) -> Billing:
    return Billing(db, FakeClock(T0))


def refused(kind: type[DomainError], call: Callable[..., object], *args: Any, **kwargs: Any) -> DomainError:
    with pytest.raises(kind) as caught:
        call(*args, **kwargs)
    return caught.value


def test_a_launch_meters_each_instance_from_its_charge_in_one_insert(billing: Billing, db: Database) -> None:
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute",
                 lambda _conn, _cursor, statement, *_: statements.append(statement))
    charge = billing.launch(instance_ids(100), key="lch-hundred1")
    assert sum(s.startswith("INSERT INTO billing_meter_segment") for s in statements) == 1
    segments = billing.segments("ins-a0000042")
    assert [(s.segment_no, s.start_time, s.hours_billed, s.next_settle_time, s.end_time) for s in segments] == [
        (0, charge.create_time, 1, charge.create_time + 2 * HOUR, None)]
    assert [(p.kind, p.unit_price, p.unit) for p in segments[0].prices] == [
        (LineKind.INSTANCE, INSTANCE_HOUR, "instance-hour")]
    assert billing.launch(instance_ids(100), key="lch-hundred1") == charge  # a replay meters nothing more
    with billing.new_uow(read_only=True) as uow:
        assert uow.connection.execute(select(func.count()).select_from(SEGMENTS)).scalar_one() == 100


def test_a_voided_launch_is_never_charged_nor_metered(billing: Billing) -> None:
    assert handlers.resolve_charge("lch-voided01", ALICE, new_uow=billing.new_uow, clock=billing.clock) is None
    error = refused(FailedPrecondition, billing.launch, ["ins-void0001"], key="lch-voided01")
    assert error.reason == "LAUNCH_VOIDED"
    assert billing.segments("ins-void0001") == []
    assert billing.ledger() == []


@pytest.mark.parametrize(("ids", "key"), [
    (["ins-dup00001", "ins-dup00001"], "lch-dup00001"),
    (["x" * 33], "lch-long0001"),
    ([f"ins-{n:08d}" for n in range(101)], "lch-many0001"),
    (["ins-a0000001"], "usage:ins-a0000001:0:1"),  # usage charges' keys are the ledger's own
])
def test_a_launch_whose_meters_could_not_be_kept_is_refused(billing: Billing, ids: list[str], key: str) -> None:
    error = refused(InvalidArgument, billing.launch, ids, key=key)
    assert error.reason in ("INVALID_INSTANCE_IDS", "INVALID_IDEMPOTENCY_KEY")
    assert billing.ledger() == []


def test_usage_is_settled_once_per_completed_hour(billing: Billing) -> None:
    ids = instance_ids(3)
    billing.launch(ids)
    billing.clock.advance(hours=2, minutes=10)
    assert billing.settle() == 3  # hour 0 was paid by the launch, hour 1 is over
    settled = billing.ledger(ChargeKind.USAGE)
    assert sorted(c.instance_ids[0] for c in settled) == ids
    for charge in settled:
        assert (charge.usage_start_time, charge.usage_end_time) == (T0 + HOUR, T0 + 2 * HOUR)
        assert charge.create_time == billing.clock.now()
        assert charge.charge_id.startswith("chg-")
        assert [(l.kind, l.quantity, l.unit, l.amount) for l in charge.quote.lines] == [
            (LineKind.INSTANCE, 1, "instance-hour", INSTANCE_HOUR)]
        assert charge.quote.charge_type is ChargeType.POSTPAID_BY_HOUR
        assert charge.region == "ap-singapore"
    assert billing.settle() == 0  # at once again: nothing
    billing.clock.advance(hours=3)  # 5 h 10 min: hours 2, 3 and 4 are over, in one charge each
    assert billing.settle() == 3
    assert usage_hours(billing.ledger()) == {i: 4 for i in ids}
    assert [s.next_settle_time for s in billing.segments(ids[0])] == [T0 + 6 * HOUR]


def test_settlement_reads_the_due_segments_in_batches(billing: Billing) -> None:
    ids = instance_ids(7)
    billing.launch(ids[:3])
    billing.clock.advance(minutes=30)
    billing.launch(ids[3:])
    billing.clock.advance(hours=2)
    assert billing.settle(batch_size=2) == 7
    assert usage_hours(billing.ledger()) == {**{i: 1 for i in ids[:3]}, **{i: 1 for i in ids[3:]}}
    assert billing.settle(batch_size=2) == 0


def test_accrued_usage_follows_the_ledger_until_it_is_settled(billing: Billing) -> None:
    ids = instance_ids(3)
    launch = billing.launch(ids)
    billing.clock.advance(hours=2, minutes=10)
    listed = billing.charges()
    assert [c.kind for c in listed] == [ChargeKind.LAUNCH] + [ChargeKind.ACCRUED_USAGE] * 3
    assert listed[0] == launch
    for accrued, instance_id in zip(listed[1:], ids, strict=True):
        assert accrued.charge_id == ""
        assert accrued.instance_ids == (instance_id,)
        assert (accrued.usage_start_time, accrued.usage_end_time) == (T0 + HOUR, billing.clock.now())
        assert accrued.create_time == billing.clock.now()
        assert [(l.quantity, l.amount) for l in accrued.quote.lines] == [(2, 2 * INSTANCE_HOUR)]  # hours 1 and 2
    billing.settle()
    after = billing.charges()
    assert [c.kind for c in after] == [ChargeKind.LAUNCH] + [ChargeKind.USAGE] * 3 + [ChargeKind.ACCRUED_USAGE] * 3
    assert {(c.usage_start_time, c.quote.lines[0].quantity) for c in after[4:]} == {(T0 + 2 * HOUR, 1)}
    billing.clock.advance(minutes=50)  # 3 h exactly: hour 2 is over, hour 3 not begun
    billing.settle()
    assert [c.kind for c in billing.charges()] == [ChargeKind.LAUNCH] + [ChargeKind.USAGE] * 6


def test_a_reset_changes_the_price_from_its_effective_time_and_termination_settles_the_started_hours(
        billing: Billing) -> None:
    (instance,) = instance_ids(1)
    billing.launch([instance])
    billing.clock.advance(hours=1, minutes=30)
    reset = billing.reset_of(instance, WINDOWS)
    quoted = billing.quote_reset(reset)
    assert [(l.kind, l.quantity, l.unit_price) for l in quoted.lines] == [
        (LineKind.INSTANCE, 1, INSTANCE_HOUR), (LineKind.IMAGE_LICENSE, 1, LICENSE_HOUR)]
    assert billing.ledger(ChargeKind.RESET) == []  # a quote records nothing
    charge = billing.reset(reset, "rst-windows1")
    assert charge.kind is ChargeKind.RESET
    assert charge.instance_ids == (instance,)
    assert charge.quote == quoted
    assert charge.quote.total == INSTANCE_HOUR + LICENSE_HOUR
    (old_usage,) = billing.ledger(ChargeKind.USAGE)  # hour 1 had begun: at the old (Linux) price
    assert (old_usage.usage_start_time, old_usage.usage_end_time) == (T0 + HOUR, T0 + 2 * HOUR)
    assert old_usage.quote.total == INSTANCE_HOUR
    old, new = billing.segments(instance)
    assert (old.end_time, old.hours_billed, old.next_settle_time) == (T0 + timedelta(hours=1, minutes=30), 2, None)
    assert (new.segment_no, new.start_time, new.hours_billed) == (1, T0 + timedelta(hours=1, minutes=30), 1)

    assert billing.reset(reset, "rst-windows1") == charge  # a retry: the first charge, nothing more
    assert len(billing.ledger()) == 3
    other = billing.reset_of(instance, LINUX)
    assert refused(FailedPrecondition, billing.reset, other, "rst-windows1").reason == "IDEMPOTENCY_PARAMETER_MISMATCH"
    launch_key = billing.ledger(ChargeKind.LAUNCH)[0].idempotency_key
    assert refused(FailedPrecondition, billing.reset, other, launch_key).reason == "IDEMPOTENCY_PARAMETER_MISMATCH"

    billing.clock.advance(hours=1, minutes=35)  # terminated at 3 h 5 min: hour 1 of the new segment had begun
    (ended,) = billing.end([instance])
    assert ended.kind is ChargeKind.USAGE
    assert ended.quote.total == INSTANCE_HOUR + LICENSE_HOUR
    assert (ended.usage_start_time, ended.usage_end_time) == (T0 + timedelta(hours=2, minutes=30),
                                                              T0 + timedelta(hours=3, minutes=30))
    assert billing.end([instance]) == []  # idempotent
    assert billing.settle() == 0
    assert [c.kind for c in billing.charges()] == [
        ChargeKind.LAUNCH, ChargeKind.USAGE, ChargeKind.RESET, ChargeKind.USAGE]
    error = refused(FailedPrecondition, billing.reset, other, "rst-linux001")
    assert error.reason == "INSTANCE_USAGE_ENDED"
    assert refused(FailedPrecondition, billing.quote_reset, other).reason == "INSTANCE_USAGE_ENDED"


def test_termination_settles_the_started_hours_not_billed_yet(billing: Billing) -> None:
    ids = instance_ids(3)
    billing.launch(ids)
    billing.clock.advance(hours=2, minutes=10)
    billing.settle()
    billing.clock.advance(minutes=55)  # 3 h 5 min
    ended = billing.end([*list(reversed(ids)), ids[0]])  # in any order, an id twice
    assert sorted(c.instance_ids[0] for c in ended) == ids
    assert {(c.usage_start_time, c.usage_end_time, c.quote.lines[0].quantity) for c in ended} == {
        (T0 + 2 * HOUR, T0 + 4 * HOUR, 2)}
    assert usage_hours(billing.ledger()) == {i: 3 for i in ids}  # with the launch's: 4 started hours
    assert billing.end(ids) == []
    assert billing.settle() == 0
    assert all(s.end_time == T0 + timedelta(hours=3, minutes=5) for i in ids for s in billing.segments(i))


@pytest.mark.parametrize(("end_after", "hours"), [
    (timedelta(hours=-1), 0),  # before the launch: its first hour, paid by the launch
    (timedelta(0), 0),
    (HOUR, 0),
    (HOUR + timedelta(microseconds=1), 1),
    (timedelta(hours=2, minutes=59), 2),
    (timedelta(hours=50), 4),  # never after now (4 h 30 min)
])
def test_the_end_of_usage_is_within_the_segment_and_not_after_now(billing: Billing, end_after: timedelta,
                                                                  hours: int) -> None:
    billing.launch(["ins-end00001"])
    billing.clock.advance(hours=4, minutes=30)
    ended = billing.end(["ins-end00001"], T0 + end_after)
    assert usage_hours(ended) == ({"ins-end00001": hours} if hours else {})
    assert billing.segments("ins-end00001")[0].end_time == min(max(T0 + end_after, T0), billing.clock.now())


def test_ending_usage_touches_only_the_callers_metered_instances(billing: Billing) -> None:
    billing.launch(["ins-bob00001"], account=BOB)
    billing.clock.advance(hours=3)
    assert billing.end(["ins-bob00001", "ins-never001"]) == []  # not alice's, and never metered
    assert billing.segments("ins-bob00001", BOB)[0].end_time is None
    assert usage_hours(billing.end(["ins-bob00001"], account=BOB)) == {"ins-bob00001": 2}


@pytest.mark.parametrize(("ids", "reason"), [
    ([], "INVALID_INSTANCE_IDS"),
    (instance_ids(101), "INVALID_INSTANCE_IDS"),
    (["ins-a0000001", "ins-BAD00001"], "INVALID_ID"),
    (["ins-a"], "INVALID_ID"),
])
def test_bad_ends_of_usage_are_refused(billing: Billing, ids: list[str], reason: str) -> None:
    assert refused(InvalidArgument, billing.end, ids).reason == reason


def test_a_prepaid_instance_is_never_metered_and_a_reset_pays_the_new_images_lines_for_the_months_left(
        billing: Billing) -> None:
    ids = instance_ids(2)
    launch = billing.launch(ids, charge_type=ChargeType.PREPAID, months=3)
    assert launch.quote.total == 2 * 3 * Decimal("35.08")
    assert billing.segments(ids[0])[0].prepaid_until == datetime(2026, 4, 1, tzinfo=UTC)
    billing.clock.advance(days=40)
    assert billing.settle() == 0
    assert billing.charges() == [launch]
    reset = billing.reset_of(ids[0], WINDOWS, charge_type=ChargeType.PREPAID, months=3)
    charge = billing.reset(reset)
    assert [(l.kind, l.quantity, l.unit, l.amount) for l in charge.quote.lines] == [
        (LineKind.IMAGE_LICENSE, 2, "instance-month", 2 * Decimal("23.50"))]  # February (begun) and March
    old, new = billing.segments(ids[0])
    assert old.end_time == new.start_time == billing.clock.now()
    assert new.prepaid_until == old.prepaid_until
    assert new.next_settle_time is None
    assert [p.kind for p in new.prices] == [LineKind.INSTANCE, LineKind.IMAGE_LICENSE]
    assert billing.end(ids) == []  # PREPAID segments just close
    assert all(s.end_time is not None for i in ids for s in billing.segments(i))
    assert [c.kind for c in billing.charges()] == [ChargeKind.LAUNCH, ChargeKind.RESET]


def test_a_prepaid_reset_after_the_period_is_recorded_at_no_cost(billing: Billing) -> None:
    billing.launch(["ins-pre00001"], charge_type=ChargeType.PREPAID, months=1)
    billing.clock.advance(days=45)
    charge = billing.reset(billing.reset_of("ins-pre00001", WINDOWS, charge_type=ChargeType.PREPAID, months=1))
    assert charge.quote.lines == ()
    assert charge.quote.total == 0
    assert billing.ledger(ChargeKind.RESET) == [charge]


def test_an_instance_launched_before_meters_is_metered_from_its_first_reset(billing: Billing, db: Database) -> None:
    billing.launch(["ins-old00001"])
    with db.engine.begin() as connection:  # as a launch charged before meters existed
        connection.execute(delete(SEGMENTS))
    billing.clock.advance(hours=5)
    assert billing.end(["ins-old00001"]) == []  # never metered: left alone
    billing.clock.advance(hours=1)
    reset = billing.reset_of("ins-old00001", WINDOWS, effective=T0 + timedelta(hours=5, minutes=30))
    charge = billing.reset(reset)
    assert charge.quote.total == INSTANCE_HOUR + LICENSE_HOUR
    assert billing.ledger(ChargeKind.USAGE) == []
    (first,) = billing.segments("ins-old00001")
    assert (first.segment_no, first.start_time, first.hours_billed) == (0, T0 + timedelta(hours=5, minutes=30), 1)
    billing.clock.advance(hours=1)  # 7 h: the hours from 5 h 30 min to 7 h 30 min have begun
    assert usage_hours(billing.end(["ins-old00001"])) == {"ins-old00001": 1}


@pytest.mark.parametrize(("reset", "key", "reason"), [
    (ResetPricing("ins-r0000001", LaunchPricing("ap-singapore", "S5.MEDIUM4", 2, ChargeType.POSTPAID_BY_HOUR, 0,
                                                WINDOWS), T0, None), "rst-00000001", "INVALID_INSTANCE_COUNT"),
    (ResetPricing("ins-r0000001", LaunchPricing("ap-nowhere", "S5.MEDIUM4", 1, ChargeType.POSTPAID_BY_HOUR, 0,
                                                WINDOWS), T0, None), "rst-00000001", "UNKNOWN_REGION"),
    (ResetPricing("not-an-id", LaunchPricing("ap-singapore", "S5.MEDIUM4", 1, ChargeType.POSTPAID_BY_HOUR, 0,
                                             WINDOWS), T0, None), "rst-00000001", "INVALID_ID"),
    (ResetPricing("ins-r0000001", LaunchPricing("ap-singapore", "S5.MEDIUM4", 1, ChargeType.POSTPAID_BY_HOUR, 0,
                                                WINDOWS), T0, None), "", "INVALID_IDEMPOTENCY_KEY"),
])
def test_bad_resets_are_refused_and_record_nothing(billing: Billing, reset: ResetPricing, key: str,
                                                   reason: str) -> None:
    billing.launch(["ins-r0000001"])
    assert refused(InvalidArgument, billing.reset, reset, key).reason == reason
    assert [c.kind for c in billing.ledger()] == [ChargeKind.LAUNCH]


def test_a_reset_must_keep_the_instances_region_type_and_charge_type(billing: Billing) -> None:
    billing.launch(["ins-r0000001"])
    spot = billing.reset_of("ins-r0000001", charge_type=ChargeType.SPOTPAID)
    assert refused(FailedPrecondition, billing.reset, spot).reason == "INSTANCE_PRICING_MISMATCH"


def story(billing: Billing) -> dict[str, Charge]:
    """Two launches, a reset, settled usage and accrued usage."""
    first = billing.launch(["ins-a0000001", "ins-a0000002"])
    billing.clock.advance(minutes=30)
    second = billing.launch(["ins-b0000001"])
    billing.clock.advance(hours=1)
    reset = billing.reset(billing.reset_of("ins-a0000001", WINDOWS))
    billing.clock.advance(hours=1, minutes=10)  # 2 h 40 min
    billing.settle()
    return {"first": first, "second": second, "reset": reset}


def test_charges_are_filtered_by_instance_and_time(billing: Billing) -> None:
    made = story(billing)
    everything = billing.charges()
    # the launches; ins-a0000001's hour 1 at the reset, and the reset; hour 1 of the others settled; then
    # what each has accrued (ins-a0000001: the second hour from its reset, which has begun)
    assert [c.kind for c in everything] == (
        [ChargeKind.LAUNCH] * 2 + [ChargeKind.USAGE, ChargeKind.RESET] + [ChargeKind.USAGE] * 2
        + [ChargeKind.ACCRUED_USAGE] * 3)
    of_a1 = billing.charges(instance_id="ins-a0000001")
    assert [c.kind for c in of_a1] == [ChargeKind.LAUNCH, ChargeKind.USAGE, ChargeKind.RESET,
                                       ChargeKind.ACCRUED_USAGE]
    assert of_a1[0] == made["first"]
    assert of_a1[2] == made["reset"]
    of_b1 = billing.charges(instance_id="ins-b0000001")
    assert [c.kind for c in of_b1] == [ChargeKind.LAUNCH, ChargeKind.USAGE, ChargeKind.ACCRUED_USAGE]
    assert all(c.instance_ids == ("ins-b0000001",) for c in of_b1)
    assert billing.charges(instance_id="ins-a0000009") == []

    launched_later = T0 + timedelta(minutes=30)
    assert billing.charges(start_time=launched_later, end_time=launched_later + HOUR) == [made["second"]]
    assert billing.charges(end_time=launched_later) == [made["first"]]  # end_time is exclusive
    now = billing.clock.now()
    assert [c.kind for c in billing.charges(start_time=now)] == [ChargeKind.USAGE] * 2 + [
        ChargeKind.ACCRUED_USAGE] * 3  # settled at now, and accrued as of now
    assert billing.charges(start_time=now + timedelta(microseconds=1)) == []
    assert [c.kind for c in billing.charges(end_time=now)] == [
        ChargeKind.LAUNCH] * 2 + [ChargeKind.USAGE, ChargeKind.RESET]
    assert billing.charges(account=BOB) == []


@pytest.mark.parametrize(("filters", "reason"), [
    ({"instance_id": "ins-%"}, "INVALID_ID"),
    ({"instance_id": "ins-a000000_"}, "INVALID_ID"),
    ({"start_time": T0 + HOUR, "end_time": T0}, "INVALID_TIME_RANGE"),
])
def test_bad_charge_filters_are_refused(billing: Billing, filters: ChargeFilters, reason: str) -> None:
    assert refused(InvalidArgument, billing.list_charges, **filters).reason == reason


@pytest.mark.parametrize("filters", [{}, {"instance_id": "ins-a0000002"}, {"start_time": T0 + timedelta(minutes=1)}])
def test_pages_of_charges_run_through_the_ledger_then_the_accrued_usage(billing: Billing,
                                                                        filters: ChargeFilters) -> None:
    story(billing)
    everything = billing.charges(**filters)
    for size in range(1, len(everything) + 2):
        seen: list[Charge] = []
        token, pages = "", 0
        while True:
            page, token = billing.list_charges(size, token, **filters)
            assert len(page) <= size
            seen += page
            pages += 1
            if not token:
                break
        assert seen == everything
        assert pages == max(1, -(-len(everything) // size))


def _forged(key: object, print_: str) -> str:
    import base64
    import json

    raw = json.dumps({"k": key, "f": print_}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_page_tokens_are_bound_to_their_filters_and_forged_ones_are_refused(billing: Billing) -> None:
    story(billing)
    _, token = billing.list_charges(1, instance_id="ins-a0000001")
    assert refused(InvalidArgument, billing.list_charges, 1, token).reason == "INVALID_PAGE_TOKEN"
    assert refused(InvalidArgument, billing.list_charges, 1, token,
                   instance_id="ins-a0000002").reason == "INVALID_PAGE_TOKEN"
    _, token = billing.list_charges(1)
    assert refused(InvalidArgument, billing.list_charges, 1, token, account=BOB).reason == "INVALID_PAGE_TOKEN"
    plain = pagination.fingerprint("charges", ALICE)
    for forged in ["!!!", "x" * 10_000, _forged("X1", plain), _forged("A", plain), _forged("L-1", plain),
                   _forged("L1e3", plain), _forged(7, plain), _forged(["L1"], plain), _forged("A" + "9" * 19, plain),
                   _forged("L\x00", plain), _forged("L1", "0" * 16)]:
        assert refused(InvalidArgument, billing.list_charges, 1, forged).reason == "INVALID_PAGE_TOKEN", forged
    # a ledger token from before accrued usage was listed (a bare seq) goes on where it was
    first = billing.charges()[0]
    page, _ = billing.list_charges(1, _forged("1", plain))
    assert page
    assert page[0] != first
    assert page[0] == billing.charges()[1]
    assert billing.list_charges(1, _forged("A999", plain)) == ([], "")


def test_the_price_list_is_filtered_and_paged(billing: Billing) -> None:
    prices = all_prices(BOOK)

    def listing(filters: PriceFilter, size: int = 0) -> list[Price]:
        seen: list[Price] = []
        token = ""
        while True:
            page, token = handlers.list_prices(filters, size, token, book=BOOK, prices=prices)
            assert len(page) <= (size or pagination.DEFAULT_PAGE_SIZE)
            seen += page
            if not token:
                return seen

    assert listing(PriceFilter()) == prices == listing(PriceFilter(), 7) == listing(PriceFilter(), 5000)
    first, token = handlers.list_prices(PriceFilter(), 0, "", book=BOOK, prices=prices)
    assert len(first) == 50
    assert token
    singapore = listing(PriceFilter("ap-singapore", ChargeType.SPOTPAID), 4)
    assert {(p.kind, p.region) for p in singapore} == {
        (LineKind.INSTANCE, "ap-singapore"), (LineKind.IMAGE_LICENSE, "ap-singapore"), (LineKind.MARKETPLACE, "")}
    assert all(p.charge_type is ChargeType.SPOTPAID for p in singapore)
    assert len([p for p in singapore if p.kind is LineKind.INSTANCE]) == len(BOOK.instance_prices["ap-singapore"])
    medium = listing(PriceFilter("ap-guangzhou", instance_type="S5.MEDIUM4"))
    assert [(p.kind, p.charge_type, p.unit_price, p.unit) for p in medium] == [
        (LineKind.INSTANCE, ChargeType.POSTPAID_BY_HOUR, Decimal("0.0580"), "instance-hour"),
        (LineKind.INSTANCE, ChargeType.PREPAID, Decimal("29.23"), "instance-month"),
        (LineKind.INSTANCE, ChargeType.SPOTPAID, Decimal("0.0174"), "instance-hour")]
    assert listing(PriceFilter("ap-hongkong", instance_type="SR1.MEDIUM4")) == []  # not offered there


def test_bad_price_listings_are_refused() -> None:
    prices = all_prices(BOOK)
    _, token = handlers.list_prices(PriceFilter(), 3, "", book=BOOK, prices=prices)
    spot = pagination.fingerprint("prices", "", "", "")
    for filters, size, page_token, reason in [
        (PriceFilter("ap-nowhere"), 0, "", "UNKNOWN_REGION"),
        (PriceFilter(instance_type="S5.GIGANTIC"), 0, "", "UNKNOWN_INSTANCE_TYPE"),
        (PriceFilter(), -1, "", "INVALID_PAGE_SIZE"),
        (PriceFilter("ap-singapore"), 3, token, "INVALID_PAGE_TOKEN"),  # made for other filters
        (PriceFilter(), 3, "%%%", "INVALID_PAGE_TOKEN"),
        (PriceFilter(), 3, _forged("[0, 1]", spot), "INVALID_PAGE_TOKEN"),
        (PriceFilter(), 3, _forged("[true, \"a\", \"b\", 0]", spot), "INVALID_PAGE_TOKEN"),
        (PriceFilter(), 3, _forged("[0, \"a\", \"b\", 99]", spot), "INVALID_PAGE_TOKEN"),
        (PriceFilter(), 3, _forged("{\"a\": 1, \"b\": 2, \"c\": 3, \"d\": 4}", spot), "INVALID_PAGE_TOKEN"),
        (PriceFilter(), 3, _forged("not json", spot), "INVALID_PAGE_TOKEN"),
    ]:
        with pytest.raises(InvalidArgument) as invalid:
            handlers.list_prices(filters, size, page_token, book=BOOK, prices=prices)
        assert invalid.value.reason == reason, (filters, page_token)


def test_a_settlement_run_that_dies_midway_ends_with_the_same_ledger_when_run_again(billing: Billing,
                                                                                   db: Database) -> None:
    ids = instance_ids(10)
    billing.launch(ids)
    billing.clock.advance(hours=3, minutes=1)
    commits = 0

    class Killed(BaseException):
        """The process dies: no handler runs."""

    class DyingUnitOfWork(BillingUnitOfWork):
        def commit(self) -> None:
            nonlocal commits
            commits += 1
            if commits == 4:
                raise Killed
            super().commit()

    with pytest.raises(Killed):
        usage.settle_usage(new_uow=partial(DyingUnitOfWork, db), clock=billing.clock)
    assert len(billing.ledger(ChargeKind.USAGE)) == 3
    assert billing.settle() == 7
    assert usage_hours(billing.ledger()) == {i: 2 for i in ids}
    assert_hours_tile(billing.ledger())
    with db.engine.connect() as connection:
        keys = connection.execute(select(CHARGES.c.idempotency_key).where(CHARGES.c.kind == "USAGE")).scalars().all()
    assert sorted(keys) == sorted(f"usage:{i}:0:1" for i in ids)
