"""A storage in trouble, seen through a real node driving real restic 0.14 and 0.18.

Between restic and a real REST server (pyrestserver) sits a proxy on 127.0.0.1 that this test
controls: it can fail every upload of pack data with HTTP 500 (restic then retries, printing
"Save(<data/...>) returned error, retrying after ...") or hold every request unanswered (restic
then says nothing at all). What is asserted is what a person sees: the operation's detail while
it runs, its log while it runs, how it ends, and that no stale lock is left to block the next
operation. Waits are on the node's operation events, each with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from peerstash.core.engine import EngineError, PasswordSpec
from peerstash.core.models import Operation, OpKind, OpStatus
from peerstash.core.restic import ResticError
from peerstash.core.store import OpFilter
from peerstash.peer.node import Node
from tests.fixtures.nodes import MakeNode
from tests.fixtures.servers import RESTIC_BUILDS, RestServer, resolve_restic
from tests.fixtures.sharing import link_b_gives_a, next_shares

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=RESTIC_BUILDS)
def restic_bin(request: pytest.FixtureRequest) -> str:
    return resolve_restic(request.param)


class TroubleProxy:
    """Forwards restic's REST requests to pyrestserver, or fails or holds them on demand."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.fail_data = False
        self.hold = False
        self.hold_data = False  # only uploads of pack data hang: restic's status lines go on
        self.hold_locks = False  # only taking a lock hangs, after restic's first words
        self.released = asyncio.Event()
        self.holding = asyncio.Event()  # set when a request is first held
        self.failed = 0
        self.held = 0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        uploading = request.method == "POST" and "/data/" in request.path
        locking = request.method == "POST" and "/locks/" in request.path
        if self.hold or (self.hold_data and uploading) or (self.hold_locks and locking):
            self.held += 1
            self.holding.set()
            await self.released.wait()
        if self.fail_data and request.method == "POST" and "/data/" in request.path:
            self.failed += 1
            await request.read()
            return web.Response(status=500, text="disk on fire\n")
        assert self._client is not None
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "content-length", "transfer-encoding")
        }
        body = await request.read()
        async with self._client.request(
            request.method,
            self.upstream + request.path_qs,
            data=body,
            headers=headers,
            allow_redirects=False,
        ) as upstream:
            data = await upstream.read()
            if request.method == "HEAD":  # restic reads a file's size from Content-Length
                head = web.Response(status=upstream.status)
                head.headers["Content-Length"] = upstream.headers.get("Content-Length", "0")
                return head
            passed = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
            }
            return web.Response(status=upstream.status, body=data, headers=passed)

    async def start(self) -> None:
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        await self.come_back()

    async def come_back(self) -> None:
        """Listen (again, on the same port once it has one)."""
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def go_away(self) -> None:
        """Stop listening: restic's connections are refused."""
        assert self._runner is not None
        await self._runner.cleanup()
        self._runner = None

    async def stop(self) -> None:
        self.released.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()


@pytest.fixture
async def proxy(rest_server: RestServer) -> AsyncIterator[TroubleProxy]:
    p = TroubleProxy(rest_server.url)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def node_with_plan(
    make_node: MakeNode, restic_bin: str, proxy: TroubleProxy, tmp_path: Path, name: str
) -> Node:
    node = await make_node("alpha", restic_path=restic_bin)
    assert node.engine
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"f{i}.bin").write_bytes(bytes([i]) * 300_000)
    uri = f"rest:http://127.0.0.1:{proxy.port}/{name}"
    await node.engine.add_repo("r1", uri, PasswordSpec(source="secret", value="pw"), init=True)
    await node.engine.add_plan("docs", repo_id="r1", paths=[str(src)])
    return node


async def op_until(
    node: Node, pk: int, check: Callable[[Operation], bool], within: float = 90
) -> Operation:
    """The operation once ``check`` holds (re-read on each of its change events)."""
    assert node.engine
    with node.bus.subscribe("operation") as sub:
        async with asyncio.timeout(within):
            while True:
                op = await node.engine.store.get_operation(pk)
                if check(op):
                    return op
                await sub.get()


