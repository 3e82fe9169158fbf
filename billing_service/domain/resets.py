"""The reset of an instance to another image: what it costs and how its metering changes.

A reset cannot undo what was paid (no refunds): an hourly instance pays the started hours up to the
reset at the old price, then the reset pays the first started hour at the new one; a PREPAID instance
pays the new image's license and marketplace lines for the months of its period that are left.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from billing_service.domain.metering import (
    Segment,
    Usage,
    add_months,
    clamp,
    final_usage,
    months_left,
    unit_prices,
)
from billing_service.domain.model import ChargeType, LaunchPricing, LineKind, PriceBook, Quote, QuoteLine
from chassis import ids
from chassis.errors import FailedPrecondition, InvalidArgument

_EARLIEST = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ResetPricing:
    instance_id: str
    # The instance (its region, type, charge type and period; one instance) and the new image.
    launch: LaunchPricing
    # When the instance was launched: a PREPAID period runs from then.
    launch_time: datetime | None
    # When the new price applies; None: now.
    effective_time: datetime | None

    def fingerprint_fields(self) -> dict[str, object]:
        """The named fields that make two reset requests the same request (times as they were asked)."""
        return {"instance_id": self.instance_id, **self.launch.fingerprint_fields(),
                "launch_time": _iso(self.launch_time), "effective_time": _iso(self.effective_time)}


def _iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.isoformat()


def check_reset(reset: ResetPricing) -> None:
    ids.require_id("ins", reset.instance_id, "reset.instance_id")
    if reset.launch.instance_count != 1:
        raise InvalidArgument("INVALID_INSTANCE_COUNT", "a reset prices one instance: instance_count must be 1",
                              field="reset.launch.instance_count")
    if reset.launch.charge_type is ChargeType.PREPAID and reset.launch_time is None:
        raise InvalidArgument("LAUNCH_TIME_REQUIRED", "a PREPAID reset needs the instance's launch_time",
                              field="reset.launch_time")


@dataclass(frozen=True)
class ResetPlan:
    """What a reset records: its charge's quote, the last started hours of the segment it closes, and the
    segment it opens."""

    effective_time: datetime
    quote: Quote
    # The instance's open segment, as the reset leaves it (None for an instance never metered).
    closed: Segment | None
    usage: Usage | None
    opened: Segment


def plan_reset(account_id: str, reset: ResetPricing, latest: Segment | None, book: PriceBook,
               now: datetime) -> ResetPlan:
    """``latest`` is the instance's newest segment; None for an instance launched before meters existed,
    which starts being metered at the reset."""
    check_reset(reset)
    launch = reset.launch
    full = book.quote(launch)  # also checks the launch: region, type, charge type, period
    if latest is None:  # nothing to stay within but the instance's life (which has begun by now)
        earliest = _EARLIEST if reset.launch_time is None else min(reset.launch_time, now)
        period_end = None
        if launch.charge_type is ChargeType.PREPAID:  # check_reset: it has a launch_time
            period_end = add_months(earliest, launch.period_months)
    else:
        _check_still_metered(latest, launch)
        earliest, period_end = latest.start_time, latest.prepaid_until
    effective = clamp(reset.effective_time, earliest, now)
    if launch.charge_type is ChargeType.PREPAID:
        assert period_end is not None
        months = months_left(effective, period_end)
        quote = Quote(full.currency, full.charge_type, tuple(
            QuoteLine(line.kind, line.description, line.unit_price, months, line.unit)
            for line in full.lines if line.kind is not LineKind.INSTANCE and months > 0))
    else:
        quote = full  # one instance-hour at the new price: the new segment's first started hour
    closed = usage = None
    if latest is not None:
        usage = final_usage(latest, effective)
        closed = latest.closed(effective, usage.end_hour if usage else latest.hours_billed)
    opened = Segment(
        account_id, reset.instance_id, 0 if latest is None else latest.segment_no + 1, launch.region,
        launch.instance_type, launch.charge_type, full.currency, unit_prices(full), effective,
        hours_billed=0 if launch.charge_type is ChargeType.PREPAID else 1, prepaid_until=period_end,
    )
    return ResetPlan(effective, quote, closed, usage, opened)


def _check_still_metered(latest: Segment, launch: LaunchPricing) -> None:
    subject = f"instance:{latest.instance_id}"
    if not latest.is_open:
        raise FailedPrecondition("INSTANCE_USAGE_ENDED",
                                 f"the usage of instance {latest.instance_id} has ended: it cannot be reset",
                                 subject=subject)
    if (latest.region, latest.instance_type, latest.charge_type) != (
            launch.region, launch.instance_type, launch.charge_type):
        raise FailedPrecondition(
            "INSTANCE_PRICING_MISMATCH",
            f"instance {latest.instance_id} is metered as {latest.instance_type} in {latest.region} "
            f"({latest.charge_type.value}); a reset keeps its region, type and charge type", subject=subject)
