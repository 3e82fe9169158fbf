"""The charge ledger, with SQLAlchemy Core."""

from __future__ import annotations

import json
from decimal import Decimal

from datetime import datetime

from sqlalchemy import Connection, select, update

from billing_service.adapters.tables import CHARGE_KEYS, CHARGES
from billing_service.domain.model import Charge, ChargeType, KeyOutcome, LineKind, Quote, QuoteLine
from chassis.db import insert_ignoring_duplicates



def _to_charge(row: object) -> tuple[int, Charge]:
    m = row._mapping  # type: ignore[attr-defined]
    lines = tuple(
        QuoteLine(LineKind(l["kind"]), l["description"], Decimal(l["unit_price"]), l["quantity"], l["unit"])
        for l in json.loads(m["lines"])
    )
    quote = Quote(m["currency"], ChargeType(m["charge_type"]), lines)
    return m["seq"], Charge(m["charge_id"], m["account_id"], m["region"], quote, tuple(json.loads(m["instance_ids"])),
                            m["create_time"], m["idempotency_key"], m["request_fingerprint"])


class ChargeRepository:
    def __init__(self, connection: Connection):
        self._connection = connection

    def add_unless_exists(self, charge: Charge) -> bool:
        """Records the charge; False when the account already has one with its idempotency key."""
        quote = charge.quote
        statement = insert_ignoring_duplicates(self._connection, CHARGES).values(
            charge_id=charge.charge_id, account_id=charge.account_id, idempotency_key=charge.idempotency_key,
            request_fingerprint=charge.request_fingerprint, region=charge.region, currency=quote.currency,
            charge_type=quote.charge_type.value, total=str(quote.total),
            lines=json.dumps([
                {"kind": l.kind.value, "description": l.description, "unit_price": str(l.unit_price),
                 "quantity": l.quantity, "unit": l.unit}
                for l in quote.lines
            ]),
            instance_ids=json.dumps(list(charge.instance_ids)), create_time=charge.create_time,
        ).returning(CHARGES.c.charge_id)
        return self._connection.execute(statement).first() is not None

    def claim_key(self, account_id: str, key: str, outcome: KeyOutcome, now: datetime) -> KeyOutcome:
        """Records the key's outcome unless it has one; returns the outcome that holds (the first)."""
        inserted = self._connection.execute(insert_ignoring_duplicates(self._connection, CHARGE_KEYS).values(
            account_id=account_id, idempotency_key=key, outcome=outcome.value, create_time=now,
        ).returning(CHARGE_KEYS.c.outcome)).first()
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

    def of_account(self, account_id: str, after_seq: int | None, limit: int) -> list[tuple[int, Charge]]:
        statement = select(CHARGES).where(CHARGES.c.account_id == account_id)
        if after_seq is not None:
            statement = statement.where(CHARGES.c.seq > after_seq)
        return [_to_charge(r) for r in self._connection.execute(statement.order_by(CHARGES.c.seq).limit(limit))]
