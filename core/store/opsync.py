"""What operation history sync between peers needs from the database (``peer/services/opsync.py``).

It trades in sync rows, plain tuples in wire form rather than ORM objects (the comment at the
top of :class:`OpSyncMixin` says why), reads any origin's history but writes only other
instances' (nothing a peer sends may overwrite this node's own operations), computes the
digests two nodes compare, and bounds how much of each peer's history is kept
(``trim_peer_ops``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from peerstash.core.models import Operation, OperationLog, OpStatus
from peerstash.core.store.base import StoreBase, StoreError, utcnow
from peerstash.core.store.oplog import DeletedOp

#: A peer's newest operations kept whatever their age (as local gc keeps ours), so a copy
#: holds what its owner holds and the digests of the two agree.
PEER_HISTORY_KEEP_MIN = 1000


class OpSyncMixin(StoreBase):
    """Reading, digesting, storing and trimming operations for sync between peers."""

    # =========================================================================================
    # -- operation sync (used by peer/services/opsync.py) ------------------------------------------
    # Everything below serves operation history sync between peers. It trades in *sync rows*:
    # plain tuples of the columns in SYNC_OP_COLUMNS, in that order, with timestamps as UTC
    # text ``YYYY-MM-DD HH:MM:SS.ffffff`` and ``summary`` as JSON text, i.e. exactly the wire
    # form. Not ORM objects: a new peer receives its whole history at once, and building (and
    # flushing) 100,000 ORM instances would take far longer than the 5 s we allow. That text
    # form is also what SQLAlchemy's SQLite types store, so on SQLite rows go in and out as
    # they are, with no per-value Python work; other backends convert through SQLAlchemy.
    # =========================================================================================

    #: The columns of an operation that travel between peers: everything but the local ``pk``
    #: and ``origin`` (which the link implies and the receiver checks). Append only: the wire
    #: record (``peer.protocol.OpRecord``) has the same fields in the same order.
    SYNC_OP_COLUMNS: tuple[str, ...] = (
        "op_id",
        "modno",
        "flow_id",
        "kind",
        "status",
        "plan_id",
        "repo_id",
        "created_at",
        "started_at",
        "ended_at",
        "bytes_done",
        "bytes_total",
        "files_done",
        "files_total",
        "eta_seconds",
        "summary",
        "snapshot_id",
        "error",
    )
    _SYNC_TIMES: tuple[str, ...] = ("created_at", "started_at", "ended_at")

    #: Ids per statement when a list of ids goes into ``IN (...)``: far below SQLite's and
    #: PostgreSQL's bound-parameter limits.
    _ID_CHUNK = 500

    def _refuse_local(self, origin: str, what: str) -> None:
        if not origin or origin == self.local_origin:
            raise StoreError(f"{what} only applies to operations from another instance")

    @staticmethod
    def sync_time(value: datetime | None) -> str | None:
        """A timestamp in the sync rows' text form (UTC, microseconds, space-separated)."""
        if value is None:
            return None
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

    @staticmethod
    def sync_time_parse(value: str | None) -> datetime | None:
        """The aware datetime of a sync-row timestamp; ValueError unless in the exact form."""
        if value is None:
            return None
        if len(value) != 26 or value[10] != " " or value[19] != ".":
            raise ValueError(f"not a sync timestamp: {value[:40]!r}")
        return datetime.fromisoformat(value).replace(tzinfo=UTC)

    @staticmethod
    async def _sqlite_fetch(s: AsyncSession, sql: str, params: Any) -> list[tuple[Any, ...]]:
        """Run a query on the session's own SQLite connection, rows as plain tuples.

        Through the driver (aiosqlite) directly: fetching runs in its thread, and no Row
        object is built per row, which at 100,000 rows is most of the cost.
        """
        conn = await s.connection()
        driver: Any = (await conn.get_raw_connection()).driver_connection
        cur = await driver.execute(sql, params)
        try:
            return list(await cur.fetchall())
        finally:
            await cur.close()

    async def _sync_rows(
        self, s: AsyncSession, where: str, params: dict[str, Any]
    ) -> list[tuple[Any, ...]]:
        """Sync rows matching a WHERE clause written with ``:name`` placeholders.

        SQLite: one raw statement, rows exactly as stored. Elsewhere: SQLAlchemy reads them
        with the backend's own timestamp and JSON types, and they are turned into text here.
        """
        sql = f"SELECT {', '.join(self.SYNC_OP_COLUMNS)} FROM operations WHERE {where}"
        if self._sqlite:
            return await self._sqlite_fetch(s, sql, params)
        from sqlalchemy import text

        q = select(*(getattr(Operation, c) for c in self.SYNC_OP_COLUMNS)).from_statement(text(sql))
        rows = (await s.execute(q, params)).all()
        t = self.sync_time
        return [
            (*r[:7], t(r[7]), t(r[8]), t(r[9]), *r[10:15], json.dumps(r[15] or {}), *r[16:])
            for r in rows
        ]

    async def _sync_query(self, where: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        async with self.session() as s:
            return await self._sync_rows(s, where, params)

    async def _versions(
        self,
        s: AsyncSession,
        origin: str,
        allow: Callable[[str | None, str | None], bool] | None,
    ) -> dict[str, int]:
        if self._sqlite:
            rows = await self._sqlite_fetch(
                s,
                "SELECT op_id, modno, repo_id, plan_id FROM operations WHERE origin = :origin",
                {"origin": origin},
            )
        else:
            q = select(
                Operation.op_id, Operation.modno, Operation.repo_id, Operation.plan_id
            ).where(Operation.origin == origin)
            rows = [tuple(r) for r in (await s.execute(q)).all()]
        if allow is None:
            return {op_id: modno for op_id, modno, _, _ in rows}
        verdicts: dict[tuple[str | None, str | None], bool] = {}
        out: dict[str, int] = {}
        for op_id, modno, repo_id, plan_id in rows:
            key = (repo_id, plan_id)
            ok = verdicts.get(key)
            if ok is None:
                ok = verdicts[key] = bool(allow(repo_id, plan_id))
            if ok:
                out[op_id] = modno
        return out

    async def max_modno(self, origin: str) -> int:
        """The highest modno held for ``origin`` (0 when none): a receiver's high-water mark."""
        async with self.session() as s:
            value = await s.scalar(
                select(func.max(Operation.modno)).where(Operation.origin == origin)
            )
        return int(value or 0)

    async def ops_since(self, origin: str, modno: int, limit: int) -> list[tuple[Any, ...]]:
        """Up to ``limit`` sync rows of ``origin`` with a modno above ``modno``, in modno order.

        A sender pages through its history with this (continuing from the last modno it saw),
        so a reconnect reads only what changed since the receiver's mark.
        """
        return await self._sync_query(
            "origin = :origin AND modno > :modno ORDER BY modno LIMIT :limit",
            {"origin": origin, "modno": int(modno), "limit": int(limit)},
        )

    async def ops_by_ids(self, origin: str, op_ids: Iterable[str]) -> list[tuple[Any, ...]]:
        """Sync rows of the named operations of ``origin``, in modno order (unknown ids skipped)."""
        ids = list(dict.fromkeys(op_ids))
        out: list[tuple[Any, ...]] = []
        for i in range(0, len(ids), self._ID_CHUNK):
            chunk = ids[i : i + self._ID_CHUNK]
            names = {f"id{n}": op_id for n, op_id in enumerate(chunk)}
            marks = ", ".join(f":{n}" for n in names)
            out += await self._sync_query(
                f"origin = :origin AND op_id IN ({marks})", {"origin": origin, **names}
            )
        out.sort(key=lambda r: r[1])
        return out

    async def op_versions(
        self, origin: str, allow: Callable[[str | None, str | None], bool] | None = None
    ) -> dict[str, int]:
        """``{op_id: modno}`` of the operations of ``origin`` that ``allow(repo_id, plan_id)``
        admits (all when ``allow`` is None): what a digest or a repair compares.

        ``allow`` is asked once per distinct (repo, plan) pair, not once per operation, so a
        grant check costs nothing per row.
        """
        async with self.session() as s:
            return await self._versions(s, origin, allow)

    async def sync_snapshot(
        self,
        origin: str,
        since: int,
        allow: Callable[[str | None, str | None], bool] | None = None,
    ) -> tuple[list[tuple[Any, ...]], dict[str, int]]:
        """Sync rows of ``origin`` above modno ``since`` and its versions admitted by ``allow``,
        both read from one consistent snapshot of the database.

        A sender sends those rows, then the digest of those versions: the receiver then holds
        exactly the state the digest describes, even while operations keep changing (a
        running backup bumps its modno every second). From two separate reads, a change
        committed in between would make the digests differ and start a needless repair.
        """
        params = {"origin": origin, "modno": int(since)}
        where = "origin = :origin AND modno > :modno ORDER BY modno"
        async with self.session() as s:
            if self._sqlite:
                # pysqlite starts no transaction for SELECTs: open one so that both reads see
                # the same WAL snapshot.
                conn = await s.connection()
                driver: Any = (await conn.get_raw_connection()).driver_connection
                await driver.execute("BEGIN")
                try:
                    rows = await self._sync_rows(s, where, params)
                    versions = await self._versions(s, origin, allow)
                finally:
                    await driver.execute("COMMIT")
                return rows, versions
            async with s.begin():
                await s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
                rows = await self._sync_rows(s, where, params)
                versions = await self._versions(s, origin, allow)
            return rows, versions

    @staticmethod
    def digest_of(origin: str, versions: Mapping[str, int]) -> tuple[int, int]:
        """``(count, hash)`` of a set of (origin, op_id, modno): equal sets, equal digests.

        Each item is hashed on its own and the hashes are summed modulo 2**63, so the digest
        does not depend on order and both sides compute it from whatever they hold.
        """
        total = 0
        prefix = origin.encode() + b"\0"
        blake = hashlib.blake2b
        for op_id, modno in versions.items():
            item = prefix + f"{op_id}\0{modno}".encode()
            total += int.from_bytes(blake(item, digest_size=8).digest(), "big")
        return len(versions), total & 0x7FFF_FFFF_FFFF_FFFF

    async def op_digest(
        self, origin: str, allow: Callable[[str | None, str | None], bool] | None = None
    ) -> tuple[int, int]:
        """The digest (see :meth:`digest_of`) of ``origin``'s operations admitted by ``allow``.

        The hashing runs in a worker thread: at 100,000 operations it is tens of milliseconds
        of CPU that the event loop should not stall for.
        """
        versions = await self.op_versions(origin, allow)
        return await asyncio.to_thread(self.digest_of, origin, versions)

    async def upsert_remote_ops(self, origin: str, rows: Sequence[Sequence[Any]]) -> int:
        """Insert or update sync rows of another instance by (origin, op_id), in bulk.

        A row replaces the stored one only when its modno is higher, so a stale or repeated
        row (a reconnect, a repair racing a live push) never rolls an operation back. Returns
        the number of rows offered. Refuses this instance's own origin: nothing a peer sends
        may overwrite local history.
        """
        self._refuse_local(origin, "storing synced operations")
        if not rows:
            return 0
        cols = self.SYNC_OP_COLUMNS
        width = len(cols)
        if any(len(r) != width for r in rows):
            raise ValueError(f"a sync row has {width} values")
        names = ", ".join(("origin", *cols))
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c != "op_id")
        if self._sqlite:
            marks = ["?"] * (width + 1)
            marks[1 + cols.index("summary")] = "coalesce(?, '{}')"
            sql = (
                f"INSERT INTO operations ({names}) VALUES ({', '.join(marks)}) "
                f"ON CONFLICT (origin, op_id) DO UPDATE SET {updates} "
                "WHERE excluded.modno > operations.modno"
            )
            params = [(origin, *r) for r in rows]
            async with self.session() as s, s.begin():
                conn = await s.connection()
                driver: Any = (await conn.get_raw_connection()).driver_connection
                await driver.executemany(sql, params)
            return len(rows)
        from sqlalchemy import Table
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        table = Operation.__table__
        assert isinstance(table, Table)
        dicts = [
            {
                "origin": origin,
                **dict(zip(cols, r, strict=True)),
                "created_at": self.sync_time_parse(r[7]),
                "started_at": self.sync_time_parse(r[8]),
                "ended_at": self.sync_time_parse(r[9]),
                "summary": json.loads(r[15] or "{}"),
            }
            for r in rows
        ]
        ins = pg_insert(table)
        stmt = ins.on_conflict_do_update(
            index_elements=[table.c.origin, table.c.op_id],
            set_={c: ins.excluded[c] for c in cols if c != "op_id"},
            where=ins.excluded.modno > table.c.modno,
        )
        async with self.session() as s, s.begin():
            await s.execute(stmt, dicts)
        return len(rows)

    async def delete_remote_ops(self, origin: str, op_ids: Iterable[str]) -> int:
        """Delete the named operations of another instance (and their logs); returns how many."""
        self._refuse_local(origin, "deleting synced operations")
        ids = list(dict.fromkeys(op_ids))
        deleted = 0
        async with self.session() as s, s.begin():
            for i in range(0, len(ids), self._ID_CHUNK):
                chunk = ids[i : i + self._ID_CHUNK]
                pks = select(Operation.pk).where(
                    Operation.origin == origin, Operation.op_id.in_(chunk)
                )
                await s.execute(delete(OperationLog).where(OperationLog.op_pk.in_(pks)))
                res = await s.execute(
                    delete(Operation).where(Operation.origin == origin, Operation.op_id.in_(chunk))
                )
                deleted += int(getattr(res, "rowcount", 0) or 0)
        return deleted

    async def delete_origin(self, origin: str) -> list[DeletedOp]:
        """Delete every operation of another instance (e.g. once it is unpaired); what went."""
        self._refuse_local(origin, "deleting synced operations")
        async with self.session() as s, s.begin():
            rows = await s.execute(
                select(Operation.op_id, Operation.repo_id, Operation.plan_id).where(
                    Operation.origin == origin
                )
            )
            gone = [DeletedOp(op_id, repo_id, plan_id) for op_id, repo_id, plan_id in rows]
            pks = select(Operation.pk).where(Operation.origin == origin)
            await s.execute(delete(OperationLog).where(OperationLog.op_pk.in_(pks)))
            await s.execute(delete(Operation).where(Operation.origin == origin))
        return gone

    async def peer_origins(self) -> list[str]:
        """Every other instance whose operations are held here."""
        async with self.session() as s:
            rows = await s.scalars(
                select(Operation.origin).where(Operation.origin != self.local_origin).distinct()
            )
            return sorted(rows.all())

    async def count_ops(self, origin: str) -> int:
        async with self.session() as s:
            n = await s.scalar(
                select(func.count()).select_from(Operation).where(Operation.origin == origin)
            )
        return int(n or 0)

    async def trim_peer_ops(
        self,
        origin: str,
        *,
        older_than: timedelta,
        max_ops: int,
        keep_min: int = PEER_HISTORY_KEEP_MIN,
    ) -> list[DeletedOp]:
        """Bound our copy of another instance's history; the operations deleted (with logs).

        Two rules. **Count**: at most ``max_ops`` are kept, whatever the peer sends: first
        the latest operation of each (plan, kind), then the newest by creation time (a peer
        inventing a million plans still gets only ``max_ops``). **Age**: finished ones older
        than ``older_than`` go, except the newest ``keep_min`` and the latest of each
        (plan, kind), as local gc (:meth:`trim_operations`) does for our own history.
        """
        self._refuse_local(origin, "trimming synced operations")
        op = Operation
        cutoff = utcnow() - older_than
        finished = op.status.not_in([OpStatus.PENDING, OpStatus.RUNNING])
        # The ranking below sorts every operation of the origin (seconds at 200,000): first
        # a cheap look whether either rule can remove anything at all.
        held = await self.count_ops(origin)
        if held <= max_ops:
            if held <= keep_min:
                return []
            async with self.session() as s:
                old = await s.scalar(
                    select(op.pk)
                    .where(op.origin == origin, op.created_at < cutoff, finished)
                    .limit(1)
                )
            if old is None:
                return []
        order = (op.created_at.desc(), op.op_id.desc())
        s1 = (
            select(
                op.pk,
                op.op_id,
                op.repo_id,
                op.plan_id,
                op.created_at,
                op.status,
                func.row_number()
                .over(partition_by=(op.plan_id, op.kind), order_by=order)
                .label("prank"),
            )
            .where(op.origin == origin)
            .subquery()
        )
        latest = case((and_(s1.c.plan_id.is_not(None), s1.c.prank == 1), 1), else_=0)
        s2 = select(
            s1.c.pk,
            s1.c.op_id,
            s1.c.repo_id,
            s1.c.plan_id,
            s1.c.created_at,
            s1.c.status,
            latest.label("latest"),
            func.row_number()
            .over(order_by=(s1.c.created_at.desc(), s1.c.op_id.desc()))
            .label("rall"),
            func.row_number()
            .over(order_by=(latest.desc(), s1.c.created_at.desc(), s1.c.op_id.desc()))
            .label("rcap"),
        ).subquery()
        doomed = select(s2.c.pk, s2.c.op_id, s2.c.repo_id, s2.c.plan_id).where(
            or_(
                s2.c.rcap > max_ops,
                and_(
                    s2.c.created_at < cutoff,
                    s2.c.status.not_in([OpStatus.PENDING, OpStatus.RUNNING]),
                    s2.c.latest == 0,
                    s2.c.rall > keep_min,
                ),
            )
        )
        async with self.session() as s, s.begin():
            rows = (await s.execute(doomed)).all()
            pks = [r[0] for r in rows]
            for i in range(0, len(pks), self._ID_CHUNK):
                chunk = pks[i : i + self._ID_CHUNK]
                await s.execute(delete(OperationLog).where(OperationLog.op_pk.in_(chunk)))
                await s.execute(delete(Operation).where(Operation.pk.in_(chunk)))
        return [DeletedOp(op_id, repo_id, plan_id) for _, op_id, repo_id, plan_id in rows]

    # -- end of operation sync ----------------------------------------------------------------
