"""The billing context's tables (SQLModel)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Index, Integer, Table, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

# Instance ids as CreateCharge accepts them (the gateway's are 12 characters).
INSTANCE_ID_LENGTH = 32


class ChargeRow(SQLModel, table=True):
    """The charge ledger: launches, resets and settled usage, never updated."""

    __tablename__ = "billing_charge"
    __table_args__ = (
        UniqueConstraint("account_id", "idempotency_key", name="uq_billing_charge_idempotency"),
        Index("ix_billing_charge_instance", "account_id", "instance_id"),
    )

    # Keyset pagination walks the ledger in the order it was written.
    seq: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    charge_id: str = Field(unique=True, max_length=16)
    account_id: str = Field(index=True, max_length=32)
    # A launch's or a reset's (the caller's), or a usage charge's own (usage:<instance>:<segment>:<first hour>).
    idempotency_key: str = Field(max_length=64)
    request_fingerprint: str = Field(max_length=64)
    region: str = Field(max_length=64)
    currency: str = Field(max_length=3)
    charge_type: str = Field(max_length=32)
    total: str = Field(max_length=40)
    # The quote's lines ({"v": 1, "lines": [...]}, or a bare list before versions; amounts as strings) and
    # the instance ids (a list).
    lines: str = Field(sa_column=Column(Text, nullable=False))
    instance_ids: str = Field(sa_column=Column(Text, nullable=False))
    create_time: datetime
    # LAUNCH, RESET or USAGE; the rows written before kinds existed are launches.
    kind: str = Field(default="LAUNCH", max_length=16, sa_column_kwargs={"server_default": "LAUNCH"})
    # RESET and USAGE: the one instance charged.
    instance_id: str | None = Field(default=None, max_length=INSTANCE_ID_LENGTH)
    # USAGE: the hours charged.
    usage_start_time: datetime | None = None
    usage_end_time: datetime | None = None


class ChargeKeyRow(SQLModel, table=True):
    """The outcome of each idempotency key: CHARGED, or VOID when a launch whose caller lost the answer
    was found never charged. CreateCharge and ResolveCharge both claim the key here first, so that
    one of them wins, also between replicas (on PostgreSQL the loser waits on the primary key)."""

    __tablename__ = "billing_charge_key"

    account_id: str = Field(primary_key=True, max_length=32)
    idempotency_key: str = Field(primary_key=True, max_length=64)
    outcome: str = Field(max_length=16)
    create_time: datetime


class MeterSegmentRow(SQLModel, table=True):
    """A stretch of an instance's time at one price (domain.metering.Segment). Only hours_billed,
    next_settle_time and end_time change, and every change is conditional on the values read, so that
    settlements, ends and resets racing on any replicas never charge an hour twice."""

    __tablename__ = "billing_meter_segment"
    __table_args__ = (
        UniqueConstraint("account_id", "instance_id", "segment_no", name="uq_billing_meter_segment"),
        # What settlement reads: the hourly segments whose next hour is over.
        Index("ix_billing_meter_segment_due", "next_settle_time"),
    )

    seq: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    account_id: str = Field(max_length=32)
    instance_id: str = Field(max_length=INSTANCE_ID_LENGTH)
    # 0 from the launch, then one more per reset.
    segment_no: int
    region: str = Field(max_length=64)
    instance_type: str = Field(max_length=32)
    charge_type: str = Field(max_length=32)
    currency: str = Field(max_length=3)
    # One instance's unit prices: {"v": 1, "prices": [{kind, description, unit_price, unit}]}.
    prices: str = Field(sa_column=Column(Text, nullable=False))
    start_time: datetime
    end_time: datetime | None = None
    hours_billed: int
    prepaid_until: datetime | None = None
    # start_time + (hours_billed + 1) h while an hourly segment is open; NULL when closed or PREPAID.
    next_settle_time: datetime | None = None


CHARGES: Table = ChargeRow.__table__  # type: ignore[attr-defined]
CHARGE_KEYS: Table = ChargeKeyRow.__table__  # type: ignore[attr-defined]
SEGMENTS: Table = MeterSegmentRow.__table__  # type: ignore[attr-defined]
TABLES = [CHARGES, CHARGE_KEYS, SEGMENTS]