def detail(op: Operation) -> str:
    value: Any = (op.summary or {}).get("detail")
    return value if isinstance(value, str) else ""


async def test_a_retrying_backup_says_why_while_it_runs_and_its_log_is_there(
    make_node: MakeNode, restic_bin: str, proxy: TroubleProxy, tmp_path: Path
) -> None:
    node = await node_with_plan(make_node, restic_bin, proxy, tmp_path, "retry")
    assert node.engine
    proxy.fail_data = True
    op = await node.engine.backup("docs")
    running = await op_until(node, op.pk, lambda o: detail(o).startswith("retrying: "))
    assert running.status == OpStatus.RUNNING
    assert "500" in detail(running), detail(running)
    # The retry notice is in the log while the backup still runs (not only at its end).
    log = await node.engine.store.get_log(op.pk)
    assert any("returned error, retrying after" in line for line in log), log
    assert (await node.engine.store.get_operation(op.pk)).status == OpStatus.RUNNING

    proxy.fail_data = False  # the storage heals: restic's next retry goes through
    done = await node.engine.wait(op.pk)
    assert done.status == OpStatus.SUCCESS and done.snapshot_id, done.error
    assert "detail" not in (done.summary or {})
    assert proxy.failed >= 1


async def test_a_running_operations_log_is_there_within_a_second_without_progress(
    make_node: MakeNode, restic_bin: str, proxy: TroubleProxy, tmp_path: Path
) -> None:
    """restic says what it does, then waits on the storage and says nothing more, with no
    progress: ``peerstash log`` shows its words within a second anyway (they are not held
    back until a progress tick or 200 lines, nor until the end)."""
    node = await node_with_plan(make_node, restic_bin, proxy, tmp_path, "quiet")
    assert node.engine
    node.engine.runner.progress_interval = 3600.0  # no progress tick may write the log
    proxy.hold_locks = True
    op = await node.engine.check("r1")
    # restic is waiting for its lock: it has said its words and says no more.
    await asyncio.wait_for(proxy.holding.wait(), 60)
    # Nothing announces a written log line, so: LOG_FLUSH_INTERVAL (1 s) and slack for a
    # loaded machine, then the log must be there while the operation still runs.
    await asyncio.sleep(2.5)
    log = await node.engine.store.get_log(op.pk)
    assert any("lock" in line for line in log), log
    assert (await node.engine.store.get_operation(op.pk)).status == OpStatus.RUNNING

    proxy.hold_locks = False
    proxy.released.set()
    done = await node.engine.wait(op.pk)
    assert done.status == OpStatus.SUCCESS, done.error


@pytest.mark.parametrize("where", ["open", "upload"])
async def test_a_silent_restic_is_called_stalled_and_cancelling_it_leaves_no_lock(
    make_node: MakeNode, restic_bin: str, proxy: TroubleProxy, tmp_path: Path, where: str
) -> None:
    """``open``: every request hangs, restic prints nothing. ``upload``: only the pack upload
    hangs, and restic keeps printing the same status every second: repeated progress that does
    not move is silence too."""
    node = await node_with_plan(make_node, restic_bin, proxy, tmp_path, "stall")
    assert node.engine
    node.engine.runner.stall_after = 2.0  # the setting restic_stall_seconds, shortened
    first = await node.engine.wait((await node.engine.backup("docs")).pk)
    assert first.status == OpStatus.SUCCESS, first.error

    if where == "open":
        proxy.hold = True
    else:
        for i in range(3):
            (tmp_path / "src" / f"new{i}.bin").write_bytes(bytes([50 + i]) * 400_000)
        proxy.hold_data = True
    op = await node.engine.backup("docs")
    stalled = await op_until(node, op.pk, lambda o: detail(o).startswith("stalled: "))
    assert stalled.status == OpStatus.RUNNING and proxy.held >= 1
    if where == "upload":  # restic was reporting progress, then only repeated it
        assert stalled.bytes_total > 0 and stalled.bytes_done == stalled.bytes_total
    log = await node.engine.store.get_log(op.pk)
    assert any(line.startswith("warning: stalled: no output or progress") for line in log), log

    assert await node.engine.cancel(op.op_id)
    proxy.hold = proxy.hold_data = False
    proxy.released.set()
    done = await node.engine.wait(op.pk)
    assert done.status == OpStatus.CANCELLED
    assert "detail" not in (done.summary or {})
    # A cancelled run may leave restic's lock behind: a stale-lock removal follows by itself,
    # and the next backup runs.
    unlocks = await node.engine.store.list_operations(OpFilter(kind=OpKind.UNLOCK, repo_id="r1"))
    assert len(unlocks) == 1
    assert (await node.engine.wait(unlocks[0].pk)).status == OpStatus.SUCCESS
    again = await node.engine.wait((await node.engine.backup("docs")).pk)
    assert again.status == OpStatus.SUCCESS, again.error


