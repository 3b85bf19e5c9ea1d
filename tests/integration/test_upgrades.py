"""Upgrades never break a data directory (issue 10).

For EVERY revision in Alembic's script directory, on SQLite and on a real PostgreSQL: a database
made at that revision (the way the Store of that time made it) and filled with the rows a node
of that time wrote (tests/fixtures/upgrades.py, one builder per revision) is opened by the
current Store. Every row must survive with its values, the Store must list it, and a SQLite
database must have been copied aside first. A failed upgrade must leave the database exactly as
it was, with one worded error; a database from a newer Peerstash is refused untouched.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from peerstash.core.models import Base, OpKind
from peerstash.core.store import MigrationError, OpFilter, Store, backup_path
from tests.fixtures.upgrades import (
    BUILDERS,
    Rows,
    head,
    make_database_at,
    migration_name,
    missing_or_changed,
    old_build_engine,
    read_head_rows,
    revisions,
)

REVISIONS = revisions()


@dataclass
class Db:
    """One database under test: a SQLite data dir, or a fresh PostgreSQL database."""

    backend: str
    url: str
    data_dir: Path | None = None

    @property
    def file(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / "peerstash.db"

    async def open_store(self) -> Store:
        if self.data_dir is not None:
            return await Store.open(data_dir=self.data_dir)  # the node's way
        return await Store.open(self.url)


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    if request.param == "sqlite":
        data = tmp_path / "data"
        data.mkdir(mode=0o700)
        yield Db("sqlite", f"sqlite+aiosqlite:///{data / 'peerstash.db'}", data)
    else:
        yield Db("postgres", request.getfixturevalue("fresh_pg_url"))


async def run_sql(db: Db, *statements: str) -> None:
    engine = old_build_engine(db.url)
    try:
        async with engine.begin() as conn:
            for sql in statements:
                await conn.exec_driver_sql(sql)
    finally:
        await engine.dispose()


async def snapshot(db: Db) -> Any:
    """Schema and every row of every table, as text: what 'left as it was' is compared by."""

    def take(conn: Connection) -> Any:
        if conn.dialect.name == "sqlite":
            schema = conn.exec_driver_sql(
                "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
            ).all()
            tables = [r[1] for r in schema if r[0] == "table"]
        else:
            schema = conn.exec_driver_sql(
                "SELECT table_name, column_name, data_type, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_schema = 'public' "
                "ORDER BY table_name, ordinal_position"
            ).all()
            schema += conn.exec_driver_sql(
                "SELECT tc.table_name, tc.constraint_name, tc.constraint_type, '', '' "
                "FROM information_schema.table_constraints tc "
                "WHERE tc.table_schema = 'public' ORDER BY 1, 2"
            ).all()
            tables = sorted({r[0] for r in schema})
        rows = {
            t: sorted(repr(tuple(r)) for r in conn.exec_driver_sql(f'SELECT * FROM "{t}"'))
            for t in tables
        }
        return [tuple(r) for r in schema], rows

    engine = old_build_engine(db.url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(take)
    finally:
        await engine.dispose()


async def schema_diff(db: Db) -> list[Any]:
    """What differs between the database and the head models (indexes, types, FKs...)."""
    engine = old_build_engine(db.url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
                )
            )
    finally:
        await engine.dispose()


def wal_size(db_file: Path) -> int:
    """Size of the database's -wal file, 0 when there is none."""
    wal = Path(f"{db_file}-wal")
    return wal.stat().st_size if wal.exists() else 0


def tmp_tables(snap: Any) -> list[str]:
    _schema, rows = snap
    return [t for t in rows if t.startswith("_alembic_tmp")]


def revision_in(snap: Any) -> list[str]:
    return [r.strip("()',") for r in snap[1]["alembic_version"]]


async def assert_store_lists(store: Store, written: Rows) -> None:
    """What a person would see through the current Store: every record of the old data."""
    assert sorted(r.id for r in await store.list_repos()) == sorted(
        r["id"] for r in written["repos"]
    )
    assert sorted(p.id for p in await store.list_plans()) == sorted(
        p["id"] for p in written["plans"]
    )
    ops = await store.list_operations(OpFilter(), limit=1000)
    assert sorted(o.op_id for o in ops) == sorted(o["op_id"] for o in written["operations"])
    for op in written["operations"]:
        lines = [
            r["line"]
            for r in sorted(written["operation_logs"], key=lambda r: r["seq"])
            if r["op_pk"] == op["pk"]
        ]
        assert await store.get_log(op["pk"]) == lines
    for setting in written["settings"]:
        assert await store.get_setting(setting["key"]) == setting["value"]
    for secret in written["secrets"]:
        assert await store.get_secret(secret["name"]) == secret["ciphertext"]
    if "peers" in written:
        assert sorted(p.id for p in await store.list_peers()) == sorted(
            p["id"] for p in written["peers"]
        )
    if "pairing_tokens" in written:
        assert sorted(t.id for t in await store.list_tokens()) == sorted(
            t["id"] for t in written["pairing_tokens"]
        )
    if "remote_requests" in written:
        assert sorted(r.id for r in await store.list_requests()) == sorted(
            r["id"] for r in written["remote_requests"]
        )
    # Repositories from before shared repos existed come out not shared.
    for repo in await store.list_repos():
        if repo.id in {r["id"] for r in written["repos"] if "shared" not in r}:
            assert repo.shared is False
    # And the store goes on writing: the next operation continues the old modno sequence.
    store.local_origin = "laptop"
    newest = max(o["modno"] for o in written["operations"] if o["origin"] == "laptop")
    op = await store.create_operation(OpKind.CHECK, repo_id="home")
    await store.append_log(op.pk, ["after the upgrade"])
    assert op.modno == newest + 1
    assert await store.get_log(op.pk) == ["after the upgrade"]


