"""The gateway's tables (SQLModel): accounts and API keys, instances, launches, the requests answered by
request_id, and the gateway's durable jobs (settling launches, ending usage, resets)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Index, Table, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from chassis.idempotency import request_table
from chassis.jobs import job_table


class AccountRow(SQLModel, table=True):
    __tablename__ = "gateway_account"

    account_id: str = Field(primary_key=True, max_length=12)
    display_name: str = Field(max_length=64)
    create_time: datetime


class ApiKeyRow(SQLModel, table=True):
    __tablename__ = "gateway_api_key"

    key_id: str = Field(primary_key=True, max_length=16)
    account_id: str = Field(index=True, max_length=12)
    # sha256 of the secret, hex; the secret itself is never stored.
    secret_hash: str = Field(max_length=64)
    create_time: datetime


class InstanceRow(SQLModel, table=True):
    __tablename__ = "gateway_instance"
    __table_args__ = (Index("ix_gateway_instance_account", "account_id", "instance_id"),)

    instance_id: str = Field(primary_key=True, max_length=12)
    account_id: str = Field(max_length=12)
    region: str = Field(max_length=64)
    instance_name: str = Field(max_length=64)
    instance_type: str = Field(max_length=32)
    image_id: str = Field(max_length=12)
    state: str = Field(max_length=16)
    charge_type: str = Field(max_length=32)
    system_disk_gb: int
    architecture: str = Field(max_length=16)
    launch_id: str = Field(index=True, max_length=16)
    create_time: datetime
    # The last change of state or image (NULL for instances from before it was kept: create_time).
    update_time: datetime | None = Field(default=None, nullable=True)
    terminate_time: datetime | None = Field(default=None, nullable=True)


class LaunchRow(SQLModel, table=True):
    """A RunInstances call: the claim on its client token, what it asked for and, once done, its result."""

    __tablename__ = "gateway_launch"
    # A launch sent without a client token gets its own launch id as one, so it can be retried too.
    __table_args__ = (UniqueConstraint("account_id", "client_token", name="uq_gateway_launch_token"),)

    launch_id: str = Field(primary_key=True, max_length=16)
    account_id: str = Field(max_length=12)
    client_token: str | None = Field(default=None, max_length=64)
    fingerprint: str = Field(max_length=64)
    state: str = Field(index=True, max_length=16)
    # The request and the image facts it was priced with, as JSON: enough to finish it later.
    request: str = Field(sa_column=Column(Text, nullable=False))
    instance_ids: str = Field(sa_column=Column(Text, nullable=False))
    quote: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    charge_id: str = Field(default="", max_length=16)
    create_time: datetime


ACCOUNTS: Table = AccountRow.__table__  # type: ignore[attr-defined]
API_KEYS: Table = ApiKeyRow.__table__  # type: ignore[attr-defined]
INSTANCES: Table = InstanceRow.__table__  # type: ignore[attr-defined]
LAUNCHES: Table = LaunchRow.__table__  # type: ignore[attr-defined]
# The gateway's durable jobs: one per launch, that settles it if its call does not (the call died, or billing
# could not be asked); one per termination, that ends the instances' usage; one per reset, that finishes it.
JOBS = job_table("gateway")
# TerminateInstances and ResetInstance by request_id: what each answered.
REQUESTS = request_table("gateway")
TABLES = [ACCOUNTS, API_KEYS, INSTANCES, LAUNCHES, JOBS, REQUESTS]