async def test_a_lost_storage_owes_an_unlock_that_runs_before_the_next_operation(
    make_node: MakeNode, restic_bin: str, proxy: TroubleProxy, tmp_path: Path
) -> None:
    """The storage is gone: the backup fails at once as unreachable, and no unlock is queued
    then (it would fail the same way). Once the storage is back, the next operation on the
    repository is preceded by a stale-lock removal."""
    node = await node_with_plan(make_node, restic_bin, proxy, tmp_path, "lost")
    assert node.engine
    if await node.engine.restic().version() >= (0, 17, 0):
        pytest.skip(
            "restic 0.17+ keeps retrying a refused connection for ~15 minutes instead of "
            "failing; this needs the quick failure of restic 0.14-0.16"
        )
    first = await node.engine.wait((await node.engine.backup("docs")).pk)
    assert first.status == OpStatus.SUCCESS, first.error

    await proxy.go_away()
    failed = await node.engine.wait((await node.engine.backup("docs")).pk)
    assert failed.status == OpStatus.ERROR
    assert failed.error and failed.error.startswith("cannot reach the storage of r1"), failed.error
    log = await node.engine.store.get_log(failed.pk)
    assert any("stale locks will be removed before the next operation" in line for line in log)
    unlocks = OpFilter(kind=OpKind.UNLOCK, repo_id="r1")
    assert await node.engine.store.list_operations(unlocks) == []

    await proxy.come_back()
    check = await node.engine.wait((await node.engine.check("r1")).pk)
    assert check.status == OpStatus.SUCCESS, check.error
    (unlock,) = await node.engine.store.list_operations(unlocks)
    assert unlock.status == OpStatus.SUCCESS and unlock.pk < check.pk  # it went first
    again = await node.engine.wait((await node.engine.backup("docs")).pk)
    assert again.status == OpStatus.SUCCESS, again.error
    assert len(await node.engine.store.list_operations(unlocks)) == 1  # owed once, paid once


async def test_a_killed_backups_lock_is_removed_and_the_next_check_is_not_blocked(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    """restic dies with SIGKILL mid-backup (the OOM killer, a lost machine): its lock stays
    in the repository, and every exclusive operation (forget, prune, check) would be refused
    as locked until someone runs ``peerstash unlock``. The node removes it by itself."""
    node = await make_node("alpha", restic_path=restic_bin)
    assert node.engine
    repo = tmp_path / "repo"
    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / "sparse.img").touch()
    os.truncate(huge / "sparse.img", 64 * 1024**3)  # minutes for restic to read, no disk space
    await node.engine.add_repo("r1", str(repo), PasswordSpec("secret", value="pw"), init=True)
    await node.engine.add_plan("big", repo_id="r1", paths=[str(huge)])

    op = await node.engine.backup("big")
    await op_until(node, op.pk, lambda o: o.bytes_done > 0)
    (pid,) = node.engine.restic().active_pids
    assert os.listdir(repo / "locks")  # the backup's lock
    os.kill(pid, signal.SIGKILL)
    failed = await node.engine.wait(op.pk)
    assert failed.status == OpStatus.ERROR and "interrupted" in (failed.error or ""), failed
    log = await node.engine.store.get_log(failed.pk)
    assert any("may have left a stale lock behind" in line for line in log), log

    # The stale-lock removal runs by itself; the next check is not refused as locked.
    check = await node.engine.wait((await node.engine.check("r1")).pk)
    assert check.status == OpStatus.SUCCESS, check.error
    (unlock,) = await node.engine.store.list_operations(OpFilter(kind=OpKind.UNLOCK, repo_id="r1"))
    assert unlock.status == OpStatus.SUCCESS and unlock.pk < check.pk
    assert os.listdir(repo / "locks") == []


