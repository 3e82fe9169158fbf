"""The catalog's tables (SQLModel). Only the catalog's adapters touch them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Table
from sqlmodel import Field, SQLModel

from chassis.idempotency import request_table
from chassis.jobs import job_table


class RegionRow(SQLModel, table=True):
    __tablename__ = "catalog_region"

    region_id: str = Field(primary_key=True, max_length=64)
    display_name: str = Field(max_length=128)
    mainland: bool
    sync_enabled: bool


class ImageRow(SQLModel, table=True):
    __tablename__ = "catalog_image"
    # Keyset pagination walks a region's images in id order: all of them (jobs, syncs), the official ones of
    # one type, or one owner's (ListImages reads each visible set by its own index; see repository.page).
    __table_args__ = (
        Index("ix_catalog_image_region_id", "region", "image_id"),
        Index("ix_catalog_image_region_type_id", "region", "image_type", "image_id"),
        Index("ix_catalog_image_region_owner_type_id", "region", "owner_account_id", "image_type", "image_id"),
        # An account's image names are unique per region; also what quotas count and syncs look for.
        Index("uq_catalog_image_owner_name", "owner_account_id", "region", "name", unique=True),
    )

    image_id: str = Field(primary_key=True, max_length=12)
    region: str = Field(max_length=64)
    image_type: str = Field(max_length=16)
    state: str = Field(max_length=16)
    name: str = Field(max_length=128)
    description: str = Field(max_length=512)
    owner_account_id: str = Field(max_length=32)
    platform: str = Field(max_length=64)
    os_name: str = Field(max_length=128)
    os_type: str = Field(max_length=16)
    architecture: str = Field(max_length=16)
    size_gb: int
    source: str = Field(max_length=16)
    base_image_id: str = Field(max_length=12)
    progress_percent: int
    create_time: datetime
    marketplace_product_id: str = Field(max_length=64)
    marketplace_provider: str = Field(max_length=64)
    checksum_sha256: str = Field(default="", max_length=64)
    state_reason: str = Field(default="", max_length=512)


class QuotaUsageRow(SQLModel, table=True):
    """An account's image operations in a region on its last day of use; the row is also the lock
    that makes both image quotas exact under concurrency, on every replica."""

    __tablename__ = "catalog_quota_usage"

    account_id: str = Field(primary_key=True, max_length=32)
    region: str = Field(primary_key=True, max_length=64)
    # The UTC day ("2026-11-28") that operations_used counts; on another day none are used yet.
    day: str = Field(max_length=10)
    operations_used: int


REGIONS: Table = RegionRow.__table__  # type: ignore[attr-defined]
IMAGES: Table = ImageRow.__table__  # type: ignore[attr-defined]
QUOTA_USAGE: Table = QuotaUsageRow.__table__  # type: ignore[attr-defined]
# Create, import and sync: the durable jobs that put an image's bytes in its region's store.
JOBS = job_table("catalog")
# Every mutation by request_id: its first answer.
REQUESTS = request_table("catalog")
TABLES = [REGIONS, IMAGES, QUOTA_USAGE, JOBS, REQUESTS]
