"""The charge ledger and the meters, with SQLAlchemy Core."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, or_, select, update

from billing_service.adapters.tables import CHARGE_KEYS, CHARGES, SEGMENTS
from billing_service.domain.metering import HOUR, Segment, UnitPrice
from billing_service.domain.model import (
    Charge,
    ChargeFilter,
    ChargeKind,
    ChargeType,
    KeyOutcome,
    LineKind,
    Quote,
    QuoteLine,
)
from chassis.db import bulk_insert, ignoring_insert, insert_ignoring_duplicates
from chassis.stored import Document


def _bare_lines_to_1(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """Version 0, a charge's lines before they carried a version (up to 6190e62): a bare JSON list of the
    lines (kind, description, unit_price, quantity, unit), the same lines version 1 keeps under "lines"."""
    return {"lines": lines}


# A charge's quote lines (the ``lines`` column). Version 1: {"v": 1, "lines": [{kind, description, unit_price,
# quantity, unit}]}.
CHARGE_LINES = Document("charge lines", 1, upgrades={0: _bare_lines_to_1})
# A meter segment's unit prices (the ``prices`` column), versioned since segments came (6190e62). Version 1:
# {"v": 1, "prices": [{kind, description, unit_price, unit}]}.
SEGMENT_PRICES = Document("segment prices", 1)


def _lines_json(lines: Iterable[QuoteLine]) -> str:
    return CHARGE_LINES.dumps({"lines": [
        {"kind": l.kind.value, "description": l.description, "unit_price": str(l.unit_price), "quantity": l.quantity,
         "unit": l.unit} for l in lines]})


def _prices_json(prices: Iterable[UnitPrice]) -> str:
    return SEGMENT_PRICES.dumps({"prices": [
        {"kind": p.kind.value, "description": p.description, "unit_price": str(p.unit_price), "unit": p.unit}
        for p in prices]})


def _to_charge(row: Any) -> tuple[int, Charge]:
    m = row._mapping
    lines = tuple(QuoteLine(LineKind(l["kind"]), l["description"], Decimal(l["unit_price"]), l["quantity"], l["unit"])
                  for l in CHARGE_LINES.loads(m["lines"])["lines"])
    quote = Quote(m["currency"], ChargeType(m["charge_type"]), lines)
    # instance_ids: a plain JSON array of ids in every release (a value, not a document; of_account's LIKE filter
    # relies on its form).
    return m["seq"], Charge(m["charge_id"], m["account_id"], m["region"], quote, tuple(json.loads(m["instance_ids"])),
                            m["create_time"], m["idempotency_key"], m["request_fingerprint"], ChargeKind(m["kind"]),
                            m["usage_start_time"], m["usage_end_time"])


def _charge_values(charge: Charge) -> dict[str, Any]:
    quote = charge.quote
    return dict(
        charge_id=charge.charge_id, account_id=charge.account_id, idempotency_key=charge.idempotency_key,
        request_fingerprint=charge.request_fingerprint, region=charge.region, currency=quote.currency,
        charge_type=quote.charge_type.value, total=str(quote.total), lines=_lines_json(quote.lines),
        instance_ids=json.dumps(list(charge.instance_ids)), create_time=charge.create_time, kind=charge.kind.value,
        instance_id=charge.instance_id, usage_start_time=charge.usage_start_time,
        usage_end_time=charge.usage_end_time,
    )


_EVERY_CHARGE = ChargeFilter()


class ChargeRepository:
    def __init__(self, connection: Connection):
        self._connection = connection

    def add_unless_exists(self, charge: Charge) -> bool:
        """Records the charge; False when the account already has one with its idempotency key."""
        return self.add_all_unless_exist([charge]) == 1

    def add_all_unless_exist(self, charges: Sequence[Charge]) -> int:
        """Records the charges in one statement; how many went in (those whose key was free)."""
        if not charges:
            return 0
        statement = ignoring_insert(self._connection, CHARGES, "charge_id")
        return len(self._connection.execute(statement, [_charge_values(c) for c in charges]).all())

    def claim_key(self, account_id: str, key: str, outcome: KeyOutcome, now: datetime) -> KeyOutcome:
        """Records the key's outcome unless it has one; returns the outcome that holds (the first)."""
        inserted = self._connection.execute(ignoring_insert(self._connection, CHARGE_KEYS, "outcome"), {
            "account_id": account_id, "idempotency_key": key, "outcome": outcome.value, "create_time": now}).first()
        if inserted is not None:
            return outcome
        c = CHARGE_KEYS.c
        return KeyOutcome(self._connection.execute(
            select(c.outcome).where(c.account_id == account_id, c.idempotency_key == key)).scalar_one())

    def mark_key_charged(self, account_id: str, key: str) -> None:
        """For a charge recorded before keys were claimed (an older ledger)."""
        c = CHARGE_KEYS.c
        self._connection.execute(update(CHARGE_KEYS).where(c.account_id == account_id, c.idempotency_key == key)
                                 .values(outcome=KeyOutcome.CHARGED.value))

    def by_idempotency_key(self, account_id: str, key: str) -> Charge | None:
        row = self._connection.execute(select(CHARGES).where(
            CHARGES.c.account_id == account_id, CHARGES.c.idempotency_key == key)).first()
        return None if row is None else _to_charge(row)[1]

    def of_account(self, account_id: str, after_seq: int | None, limit: int,
                   filters: ChargeFilter = _EVERY_CHARGE) -> list[tuple[int, Charge]]:
        c = CHARGES.c
        statement = select(CHARGES).where(c.account_id == account_id)
        if filters.instance_id:
            # A launch lists its instances in a JSON array; the id is well-formed (no LIKE wildcards in it).
            statement = statement.where(or_(
                c.instance_id == filters.instance_id,
                and_(c.kind == ChargeKind.LAUNCH.value, c.instance_ids.like(f'%"{filters.instance_id}"%'))))
        if filters.start_time is not None:
            statement = statement.where(c.create_time >= filters.start_time)
        if filters.end_time is not None:
            statement = statement.where(c.create_time < filters.end_time)
        if after_seq is not None:
            statement = statement.where(c.seq > after_seq)
        return [_to_charge(r) for r in self._connection.execute(statement.order_by(c.seq).limit(limit))]