def test_every_revision_has_a_data_builder() -> None:
    """Whoever adds a migration writes the data a node at it would have (fixtures/upgrades.py)."""
    missing = [r for r in REVISIONS if r not in BUILDERS]
    assert not missing, f"no data builder in tests/fixtures/upgrades.py for revision(s) {missing}"
    assert sorted(BUILDERS) == sorted(REVISIONS), "a builder for a revision that does not exist"


@pytest.mark.parametrize("revision", REVISIONS)
async def test_data_at_every_revision_survives_the_upgrade(db: Db, revision: str) -> None:
    written = await make_database_at(db.url, revision)
    before = await snapshot(db)

    store = await db.open_store()  # upgrades to head
    await store.close()

    survived = await read_head_rows(db.url, list(written))
    assert missing_or_changed(written, survived) == []
    after = await snapshot(db)
    assert revision_in(after) == [head()]
    assert tmp_tables(after) == []
    assert await schema_diff(db) == []  # the same schema a new database gets

    store = await db.open_store()
    try:
        await assert_store_lists(store, written)
    finally:
        await store.close()

    if db.data_dir is not None:
        copies = sorted(p.name for p in db.data_dir.glob("peerstash.db.bak-*"))
        if revision == head():
            assert copies == []  # nothing to upgrade, nothing copied
        else:
            assert copies == [f"peerstash.db.bak-{revision}"]
            copy = backup_path(db.file, revision)
            assert stat.S_IMODE(copy.stat().st_mode) == 0o600
            # The copy is the database as the old build left it, and needs nothing else.
            assert not wal_size(copy)
            assert await snapshot(Db("sqlite", f"sqlite+aiosqlite:///{copy}")) == before


