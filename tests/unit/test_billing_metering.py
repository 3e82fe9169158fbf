"""Billing's metering rules, without I/O: hours, calendar months, usage of segments, reset quotes, the
price list."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_service.domain.metering import (
    HOUR,
    Segment,
    accrued_usage,
    add_months,
    clamp,
    completed_hours,
    final_usage,
    launch_segment,
    months_left,
    settled_usage,
    started_hours,
)
from billing_service.domain.model import ChargeType, ImagePricing, LaunchPricing, LineKind, OsKind
from billing_service.domain.price_book import load_price_book
from billing_service.domain.price_list import PriceFilter, all_prices
from billing_service.domain.resets import ResetPricing, plan_reset
from chassis.errors import FailedPrecondition, InvalidArgument

BOOK = load_price_book()
ALICE = "100000000001"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
LINUX = ImagePricing("img-linux001", OsKind.LINUX)
WINDOWS = ImagePricing("img-win00001", OsKind.WINDOWS)
WORDPRESS = ImagePricing("img-wordp001", OsKind.LINUX, "mp-bitnami-wordpress")
US = timedelta(microseconds=1)


def launch(charge_type: ChargeType = ChargeType.POSTPAID_BY_HOUR, image: ImagePricing = LINUX, *, count: int = 1,
           region: str = "ap-singapore", months: int = 0) -> LaunchPricing:
    return LaunchPricing(region, "S5.MEDIUM4", count, charge_type, months, image)


def segment(charge_type: ChargeType = ChargeType.POSTPAID_BY_HOUR, image: ImagePricing = LINUX, *,
            start: datetime = T0, months: int = 0, region: str = "ap-singapore") -> Segment:
    pricing = launch(charge_type, image, months=months, region=region)
    return replace(launch_segment(ALICE, pricing, BOOK.quote(pricing), start), instance_id="ins-aaaaaaa1")


@pytest.mark.parametrize(("elapsed", "completed", "started"), [
    (timedelta(0), 0, 0),
    (US, 0, 1),
    (HOUR - US, 0, 1),
    (HOUR, 1, 1),
    (HOUR + US, 1, 2),
    (timedelta(hours=2, minutes=10), 2, 3),
    (-HOUR, 0, 0),  # before the start nothing has begun
])
def test_hours_are_whole_and_exact_to_the_microsecond(elapsed: timedelta, completed: int, started: int) -> None:
    assert completed_hours(T0, T0 + elapsed) == completed
    assert started_hours(T0, T0 + elapsed) == started


@pytest.mark.parametrize(("moment", "months", "expected"), [
    (datetime(2026, 1, 31, 9, 30, tzinfo=UTC), 1, datetime(2026, 2, 28, 9, 30, tzinfo=UTC)),
    (datetime(2028, 1, 31, tzinfo=UTC), 1, datetime(2028, 2, 29, tzinfo=UTC)),  # a leap year
    (datetime(2026, 3, 31, tzinfo=UTC), 1, datetime(2026, 4, 30, tzinfo=UTC)),
    (datetime(2026, 11, 15, tzinfo=UTC), 2, datetime(2027, 1, 15, tzinfo=UTC)),
    (datetime(2026, 12, 31, tzinfo=UTC), 12, datetime(2027, 12, 31, tzinfo=UTC)),
    (datetime(2026, 1, 31, tzinfo=UTC), 60, datetime(2031, 1, 31, tzinfo=UTC)),
    (datetime(2027, 2, 28, tzinfo=UTC), 24, datetime(2029, 2, 28, tzinfo=UTC)),
])
def test_months_are_calendar_months_ending_on_the_last_day_of_a_shorter_month(moment: datetime, months: int,
                                                                              expected: datetime) -> None:
    assert add_months(moment, months) == expected


@pytest.mark.parametrize(("moment", "end", "expected"), [
    (T0, add_months(T0, 3), 3),  # at the start: the whole period
    (T0 + timedelta(days=40), add_months(T0, 3), 2),  # February in progress, and March
    (add_months(T0, 2) - US, add_months(T0, 3), 2),
    (add_months(T0, 2), add_months(T0, 3), 1),
    (add_months(T0, 3) - US, add_months(T0, 3), 1),
    (add_months(T0, 3), add_months(T0, 3), 0),  # over
    (add_months(T0, 5), add_months(T0, 3), 0),
    (datetime(2026, 1, 31, 10, tzinfo=UTC), datetime(2026, 2, 28, 9, tzinfo=UTC), 1),
    (T0, add_months(T0, 60), 60),
])
def test_the_months_left_count_the_month_in_progress_whole(moment: datetime, end: datetime, expected: int) -> None:
    assert months_left(moment, end) == expected


def test_an_end_is_clamped_to_the_segment_and_to_now() -> None:
    now = T0 + 5 * HOUR
    assert clamp(None, T0, now) == now
    assert clamp(T0 - HOUR, T0, now) == T0
    assert clamp(T0 + 2 * HOUR, T0, now) == T0 + 2 * HOUR
    assert clamp(now + HOUR, T0, now) == now


def test_an_hourly_segment_starts_with_its_first_hour_paid_and_settles_completed_hours() -> None:
    s = segment()
    assert s.hours_billed == 1
    assert s.next_settle_time == T0 + 2 * HOUR
    assert s.prepaid_until is None
    assert settled_usage(s, T0 + 2 * HOUR - US) is None  # hour 1 is not over yet
    usage = settled_usage(s, T0 + timedelta(hours=2, minutes=10))
    assert usage is not None
    assert (usage.first_hour, usage.end_hour) == (1, 2)
    assert (usage.start_time, usage.end_time) == (T0 + HOUR, T0 + 2 * HOUR)
    assert usage.idempotency_key == "usage:ins-aaaaaaa1:0:1"
    quote = usage.quote()
    assert [(l.kind, l.quantity, l.unit, l.unit_price) for l in quote.lines] == [
        (LineKind.INSTANCE, 1, "instance-hour", Decimal("0.0696"))]


def test_a_segment_that_ends_pays_its_started_hours_and_at_least_one() -> None:
    s = segment(image=WINDOWS)
    usage = final_usage(s, T0 + timedelta(hours=3, minutes=5))
    assert usage is not None
    assert (usage.first_hour, usage.end_hour) == (1, 4)
    assert usage.quote().total == 3 * (Decimal("0.0696") + Decimal("0.0460"))
    assert final_usage(s, T0) is None  # ended at once: the first hour, which the launch paid
    assert final_usage(s, T0 + HOUR) is None
    billed = s.closed(T0 + 3 * HOUR, 3)
    assert billed.next_settle_time is None
    assert final_usage(billed, T0 + 4 * HOUR) is None


def test_accrued_usage_is_the_started_hours_not_billed() -> None:
    s = segment()
    assert accrued_usage(s, T0 + HOUR) is None
    usage = accrued_usage(s, T0 + timedelta(hours=2, minutes=10))
    assert usage is not None
    assert (usage.first_hour, usage.end_hour) == (1, 3)


def test_a_prepaid_segment_runs_to_the_end_of_its_period_and_is_never_metered() -> None:
    s = segment(ChargeType.PREPAID, start=datetime(2026, 1, 31, 12, tzinfo=UTC), months=1)
    assert s.prepaid_until == datetime(2026, 2, 28, 12, tzinfo=UTC)
    assert s.hours_billed == 0
    assert s.next_settle_time is None
    later = datetime(2026, 6, 1, tzinfo=UTC)
    assert settled_usage(s, later) is None
    assert final_usage(s, later) is None
    assert accrued_usage(s, later) is None


@given(settles=st.lists(st.integers(min_value=0, max_value=10 * 3600 * 1_000_000), max_size=8),
       end=st.integers(min_value=0, max_value=12 * 3600 * 1_000_000))
def test_settlements_then_the_end_charge_every_started_hour_exactly_once(settles: list[int], end: int) -> None:
    s = segment()
    charged = [(0, 1)]  # the launch's hour
    end_time = T0 + timedelta(microseconds=end)
    for moment in sorted(T0 + timedelta(microseconds=m) for m in settles):
        if moment > end_time:
            break
        usage = settled_usage(s, moment)
        if usage is not None:
            charged.append((usage.first_hour, usage.end_hour))
            s = Segment(**{**s.__dict__, "hours_billed": usage.end_hour})
    last = final_usage(s, end_time)
    if last is not None:
        charged.append((last.first_hour, last.end_hour))
    assert [h for first, stop in charged for h in range(first, stop)] == list(
        range(max(1, started_hours(T0, end_time))))


def reset(image: ImagePricing = WINDOWS, *, charge_type: ChargeType = ChargeType.POSTPAID_BY_HOUR, months: int = 0,
          effective: datetime | None = None, launched: datetime | None = T0, count: int = 1,
          region: str = "ap-singapore") -> ResetPricing:
    pricing = LaunchPricing(region, "S5.MEDIUM4", count, charge_type, months, image)
    return ResetPricing("ins-aaaaaaa1", pricing, launched, effective)


def test_an_hourly_reset_settles_the_old_price_and_pays_the_first_hour_at_the_new_one() -> None:
    now = T0 + 2 * HOUR
    plan = plan_reset(ALICE, reset(effective=T0 + timedelta(hours=1, minutes=30)), segment(), BOOK, now)
    assert plan.quote == BOOK.quote(reset().launch)
    assert plan.quote.total == Decimal("0.0696") + Decimal("0.0460")
    assert plan.usage is not None
    assert (plan.usage.first_hour, plan.usage.end_hour) == (1, 2)
    assert plan.usage.quote().total == Decimal("0.0696")  # the old (Linux) price
    assert plan.closed is not None
    assert plan.closed.end_time == plan.effective_time
    assert plan.closed.hours_billed == 2
    opened = plan.opened
    assert (opened.segment_no, opened.start_time, opened.hours_billed) == (1, T0 + timedelta(hours=1, minutes=30), 1)
    assert [p.kind for p in opened.prices] == [LineKind.INSTANCE, LineKind.IMAGE_LICENSE]


def test_a_reset_takes_effect_within_the_segment_and_never_after_now() -> None:
    now = T0 + 2 * HOUR
    assert plan_reset(ALICE, reset(effective=T0 - HOUR), segment(), BOOK, now).effective_time == T0
    assert plan_reset(ALICE, reset(effective=now + HOUR), segment(), BOOK, now).effective_time == now
    assert plan_reset(ALICE, reset(effective=None), segment(), BOOK, now).effective_time == now


def test_a_prepaid_reset_pays_the_new_images_lines_for_the_months_left() -> None:
    old = segment(ChargeType.PREPAID, months=3, region="ap-guangzhou")
    now = T0 + timedelta(days=40)
    plan = plan_reset(ALICE, reset(WORDPRESS, charge_type=ChargeType.PREPAID, months=3, region="ap-guangzhou"), old,
                      BOOK, now)
    assert [(l.kind, l.quantity, l.unit, l.unit_price) for l in plan.quote.lines] == [
        (LineKind.MARKETPLACE, 2, "instance-month", Decimal("9.90"))]
    assert plan.usage is None
    assert plan.closed is not None
    assert plan.closed.end_time == now
    assert plan.opened.prepaid_until == old.prepaid_until
    assert plan.opened.next_settle_time is None
    # no license in a mainland region, and a Linux image has no lines: nothing to pay
    linux = plan_reset(ALICE, reset(LINUX, charge_type=ChargeType.PREPAID, months=3, region="ap-guangzhou"), old,
                       BOOK, now)
    assert linux.quote.lines == ()
    assert linux.quote.total == 0


def test_a_prepaid_reset_after_the_period_has_no_lines_and_without_a_meter_counts_from_the_launch() -> None:
    over = plan_reset(ALICE, reset(charge_type=ChargeType.PREPAID, months=1), segment(ChargeType.PREPAID, months=1),
                      BOOK, T0 + timedelta(days=45))
    assert over.quote.lines == ()
    assert over.quote.total == 0
    unmetered = plan_reset(ALICE, reset(charge_type=ChargeType.PREPAID, months=12, launched=T0), None, BOOK,
                           add_months(T0, 4) + HOUR)
    assert [(l.kind, l.quantity) for l in unmetered.quote.lines] == [(LineKind.IMAGE_LICENSE, 8)]
    assert unmetered.opened.segment_no == 0
    assert unmetered.opened.prepaid_until == add_months(T0, 12)
    assert unmetered.closed is None
    assert unmetered.usage is None
    # a launch time after now is taken as now: the period cannot have begun later
    future = plan_reset(ALICE, reset(charge_type=ChargeType.PREPAID, months=60, launched=datetime(9999, 1, 1,
                                                                                                tzinfo=UTC)),
                        None, BOOK, T0)
    assert future.opened.prepaid_until == add_months(T0, 60)
    assert future.quote.lines[0].quantity == 60


def test_an_hourly_instance_never_metered_starts_at_the_reset_with_its_first_hour_paid() -> None:
    now = T0 + 5 * HOUR
    plan = plan_reset(ALICE, reset(effective=T0 + 2 * HOUR, launched=None), None, BOOK, now)
    assert (plan.opened.segment_no, plan.opened.start_time, plan.opened.hours_billed) == (0, T0 + 2 * HOUR, 1)


def test_resets_that_cannot_be_priced_are_refused() -> None:
    ended = segment().closed(T0 + HOUR, 1)
    with pytest.raises(FailedPrecondition) as refused:
        plan_reset(ALICE, reset(), ended, BOOK, T0 + 2 * HOUR)
    assert refused.value.reason == "INSTANCE_USAGE_ENDED"
    with pytest.raises(FailedPrecondition) as refused:
        plan_reset(ALICE, reset(charge_type=ChargeType.SPOTPAID), segment(), BOOK, T0 + 2 * HOUR)
    assert refused.value.reason == "INSTANCE_PRICING_MISMATCH"
    for bad, reason in [(reset(count=2), "INVALID_INSTANCE_COUNT"),
                        (reset(charge_type=ChargeType.PREPAID, months=1, launched=None), "LAUNCH_TIME_REQUIRED"),
                        (ResetPricing("ins-BAD", reset().launch, T0, None), "INVALID_ID"),
                        (reset(charge_type=ChargeType.PREPAID, months=0), "INVALID_PERIOD")]:
        with pytest.raises(InvalidArgument) as invalid:
            plan_reset(ALICE, bad, None, BOOK, T0)
        assert invalid.value.reason == reason


def test_the_price_list_holds_every_price_once_in_a_stable_order() -> None:
    prices = all_prices(BOOK)
    keys = [p.key for p in prices]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    instances = sum(len(types) for types in BOOK.instance_prices.values()) * 3
    assert len(prices) == instances + len(BOOK.windows_license) * 3 + len(BOOK.marketplace_products) * 3
    wordpress = [p for p in prices if p.marketplace_product_id == "mp-bitnami-wordpress"]
    assert [(p.region, p.charge_type, p.unit_price, p.unit) for p in wordpress] == [
        ("", ChargeType.POSTPAID_BY_HOUR, Decimal("0.0200"), "instance-hour"),
        ("", ChargeType.PREPAID, Decimal("9.90"), "instance-month"),
        ("", ChargeType.SPOTPAID, Decimal("0.0200"), "instance-hour")]
    singapore = PriceFilter("ap-singapore", ChargeType.POSTPAID_BY_HOUR)
    assert {(p.kind, p.region) for p in prices if singapore.admits(p)} == {
        (LineKind.INSTANCE, "ap-singapore"), (LineKind.IMAGE_LICENSE, "ap-singapore"), (LineKind.MARKETPLACE, "")}
    one_type = PriceFilter(instance_type="SR1.LARGE8")
    assert {p.region for p in prices if one_type.admits(p)} == {
        r for r, types in BOOK.instance_prices.items() if "SR1.LARGE8" in types}
