"""ListCharges: the caller's ledger in the order it was written, then the usage its running hourly
instances have accrued and not settled yet, in one keyset-paginated listing.

A page token holds where the previous page ended: ``L<seq>`` in the ledger, ``A<seq>`` among the
accrued segments (a bare ``<seq>`` is a ledger token from before accrued usage was listed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from billing_service.domain.metering import Segment, accrued_usage
from billing_service.domain.model import Charge, ChargeFilter, ChargeKind
from billing_service.service_layer.handlers import UnitOfWorkFactory
from chassis import ids, pagination
from chassis.clock import Clock
from chassis.errors import InvalidArgument

_LEDGER, _ACCRUED = "L", "A"
_POSITION = re.compile(r"([LA]?)([0-9]{1,18})")


@dataclass(frozen=True)
class _Entry:
    key: str
    charge: Charge


def list_charges(account_id: str, page_size: int, page_token: str, filters: ChargeFilter, *,
                 new_uow: UnitOfWorkFactory, clock: Clock) -> tuple[list[Charge], str]:
    _check(filters)
    size = pagination.clamp_page_size(page_size)
    print_ = _fingerprint(account_id, filters)
    part, after = _position(page_token, print_)
    now = clock.now()
    entries: list[_Entry] = []
    with new_uow(read_only=True) as uow:  # one snapshot for both parts
        if part == _LEDGER:
            entries = [_Entry(f"{_LEDGER}{seq}", charge)
                       for seq, charge in uow.charges.of_account(account_id, after, size + 1, filters)]
        if len(entries) <= size and _in_range(now, filters):
            segments = uow.meters.accruing(account_id, filters.instance_id, now,
                                           after if part == _ACCRUED else None, size + 1 - len(entries))
            entries += [_Entry(f"{_ACCRUED}{s.seq}", charge) for s in segments
                        if (charge := accrued_charge(s, now)) is not None]
    page, token = pagination.page_of(entries, size, print_, lambda entry: entry.key)
    return [entry.charge for entry in page], token


def accrued_charge(segment: Segment, now: datetime) -> Charge | None:
    """What the segment owes so far and the ledger does not hold, as a charge that is not in the ledger."""
    usage = accrued_usage(segment, now)
    if usage is None:
        return None
    return Charge("", segment.account_id, segment.region, usage.quote(), (segment.instance_id,), now,
                  kind=ChargeKind.ACCRUED_USAGE, usage_start_time=usage.start_time, usage_end_time=now)


def _check(filters: ChargeFilter) -> None:
    if filters.instance_id:
        ids.require_id("ins", filters.instance_id, "instance_id")
    if filters.start_time is not None and filters.end_time is not None and filters.start_time > filters.end_time:
        raise InvalidArgument("INVALID_TIME_RANGE", "start_time must not be after end_time", field="start_time")


def _in_range(now: datetime, filters: ChargeFilter) -> bool:
    """Accrued usage is as of now: listed when now is within the range asked for."""
    return ((filters.start_time is None or filters.start_time <= now)
            and (filters.end_time is None or now < filters.end_time))


def _fingerprint(account_id: str, filters: ChargeFilter) -> str:
    if filters == ChargeFilter():  # as tokens were made before filters existed, so that those stay good
        return pagination.fingerprint("charges", account_id)
    return pagination.fingerprint("charges", account_id, filters.instance_id, _iso(filters.start_time),
                                  _iso(filters.end_time))


def _iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.isoformat()


def _position(page_token: str, print_: str) -> tuple[str, int | None]:
    key = pagination.decode_page_token(page_token, print_)
    if key is None:
        return _LEDGER, None
    found = _POSITION.fullmatch(key)
    if found is None:
        raise InvalidArgument("INVALID_PAGE_TOKEN", "page_token is not valid", field="page_token")
    return found[1] or _LEDGER, int(found[2])