async def test_the_copy_includes_what_is_only_in_the_wal(tmp_path: Path) -> None:
    """Rows committed to the WAL but not yet checkpointed are in the copy too."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    db = Db("sqlite", f"sqlite+aiosqlite:///{data / 'peerstash.db'}", data)
    await make_database_at(db.url, REVISIONS[0])
    with contextlib.closing(sqlite3.connect(db.file)) as other:
        other.execute("PRAGMA wal_autocheckpoint=0")
        with other:
            other.execute("INSERT INTO settings (key, value) VALUES ('late', '\"in the wal\"')")
        assert wal_size(db.file) > 0
        store = await db.open_store()
        await store.close()
    with contextlib.closing(sqlite3.connect(backup_path(db.file, REVISIONS[0]))) as copy:
        assert copy.execute("SELECT value FROM settings WHERE key = 'late'").fetchall() == [
            ('"in the wal"',)
        ]


def fail_at_head_sql(backend: str) -> list[str]:
    """A trigger that aborts stamping the database with head: every other migration has run.

    So the failure comes after all the DDL of the upgrade (0003's batch rebuilds among it),
    which is exactly what must be rolled back.
    """
    target = head()
    if backend == "sqlite":
        return [
            "CREATE TRIGGER refuse_head BEFORE UPDATE ON alembic_version "
            f"WHEN NEW.version_num = '{target}' "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        ]
    return [
        "CREATE FUNCTION refuse_head() RETURNS trigger AS $$ BEGIN "
        f"IF NEW.version_num = '{target}' THEN RAISE EXCEPTION 'injected failure'; END IF; "
        "RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER refuse_head BEFORE UPDATE ON alembic_version "
        "FOR EACH ROW EXECUTE FUNCTION refuse_head()",
    ]


async def test_a_failed_upgrade_leaves_the_database_as_it_was(db: Db) -> None:
    start = REVISIONS[0]
    written = await make_database_at(db.url, start)
    await run_sql(db, *fail_at_head_sql(db.backend))
    before = await snapshot(db)
    file_before = db.file.read_bytes() if db.data_dir is not None else b""

    with pytest.raises(MigrationError) as failed:
        await db.open_store()

    message = str(failed.value)
    assert "\n" not in message
    assert f"migration {migration_name(head())} failed: injected failure" in message
    assert f"from schema {start} to {head()}" in message
    assert "the database was left as it was" in message
    after = await snapshot(db)
    assert after == before
    assert revision_in(after) == [start]
    assert tmp_tables(after) == []
    if db.data_dir is not None:
        copy = backup_path(db.file, start)
        assert message.endswith(f"a copy made before the upgrade is at {copy}")
        assert db.file.read_bytes() == file_before  # byte for byte
        assert await snapshot(Db("sqlite", f"sqlite+aiosqlite:///{copy}")) == before

    # Whatever was in the way gone, the next start upgrades the same data.
    drop = (
        "DROP TRIGGER refuse_head"
        if db.backend == "sqlite"
        else "DROP TRIGGER refuse_head ON alembic_version"
    )
    await run_sql(db, drop)
    store = await db.open_store()
    try:
        await assert_store_lists(store, written)
    finally:
        await store.close()


async def test_a_table_in_the_way_fails_a_later_migration_and_rolls_back_earlier_ones(
    db: Db,
) -> None:
    """Conflicting data: a table named like one 0004 creates, in a database at 0002."""
    await make_database_at(db.url, "0002")
    await run_sql(db, "CREATE TABLE remote_requests (id INTEGER)")
    before = await snapshot(db)

    with pytest.raises(MigrationError) as failed:
        await db.open_store()

    assert "migration 0004_remote_requests failed" in str(failed.value)
    assert "remote_requests" in str(failed.value).split("failed:", 1)[1]
    assert await snapshot(db) == before  # 0003's changes to repos and plans are undone too


async def test_a_reference_broken_by_the_upgrade_fails_the_check_and_rolls_back(
    tmp_path: Path,
) -> None:
    """SQLite migrates with foreign keys off; the check before commit still catches breakage.

    The breakage is made by a trigger that empties ``operations`` when a migration step records
    its revision, as a faulty migration would: every log row then refers to nothing.
    """
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    db = Db("sqlite", f"sqlite+aiosqlite:///{data / 'peerstash.db'}", data)
    await make_database_at(db.url, REVISIONS[0])
    with contextlib.closing(sqlite3.connect(db.file)) as conn, conn:
        conn.execute(
            "CREATE TRIGGER faulty_migration AFTER UPDATE ON alembic_version "
            "BEGIN DELETE FROM operations; END"
        )
    before = await snapshot(db)

    with pytest.raises(MigrationError) as failed:
        await db.open_store()

    message = str(failed.value)
    assert "the foreign key check after the migrations failed" in message
    assert "row(s) of operation_logs refer to rows that do not exist" in message
    assert await snapshot(db) == before


async def test_an_orphan_from_before_the_upgrade_does_not_block_it(tmp_path: Path) -> None:
    """A dangling row no migration made (an old build's leftover) must not refuse every start."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    db = Db("sqlite", f"sqlite+aiosqlite:///{data / 'peerstash.db'}", data)
    await make_database_at(db.url, REVISIONS[0])
    with contextlib.closing(sqlite3.connect(db.file)) as conn, conn:
        conn.execute("INSERT INTO operation_logs (op_pk, seq, line) VALUES (999, 0, 'orphan')")

    store = await db.open_store()
    await store.close()

    with contextlib.closing(sqlite3.connect(db.file)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (head(),)
        assert conn.execute("SELECT line FROM operation_logs WHERE op_pk = 999").fetchall() == [
            ("orphan",)
        ]


async def test_a_database_from_a_newer_peerstash_is_refused_untouched(db: Db) -> None:
    await make_database_at(db.url, head())
    await run_sql(db, "UPDATE alembic_version SET version_num = '9999_from_the_future'")
    before = await snapshot(db)
    file_before = db.file.read_bytes() if db.data_dir is not None else b""

    with pytest.raises(MigrationError) as refused:
        await db.open_store()

    message = str(refused.value)
    assert "\n" not in message
    assert "'9999_from_the_future'" in message
    assert "a newer Peerstash wrote it" in message
    assert "nothing was changed" in message
    assert await snapshot(db) == before
    if db.data_dir is not None:
        assert db.file.read_bytes() == file_before
        assert list(db.data_dir.glob("peerstash.db.bak-*")) == []


async def test_an_unreadable_database_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "peerstash.db").write_bytes(b"not a database at all, but long enough " * 200)
    with pytest.raises(MigrationError) as failed:
        await Store.open(data_dir=data)
    assert str(failed.value) == (
        f"cannot read the database {data / 'peerstash.db'}: file is not a database"
    )


async def test_an_unreachable_postgresql_is_one_line_without_its_password() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql+asyncpg://peerstash:hunter2secret@127.0.0.1:{port}/peerstash"
    with pytest.raises(MigrationError) as failed:
        await Store.open(url)
    message = str(failed.value)
    assert message.startswith("could not open the database 'peerstash' on 127.0.0.1: ")
    assert "\n" not in message
    assert "hunter2secret" not in message
