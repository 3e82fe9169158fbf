"""The image lifecycle: image bytes (checksum, state reason), quotas, durable jobs, request ids.

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
    op.create_table("catalog_job",
    sa.Column("job_id", sa.String(length=32), nullable=False),
    sa.Column("kind", sa.String(length=32), nullable=False),
    sa.Column("subject", sa.String(length=64), nullable=False),
    sa.Column("payload", sa.Text(), nullable=False),
    sa.Column("state", sa.String(length=16), nullable=False),
    sa.Column("lease_owner", sa.String(length=64), nullable=False),
    sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("progress", sa.Integer(), nullable=False),
    sa.Column("error", sa.Text(), nullable=False),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("job_id")
    )
    with op.batch_alter_table("catalog_job", schema=None) as batch_op:
        batch_op.create_index("ix_catalog_job_due", ["state", "lease_until"], unique=False)
        batch_op.create_index("ix_catalog_job_subject", ["subject"], unique=False)

    op.create_table("catalog_quota_usage",
    sa.Column("account_id", sa.String(length=32), nullable=False),
    sa.Column("region", sa.String(length=64), nullable=False),
    sa.Column("day", sa.String(length=10), nullable=False),
    sa.Column("operations_used", sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint("account_id", "region")
    )
    op.create_table("catalog_request",
    sa.Column("account_id", sa.String(length=32), nullable=False),
    sa.Column("request_id", sa.String(length=64), nullable=False),
    sa.Column("method", sa.String(length=64), nullable=False),
    sa.Column("fingerprint", sa.String(length=64), nullable=False),
    sa.Column("response", sa.Text(), nullable=True),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("account_id", "request_id")
    )
    with op.batch_alter_table("catalog_request", schema=None) as batch_op:
        batch_op.create_index("ix_catalog_request_age", ["account_id", "create_time"], unique=False)

    with op.batch_alter_table("catalog_image", schema=None) as batch_op:
        batch_op.add_column(sa.Column("checksum_sha256", sa.String(length=64), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("state_reason", sa.String(length=512), nullable=False, server_default=""))
        batch_op.create_index("uq_catalog_image_owner_name", ["owner_account_id", "region", "name"], unique=True)



def downgrade() -> None:
    with op.batch_alter_table("catalog_image", schema=None) as batch_op:
        batch_op.drop_index("uq_catalog_image_owner_name")
        batch_op.drop_column("state_reason")
        batch_op.drop_column("checksum_sha256")

    with op.batch_alter_table("catalog_request", schema=None) as batch_op:
        batch_op.drop_index("ix_catalog_request_age")

    op.drop_table("catalog_request")
    op.drop_table("catalog_quota_usage")
    with op.batch_alter_table("catalog_job", schema=None) as batch_op:
        batch_op.drop_index("ix_catalog_job_subject")
        batch_op.drop_index("ix_catalog_job_due")

    op.drop_table("catalog_job")
