"""Alembic environment: always runs on a connection the Store hands over.

The Store runs migrations inside its own async engine (``conn.run_sync``), so this file never
creates an engine or an event loop of its own.

All migrations of one upgrade run in the ONE transaction the Store already opened on that
connection (alembic sees an external transaction and opens none per migration), so a failure in
any of them rolls the database back to where it was: PostgreSQL and SQLite both have
transactional DDL, and on SQLite the Store's migration engine emits the real ``BEGIN`` itself
(see ``core/store/upgrade.py``, "upgrading a database").
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo

from peerstash.core.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable by running the alembic CLI by hand
    raise RuntimeError("run migrations through peerstash.core.store.Store.open()")
if not connection.in_transaction():  # pragma: no cover - a programming error, not a user's
    raise RuntimeError("migrations must run inside the Store's transaction")

#: The Store passes a list here to learn how far an upgrade got before it failed.
applied: list[str] | None = context.config.attributes.get("applied")


def _on_version_apply(
    ctx: MigrationContext, step: MigrationInfo, heads: Collection[Any], run_args: Mapping[str, Any]
) -> None:
    if applied is not None:
        applied.append(str(step.up_revision_id))


context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    # True on SQLite too: the Store's migration connection emits a real BEGIN (alembic's own
    # default for SQLite assumes the driver's autocommitted DDL, which left half-done upgrades).
    transactional_ddl=True,
    transaction_per_migration=False,
    on_version_apply=_on_version_apply,
)
with context.begin_transaction():
    context.run_migrations()
