"""The catalog's tables (SQLModel). Only the catalog's adapters touch them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Table
from sqlmodel import Field, SQLModel


class RegionRow(SQLModel, table=True):
    __tablename__ = "catalog_region"

    region_id: str = Field(primary_key=True, max_length=64)
    display_name: str = Field(max_length=128)
    mainland: bool
    sync_enabled: bool


class ImageRow(SQLModel, table=True):
    __tablename__ = "catalog_image"
    # Keyset pagination walks a region's images in id order.
    __table_args__ = (Index("ix_catalog_image_region_id", "region", "image_id"),)

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


REGIONS: Table = RegionRow.__table__  # type: ignore[attr-defined]
IMAGES: Table = ImageRow.__table__  # type: ignore[attr-defined]
TABLES = [REGIONS, IMAGES]
