"""Remote requests: commands this instance asked a peer to run, kept until they end.

Self-contained (one new table), so it can be re-chained after another revision at merge time.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from peerstash.core.models import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "remote_requests",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("peer", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("remote_op_id", sa.String(40), nullable=True),
        sa.Column("snapshot_id", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_remote_requests_peer_state", "remote_requests", ["peer", "state"])


def downgrade() -> None:
    op.drop_index("ix_remote_requests_peer_state", table_name="remote_requests")
    op.drop_table("remote_requests")
