"""This node's operations and their logs: where an operation's ``modno`` is minted.

Each create or update of a local operation takes the next modno under one lock, so a peer that
syncs "everything above the modno I hold" never misses a change and no caller can forget to bump
it. Logs are bounded per operation (the first ``LOG_HEAD`` and the last ``LOG_TAIL`` lines).
``trim_operations`` is local garbage collection; it returns what it deleted as
:class:`DeletedOp` so sync can tell exactly the peers that were allowed to see each one.
:class:`OpFilter` is how callers ask for a list of operations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from peerstash.core.ids import new_ulid
from peerstash.core.models import Operation, OperationLog, OpKind, OpStatus
from peerstash.core.store.base import NotFound, StoreBase, StoreError, utcnow

#: Log lines kept per operation: the first HEAD lines (how it started) and the last TAIL lines
#: (how it ended). A pathological restic run can print millions of lines; the DB must not grow
#: with them.
LOG_HEAD = 200
LOG_TAIL = 1800
LOG_LINE_MAX = 2000

#: Fields a caller may set on an operation. ``modno`` and ``origin`` are not among them.
OP_FIELDS = frozenset(
    {
        "status",
        "plan_id",
        "repo_id",
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
        "flow_id",
    }
)


@dataclass(frozen=True)
class DeletedOp:
    """An operation that was deleted, with the ids its sync scope is decided by."""

    op_id: str
    repo_id: str | None
    plan_id: str | None


@dataclass(frozen=True)
class OpFilter:
    origin: str | None = None
    plan_id: str | None = None
    repo_id: str | None = None
    status: str | None = None
    kind: str | None = None
    flow_id: str | None = None
    #: Only operations with a primary key below this one: cheap paging for the newest-first views.
    before_pk: int | None = None


class OpLogMixin(StoreBase):
    """Local operations (created, updated, listed, trimmed) and their bounded logs."""

    # -- operations --------------------------------------------------------------------------

    async def _next_modno(self, s: AsyncSession, origin: str) -> int:
        """Mint the next modno for a local origin (callers hold ``_modno_lock``)."""
        if origin not in self._modno:
            current = await s.scalar(
                select(func.max(Operation.modno)).where(Operation.origin == origin)
            )
            self._modno[origin] = int(current or 0)
        self._modno[origin] += 1
        return self._modno[origin]

    async def create_operation(
        self,
        kind: str,
        *,
        status: str = OpStatus.PENDING,
        flow_id: str | None = None,
        **fields: Any,
    ) -> Operation:
        """Record a new local operation; it gets a fresh id and the next modno."""
        unknown = set(fields) - OP_FIELDS
        if unknown:
            raise ValueError(f"unknown operation fields: {sorted(unknown)}")
        op_id = new_ulid()
        op = Operation(
            op_id=op_id,
            origin=self.local_origin,
            flow_id=flow_id or op_id,
            kind=str(kind),
            status=str(status),
            created_at=utcnow(),
            bytes_done=0,
            bytes_total=0,
            files_done=0,
            files_total=0,
            summary={},
            **fields,
        )
        async with self._modno_lock, self.session() as s, s.begin():
            op.modno = await self._next_modno(s, self.local_origin)
            s.add(op)
        return op

    async def update_operation(self, pk: int, **fields: Any) -> Operation:
        """Change a local operation; every change bumps its modno so peers see it."""
        unknown = set(fields) - OP_FIELDS
        if unknown:
            raise ValueError(f"unknown operation fields: {sorted(unknown)}")
        async with self._modno_lock, self.session() as s, s.begin():
            return await self._update_operation(s, pk, fields)

    async def end_operation(self, pk: int, lines: Iterable[str], **fields: Any) -> Operation:
        """An operation's last log lines and its final fields, in one transaction.

        What :meth:`append_log` then :meth:`update_operation` do, as one write: the runner
        ends every operation with both, and each commit costs milliseconds on a busy disk.
        """
        unknown = set(fields) - OP_FIELDS
        if unknown:
            raise ValueError(f"unknown operation fields: {sorted(unknown)}")
        clean = [ln[:LOG_LINE_MAX] for ln in lines]
        async with self._modno_lock, self.session() as s, s.begin():
            op = await self._update_operation(s, pk, fields)
            if clean:
                await self._append_log(s, pk, clean)
        return op

    async def _update_operation(
        self, s: AsyncSession, pk: int, fields: dict[str, Any]
    ) -> Operation:
        op = await s.get(Operation, pk)
        if op is None:
            raise NotFound(f"no operation #{pk}")
        if op.origin != self.local_origin:
            raise StoreError("operations from another instance are read-only here")
        for key, value in fields.items():
            setattr(op, key, str(value) if key == "status" else value)
        op.modno = await self._next_modno(s, self.local_origin)
        return op

    async def get_operation(self, pk: int) -> Operation:
        async with self.session() as s:
            op = await s.get(Operation, pk)
        if op is None:
            raise NotFound(f"no operation #{pk}")
        return op

    async def find_operation(self, op_id: str, origin: str | None = None) -> Operation:
        """Look an operation up by its minted id (as shown to people), optionally by origin."""
        async with self.session() as s:
            q = select(Operation).where(Operation.op_id == op_id)
            if origin is not None:
                q = q.where(Operation.origin == origin)
            op = (await s.scalars(q.limit(1))).first()
        if op is None:
            raise NotFound(f"no operation {op_id}")
        return op

    async def list_operations(
        self, flt: OpFilter | None = None, limit: int = 100
    ) -> list[Operation]:
        """Newest first."""
        flt = flt or OpFilter()
        q = select(Operation)
        conds = []
        if flt.origin is not None:
            conds.append(Operation.origin == flt.origin)
        if flt.plan_id is not None:
            conds.append(Operation.plan_id == flt.plan_id)
        if flt.repo_id is not None:
            conds.append(Operation.repo_id == flt.repo_id)
        if flt.status is not None:
            conds.append(Operation.status == flt.status)
        if flt.kind is not None:
            conds.append(Operation.kind == flt.kind)
        if flt.flow_id is not None:
            conds.append(Operation.flow_id == flt.flow_id)
        if flt.before_pk is not None:
            conds.append(Operation.pk < flt.before_pk)
        if conds:
            q = q.where(and_(*conds))
        q = q.order_by(Operation.pk.desc()).limit(limit)
        async with self.session() as s:
            return list((await s.scalars(q)).all())

    async def latest_per_plan(
        self, kind: str = OpKind.BACKUP, *, statuses: Sequence[str] | None = None
    ) -> dict[tuple[str, str], Operation]:
        """The newest operation of ``kind`` for each (origin, plan), among ``statuses`` if given.

        Health asks for the newest finished one (a run in progress must not hide the failure
        before it) and the newest successful one.
        """
        where = [Operation.kind == kind, Operation.plan_id.is_not(None)]
        if statuses is not None:
            where.append(Operation.status.in_(list(statuses)))
        newest = (
            select(func.max(Operation.pk).label("pk"))
            .where(*where)
            .group_by(Operation.origin, Operation.plan_id)
            .subquery()
        )
        async with self.session() as s:
            ops = (
                await s.scalars(select(Operation).join(newest, Operation.pk == newest.c.pk))
            ).all()
        return {(op.origin, op.plan_id or ""): op for op in ops}

    async def interrupt_unfinished(self, error: str) -> list[Operation]:
        """Turn this instance's ``pending``/``running`` rows into ``interrupted`` (crash recovery)."""
        async with self.session() as s:
            stale = (
                await s.scalars(
                    select(Operation.pk).where(
                        Operation.origin == self.local_origin,
                        Operation.status.in_([OpStatus.PENDING, OpStatus.RUNNING]),
                    )
                )
            ).all()
        done = []
        for pk in stale:
            done.append(
                await self.update_operation(
                    pk,
                    status=OpStatus.INTERRUPTED,
                    ended_at=utcnow(),
                    error=error,
                    eta_seconds=None,
                )
            )
        return done

    async def trim_operations(
        self, *, older_than: timedelta, keep_min: int = 1000
    ) -> list[DeletedOp]:
        """Delete finished operations older than ``older_than``; the ones deleted.

        Never deletes the newest ``keep_min`` operations, nor the latest result of any plan (a
        plan that stopped running must still show when it last worked), nor anything unfinished,
        nor another instance's operations (their owner trims those; sync follows). What was
        deleted is returned with its repo and plan, so sync can tell exactly the peers that
        were allowed to see each one (and nobody else) that it is gone.
        """
        cutoff = utcnow() - older_than
        async with self.session() as s, s.begin():
            floor = await s.scalar(
                select(Operation.pk).order_by(Operation.pk.desc()).offset(keep_min).limit(1)
            )
            if floor is None:
                return []
            latest = (
                select(func.max(Operation.pk))
                .where(Operation.plan_id.is_not(None))
                .group_by(Operation.origin, Operation.plan_id, Operation.kind)
            )
            result = await s.execute(
                delete(Operation)
                .where(
                    # Only our own history: a peer's operations here are a copy that its
                    # owner trims, and sync removes them when the owner does.
                    Operation.origin == self.local_origin,
                    Operation.pk <= floor,
                    Operation.created_at < cutoff,
                    Operation.status.not_in([OpStatus.PENDING, OpStatus.RUNNING]),
                    Operation.pk.not_in(latest),
                )
                .returning(Operation.op_id, Operation.repo_id, Operation.plan_id)
            )
            gone = [DeletedOp(op_id, repo_id, plan_id) for op_id, repo_id, plan_id in result.all()]
            await s.execute(
                delete(OperationLog).where(OperationLog.op_pk.not_in(select(Operation.pk)))
            )
            return gone

    # -- operation logs ----------------------------------------------------------------------

    async def append_log(self, op_pk: int, lines: Iterable[str]) -> None:
        """Append lines, then trim the middle so at most LOG_HEAD + LOG_TAIL remain."""
        clean = [ln[:LOG_LINE_MAX] for ln in lines]
        if not clean:
            return
        async with self.session() as s, s.begin():
            await self._append_log(s, op_pk, clean)

    async def _append_log(self, s: AsyncSession, op_pk: int, clean: list[str]) -> None:
        last = await s.scalar(select(func.max(OperationLog.seq)).where(OperationLog.op_pk == op_pk))
        start = int(last or 0)
        s.add_all(
            OperationLog(op_pk=op_pk, seq=start + i + 1, line=line) for i, line in enumerate(clean)
        )
        end = start + len(clean)
        if end > LOG_HEAD + LOG_TAIL:
            await s.execute(
                delete(OperationLog).where(
                    OperationLog.op_pk == op_pk,
                    OperationLog.seq > LOG_HEAD,
                    OperationLog.seq <= end - LOG_TAIL,
                )
            )

    async def get_log(self, op_pk: int) -> list[str]:
        """The kept lines, with a marker where lines were dropped."""
        async with self.session() as s:
            rows = (
                await s.execute(
                    select(OperationLog.seq, OperationLog.line)
                    .where(OperationLog.op_pk == op_pk)
                    .order_by(OperationLog.seq)
                )
            ).all()
        out: list[str] = []
        prev = 0
        for seq, line in rows:
            if seq != prev + 1:
                out.append(f"[... {seq - prev - 1} lines not kept ...]")
            out.append(line)
            prev = seq
        return out
