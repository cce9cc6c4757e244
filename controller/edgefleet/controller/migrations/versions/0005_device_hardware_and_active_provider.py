"""Device hardware and active provider: what the device is, and the execution provider its
active release runs on, as its status names them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 14:38:50.071153
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hardware", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("active_provider", sa.String(length=64), server_default="", nullable=False)
        )
        batch_op.add_column(
            sa.Column("provider_fallback", sa.Text(), server_default="", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("provider_fallback")
        batch_op.drop_column("active_provider")
        batch_op.drop_column("hardware")
