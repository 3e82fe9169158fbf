"""Usage metering: the meter segments of instances, and charges of every kind (launches, resets, usage) in
the ledger. The charges recorded before are launches.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("billing_charge") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=16), nullable=False, server_default="LAUNCH"))
        batch.add_column(sa.Column("instance_id", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("usage_start_time", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("usage_end_time", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_billing_charge_instance", ["account_id", "instance_id"], unique=False)

    op.create_table(
        "billing_meter_segment",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("instance_id", sa.String(length=32), nullable=False),
        sa.Column("segment_no", sa.Integer(), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("instance_type", sa.String(length=32), nullable=False),
        sa.Column("charge_type", sa.String(length=32), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("prices", sa.Text(), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("hours_billed", sa.Integer(), nullable=False),
        sa.Column("prepaid_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_settle_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("account_id", "instance_id", "segment_no", name="uq_billing_meter_segment"),
    )
    op.create_index("ix_billing_meter_segment_due", "billing_meter_segment", ["next_settle_time"])


def downgrade() -> None:
    op.drop_index("ix_billing_meter_segment_due", table_name="billing_meter_segment")
    op.drop_table("billing_meter_segment")
    with op.batch_alter_table("billing_charge") as batch:
        batch.drop_index("ix_billing_charge_instance")
        batch.drop_column("usage_end_time")
        batch.drop_column("usage_start_time")
        batch.drop_column("instance_id")
        batch.drop_column("kind")
