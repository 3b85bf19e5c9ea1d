"""Opening a database file and bringing it to this build's schema without ever breaking it.

It creates the SQLite file private (0600) before SQLite does, runs the Alembic migrations of
``core/migrations`` (script location ``peerstash.core:migrations``, which did not move) in one
transaction, copies a SQLite database aside before upgrading it, and refuses a schema that a
newer Peerstash wrote. The comment block below gives the rules and why. :meth:`Store.open
<peerstash.core.store.Store.open>` is the caller; :class:`MigrationError` is what it raises.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import stat
from collections import Counter
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from peerstash.core import __version__
from peerstash.core.store.base import StoreError

log = logging.getLogger(__name__)


class MigrationError(StoreError):
    """The database cannot be brought to this build's schema; it was left as it was.

    The message is one line for a person: what failed, and where the copy made before the
    upgrade is. The traceback goes to the log at debug level only.
    """


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
