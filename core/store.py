"""The one place that talks SQL.

Everything above this module asks the Store for records and hands it changes; nothing else
builds a query. That keeps the two backends (SQLite for a laptop, PostgreSQL for a hub) honest,
and it is where the operation ``modno`` is minted, so no caller can forget to bump it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, and_, case, delete, event, func, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from peerstash.core import __version__
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


#: Settings bounding the copy of each peer's history kept here (see
#: :meth:`Store.trim_peer_ops`): its age in days, and the most operations per peer.
PEER_HISTORY_DAYS = "peer_history_days"
PEER_HISTORY_MAX_OPS = "peer_history_max_ops"
DEFAULT_PEER_HISTORY_DAYS = 90
DEFAULT_PEER_HISTORY_MAX_OPS = 200_000
#: A peer's newest operations kept whatever their age (as local gc keeps ours), so a copy
#: holds what its owner holds and the digests of the two agree.
PEER_HISTORY_KEEP_MIN = 1000

_Named = TypeVar("_Named", Repo, Plan, Peer, RemoteRequest)

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


class StoreError(Exception):
    """A request the store cannot satisfy, worded for a person."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class MigrationError(StoreError):
    """The database cannot be brought to this build's schema; it was left as it was.

    The message is one line for a person: what failed, and where the copy made before the
    upgrade is. The traceback goes to the log at debug level only.
    """


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


# -- upgrading a database --------------------------------------------------------------------
#
# An upgrade must never break a data directory (a node under systemd that cannot start is a
# restart loop). So:
#
# * All migrations of one upgrade run in one transaction (see migrations/env.py). A failure rolls
#   back everything, including a half-done SQLite batch rebuild (``_alembic_tmp_*``).
# * SQLite runs them on a connection of its own (:func:`_sqlite_migration_engine`): the driver
#   would run DDL outside any transaction, so that connection emits ``BEGIN IMMEDIATE`` itself,
#   and it has foreign keys OFF (a batch rebuild drops a table other tables refer to; the
#   pragma is a no-op inside a transaction, so it is set on connect). ``PRAGMA
#   foreign_key_check`` runs before the commit instead.
# * Before a SQLite database that is not new is migrated, it is copied aside as
#   ``peerstash.db.bak-<revision>`` (SQLite's backup API: a consistent copy, WAL included).
# * A database at a revision this build does not know (written by a newer Peerstash) is
#   refused before anything is touched.


def _script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(_alembic_config())


def _migration_name(script: ScriptDirectory, revision: str) -> str:
    """``0003_shared_repos`` for ``0003``: the file a person would look at."""
    found = script.get_revision(revision)
    return Path(found.path).stem if found is not None and found.path else revision


def _newer_schema_error(where: str, revision: str, head: str) -> MigrationError:
    return MigrationError(
        f"the database {where} has schema revision {revision!r}, which Peerstash {__version__} "
        f"does not know (it knows up to {head!r}): a newer Peerstash wrote it; run that "
        "version again (nothing was changed)"
    )


def _check_known(connection: Connection, where: str) -> str | None:
    """The revision the database is at; refuse one this build does not know."""
    script = _script_directory()
    current = MigrationContext.configure(connection).get_current_heads()
    if len(current) > 1:
        raise MigrationError(
            f"the database {where} is at several schema revisions ({', '.join(current)}); "
            "it was not written by Peerstash (nothing was changed)"
        )
    revision = current[0] if current else None
    if revision is not None and revision not in {s.revision for s in script.walk_revisions()}:
        raise _newer_schema_error(where, revision, str(script.get_current_head()))
    return revision


def _describe_url(url: str) -> str:
    """A database named for a person: never with the password of its URL."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        return "in memory"
    return f"{u.database!r} on {u.host or 'localhost'}"


def _run_migrations(
    connection: Connection,
    target: str = "head",
    progress: dict[str, Any] | None = None,
    where: str = "",
) -> None:
    """Upgrade the schema to ``target`` inside the caller's transaction.

    ``progress`` (if given) learns the revision the database was at (``before``) and the
    revisions applied so far (``applied``), so a failure can be reported by migration name.
    """
    progress = progress if progress is not None else {}
    progress["before"] = _check_known(connection, where or "in use")
    applied: list[str] = progress.setdefault("applied", [])
    cfg = _alembic_config()
    cfg.attributes["connection"] = connection
    cfg.attributes["applied"] = applied
    sqlite = connection.dialect.name == "sqlite"
    # Dangling references that were there before (an old orphan no migration made) must not
    # block an upgrade forever; only the ones this upgrade would add are refused.
    before = _dangling_references(connection) if sqlite else Counter()
    command.upgrade(cfg, target)
    if sqlite and applied:
        added = _dangling_references(connection) - before
        if added:
            tables = ", ".join(sorted({table for table, _parent in added}))
            progress["fk_check"] = True
            raise MigrationError(
                f"after the upgrade {sum(added.values())} row(s) of {tables} refer to rows "
                "that do not exist"
            )


def _dangling_references(connection: Connection) -> Counter[tuple[str, str]]:
    """How many rows of each (table, referred table) refer to a row that does not exist.

    Counted per table pair, not per row: a batch rebuild may give a table's rows new rowids.
    """
    rows = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    return Counter((str(row[0]), str(row[2])) for row in rows)


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL, or None for an in-memory database."""
    database = make_url(url).database
    if not database or ":memory:" in database or "mode=memory" in database:
        return None
    return Path(database)


