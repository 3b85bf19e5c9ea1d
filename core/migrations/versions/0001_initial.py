"""Initial tables: settings, secrets, repos, plans, operations, operation logs.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from peerstash.core.models import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "settings",
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("value", sa.JSON(), nullable=False),
    )
    op.create_table(
        "secrets",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "repos",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("password_source", sa.String(20), nullable=False),
        sa.Column("password_ref", sa.Text(), nullable=False),
        sa.Column("env_keys", sa.JSON(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("guid", sa.String(64), nullable=True),
        sa.Column("origin", sa.String(100), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "plans",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("repo_id", sa.String(100), sa.ForeignKey("repos.id"), nullable=False),
        sa.Column("paths", sa.JSON(), nullable=False),
        sa.Column("excludes", sa.JSON(), nullable=False),
        sa.Column("schedule_cron", sa.String(100), nullable=True),
        sa.Column("schedule_interval", sa.Integer(), nullable=True),
        sa.Column("retention", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("next_due_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "operations",
        sa.Column("pk", BigId, primary_key=True, autoincrement=True),
        sa.Column("op_id", sa.String(40), nullable=False),
        sa.Column("origin", sa.String(100), nullable=False),
        sa.Column("modno", sa.BigInteger(), nullable=False),
        sa.Column("flow_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("plan_id", sa.String(100), nullable=True),
        sa.Column("repo_id", sa.String(100), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False),
        sa.Column("bytes_total", sa.BigInteger(), nullable=False),
        sa.Column("files_done", sa.BigInteger(), nullable=False),
        sa.Column("files_total", sa.BigInteger(), nullable=False),
        sa.Column("eta_seconds", sa.Integer(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("snapshot_id", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.UniqueConstraint("origin", "op_id", name="uq_operations_origin_op_id"),
    )
    op.create_index("ix_operations_origin_modno", "operations", ["origin", "modno"])
    op.create_index("ix_operations_plan_ended", "operations", ["plan_id", "ended_at"])
    op.create_index("ix_operations_status", "operations", ["status"])
    op.create_table(
        "operation_logs",
        sa.Column("pk", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "op_pk", BigId, sa.ForeignKey("operations.pk", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
    )
    op.create_index("ix_operation_logs_op", "operation_logs", ["op_pk", "seq"])


def downgrade() -> None:
    for table in ("operation_logs", "operations", "plans", "repos", "secrets", "settings"):
        op.drop_table(table)
