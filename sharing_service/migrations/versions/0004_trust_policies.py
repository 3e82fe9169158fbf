"""Trust policies: a row per account that set one, and the values of its three lists as entries.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-12
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sharing_trust_policy",
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("allow_platform_images", sa.Boolean(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_id"),
    )
    op.create_table(
        "sharing_trust_entry",
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("list_name", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "list_name", "value"),
    )


def downgrade() -> None:
    op.drop_table("sharing_trust_entry")
    op.drop_table("sharing_trust_policy")
