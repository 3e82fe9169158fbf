"""The outcome of each launch's idempotency key (CHARGED or VOID), claimed by CreateCharge and
ResolveCharge alike so that one of them wins.

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
        "billing_charge_key",
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "idempotency_key"),
    )


def downgrade() -> None:
    op.drop_table("billing_charge_key")