def _to_segment(row: Any) -> Segment:
    m = row._mapping
    prices = tuple(UnitPrice(LineKind(p["kind"]), p["description"], Decimal(p["unit_price"]), p["unit"])
                   for p in SEGMENT_PRICES.loads(m["prices"])["prices"])
    return Segment(m["account_id"], m["instance_id"], m["segment_no"], m["region"], m["instance_type"],
                   ChargeType(m["charge_type"]), m["currency"], prices, m["start_time"], m["hours_billed"],
                   m["end_time"], m["prepaid_until"], m["seq"])


_SEGMENT_COLUMNS = ("account_id", "instance_id", "segment_no", "region", "instance_type", "charge_type", "currency",
                    "prices", "start_time", "end_time", "hours_billed", "prepaid_until", "next_settle_time")


def _segment_row(s: Segment, prices: str) -> tuple[Any, ...]:
    """A segment's row in _SEGMENT_COLUMNS' order, with its price list already encoded."""
    return (s.account_id, s.instance_id, s.segment_no, s.region, s.instance_type, s.charge_type.value, s.currency,
            prices, s.start_time, s.end_time, s.hours_billed, s.prepaid_until, s.next_settle_time)


def _segment_values(s: Segment) -> dict[str, Any]:
    return dict(zip(_SEGMENT_COLUMNS, _segment_row(s, _prices_json(s.prices)), strict=True))


