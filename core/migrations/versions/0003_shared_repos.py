"""Shared repositories: a repo's ``shared`` flag and ``client_uri``; plans outlive their repo.

A receiver removes a repository its owner unshared, but keeps the plans that used it (disabled,
with the reason), so ``plans.repo_id`` can no longer be a foreign key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: SQLite keeps the foreign key of 0001 unnamed; batch mode finds it under this name.
_FK = "fk_plans_repo_id_repos"
_NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def upgrade() -> None:
    with op.batch_alter_table("repos") as batch:
        batch.add_column(
            sa.Column("shared", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("client_uri", sa.Text(), nullable=True))
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        with op.batch_alter_table("plans", naming_convention=_NAMING) as batch:
            batch.drop_constraint(_FK, type_="foreignkey")
        return
    for fk in sa.inspect(bind).get_foreign_keys("plans"):
        name = fk.get("name")
        if fk.get("referred_table") == "repos" and name:
            op.drop_constraint(name, "plans", type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.create_foreign_key(_FK, "repos", ["repo_id"], ["id"])
    with op.batch_alter_table("repos") as batch:
        batch.drop_column("client_uri")
        batch.drop_column("shared")
