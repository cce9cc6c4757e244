"""The first released schema (EdgeFleet 0.1: models, releases, keys, devices, rollouts).

Revision ID: 0001
Revises:
Create Date: 2026-12-02
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
        "desired_states",
        sa.Column("device_id", sa.String(length=63), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("release", sa.String(length=200), nullable=False),
        sa.Column("rollout_id", sa.String(length=40), nullable=False),
        sa.Column("issued_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("device_id"),
    )
    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(length=63), nullable=False),
        sa.Column("fleet", sa.String(length=63), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=True),
        sa.Column("active_release", sa.String(length=200), nullable=False),
        sa.Column("previous_release", sa.String(length=200), nullable=False),
        sa.Column("target_release", sa.String(length=200), nullable=False),
        sa.Column("generation_applied", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("predict_endpoint", sa.String(length=255), nullable=False),
        sa.Column("agent_version", sa.String(length=64), nullable=False),
        sa.Column("active_manifest_digest", sa.String(length=80), nullable=False),
        sa.Column("status_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("first_seen_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("device_id"),
    )
    op.create_index(op.f("ix_devices_fleet"), "devices", ["fleet"], unique=False)
    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("device_id", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("release", sa.String(length=200), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_events_device_id_id", "events", ["device_id", "id"], unique=False)
    op.create_table(
        "models",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("opset", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("parent_version", sa.Integer(), nullable=True),
        sa.Column("report_json_digest", sa.String(length=71), nullable=True),
        sa.Column("report_markdown_digest", sa.String(length=71), nullable=True),
        sa.Column("golden_digest", sa.String(length=71), nullable=True),
        sa.Column("transfer_digest", sa.String(length=71), nullable=True),
        sa.Column("transfer_size", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version"),
    )
    op.create_table(
        "presence",
        sa.Column("device_id", sa.String(length=63), nullable=False),
        sa.Column("fleet", sa.String(length=63), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("predict_endpoint", sa.String(length=255), nullable=False),
        sa.Column("active_release", sa.String(length=200), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("device_id"),
    )
    op.create_table(
        "releases",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("manifest_digest", sa.String(length=71), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("signed_manifest", sa.LargeBinary(), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version"),
    )
    op.create_table(
        "rollouts",
        sa.Column("rollout_id", sa.String(length=40), nullable=False),
        sa.Column("release", sa.String(length=200), nullable=False),
        sa.Column("fleet", sa.String(length=63), nullable=False),
        sa.Column("strategy", sa.String(length=32), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=True),
        sa.Column("phase", sa.String(length=16), server_default="succeeded", nullable=False),
        sa.Column("step", sa.Integer(), server_default="0", nullable=False),
        sa.Column("step_done_at", sa.Float(), nullable=True),
        sa.Column("paused_phase", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("finished", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("rollout_id"),
    )
    op.create_index(op.f("ix_rollouts_finished"), "rollouts", ["finished"], unique=False)
    op.create_index(op.f("ix_rollouts_fleet"), "rollouts", ["fleet"], unique=False)
    op.create_table(
        "signing_keys",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("public_key_pem", sa.Text(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("key_id"),
    )
    op.create_index(op.f("ix_signing_keys_active"), "signing_keys", ["active"], unique=False)
    op.create_table(
        "telemetry",
        sa.Column("device_id", sa.String(length=63), nullable=False),
        sa.Column("release", sa.String(length=200), nullable=False),
        sa.Column("window_s", sa.Float(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("p50_ms", sa.Float(), nullable=False),
        sa.Column("p95_ms", sa.Float(), nullable=False),
        sa.Column("p99_ms", sa.Float(), nullable=False),
        sa.Column("power_w", sa.Float(), nullable=True),
        sa.Column("energy_per_inference_j", sa.Float(), nullable=True),
        sa.Column("cpu_percent", sa.Float(), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("device_id"),
    )
    op.create_table(
        "rollout_targets",
        sa.Column("rollout_id", sa.String(length=40), nullable=False),
        sa.Column("device_id", sa.String(length=63), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="sent", nullable=False),
        sa.Column("sent_at", sa.Float(), server_default="0", nullable=False),
        sa.Column("previous_release", sa.String(length=200), server_default="", nullable=False),
        sa.Column("baseline_p95_ms", sa.Float(), nullable=True),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.rollout_id"],
        ),
        sa.PrimaryKeyConstraint("rollout_id", "device_id"),
    )


def downgrade() -> None:
    op.drop_table("rollout_targets")
    op.drop_table("telemetry")
    op.drop_index(op.f("ix_signing_keys_active"), table_name="signing_keys")
    op.drop_table("signing_keys")
    op.drop_index(op.f("ix_rollouts_fleet"), table_name="rollouts")
    op.drop_index(op.f("ix_rollouts_finished"), table_name="rollouts")
    op.drop_table("rollouts")
    op.drop_table("releases")
    op.drop_table("presence")
    op.drop_table("models")
    op.drop_index("ix_events_device_id_id", table_name="events")
    op.drop_table("events")
    op.drop_index(op.f("ix_devices_fleet"), table_name="devices")
    op.drop_table("devices")
    op.drop_table("desired_states")