class MeterRepository:
    """The meter segments. A segment changes only through ``replace``, conditional on what was read."""

    def __init__(self, connection: Connection):
        self._connection = connection

    def add_for_instances(self, segment: Segment, instance_ids: Sequence[str]) -> None:
        """The segment once for each of these instances (a launch's first segments): one executemany however many
        they are, of rows handed to the driver as stored (``chassis.db.bulk_insert``), built from one row."""
        account_id, _, *rest = _segment_row(segment, _prices_json(segment.prices))  # account_id, instance_id, ...
        bulk_insert(self._connection, SEGMENTS, _SEGMENT_COLUMNS,
                    [(account_id, instance_id, *rest) for instance_id in instance_ids])

    def add_unless_exists(self, segment: Segment) -> bool:
        """False when the instance has a segment of that number already (another reset made it)."""
        statement = insert_ignoring_duplicates(self._connection, SEGMENTS).values(
            _segment_values(segment)).returning(SEGMENTS.c.seq)
        return self._connection.execute(statement).first() is not None

    def replace(self, before: Segment, after: Segment) -> bool:
        """Compare-and-set: writes ``after``'s hours, end and next settle time unless the stored segment is
        no longer ``before`` (closed, or its hours billed moved on); False then."""
        c = SEGMENTS.c
        changed = self._connection.execute(
            update(SEGMENTS)
            .where(c.seq == before.seq, c.hours_billed == before.hours_billed, c.end_time.is_(None))
            .values(hours_billed=after.hours_billed, end_time=after.end_time,
                    next_settle_time=after.next_settle_time))
        return changed.rowcount == 1

    def due(self, now: datetime, after: tuple[datetime, int] | None, limit: int) -> list[Segment]:
        """Open hourly segments whose next hour is over by now, in (next_settle_time, seq) order after
        ``after``."""
        c = SEGMENTS.c
        statement = select(SEGMENTS).where(c.next_settle_time <= now)
        if after is not None:
            moment, seq = after
            statement = statement.where(or_(c.next_settle_time > moment,
                                            and_(c.next_settle_time == moment, c.seq > seq)))
        return [_to_segment(r) for r in self._connection.execute(
            statement.order_by(c.next_settle_time, c.seq).limit(limit))]

    def lock_unchanged(self, segment: Segment) -> bool:
        """Locks the segment if it is still as read; False when it changed, or (PostgreSQL) another
        transaction holds it: then that one is settling it. On SQLite the writer holds the database."""
        c = SEGMENTS.c
        return self._connection.execute(
            select(c.seq).where(c.seq == segment.seq, c.hours_billed == segment.hours_billed, c.end_time.is_(None))
            .with_for_update(skip_locked=True)).first() is not None

    def open_of(self, account_id: str, instance_ids: Sequence[str], *, for_update: bool = False) -> list[Segment]:
        """The open segments of these instances, in seq order (the order rows are locked in)."""
        c = SEGMENTS.c
        statement = select(SEGMENTS).where(c.account_id == account_id, c.instance_id.in_(instance_ids),
                                           c.end_time.is_(None)).order_by(c.seq)
        return [_to_segment(r) for r in self._connection.execute(
            statement.with_for_update() if for_update else statement)]

    def latest(self, account_id: str, instance_id: str, *, for_update: bool = False) -> Segment | None:
        c = SEGMENTS.c
        statement = (select(SEGMENTS).where(c.account_id == account_id, c.instance_id == instance_id)
                     .order_by(c.segment_no.desc()).limit(1))
        row = self._connection.execute(statement.with_for_update() if for_update else statement).first()
        return None if row is None else _to_segment(row)

    def of_instance(self, account_id: str, instance_id: str) -> list[Segment]:
        """The instance's segments, first to last."""
        c = SEGMENTS.c
        return [_to_segment(r) for r in self._connection.execute(
            select(SEGMENTS).where(c.account_id == account_id, c.instance_id == instance_id).order_by(c.segment_no))]

    def accruing(self, account_id: str, instance_id: str, now: datetime, after_seq: int | None,
                 limit: int) -> list[Segment]:
        """The account's open hourly segments that have accrued something by now, in seq order: those
        with an hour started and not billed, i.e. start + hours_billed h < now."""
        c = SEGMENTS.c
        statement = select(SEGMENTS).where(c.account_id == account_id, c.next_settle_time < now + HOUR)
        if instance_id:
            statement = statement.where(c.instance_id == instance_id)
        if after_seq is not None:
            statement = statement.where(c.seq > after_seq)
        return [_to_segment(r) for r in self._connection.execute(statement.order_by(c.seq).limit(limit))]
