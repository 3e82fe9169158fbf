"""Listing by visibility: an index per set a caller sees (official images of a type, an owner's images),
each in id order, so that ListImages reads only what the caller may see.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("catalog_image", schema=None) as batch_op:
        batch_op.create_index("ix_catalog_image_region_type_id", ["region", "image_type", "image_id"], unique=False)
        batch_op.create_index("ix_catalog_image_region_owner_type_id",
                              ["region", "owner_account_id", "image_type", "image_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("catalog_image", schema=None) as batch_op:
        batch_op.drop_index("ix_catalog_image_region_owner_type_id")
        batch_op.drop_index("ix_catalog_image_region_type_id")
