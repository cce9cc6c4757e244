"""Device active variant: the model variant of its active release a device runs ("": the
release's default), as its status names it, for `edgectl devices list`.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 20:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("active_variant", sa.String(length=64), server_default="", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("active_variant")
