"""A node starts every part or none (issue 13): a start that fails half-way tears down exactly
what it had started, in reverse, so nothing is left running.

"Nothing left" is checked the way it would bite a person: the data directory's lock is free
(a second start on the same data directory succeeds and answers ``status`` on its admin
socket), the peer port is free again, no asyncio task of the failed node is still alive, no
admin socket file is left behind, and on PostgreSQL no connection of the failed node stays open.

The order of the start matters too: a peer that connects as soon as the peer port listens is
not marked offline by the links starting just after.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from peerstash.peer.links.link import PeerManager
from peerstash.peer.node import Node, NodeAlreadyRunning, NodeError, NodeNotRunning, NodeOptions
from tests.fixtures.nodes import MakeNode, token_for, wait_state
from tests.fixtures.upgrades import head, make_database_at, migration_name, revisions


def options(**kw: object) -> NodeOptions:
    settings: dict[str, object] = {
        "instance_id": "alpha",
        "listen": "127.0.0.1:0",
        "schedule": True,  # the scheduler's tasks must end too
        "discovery": False,
        **kw,
    }
    return NodeOptions(**settings)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def port_in_use() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def other_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


def new_tasks(before: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    """The tasks alive now that were not before."""
    return other_tasks() - before


def lock_is_free(data_dir: Path) -> bool:
    with open(data_dir / "node.lock", "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return True


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def admin_status(node: Node) -> dict[str, object]:
    conn = aiohttp.UnixConnector(path=str(node.socket_path))
    async with (
        aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=10)) as s,
        s.get("http://node/v1/status") as resp,
    ):
        assert resp.status == 200
        data: dict[str, object] = await resp.json()
        return data


async def starts_again(data_dir: Path, **kw: object) -> None:
    """A second node on the same data directory starts, answers status, and stops."""
    node = Node(data_dir, options(**kw))
    await node.start()
    try:
        status = await admin_status(node)
        assert status["instance_id"] == node.options.instance_id
        assert status["listen"] == node.listen_address
    finally:
        await node.stop()
    assert not node.socket_path.exists()
    assert lock_is_free(data_dir)


async def test_a_peer_port_in_use_fails_the_start_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    before = other_tasks()
    with port_in_use() as port:
        node = Node(data, options(listen=f"127.0.0.1:{port}"))
        with pytest.raises(NodeError) as failed:
            await node.start()
        assert str(failed.value).startswith(f"cannot listen for peers on 127.0.0.1:{port}: ")
        assert "--listen HOST:PORT" in str(failed.value)
    # The engine (with its scheduler) and the link services had started before the port.
    assert new_tasks(before) == set()
    assert lock_is_free(data)
    assert not node.socket_path.exists()
    assert not node.running
    with pytest.raises(NodeNotRunning):
        _ = node.engine
    await node.stop()  # nothing to stop: harmless
    await starts_again(data)


async def test_a_failure_at_the_last_step_stops_everything_started_before_it(
    tmp_path: Path,
) -> None:
    """The admin socket is started last: when it fails, the peer port was already listening
    and the links, sync, remote and engine were running; all of it ends."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    port = free_port()
    blocker = Node(data, options()).socket_path
    blocker.mkdir()  # something that is not a socket sits where the admin socket goes
    before = other_tasks()
    node = Node(data, options(listen=f"127.0.0.1:{port}"))
    with pytest.raises(NodeError) as failed:
        await node.start()
    assert str(failed.value) == (
        f"cannot open the admin socket {blocker}: Is a directory "
        "(something else is in its place; move it away)"
    )
    assert new_tasks(before) == set()
    assert port_is_free(port)
    assert lock_is_free(data)
    assert blocker.is_dir()  # not ours to remove
    blocker.rmdir()
    await starts_again(data, listen=f"127.0.0.1:{port}")


