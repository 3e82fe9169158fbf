"""The billing context's use cases of metering: settling usage, ending it, and resetting an instance to
another image.

The ledger never holds an hour twice, whatever runs at once on any replicas: a segment changes only by
compare-and-set on the values read (MeterRepository.replace), in the transaction that records the
charge for those hours, and each usage charge's idempotency key names its first hour, so recording
the same hours twice is also refused by the ledger's unique key. A transaction that loses a race
rolls back whole.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime

from billing_service.domain.metering import Segment, Usage, clamp, final_usage, settled_usage
from billing_service.domain.model import Charge, ChargeKind, PriceBook, Quote
from billing_service.domain.resets import ResetPlan, ResetPricing, check_reset, plan_reset
from billing_service.service_layer.handlers import UnitOfWorkFactory, check_key
from billing_service.service_layer.unit_of_work import BillingUnitOfWork
from chassis import ids
from chassis.clock import Clock
from chassis.errors import Aborted, FailedPrecondition, InvalidArgument
from chassis.fingerprints import fingerprint
from chassis.logs import fields

log = logging.getLogger("billing.usage")

SETTLE_BATCH = 500
MAX_END_USAGE_INSTANCES = 100
# A transaction that lost a race runs again on what the winner left; losing this often means something
# else is wrong.
MAX_ATTEMPTS = 10


def usage_charge(usage: Usage, now: datetime) -> Charge:
    s = usage.segment
    return Charge(ids.new_id("chg"), s.account_id, s.region, usage.quote(), (s.instance_id,), now,
                  usage.idempotency_key,
                  fingerprint("usage", instance_id=s.instance_id, segment_no=s.segment_no,
                              first_hour=usage.first_hour, end_hour=usage.end_hour),
                  ChargeKind.USAGE, usage.start_time, usage.end_time)


def settle_usage(*, new_uow: UnitOfWorkFactory, clock: Clock, batch_size: int = SETTLE_BATCH) -> int:
    """One settlement run: every open hourly segment whose next hour is over by now gets one usage charge
    for its completed hours not billed yet. Reads the due segments in batches; settles each in its own
    transaction (a segment that another replica holds or changed is left to it). Returns how many
    segments it settled."""
    now = clock.now()
    settled, after = 0, None
    while True:
        with new_uow(read_only=True) as uow:
            due = uow.meters.due(now, after, batch_size)
        for segment in due:
            try:
                settled += _settle(segment, now, new_uow)
            except Exception:  # one segment that cannot be settled must not hold up the others
                log.exception("usage settlement failed", extra=fields(instance_id=segment.instance_id,
                                                                      segment_no=segment.segment_no))
        if len(due) < batch_size:
            break
        last = due[-1]
        assert last.next_settle_time is not None
        after = (last.next_settle_time, last.seq)
    if settled:
        log.info("usage settled", extra=fields(segments=settled))
    return settled


def _settle(segment: Segment, now: datetime, new_uow: UnitOfWorkFactory) -> int:
    usage = settled_usage(segment, now)
    if usage is None:
        return 0
    with new_uow() as uow:
        if not uow.meters.lock_unchanged(segment):
            return 0
        if not uow.meters.replace(segment, replace(segment, hours_billed=usage.end_hour)):
            return 0
        if not uow.charges.add_unless_exists(usage_charge(usage, now)):
            # The ledger has these hours although the segment says it does not: never charge them again.
            log.warning("usage already recorded", extra=fields(key=usage.idempotency_key))
            return 0
        uow.commit()
    return 1


def end_usage(instance_ids: list[str], end_time: datetime | None, account_id: str, *,
              new_uow: UnitOfWorkFactory, clock: Clock) -> list[Charge]:
    """Closes the open segment of each of the caller's instances at its end (end_time, within the segment
    and never after now) and charges its started hours not billed yet. Instances without an open segment
    (ended before, never metered, or not the caller's) are left as they are."""
    wanted = _check_instance_ids(instance_ids)
    for _ in range(MAX_ATTEMPTS):
        now = clock.now()
        with new_uow() as uow:
            segments = _open_locked(uow, account_id, wanted)
            charges = None if segments is None else _close(uow, segments, end_time, now)
            if charges is not None:
                uow.commit()
                return charges
    raise _lost_races()


def _close(uow: BillingUnitOfWork, segments: list[Segment], end_time: datetime | None, now: datetime
           ) -> list[Charge] | None:
    """Closes the segments and records their last hours; None when one of them changed since it was read."""
    charges = []
    for segment in segments:
        end = clamp(end_time, segment.start_time, now)
        usage = final_usage(segment, end)
        if not uow.meters.replace(segment, segment.closed(end, usage.end_hour if usage else segment.hours_billed)):
            return None
        if usage is not None:
            charges.append(usage_charge(usage, now))
    return charges if uow.charges.add_all_unless_exist(charges) == len(charges) else None


def _check_instance_ids(instance_ids: list[str]) -> list[str]:
    if not 1 <= len(instance_ids) <= MAX_END_USAGE_INSTANCES:
        raise InvalidArgument("INVALID_INSTANCE_IDS", f"instance_ids must name 1-{MAX_END_USAGE_INSTANCES} "
                              "instances", field="instance_ids")
    for instance_id in instance_ids:
        ids.require_id("ins", instance_id, "instance_ids")
    return list(dict.fromkeys(instance_ids))


def _open_locked(uow: BillingUnitOfWork, account_id: str, instance_ids: list[str]) -> list[Segment] | None:
    """The instances' open segments, locked (PostgreSQL); None when what was locked is not what is open now:
    a segment that a reset replaced while this waited for its lock."""
    locked = uow.meters.open_of(account_id, instance_ids, for_update=True)
    return locked if uow.meters.open_of(account_id, instance_ids) == locked else None


def quote_reset(reset: ResetPricing, account_id: str, *, book: PriceBook, new_uow: UnitOfWorkFactory,
                clock: Clock) -> Quote:
    check_reset(reset)
    with new_uow(read_only=True) as uow:
        latest = uow.meters.latest(account_id, reset.instance_id)
    return plan_reset(account_id, reset, latest, book, clock.now()).quote


def charge_reset(reset: ResetPricing, idempotency_key: str, account_id: str, *, book: PriceBook,
                 new_uow: UnitOfWorkFactory, clock: Clock) -> Charge:
    """Records a reset once per idempotency key, in one transaction: the instance's started hours up to
    the reset at the old price, a new segment at the new price from then, and the reset's charge."""
    check_key(idempotency_key)
    check_reset(reset)
    print_ = fingerprint("reset", **reset.fingerprint_fields())
    for _ in range(MAX_ATTEMPTS):
        now = clock.now()
        with new_uow() as uow:
            first = uow.charges.by_idempotency_key(account_id, idempotency_key)
            if first is not None:
                if first.kind is not ChargeKind.RESET or first.request_fingerprint != print_:
                    raise FailedPrecondition("IDEMPOTENCY_PARAMETER_MISMATCH",
                                             "idempotency_key was used before for a different charge",
                                             subject=f"idempotency_key:{idempotency_key}")
                return first
            locked = uow.meters.latest(account_id, reset.instance_id, for_update=True)
            if uow.meters.latest(account_id, reset.instance_id) != locked:
                continue  # a reset made a newer segment while this waited for the lock
            plan = plan_reset(account_id, reset, locked, book, now)
            charge = Charge(ids.new_id("chg"), account_id, reset.launch.region, plan.quote, (reset.instance_id,),
                            now, idempotency_key, print_, ChargeKind.RESET)
            if _record_reset(uow, locked, plan, charge, now):
                uow.commit()
                return charge
    raise _lost_races()


def _record_reset(uow: BillingUnitOfWork, latest: Segment | None, plan: ResetPlan, charge: Charge,
                  now: datetime) -> bool:
    """False when another call got there first: it closed the segment, opened the next one, or recorded a
    charge of the same key."""
    if latest is not None and plan.closed is not None and not uow.meters.replace(latest, plan.closed):
        return False
    if not uow.meters.add_unless_exists(plan.opened):
        return False
    charges = [usage_charge(plan.usage, now)] if plan.usage else []
    return uow.charges.add_all_unless_exist([*charges, charge]) == len(charges) + 1


def _lost_races() -> Aborted:
    return Aborted("CONCURRENT_UPDATE", "the instances' usage kept changing while this was recorded; try again")
