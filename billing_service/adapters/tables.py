"""The billing context's tables (SQLModel)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Integer, Table, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class ChargeRow(SQLModel, table=True):
    """The charge ledger: one row per launch, never updated."""

    __tablename__ = "billing_charge"
    __table_args__ = (
        UniqueConstraint("account_id", "idempotency_key", name="uq_billing_charge_idempotency"),
    )

    # Keyset pagination walks the ledger in the order it was written.
    seq: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    charge_id: str = Field(unique=True, max_length=16)
    account_id: str = Field(index=True, max_length=32)
    idempotency_key: str = Field(max_length=64)
    request_fingerprint: str = Field(max_length=64)
    region: str = Field(max_length=64)
    currency: str = Field(max_length=3)
    charge_type: str = Field(max_length=32)
    total: str = Field(max_length=40)
    # The quote's lines and the instance ids, as JSON (decimal amounts as strings).
    lines: str = Field(sa_column=Column(Text, nullable=False))
    instance_ids: str = Field(sa_column=Column(Text, nullable=False))
    create_time: datetime


class ChargeKeyRow(SQLModel, table=True):
    """The outcome of each idempotency key: CHARGED, or VOID when a launch whose caller lost the answer
    was found never charged. CreateCharge and ResolveCharge both claim the key here first, so that
    one of them wins, also between replicas (on PostgreSQL the loser waits on the primary key)."""

    __tablename__ = "billing_charge_key"

    account_id: str = Field(primary_key=True, max_length=32)
    idempotency_key: str = Field(primary_key=True, max_length=64)
    outcome: str = Field(max_length=16)
    create_time: datetime


CHARGES: Table = ChargeRow.__table__  # type: ignore[attr-defined]
CHARGE_KEYS: Table = ChargeKeyRow.__table__  # type: ignore[attr-defined]
TABLES = [CHARGES, CHARGE_KEYS]
