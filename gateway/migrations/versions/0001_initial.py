"""The gateway's schema when migrations began: accounts and API keys, instances, launches.

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
        "gateway_account",
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("display_name", sa.String(length=64), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_id"),
    )
    op.create_table(
        "gateway_api_key",
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key_id"),
    )
    op.create_index("ix_gateway_api_key_account_id", "gateway_api_key", ["account_id"])
    op.create_table(
        "gateway_instance",
        sa.Column("instance_id", sa.String(length=12), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("instance_name", sa.String(length=64), nullable=False),
        sa.Column("instance_type", sa.String(length=32), nullable=False),
        sa.Column("image_id", sa.String(length=12), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("charge_type", sa.String(length=32), nullable=False),
        sa.Column("system_disk_gb", sa.Integer(), nullable=False),
        sa.Column("architecture", sa.String(length=16), nullable=False),
        sa.Column("launch_id", sa.String(length=16), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("instance_id"),
    )
    op.create_index("ix_gateway_instance_account", "gateway_instance", ["account_id", "instance_id"])
    op.create_index("ix_gateway_instance_launch_id", "gateway_instance", ["launch_id"])
    op.create_table(
        "gateway_launch",
        sa.Column("launch_id", sa.String(length=16), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("client_token", sa.String(length=64), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("instance_ids", sa.Text(), nullable=False),
        sa.Column("quote", sa.Text(), nullable=True),
        sa.Column("charge_id", sa.String(length=16), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("launch_id"),
        sa.UniqueConstraint("account_id", "client_token", name="uq_gateway_launch_token"),
    )
    op.create_index("ix_gateway_launch_state", "gateway_launch", ["state"])


def downgrade() -> None:
    op.drop_index("ix_gateway_launch_state", table_name="gateway_launch")
    op.drop_table("gateway_launch")
    op.drop_index("ix_gateway_instance_launch_id", table_name="gateway_instance")
    op.drop_index("ix_gateway_instance_account", table_name="gateway_instance")
    op.drop_table("gateway_instance")
    op.drop_index("ix_gateway_api_key_account_id", table_name="gateway_api_key")
    op.drop_table("gateway_api_key")
    op.drop_table("gateway_account")
