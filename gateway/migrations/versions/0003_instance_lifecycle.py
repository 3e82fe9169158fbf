"""Instances with a lifecycle: when each last changed and when it was terminated; the requests the gateway
answered by request_id (TerminateInstances, ResetInstance).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gateway_instance") as batch:
        batch.add_column(sa.Column("update_time", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("terminate_time", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "gateway_request",
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "request_id"),
    )
    op.create_index("ix_gateway_request_age", "gateway_request", ["account_id", "create_time"])


def downgrade() -> None:
    op.drop_index("ix_gateway_request_age", table_name="gateway_request")
    op.drop_table("gateway_request")
    with op.batch_alter_table("gateway_instance") as batch:
        batch.drop_column("terminate_time")
        batch.drop_column("update_time")