def _sqlite_revision(src: sqlite3.Connection) -> str | None:
    if not src.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
    ).fetchone():
        return None
    rows = src.execute("SELECT version_num FROM alembic_version").fetchall()
    return str(rows[0][0]) if len(rows) == 1 else None


def backup_path(db_path: Path, revision: str) -> Path:
    """Where the copy of ``db_path`` made before upgrading it from ``revision`` goes."""
    return db_path.with_name(f"{db_path.name}.bak-{revision}")


def _copy_aside(src: sqlite3.Connection, db_path: Path, revision: str) -> Path:
    """Copy the database with SQLite's backup API into a 0600 file next to it (blocking).

    The backup API reads through a connection, so the copy is consistent and includes what
    still sits in the WAL. It is written under a temporary name and renamed, so a copy that
    exists is complete; an older copy from the same revision is replaced.
    """
    dest = backup_path(db_path, revision)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        with contextlib.closing(sqlite3.connect(tmp)) as dst:
            src.backup(dst)
            # One self-contained file: no -wal next to the copy.
            dst.execute("PRAGMA journal_mode=DELETE")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _prepare_sqlite(db_path: Path) -> Path | None:
    """Before an upgrade (blocking): refuse a newer schema, copy an older one aside.

    Returns the copy, or None when there is nothing to copy: a new (empty) database, or one
    already at head.
    """
    if not db_path.exists() or db_path.stat().st_size == 0:
        return None
    script = _script_directory()
    head = str(script.get_current_head())
    known = {s.revision for s in script.walk_revisions()}
    try:
        with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as src:
            revision = _sqlite_revision(src)
            if revision is None or revision == head:
                return None
            if revision not in known:
                raise _newer_schema_error(str(db_path), revision, head)
            try:
                copy = _copy_aside(src, db_path, revision)
            except (OSError, sqlite3.Error) as exc:
                raise MigrationError(
                    f"could not copy the database {db_path} aside before upgrading it "
                    f"({_reason(exc)}); nothing was changed"
                ) from exc
    except sqlite3.Error as exc:
        raise MigrationError(f"cannot read the database {db_path}: {_reason(exc)}") from exc
    return copy


