"""What every part of the Store stands on: the engine and its sessions, rows by name, errors.

The Store is one class made of mixins, one per concern (see the package's ``__init__``). Each
mixin derives from :class:`StoreBase`, so it can open a session and read or change a row by its
name without knowing the other mixins. :class:`StoreError` and its two common kinds are here
because every mixin raises them; the errors of one concern live with it (``MigrationError`` in
``upgrade``, ``TokenRefused`` and ``KeyConflict`` in ``peers``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from peerstash.core.models import Peer, Plan, RemoteRequest, Repo

_Named = TypeVar("_Named", Repo, Plan, Peer, RemoteRequest)


def utcnow() -> datetime:
    return datetime.now(UTC)


class StoreError(Exception):
    """A request the store cannot satisfy, worded for a person."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class StoreBase:
    """The state every part of the Store shares: the engine and its session factory, this
    instance's origin, and the modno counters (minted in :mod:`peerstash.core.store.oplog`).

    Not used on its own: callers open a :class:`~peerstash.core.store.Store`.
    """

    def __init__(self, engine: AsyncEngine, local_origin: str = "") -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.local_origin = local_origin
        self._modno: dict[str, int] = {}
        self._modno_lock = asyncio.Lock()

    def session(self) -> AsyncSession:
        return self._sessions()

    # -- generic rows keyed by name ----------------------------------------------------------

    async def _get(self, model: type[_Named], key: str, what: str) -> _Named:
        async with self.session() as s:
            row = await s.get(model, key)
        if row is None:
            raise NotFound(f"no {what} named {key!r}")
        return row

    async def _list(self, model: type[_Named]) -> list[_Named]:
        async with self.session() as s:
            return list((await s.scalars(select(model).order_by(model.id))).all())

    async def _update(
        self, model: type[_Named], key: str, what: str, fields: dict[str, Any]
    ) -> _Named:
        async with self.session() as s, s.begin():
            row = await s.get(model, key)
            if row is None:
                raise NotFound(f"no {what} named {key!r}")
            for name, value in fields.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
        return row

    @property
    def _sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"