async def test_an_unreadable_database_fails_the_start_with_one_line_and_no_lock_held(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    db = data / "peerstash.db"
    db.write_bytes(b"not a database at all, but long enough " * 200)
    before = other_tasks()
    node = Node(data, options())
    with pytest.raises(NodeError) as failed:
        await node.start()
    assert str(failed.value) == f"cannot read the database {db}: file is not a database"
    assert new_tasks(before) == set()
    assert lock_is_free(data)
    db.rename(data / "garbage")  # what a person does with it
    await starts_again(data)


async def test_a_failed_store_upgrade_fails_the_start_and_the_next_start_upgrades(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    db = data / "peerstash.db"
    first = revisions()[0]
    await make_database_at(f"sqlite+aiosqlite:///{db}", first)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "CREATE TRIGGER refuse_head BEFORE UPDATE ON alembic_version "
            f"WHEN NEW.version_num = '{head()}' "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
    before = other_tasks()
    node = Node(data, options(instance_id="laptop"))  # the id the old node wrote
    with pytest.raises(NodeError) as failed:
        await node.start()
    message = str(failed.value)
    assert "\n" not in message
    assert f"migration {migration_name(head())} failed: injected failure" in message
    assert new_tasks(before) == set()
    assert lock_is_free(data)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DROP TRIGGER refuse_head")
    await starts_again(data, instance_id="laptop")


async def test_a_half_started_node_on_postgresql_leaves_no_connection_open(
    tmp_path: Path, fresh_pg_url: str
) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    data = tmp_path / "data"
    with port_in_use() as port:
        node = Node(data, options(db_url=fresh_pg_url, listen=f"127.0.0.1:{port}"))
        with pytest.raises(NodeError, match="cannot listen for peers"):
            await node.start()
    dsn = make_url(fresh_pg_url).set(drivername="postgresql").render_as_string(False)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        others = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    assert others == 0
    assert lock_is_free(data)
    await starts_again(data, db_url=fresh_pg_url)


async def test_a_second_node_on_a_running_data_dir_is_refused_and_disturbs_nothing(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    running = Node(data, options())
    await running.start()
    try:
        second = Node(data, options())
        with pytest.raises(NodeAlreadyRunning, match="already running"):
            await second.start()
        # The refused start must not have torn down anything of the running node's.
        assert running.socket_path.exists()
        status = await admin_status(running)
        assert status["instance_id"] == "alpha"
        assert status["listen"] == running.listen_address
    finally:
        await running.stop()
    await starts_again(data)


async def test_services_exist_only_while_the_node_runs(tmp_path: Path) -> None:
    node = Node(tmp_path / "data", options())
    with pytest.raises(NodeNotRunning, match="is not running"):
        _ = node.services
    await node.stop()  # before start: nothing to do
    await node.start()
    try:
        assert node.running
        assert node.services.engine is node.engine
        assert node.services.discovery is None  # off in tests
        with pytest.raises(NodeError, match="already started"):
            await node.start()
    finally:
        await node.stop()
    assert not node.running
    with pytest.raises(NodeNotRunning):
        _ = node.peers
    await node.stop()  # twice: harmless
    assert lock_is_free(tmp_path / "data")


async def test_a_peer_that_connects_while_the_node_starts_stays_online(
    make_node: MakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The peer port listens before the links start (so no link-up is missed), so a paired
    peer may connect in between: starting the links must not then mark it offline."""
    a, b = await make_node("a"), await make_node("b")
    assert b.peer_url
    await a.peers.pair(await token_for(b), b.peer_url, [])
    await wait_state(b, "a", "online")
    port = b.peer_url.rsplit(":", 1)[1]
    await b.stop()  # its store still says "a" is online: a state from before the restart
    await wait_state(a, "b", "offline")

    started = PeerManager.start

    async def start_once_a_is_in(self: PeerManager) -> None:
        # The moment that is a race in real life, made certain: a's dialer gets in first.
        with self.bus.subscribe("link") as sub:
            async with asyncio.timeout(10):
                while "a" not in self.links:
                    await sub.get()  # the link's "online" comes right after it is adopted
        await started(self)

    monkeypatch.setattr(PeerManager, "start", start_once_a_is_in)
    b2 = await make_node("b", listen=f"127.0.0.1:{port}")
    monkeypatch.undo()
    assert "a" in b2.peers.links
    assert (await b2.store.get_peer("a")).state == "online"
    await wait_state(a, "b", "online")
