"""The sharing context's schema when migrations began: shares and their per-image lock rows.

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
        "sharing_image_lock",
        sa.Column("image_id", sa.String(length=12), nullable=False),
        sa.PrimaryKeyConstraint("image_id"),
    )
    op.create_table(
        "sharing_share",
        sa.Column("image_id", sa.String(length=12), nullable=False),
        sa.Column("recipient_account_id", sa.String(length=32), nullable=False),
        sa.Column("owner_account_id", sa.String(length=32), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("image_id", "recipient_account_id"),
    )
    op.create_index("ix_sharing_share_recipient", "sharing_share", ["recipient_account_id", "region", "image_id"])


def downgrade() -> None:
    op.drop_index("ix_sharing_share_recipient", table_name="sharing_share")
    op.drop_table("sharing_share")
    op.drop_table("sharing_image_lock")
