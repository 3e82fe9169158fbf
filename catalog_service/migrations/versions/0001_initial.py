"""The catalog context's schema when migrations began: regions and images.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_region",
        sa.Column("region_id", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=128), nullable=False),
        sa.Column("mainland", sa.Boolean(), nullable=False),
        sa.Column("sync_enabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("region_id"),
    )
    op.create_table(
        "catalog_image",
        sa.Column("image_id", sa.String(length=12), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("image_type", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.String(length=512), nullable=False),
        sa.Column("owner_account_id", sa.String(length=32), nullable=False),
        sa.Column("platform", sa.String(length=64), nullable=False),
        sa.Column("os_name", sa.String(length=128), nullable=False),
        sa.Column("os_type", sa.String(length=16), nullable=False),
        sa.Column("architecture", sa.String(length=16), nullable=False),
        sa.Column("size_gb", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("base_image_id", sa.String(length=12), nullable=False),
        sa.Column("progress_percent", sa.Integer(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("marketplace_product_id", sa.String(length=64), nullable=False),
        sa.Column("marketplace_provider", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("image_id"),
    )
    op.create_index("ix_catalog_image_region_id", "catalog_image", ["region", "image_id"])


def downgrade() -> None:
    op.drop_index("ix_catalog_image_region_id", table_name="catalog_image")
    op.drop_table("catalog_image")
    op.drop_table("catalog_region")
