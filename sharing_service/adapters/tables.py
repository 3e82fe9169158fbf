"""The sharing context's tables (SQLModel)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Table
from sqlmodel import Field, SQLModel

from chassis.idempotency import request_table


class ShareRow(SQLModel, table=True):
    __tablename__ = "sharing_share"
    __table_args__ = (Index("ix_sharing_share_recipient", "recipient_account_id", "region", "image_id"),)

    image_id: str = Field(primary_key=True, max_length=12)
    recipient_account_id: str = Field(primary_key=True, max_length=32)
    owner_account_id: str = Field(max_length=32)
    region: str = Field(max_length=64)
    state: str = Field(max_length=16)
    create_time: datetime


class ImageShareLockRow(SQLModel, table=True):
    """One row per shared image: locked while its shares change, so the limit holds across replicas.
    It also carries the image's delete hold (RetireImage): no share is made before ``retired_until``."""

    __tablename__ = "sharing_image_lock"

    image_id: str = Field(primary_key=True, max_length=12)
    retired_until: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class TrustPolicyRow(SQLModel, table=True):
    """An account's trust policy, but for its lists (TrustEntryRow). No row: the default policy. The row is
    also the account's lock while its policy changes, so that updates of different fields never lose one."""

    __tablename__ = "sharing_trust_policy"

    account_id: str = Field(primary_key=True, max_length=32)
    mode: str = Field(max_length=16)
    allow_platform_images: bool
    update_time: datetime = Field(sa_type=DateTime(timezone=True))


class TrustEntryRow(SQLModel, table=True):
    """One value of one of a policy's lists, so that "does this recipient trust the owner" and "is this
    provider or account allowed" are lookups on the primary key; ``ordinal`` keeps each list's order."""

    __tablename__ = "sharing_trust_entry"

    account_id: str = Field(primary_key=True, max_length=32)
    list_name: str = Field(primary_key=True, max_length=16)
    value: str = Field(primary_key=True, max_length=64)
    ordinal: int


SHARES: Table = ShareRow.__table__  # type: ignore[attr-defined]
IMAGE_LOCKS: Table = ImageShareLockRow.__table__  # type: ignore[attr-defined]
TRUST_POLICIES: Table = TrustPolicyRow.__table__  # type: ignore[attr-defined]
TRUST_ENTRIES: Table = TrustEntryRow.__table__  # type: ignore[attr-defined]
# The mutations by request_id (ShareImage, UnshareImage, Accept/RejectImageShare, UpdateTrustPolicy): what
# each call returned.
REQUESTS = request_table("sharing")
TABLES = [SHARES, IMAGE_LOCKS, TRUST_POLICIES, TRUST_ENTRIES, REQUESTS]
