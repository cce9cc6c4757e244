"""Rollout history: one row per phase change, gate decision and device state change.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 14:15:25.795159
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollout_history",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("rollout_id", sa.String(length=40), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("device_id", sa.String(length=63), nullable=False),
        sa.Column("old", sa.String(length=16), nullable=False),
        sa.Column("new", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.rollout_id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rollout_history", schema=None) as batch_op:
        batch_op.create_index(
            "ix_rollout_history_rollout_id_id", ["rollout_id", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("rollout_history", schema=None) as batch_op:
        batch_op.drop_index("ix_rollout_history_rollout_id_id")

    op.drop_table("rollout_history")
