"""The real ``peerstash`` on a data directory whose upgrade fails: one line, exit 1, nothing lost.

Under systemd a node that cannot start is a restart loop; each try must leave the database as
it was, say in one line what failed and where the copy is, and a later start (once whatever was
in the way is gone) must upgrade the same data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
from pathlib import Path

from tests.fixtures.processes import PEERSTASH, NodeProc
from tests.fixtures.upgrades import head, make_database_at, migration_name, revisions

START = revisions()[0]


async def old_data_dir(node: NodeProc) -> Path:
    """The node's data dir with a database made at the first revision, full of data."""
    node.data_dir.mkdir(mode=0o700)
    db = node.data_dir / "peerstash.db"
    written = await make_database_at(f"sqlite+aiosqlite:///{db}", START)
    assert {s["value"] for s in written["settings"] if s["key"] == "instance_id"} == {"laptop"}
    return db


def refuse_head(db: Path) -> None:
    """Make the upgrade fail after every migration but the stamp of the last one ran."""
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "CREATE TRIGGER refuse_head BEFORE UPDATE ON alembic_version "
            f"WHEN NEW.version_num = '{head()}' "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )


def copy_exists(db: Path) -> bool:
    return Path(f"{db}.bak-{START}").is_file()


def exited(node: NodeProc, timeout: float = 60) -> int:
    assert node.proc is not None
    code = node.proc.wait(timeout)
    node._exited.wait(10)  # all output read
    return code


async def test_a_failed_upgrade_is_one_line_and_a_later_start_upgrades(node_factory) -> None:  # type: ignore[no-untyped-def]
    node: NodeProc = node_factory("laptop")
    db = await old_data_dir(node)
    refuse_head(db)
    before = db.read_bytes()
    copy = node.data_dir / f"peerstash.db.bak-{START}"

    node.start(wait=False)

    assert exited(node) == 1
    assert node.output == [
        f"peerstash: could not upgrade the database {db} from schema {START} to {head()}: "
        f"migration {migration_name(head())} failed: injected failure; the database was left "
        f"as it was; a copy made before the upgrade is at {copy}"
    ]
    assert db.read_bytes() == before
    assert copy.stat().st_mode & 0o777 == 0o600
    with contextlib.closing(sqlite3.connect(copy)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(START,)]
        assert conn.execute("SELECT id FROM plans ORDER BY id").fetchall() == [
            ("documents",),
            ("photos",),
        ]

    # A restart loop changes nothing either.
    node.output.clear()
    node.start(wait=False)
    assert exited(node) == 1
    assert len(node.output) == 1
    assert db.read_bytes() == before

    # What was in the way gone, the node upgrades the same data and serves it.
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DROP TRIGGER refuse_head")
    node.start()
    try:
        plans = json.loads(node.cli("plan", "list", "--json").stdout)
        names = sorted(p["id"] for p in plans)
        assert names == ["documents", "photos"]
    finally:
        assert node.stop() == 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head(),)]


async def test_a_database_from_a_newer_build_is_refused_in_one_line(node_factory) -> None:  # type: ignore[no-untyped-def]
    node: NodeProc = node_factory("laptop")
    db = await old_data_dir(node)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    before = db.read_bytes()

    node.start(wait=False)

    assert exited(node) == 1
    assert len(node.output) == 1, node.output
    assert node.output[0].startswith(
        f"peerstash: the database {db} has schema revision '9999_from_the_future', which "
    )
    assert node.output[0].endswith("run that version again (nothing was changed)")
    assert db.read_bytes() == before
    assert list(node.data_dir.glob("peerstash.db.bak-*")) == []


async def test_the_tray_app_says_the_same_one_line(node_factory) -> None:  # type: ignore[no-untyped-def]
    """The tray's start path (offscreen Qt: no dialog) ends the same way, exit 1."""
    node: NodeProc = node_factory("laptop")
    db = await old_data_dir(node)
    refuse_head(db)
    before = db.read_bytes()

    env = {**node.env(), "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(node.data_dir)}
    res = await asyncio.to_thread(
        subprocess.run,
        [*PEERSTASH, "--data-dir", str(node.data_dir), "--no-discovery"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )

    assert res.returncode == 1, res.stderr
    ours = [line for line in res.stderr.splitlines() if line.startswith("peerstash:")]
    assert ours == [
        f"peerstash: could not upgrade the database {db} from schema {START} to {head()}: "
        f"migration {migration_name(head())} failed: injected failure; the database was left "
        f"as it was; a copy made before the upgrade is at {node.data_dir}/peerstash.db.bak-{START}"
    ]
    assert "Traceback" not in res.stderr
    assert res.stdout == ""
    assert db.read_bytes() == before
    assert copy_exists(db)