def _reason(exc: BaseException) -> str:
    """The driver's words, on one line: never the SQL statement or its parameters."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc) or type(exc).__name__
    text = re.sub(r"^<class '[\w.]+'>:\s*", "", " ".join(text.split()))
    return text if len(text) <= 300 else text[:297] + "..."


def _sqlite_migration_engine(url: str) -> AsyncEngine:
    """An engine whose one connection runs migrations as one real transaction, FKs off."""
    engine = create_async_engine(url, poolclass=NullPool, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # The driver would open no transaction around DDL: emit BEGIN ourselves (below).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=OFF")  # outside any transaction, or it is ignored
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


async def _upgrade(engine: AsyncEngine, where: str, *, copy: Path | None = None) -> None:
    """Run the migrations to head on ``engine`` in one transaction; word any failure."""
    progress: dict[str, Any] = {}
    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                fk = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar()
                if fk and _sqlite_file(str(engine.url)) is not None:
                    raise RuntimeError("foreign keys are on in the migration transaction")
            await conn.run_sync(_run_migrations, "head", progress, where)
    except MigrationError as exc:
        if not progress.get("fk_check"):
            raise
        log.debug("upgrading %s failed", where, exc_info=True)
        raise MigrationError(_failure_text(where, progress, str(exc), copy)) from exc
    except Exception as exc:
        log.debug("upgrading %s failed", where, exc_info=True)
        raise MigrationError(_failure_text(where, progress, _reason(exc), copy)) from exc


def _failure_text(where: str, progress: dict[str, Any], reason: str, copy: Path | None) -> str:
    if "before" not in progress:  # it failed before its revision could even be read
        return f"could not open the database {where}: {reason}"
    script = _script_directory()
    before = progress.get("before")
    applied: list[str] = progress.get("applied", [])
    head = str(script.get_current_head())
    pending = [s.revision for s in script.iterate_revisions(head, before)][::-1]
    if progress.get("fk_check"):
        what = "the foreign key check after the migrations failed"
    elif len(applied) < len(pending):
        what = f"migration {_migration_name(script, pending[len(applied)])} failed"
    else:
        what = "the upgrade failed"
    text = (
        f"could not upgrade the database {where} from schema {before or 'none'} to {head}: "
        f"{what}: {reason}; the database was left as it was"
    )
    if copy is not None:
        text += f"; a copy made before the upgrade is at {copy}"
    return text


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

    async def secret_names(self, prefix: str) -> list[str]:
        """Names of the secrets under ``prefix`` (never their values)."""
        async with self.session() as s:
            q = select(Secret.name).where(Secret.name.startswith(prefix, autoescape=True))
            return sorted((await s.scalars(q)).all())

    async def delete_secrets(self, prefix: str) -> None:
        async with self.session() as s, s.begin():
            await s.execute(delete(Secret).where(Secret.name.startswith(prefix, autoescape=True)))

    async def forget_freed_bytes(self) -> None:
        """Rewrite an SQLite database so values just replaced (a password taken out of a URI)
        no longer linger in its free pages or its write-ahead log. Best effort: a checkpoint
        that a reader holds back leaves the log for the next one. PostgreSQL: nothing (its
        old row versions go at its own VACUUM; its files are the server's)."""
        if not self._sqlite:
            return
        auto = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        async with auto.connect() as conn:
            await conn.exec_driver_sql("VACUUM")
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

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
        we no longer have the password of. Returns the ids of the plans disabled. A plan that
        was disabled already keeps its own reason (or none, when a person disabled it), so
        the repository's return does not enable it (:meth:`reenable_plans`).
        """
        async with self.session() as s, s.begin():
            repo = await s.get(Repo, repo_id)
            if repo is None:
                raise NotFound(f"no repository named {repo_id!r}")
            if repo.origin is None:
                raise StoreError(f"repository {repo_id!r} is our own; it cannot be unshared to us")
            plans = list((await s.scalars(select(Plan).where(Plan.repo_id == repo_id))).all())
            now = utcnow()
            plans = [p for p in plans if p.enabled]
            for plan in plans:
                plan.enabled = False
                plan.disabled_reason = reason
                plan.updated_at = now
            await s.delete(repo)
        return [p.id for p in plans]

    async def reenable_plans(self, repo_id: str, reason_prefix: str) -> list[str]:
        """Enable again the disabled plans on ``repo_id`` whose reason starts with
        ``reason_prefix`` (those its going away disabled), in one transaction; their ids."""
        async with self.session() as s, s.begin():
            plans = list(
                (
                    await s.scalars(
                        select(Plan).where(Plan.repo_id == repo_id, Plan.enabled.is_(False))
                    )
                ).all()
            )
            now = utcnow()
            done = []
            for plan in plans:
                if (plan.disabled_reason or "").startswith(reason_prefix):
                    plan.enabled = True
                    plan.disabled_reason = None
                    plan.updated_at = now
                    done.append(plan.id)
        return done

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

    async def replace_peer(self, peer: Peer, archive_origin: str) -> int:
        """Pin ``peer`` in place of the row with its id (another key), in one transaction.

        The operations the old key's node sent us move to ``archive_origin`` (an origin no
        instance can have): left under the id, the new node's first sync would find them
        missing from its history and delete them. Returns how many were kept that way.
        """
        now = utcnow()
        async with self.session() as s, s.begin():
            old = await s.get(Peer, peer.id)
            # An archive made by an earlier replace of the same key may hold copies of the same
            # operations (the key came back and synced them again): the newer copies win.
            moving = select(Operation.op_id).where(Operation.origin == peer.id)
            stale = select(Operation.pk).where(
                Operation.origin == archive_origin, Operation.op_id.in_(moving)
            )
            await s.execute(delete(OperationLog).where(OperationLog.op_pk.in_(stale)))
            await s.execute(
                delete(Operation).where(
                    Operation.origin == archive_origin, Operation.op_id.in_(moving)
                )
            )
            res = await s.execute(
                update(Operation).where(Operation.origin == peer.id).values(origin=archive_origin)
            )
            if old is not None:
                await s.delete(old)
                await s.flush()
            peer.created_at = now
            peer.updated_at = now
            s.add(peer)
        return int(getattr(res, "rowcount", 0) or 0)

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
                    raise KeyConflict(
                        f"instance {peer.id!r} is already paired there with key {old.key_id}; "
                        f"this node's key is {peer.key_id}; if {peer.id!r} was reinstalled, "
                        f"remove it on that node first (`peerstash peer remove {peer.id}`)"
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

    async def peer_history_limits(self) -> tuple[int, int]:
        """``(days, max_ops)``: how much of each peer's history this node keeps (settings
        ``peer_history_days`` and ``peer_history_max_ops``; a bad value means the default)."""
        days = await self.get_setting(PEER_HISTORY_DAYS, None)
        most = await self.get_setting(PEER_HISTORY_MAX_OPS, None)
        if not isinstance(days, int) or isinstance(days, bool) or days < 1:
            days = DEFAULT_PEER_HISTORY_DAYS
        if not isinstance(most, int) or isinstance(most, bool) or most < 1:
            most = DEFAULT_PEER_HISTORY_MAX_OPS
        return days, most

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


class TokenRefused(StoreError):
    """A pairing token that does not exist, has expired or is used up (one message for all,
    so a prober learns nothing about which)."""


class KeyConflict(StoreError):
    """A valid token was presented under an instance id already pinned to another key."""


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
