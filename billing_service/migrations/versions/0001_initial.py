"""The billing context's schema when migrations began: the charge ledger.

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
        "billing_charge",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("charge_id", sa.String(length=16), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("request_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("charge_type", sa.String(length=32), nullable=False),
        sa.Column("total", sa.String(length=40), nullable=False),
        sa.Column("lines", sa.Text(), nullable=False),
        sa.Column("instance_ids", sa.Text(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("account_id", "idempotency_key", name="uq_billing_charge_idempotency"),
        sa.UniqueConstraint("charge_id"),
    )
    op.create_index("ix_billing_charge_account_id", "billing_charge", ["account_id"])


def downgrade() -> None:
    op.drop_index("ix_billing_charge_account_id", table_name="billing_charge")
    op.drop_table("billing_charge")
