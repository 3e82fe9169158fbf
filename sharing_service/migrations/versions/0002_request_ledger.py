"""The requests sharing has answered, for request_id idempotency (chassis.idempotency).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sharing_request",
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "request_id"),
    )
    op.create_index("ix_sharing_request_age", "sharing_request", ["account_id", "create_time"])


def downgrade() -> None:
    op.drop_index("ix_sharing_request_age", table_name="sharing_request")
    op.drop_table("sharing_request")
