"""The one place that talks SQL.

Everything above this module asks the Store for records and hands it changes; nothing else
builds a query. That keeps the two backends (SQLite for a laptop, PostgreSQL for a hub) honest,
and it is where the operation ``modno`` is minted, so no caller can forget to bump it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, and_, delete, event, func, select, update
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from peerstash.core.ids import new_ulid
from peerstash.core.models import (
    REQUEST_FINAL_STATES,
    Operation,
    OperationLog,
    OpKind,
    OpStatus,
    PairingTokenRow,
    Peer,
    Plan,
    RemoteRequest,
    Repo,
    Secret,
    Setting,
)

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


_Named = TypeVar("_Named", Repo, Plan, Peer, RemoteRequest)


def utcnow() -> datetime:
    return datetime.now(UTC)


class StoreError(Exception):
    """A request the store cannot satisfy, worded for a person."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


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


def _secure_sqlite_file(path: Path) -> None:
    """Create the database file 0600 before SQLite does.

    SQLite gives its -wal and -shm files the mode of the main file, so getting this one right
    keeps every file of the store private.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o600)


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "peerstash.core:migrations")
    return cfg


def _run_migrations(connection: Connection) -> None:
    cfg = _alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


class Store:
    """Async access to Peerstash's database.

    Records come back as detached ORM objects (``expire_on_commit=False``): read their
    attributes freely, but change them only through the Store's methods.
    """

    def __init__(self, engine: AsyncEngine, local_origin: str = "") -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.local_origin = local_origin
        self._modno: dict[str, int] = {}
        self._modno_lock = asyncio.Lock()

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
        async with engine.begin() as conn:
            await conn.run_sync(_run_migrations)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

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

    # -- settings ----------------------------------------------------------------------------

    async def get_setting(self, key: str, default: Any = None) -> Any:
        async with self.session() as s:
            row = await s.get(Setting, key)
            return default if row is None else row.value

    async def set_setting(self, key: str, value: Any) -> None:
        async with self.session() as s, s.begin():
            row = await s.get(Setting, key)
            if row is None:
                s.add(Setting(key=key, value=value))
            else:
                row.value = value

    # -- secrets (ciphertext only; see core/secrets.py) ---------------------------------------

    async def put_secret(self, name: str, ciphertext: bytes) -> None:
        async with self.session() as s, s.begin():
            row = await s.get(Secret, name)
            if row is None:
                s.add(Secret(name=name, ciphertext=ciphertext))
            else:
                row.ciphertext = ciphertext

    async def get_secret(self, name: str) -> bytes | None:
        async with self.session() as s:
            row = await s.get(Secret, name)
            return None if row is None else row.ciphertext

    async def delete_secrets(self, prefix: str) -> None:
        async with self.session() as s, s.begin():
            await s.execute(delete(Secret).where(Secret.name.startswith(prefix, autoescape=True)))

    # -- repos -------------------------------------------------------------------------------

    async def add_repo(self, repo: Repo) -> Repo:
        now = utcnow()
        repo.created_at = repo.created_at or now
        repo.updated_at = now
        async with self.session() as s, s.begin():
            if await s.get(Repo, repo.id) is not None:
                raise AlreadyExists(f"a repository named {repo.id!r} already exists")
            s.add(repo)
        return repo

    async def get_repo(self, repo_id: str) -> Repo:
        return await self._get(Repo, repo_id, "repository")

    async def list_repos(self) -> list[Repo]:
        return await self._list(Repo)

    async def update_repo(self, repo_id: str, **fields: Any) -> Repo:
        return await self._update(Repo, repo_id, "repository", fields)

    async def delete_repo(self, repo_id: str) -> None:
        async with self.session() as s, s.begin():
            used = await s.scalar(
                select(func.count()).select_from(Plan).where(Plan.repo_id == repo_id)
            )
            if used:
                raise StoreError(
                    f"repository {repo_id!r} is used by {used} plan(s); delete or move them first"
                )
            await s.execute(delete(Repo).where(Repo.id == repo_id))

    async def remove_unshared_repo(self, repo_id: str, reason: str) -> list[str]:
        """Delete a received repository its owner stopped sharing, disabling its plans.

        One transaction: the plans that used it stay (disabled, with ``reason``, still naming
        the repository) so a person sees why they stopped, and nothing runs into a repository
        we no longer have the password of. Returns the ids of the plans disabled.
        """
        async with self.session() as s, s.begin():
            repo = await s.get(Repo, repo_id)
            if repo is None:
                raise NotFound(f"no repository named {repo_id!r}")
            if repo.origin is None:
                raise StoreError(f"repository {repo_id!r} is our own; it cannot be unshared to us")
            plans = list((await s.scalars(select(Plan).where(Plan.repo_id == repo_id))).all())
            now = utcnow()
            for plan in plans:
                plan.enabled = False
                plan.disabled_reason = reason
                plan.updated_at = now
            await s.delete(repo)
        return [p.id for p in plans]

    # -- plans -------------------------------------------------------------------------------

    async def add_plan(self, plan: Plan) -> Plan:
        now = utcnow()
        plan.created_at = plan.created_at or now
        plan.updated_at = now
        async with self.session() as s, s.begin():
            if await s.get(Plan, plan.id) is not None:
                raise AlreadyExists(f"a plan named {plan.id!r} already exists")
            if await s.get(Repo, plan.repo_id) is None:
                raise NotFound(f"no repository named {plan.repo_id!r}")
            s.add(plan)
        return plan

    async def get_plan(self, plan_id: str) -> Plan:
        return await self._get(Plan, plan_id, "plan")

    async def list_plans(self) -> list[Plan]:
        return await self._list(Plan)

    async def update_plan(self, plan_id: str, **fields: Any) -> Plan:
        return await self._update(Plan, plan_id, "plan", fields)

    async def delete_plan(self, plan_id: str) -> None:
        async with self.session() as s, s.begin():
            await s.execute(delete(Plan).where(Plan.id == plan_id))

    async def last_success_by_plan(self) -> dict[str, datetime]:
        """When each plan last produced a snapshot (success or warning)."""
        async with self.session() as s:
            rows = await s.execute(
                select(Operation.plan_id, func.max(Operation.ended_at))
                .where(
                    Operation.origin == self.local_origin,
                    Operation.kind == OpKind.BACKUP,
                    Operation.status.in_([OpStatus.SUCCESS, OpStatus.WARNING]),
                    Operation.plan_id.is_not(None),
                )
                .group_by(Operation.plan_id)
            )
            return {pid: ended for pid, ended in rows.all() if pid and ended is not None}

    async def set_next_due(self, plan_id: str, when: datetime | None) -> None:
        async with self.session() as s, s.begin():
            await s.execute(update(Plan).where(Plan.id == plan_id).values(next_due_at=when))

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

    async def gc_operations(self, *, older_than: timedelta, keep_min: int = 1000) -> int:
        """Delete finished operations older than ``older_than``, returning how many
        (see :meth:`trim_operations`)."""
        return len(await self.trim_operations(older_than=older_than, keep_min=keep_min))

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
            last = await s.scalar(
                select(func.max(OperationLog.seq)).where(OperationLog.op_pk == op_pk)
            )
            start = int(last or 0)
            s.add_all(
                OperationLog(op_pk=op_pk, seq=start + i + 1, line=line)
                for i, line in enumerate(clean)
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

    # -- peers -------------------------------------------------------------------------------

    async def list_peers(self) -> list[Peer]:
        return await self._list(Peer)

    async def get_peer(self, peer_id: str) -> Peer:
        return await self._get(Peer, peer_id, "peer")

    async def put_peer(self, peer: Peer) -> Peer:
        """Insert or replace a peer row (pairing decides whether replacing is allowed)."""
        now = utcnow()
        peer.updated_at = now
        async with self.session() as s, s.begin():
            old = await s.get(Peer, peer.id)
            peer.created_at = old.created_at if old is not None else now
            if old is not None:
                await s.delete(old)
                await s.flush()
            s.add(peer)
        return peer

    async def update_peer(self, peer_id: str, **fields: Any) -> Peer:
        return await self._update(Peer, peer_id, "peer", fields)

    async def delete_peer(self, peer_id: str) -> None:
        async with self.session() as s, s.begin():
            await s.execute(delete(Peer).where(Peer.id == peer_id))

    # -- remote requests ---------------------------------------------------------------------

    async def add_request(self, req: RemoteRequest) -> RemoteRequest:
        """Persist a new request to a peer (its id is minted by the caller)."""
        now = utcnow()
        req.created_at = req.created_at or now
        req.updated_at = now
        async with self.session() as s, s.begin():
            if await s.get(RemoteRequest, req.id) is not None:
                raise AlreadyExists(f"a request with id {req.id!r} exists already")
            s.add(req)
        return req

    async def get_request(self, request_id: str) -> RemoteRequest:
        return await self._get(RemoteRequest, request_id, "remote request")

    async def update_request(self, request_id: str, **fields: Any) -> RemoteRequest:
        return await self._update(RemoteRequest, request_id, "remote request", fields)

    async def list_requests(
        self,
        *,
        peer: str | None = None,
        states: Iterable[str] | None = None,
        limit: int = 1000,
        newest_first: bool = False,
    ) -> list[RemoteRequest]:
        """Requests, oldest first (the order they are delivered in) unless ``newest_first``."""
        q = select(RemoteRequest)
        if peer is not None:
            q = q.where(RemoteRequest.peer == peer)
        if states is not None:
            q = q.where(RemoteRequest.state.in_(list(states)))
        if newest_first:
            q = q.order_by(RemoteRequest.created_at.desc(), RemoteRequest.id.desc())
        else:
            q = q.order_by(RemoteRequest.created_at, RemoteRequest.id)
        q = q.limit(limit)
        async with self.session() as s:
            return list((await s.scalars(q)).all())

    async def trim_requests(self, *, older_than: timedelta) -> int:
        """Delete requests that ended (``REQUEST_FINAL_STATES``) and last changed before
        ``older_than`` ago; the operations they started stay, with their own history."""
        cutoff = utcnow() - older_than
        async with self.session() as s, s.begin():
            res = await s.execute(
                delete(RemoteRequest).where(
                    RemoteRequest.state.in_(REQUEST_FINAL_STATES),
                    RemoteRequest.updated_at < cutoff,
                )
            )
        return int(getattr(res, "rowcount", 0) or 0)

    # -- pairing tokens ----------------------------------------------------------------------

    async def add_token(self, row: PairingTokenRow) -> PairingTokenRow:
        row.created_at = utcnow()
        row.uses = 0
        async with self.session() as s, s.begin():
            s.add(row)
        return row

    async def list_tokens(self) -> list[PairingTokenRow]:
        """Live tokens; expired ones are deleted on the way."""
        async with self.session() as s, s.begin():
            await s.execute(delete(PairingTokenRow).where(PairingTokenRow.expires_at <= utcnow()))
            q = select(PairingTokenRow).order_by(PairingTokenRow.created_at)
            return list((await s.scalars(q)).all())

    async def delete_token(self, token_id: str) -> bool:
        async with self.session() as s, s.begin():
            res = await s.execute(delete(PairingTokenRow).where(PairingTokenRow.id == token_id))
            return bool(getattr(res, "rowcount", 0))

    async def redeem_token(
        self, token_id: str, check: Callable[[str], bool], peer: Peer
    ) -> PairingTokenRow:
        """Use a token once and register ``peer`` with its grants, in one transaction.

        ``check(secret_hash)`` compares the presented secret with the stored hash (in constant
        time). The token is deleted when expired or used up. Raises TokenRefused.
        """
        now = utcnow()
        async with self.session() as s, s.begin():
            row = await s.get(PairingTokenRow, token_id, with_for_update=True)
            if row is None or not check(row.secret_hash):
                raise TokenRefused("the pairing token is not valid (wrong, expired or used up)")
            if row.expires_at <= now or row.uses >= row.max_uses:
                await s.delete(row)
                raise TokenRefused("the pairing token is not valid (wrong, expired or used up)")
            row.uses += 1
            if row.uses >= row.max_uses:
                await s.delete(row)
            old = await s.get(Peer, peer.id)
            if old is not None:
                if old.public_key != peer.public_key:
                    raise StoreError(
                        f"an instance named {peer.id!r} is already paired with a different key; "
                        "remove it on this node first"
                    )
                await s.delete(old)
                await s.flush()
            peer.grants = list(row.grants)
            peer.created_at = old.created_at if old is not None else now
            peer.updated_at = now
            s.add(peer)
        return row

    # =========================================================================================
    # -- operation sync (used by peer/sync.py) ------------------------------------------------
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

    @property
    def _sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

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

    async def delete_origin(self, origin: str) -> int:
        """Delete every operation of another instance (e.g. once it is unpaired)."""
        self._refuse_local(origin, "deleting synced operations")
        async with self.session() as s, s.begin():
            pks = select(Operation.pk).where(Operation.origin == origin)
            await s.execute(delete(OperationLog).where(OperationLog.op_pk.in_(pks)))
            res = await s.execute(delete(Operation).where(Operation.origin == origin))
        return int(getattr(res, "rowcount", 0) or 0)

    # -- end of operation sync ----------------------------------------------------------------


class TokenRefused(StoreError):
    """A pairing token that does not exist, has expired or is used up (one message for all,
    so a prober learns nothing about which)."""


def repo_record(
    repo_id: str,
    uri: str,
    password_source: str,
    password_ref: str = "",
    env_keys: Sequence[str] = (),
    options: Sequence[str] = (),
) -> Repo:
    """Build a Repo row to hand to ``Store.add_repo``."""
    now = utcnow()
    return Repo(
        id=repo_id,
        uri=uri,
        password_source=password_source,
        password_ref=password_ref,
        env_keys=list(env_keys),
        options=list(options),
        created_at=now,
        updated_at=now,
    )
