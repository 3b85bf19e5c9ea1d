"""The one place that talks SQL.

Everything above this package asks the Store for records and hands it changes; nothing else
builds a query. That keeps the two backends (SQLite for a laptop, PostgreSQL for a hub) honest,
and it is where the operation ``modno`` is minted, so no caller can forget to bump it.

:class:`Store` is one class assembled from a mixin per concern, so callers keep one object and
one import path (``from peerstash.core.store import Store``):

* ``base``: the engine and its sessions, rows by name, :class:`StoreError` and its kinds.
* ``upgrade``: creating the database file and migrating it safely (:class:`MigrationError`).
* ``config``: settings, secrets, repositories, plans.
* ``oplog``: local operations (modno minting) and their logs, trim/gc.
* ``opsync``: what operation sync between peers needs: sync rows, digests, remote operations.
* ``peers``: peers, pairing tokens (redeem), remote requests.

This ``__init__`` holds :meth:`Store.open` and re-exports every public name the single
``store.py`` module had. A test that monkeypatches a name must patch the module that uses it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import create_async_engine

from peerstash.core.store.base import AlreadyExists, NotFound, StoreError, utcnow
from peerstash.core.store.config import (
    DEFAULT_PEER_HISTORY_DAYS,
    DEFAULT_PEER_HISTORY_MAX_OPS,
    PEER_HISTORY_DAYS,
    PEER_HISTORY_MAX_OPS,
    ConfigMixin,
    repo_record,
)
from peerstash.core.store.oplog import (
    LOG_HEAD,
    LOG_LINE_MAX,
    LOG_TAIL,
    OP_FIELDS,
    DeletedOp,
    OpFilter,
    OpLogMixin,
)
from peerstash.core.store.opsync import PEER_HISTORY_KEEP_MIN, OpSyncMixin
from peerstash.core.store.peers import KeyConflict, PeersMixin, TokenRefused
from peerstash.core.store.upgrade import (
    MigrationError,
    _describe_url,
    _prepare_sqlite,
    _secure_sqlite_file,
    _sqlite_file,
    _sqlite_migration_engine,
    _upgrade,
    backup_path,
)
from peerstash.core.store.upgrade import _alembic_config as _alembic_config

__all__ = [
    "DEFAULT_PEER_HISTORY_DAYS",
    "DEFAULT_PEER_HISTORY_MAX_OPS",
    "LOG_HEAD",
    "LOG_LINE_MAX",
    "LOG_TAIL",
    "OP_FIELDS",
    "PEER_HISTORY_DAYS",
    "PEER_HISTORY_KEEP_MIN",
    "PEER_HISTORY_MAX_OPS",
    "AlreadyExists",
    "DeletedOp",
    "KeyConflict",
    "MigrationError",
    "NotFound",
    "OpFilter",
    "Store",
    "StoreError",
    "TokenRefused",
    "backup_path",
    "repo_record",
    "utcnow",
]

log = logging.getLogger(__name__)


class Store(ConfigMixin, OpLogMixin, PeersMixin, OpSyncMixin):
    """Async access to Peerstash's database.

    Records come back as detached ORM objects (``expire_on_commit=False``): read their
    attributes freely, but change them only through the Store's methods.
    """

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str | None = None, *, data_dir: Path | None = None) -> Store:
        """Open (and migrate) the store at ``url``, or SQLite in ``data_dir`` when no URL."""
        if url is None:
            if data_dir is None:
                raise ValueError("Store.open needs a URL or a data directory")
            db_path = data_dir / "peerstash.db"
            _secure_sqlite_file(db_path)
            url = f"sqlite+aiosqlite:///{db_path}"
        db_file = _sqlite_file(url) if url.startswith("sqlite") else None
        if db_file is not None:
            copy = await asyncio.to_thread(_prepare_sqlite, db_file)
            migrator = _sqlite_migration_engine(url)
            try:
                await _upgrade(migrator, str(db_file), copy=copy)
            finally:
                await migrator.dispose()
            if copy is not None:
                log.info("upgraded the database %s; a copy from before is at %s", db_file, copy)
        if url.startswith("sqlite"):
            engine = create_async_engine(url, connect_args={"timeout": 30})

            @event.listens_for(engine.sync_engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()

        else:
            engine = create_async_engine(url, pool_pre_ping=True)
        if db_file is None:  # PostgreSQL, or an in-memory SQLite (new, so nothing to copy)
            try:
                await _upgrade(engine, _describe_url(url))
            except BaseException:
                await engine.dispose()
                raise
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()
