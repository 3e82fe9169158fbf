"""Metering: what an instance costs while it runs.

An instance's time is cut into segments, each at one price (a reset starts a new one at the new
image's price). An hourly segment (POSTPAID_BY_HOUR, SPOTPAID) is charged per started hour: its
first hour is paid by the charge that opened it (the launch's or the reset's), the hours after it
by usage charges, each for the hours ``[first_hour, end_hour)`` counted from the segment's start.
``hours_billed`` is how many of its hours the ledger holds, so no hour is ever charged twice. A
PREPAID segment was paid for its whole period up front and is never metered.

All arithmetic is exact: whole hours of ``timedelta``s, calendar months, ``Decimal`` money.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal

from billing_service.domain.model import ChargeType, LaunchPricing, LineKind, Quote, QuoteLine

HOUR = timedelta(hours=1)


def completed_hours(start: datetime, moment: datetime) -> int:
    """The hours from ``start`` that are over at ``moment`` (0 before start)."""
    return max(0, (moment - start) // HOUR)


def started_hours(start: datetime, moment: datetime) -> int:
    """The hours from ``start`` that have begun by ``moment``: an hour begun is an hour started."""
    return max(0, -((start - moment) // HOUR))


def add_months(moment: datetime, months: int) -> datetime:
    """The same day and time ``months`` calendar months later, on the month's last day when it is shorter
    (Jan 31 + 1 month = Feb 28, or 29 in a leap year)."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    return moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))


def months_left(moment: datetime, period_end: datetime) -> int:
    """The months of a period that remain at ``moment``, the month in progress counted whole: the fewest
    calendar months from ``moment`` that reach ``period_end`` (0 once the period is over)."""
    if moment >= period_end:
        return 0
    # One month short of the month difference is always short of the end; at most two steps from there.
    months = max(0, (period_end.year - moment.year) * 12 + period_end.month - moment.month - 1)
    while add_months(moment, months) < period_end:
        months += 1
    return months


def clamp(requested: datetime | None, earliest: datetime, now: datetime) -> datetime:
    """When an end or a reset takes effect: as asked (now when unset), never before ``earliest`` (the
    segment's start) nor after now."""
    return min(max(now if requested is None else requested, earliest), now)


@dataclass(frozen=True)
class UnitPrice:
    """One line of an instance's price: what a quote line says for a single instance."""

    kind: LineKind
    description: str
    unit_price: Decimal
    unit: str


def unit_prices(quote: Quote) -> tuple[UnitPrice, ...]:
    return tuple(UnitPrice(line.kind, line.description, line.unit_price, line.unit) for line in quote.lines)


@dataclass(frozen=True)
class Segment:
    """A stretch of one instance's time at one price; open (end_time None) until it ends or is reset."""

    account_id: str
    instance_id: str
    segment_no: int
    region: str
    instance_type: str
    charge_type: ChargeType
    currency: str
    prices: tuple[UnitPrice, ...]
    start_time: datetime
    # Hourly: the hours from start_time the ledger has charged. PREPAID: 0.
    hours_billed: int
    end_time: datetime | None = None
    # PREPAID: the end of the paid period.
    prepaid_until: datetime | None = None
    # The stored row's key (0 until stored).
    seq: int = 0

    @property
    def hourly(self) -> bool:
        return self.charge_type is not ChargeType.PREPAID

    @property
    def is_open(self) -> bool:
        return self.end_time is None

    @property
    def next_settle_time(self) -> datetime | None:
        """When the next unbilled hour is over; None for a segment that is never settled again."""
        if not (self.hourly and self.is_open):
            return None
        return self.start_time + (self.hours_billed + 1) * HOUR

    def closed(self, end: datetime, hours_billed: int) -> Segment:
        return replace(self, end_time=end, hours_billed=hours_billed)


@dataclass(frozen=True)
class Usage:
    """The hours ``[first_hour, end_hour)`` of an hourly segment, counted from its start."""

    segment: Segment
    first_hour: int
    end_hour: int

    @property
    def hours(self) -> int:
        return self.end_hour - self.first_hour

    @property
    def start_time(self) -> datetime:
        return self.segment.start_time + self.first_hour * HOUR

    @property
    def end_time(self) -> datetime:
        return self.segment.start_time + self.end_hour * HOUR

    @property
    def idempotency_key(self) -> str:
        """Unique per hour range in the ledger, so that the same hours can never be recorded twice."""
        s = self.segment
        return f"usage:{s.instance_id}:{s.segment_no}:{self.first_hour}"

    def quote(self) -> Quote:
        """Priced like a quote: one line per unit price, for this many instance-hours."""
        s = self.segment
        return Quote(s.currency, s.charge_type, tuple(
            QuoteLine(p.kind, p.description, p.unit_price, self.hours, p.unit) for p in s.prices))


def _hours(segment: Segment, end_hour: int) -> Usage | None:
    if not (segment.hourly and segment.is_open) or end_hour <= segment.hours_billed:
        return None
    return Usage(segment, segment.hours_billed, end_hour)


def settled_usage(segment: Segment, now: datetime) -> Usage | None:
    """The hours over by now that the ledger does not hold yet (what a settlement records)."""
    return _hours(segment, completed_hours(segment.start_time, now))


def final_usage(segment: Segment, end: datetime) -> Usage | None:
    """The started hours up to ``end`` that the ledger does not hold yet (what closing the segment
    records); the first hour is always started."""
    return _hours(segment, max(1, started_hours(segment.start_time, end)))


def accrued_usage(segment: Segment, now: datetime) -> Usage | None:
    """The hours started by now and not billed yet: what the instance owes so far."""
    return _hours(segment, started_hours(segment.start_time, now))


def launch_segment(account_id: str, launch: LaunchPricing, quote: Quote, start: datetime) -> Segment:
    """The first segment of every instance of a launch, from the launch's charge (one for all: they differ only in
    their instance, which is left empty here): an hourly one has its first hour paid by that charge; a PREPAID one
    runs to the end of its period."""
    hourly = launch.charge_type is not ChargeType.PREPAID
    prepaid_until = None if hourly else add_months(start, launch.period_months)
    return Segment(account_id, "", 0, launch.region, launch.instance_type, launch.charge_type, quote.currency,
                   unit_prices(quote), start, hours_billed=1 if hourly else 0, prepaid_until=prepaid_until)
