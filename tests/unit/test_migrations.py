"""The models and the migrations describe the same schema."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from peerstash.core.models import Base
from peerstash.core.store import Store


async def test_migrations_match_models(tmp_path: Path) -> None:
    store = await Store.open(data_dir=tmp_path)
    try:
        async with store.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
                )
            )
        assert diff == []
    finally:
        await store.close()


async def test_reopening_does_not_migrate_twice(tmp_path: Path) -> None:
    for _ in range(2):
        store = await Store.open(data_dir=tmp_path)
        await store.close()
