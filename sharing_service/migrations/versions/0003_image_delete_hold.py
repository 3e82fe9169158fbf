"""The delete hold of an image (RetireImage): no share is made before retired_until.

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
    with op.batch_alter_table("sharing_image_lock") as batch:
        batch.add_column(sa.Column("retired_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sharing_image_lock") as batch:
        batch.drop_column("retired_until")