@pytest.mark.parametrize("init", [False, True], ids=["add", "add-init"])
async def test_repo_add_to_a_storage_refusing_the_credentials_says_so(
    make_node: MakeNode, restic_bin: str, tmp_path: Path, init: bool
) -> None:
    """A REST server answering 401 to a wrong password in the URI: `repo add` (with or
    without --init) says the credentials were refused, never "there is no restic repository
    ... add --init"; nothing is stored, no secret is said back."""
    secret = "wrong-Pa55-never-said-7733"
    asked: list[str] = []

    async def refuse(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(status=401, text="Unauthorized\n", headers={"WWW-Authenticate": "x"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        node = await make_node("alpha", restic_path=restic_bin)
        assert node.engine
        uri = f"rest:http://ana:{secret}@127.0.0.1:{port}/repo"
        with pytest.raises((EngineError, ResticError)) as refused:
            await asyncio.wait_for(
                node.engine.add_repo(
                    "nas", uri, PasswordSpec(source="secret", value="pw"), init=init
                ),
                120,
            )
    finally:
        await runner.cleanup()
    said = str(refused.value)
    assert "refused the credentials" in said, said
    assert "add --init" not in said and "no restic repository" not in said
    assert secret not in said
    assert asked  # restic really asked
    assert await node.engine.list_repos() == []
    assert not [n for n in await node.engine.store.secret_names("repo/") if "nas" in n]


async def test_a_receivers_killed_backup_does_not_block_its_forget_nor_the_owners_check(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    """B backs up into a repository A shared with it; restic is SIGKILLed mid-run and leaves
    B's lock there. B removes its own stale lock (only stale ones: a live run of A keeps its
    lock), so B's retention and A's check are not refused as locked."""
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    assert a.engine and b.engine
    await link_b_gives_a(a, b, ["repos.receive"])
    repo = tmp_path / "repo"
    await a.engine.add_repo("r", str(repo), PasswordSpec("secret", value="pw"), init=True)
    got = next_shares(b, "a")
    await a.engine.share_repo("r")
    assert (await got).added == ["r@a"]
    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / "sparse.img").touch()
    os.truncate(huge / "sparse.img", 64 * 1024**3)
    await b.engine.add_plan("big", repo_id="r@a", paths=[str(huge)], retention={"keep_last": 1})

    op = await b.engine.backup("big")
    await op_until(b, op.pk, lambda o: o.bytes_done > 0)
    (pid,) = b.engine.restic().active_pids
    assert os.listdir(repo / "locks")  # B's lock, in A's repository
    os.kill(pid, signal.SIGKILL)
    failed = await b.engine.wait(op.pk)
    assert failed.status == OpStatus.ERROR and "interrupted" in (failed.error or ""), failed

    # B's own retention on the shared repository is not refused as locked...
    forget = await b.engine.wait((await b.engine.forget("r@a", plan_id="big")).pk)
    assert forget.status == OpStatus.SUCCESS, forget.error
    unlocks = await b.engine.store.list_operations(OpFilter(kind=OpKind.UNLOCK, repo_id="r@a"))
    assert [u.status for u in unlocks] == [OpStatus.SUCCESS] and unlocks[0].pk < forget.pk
    # ... nor is the owner's check, at its first try.
    check = await a.engine.wait((await a.engine.check("r")).pk)
    assert check.status == OpStatus.SUCCESS, check.error
    assert await a.engine.store.list_operations(OpFilter(kind=OpKind.UNLOCK, repo_id="r")) == []
    assert os.listdir(repo / "locks") == []
