"""Alembic environment: always runs on a connection the Store hands over.

The Store runs migrations inside its own async engine (``conn.run_sync``), so this file never
creates an engine or an event loop of its own.
"""

from __future__ import annotations

from alembic import context

from peerstash.core.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable by running the alembic CLI by hand
    raise RuntimeError("run migrations through peerstash.core.store.Store.open()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
