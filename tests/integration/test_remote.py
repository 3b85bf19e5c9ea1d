"""Remote commands between two in-process nodes, with real restic on A.

The service under test is peer/services/remote_commands.py.

B asks, A (where the data lives) answers. Every test pairs B to A with the grants A gives B and
drives real backups, listings and restores on A's local repository. What is asserted is what a
person on B sees: the request's states and words, A's operation arriving through operation
sync, the bytes restored on A. Nothing sleeps: tests await request and link events.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from peerstash.core.engine import PasswordSpec
from peerstash.core.models import OpKind, OpStatus
from peerstash.core.store import OpFilter, Store
from peerstash.peer.links import protocol as proto
from peerstash.peer.links.rpc import CallContext, CallError, RpcService
from peerstash.peer.node import Node
from peerstash.peer.services.remote_commands import (
    NOT_VISIBLE,
    RemoteError,
    RemoteRequestChanged,
    offline_note,
    request_record,
)
from tests.fixtures.nodes import MakeNode, link, remote, until, wait_state
from tests.fixtures.servers import RESTIC_BUILDS


def rpc(node: Node) -> RpcService:
    assert node.rpc is not None
    return node.rpc


def store(node: Node) -> Store:
    assert node.engine is not None
    return node.engine.store


def port_of(node: Node) -> int:
    assert node.peer_url
    return int(node.peer_url.rsplit(":", 1)[1])


async def with_plan(a: Node, tmp_path: Path, *, files: int = 3, plan: str = "docs") -> Path:
    """A repository ``r1`` on A and a plan backing up a small tree of real files."""
    assert a.engine
    src = tmp_path / "src"
    if not src.exists():
        (src / "sub").mkdir(parents=True)
        for i in range(files):
            (src / "sub" / f"f{i}.txt").write_text(f"file {i} of the fleet\n" * (i + 1))
        (src / "big.bin").write_bytes(hashlib.sha256(b"x").digest() * 200_000)  # 6.4 MB
        await a.engine.add_repo(
            "r1", str(tmp_path / "repo"), PasswordSpec(source="secret", value="pw"), init=True
        )
    await a.engine.add_plan(plan, repo_id="r1", paths=[str(src)])
    return src


async def two(
    make_node: MakeNode, restic_bin: str, a_gives_b: list[str], **b_opts: Any
) -> tuple[Node, Node]:
    a = await make_node("alpha", restic_path=restic_bin)
    b = await make_node("bravo", restic_path=restic_bin, **b_opts)
    await link(a, b, a_gives_b)
    return a, b


async def ops_for(node: Node, request_id: str, kind: str = OpKind.BACKUP) -> list[Any]:
    return await store(node).list_operations(
        OpFilter(origin=node.instance_id, flow_id=request_id, kind=kind)
    )


# -- run -----------------------------------------------------------------------------------


async def test_remote_run_goes_from_queued_to_done_and_b_sees_the_snapshot(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a, b = await two(make_node, restic_bin, ["run:plan:docs", "ops"])
    await with_plan(a, tmp_path)
    seen: list[str] = []
    with b.bus.subscribe("remote") as sub:
        req = await remote(b).request_run("alpha", "docs")
        async with asyncio.timeout(60):
            while not seen or seen[-1] not in ("done", "failed"):
                ev = await sub.get()
                if isinstance(ev, RemoteRequestChanged) and ev.request.id == req.id:
                    if not seen or seen[-1] != ev.request.state:
                        seen.append(ev.request.state)
    assert seen == ["queued", "accepted", "running", "done"]
    done = await remote(b).get_request(req.id)
    # A ran exactly one backup for it, named by the request id, and B holds it, synced.
    (op_a,) = await ops_for(a, req.id)
    assert op_a.status == OpStatus.SUCCESS and op_a.snapshot_id
    assert done.remote_op_id == op_a.op_id and done.snapshot_id == op_a.snapshot_id
    on_b = await store(b).find_operation(op_a.op_id, origin="alpha")
    assert on_b.snapshot_id == op_a.snapshot_id and on_b.flow_id == req.id
    shown = request_record(done)
    assert (
        shown.message == f"done on alpha: operation {op_a.op_id}, snapshot {op_a.snapshot_id[:8]}"
    )
    assert shown.args == {"plan": "docs"} and shown.final is True
    assert [r.id for r in await remote(b).list_requests()] == [req.id]


async def test_refusals_are_said_in_words_where_the_data_lives(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a, b = await two(make_node, restic_bin, ["run:plan:docs,plan:nope,repo:r2"])
    await with_plan(a, tmp_path)
    await with_plan(a, tmp_path, plan="photos")
    assert a.engine
    await a.engine.add_repo(
        "r2", str(tmp_path / "repo2"), PasswordSpec(source="secret", value="pw2"), init=True
    )

    # A plan A has but does not let B run: refused on A, with the reason.
    req = await remote(b).request_run("alpha", "photos")
    assert req.state == "failed"
    assert req.error == "alpha refused: bravo has no 'run' grant for plan 'photos' here"
    # In scope but missing: said so (only to a peer that may run it).
    req = await remote(b).request_run("alpha", "nope")
    assert (
        req.state == "failed" and req.error == "alpha refused: plan 'nope' does not exist on alpha"
    )
    req = await remote(b).request_run("alpha", "secret-plan")
    assert req.error == "alpha refused: bravo has no 'run' grant for plan 'secret-plan' here"
    assert await store(a).list_operations(OpFilter(kind=OpKind.BACKUP)) == []
    # Browsing a repository out of scope, and a peer that gives no 'run' at all.
    with pytest.raises(RemoteError) as refused:
        await remote(b).snapshots("alpha", "r1")
    assert str(refused.value) == "alpha refused: bravo has no 'run' grant for repository 'r1' here"
    assert await remote(b).snapshots("alpha", "r2") == []
    with pytest.raises(RemoteError) as refused:
        await remote(a).snapshots("bravo", "anything")
    assert str(refused.value) == "bravo refused: alpha has no 'run' grant here"
    with pytest.raises(RemoteError, match="'zulu' is not a paired peer"):
        await remote(b).request_run("zulu", "docs")
    # A relative restore target is refused before anything is queued, and by A as well.
    with pytest.raises(RemoteError, match="restore target 'restored' is relative"):
        await remote(b).request_restore("alpha", "r1", "latest", "restored")
    with pytest.raises(CallError) as err:
        await rpc(b).call(
            "alpha",
            "remote.restore",
            {"request_id": "x1", "repo": "r2", "snapshot": "latest", "target": "rel/dir"},
        )
    assert err.value.code == proto.ErrorCode.BAD_REQUEST
    assert "restore target 'rel/dir' is relative" in err.value.message

    # Allowed, but A shares no operations with B: accepted, and the request says why it
    # cannot be followed instead of waiting forever.
    req = await remote(b).request_run("alpha", "docs")
    assert req.state == "accepted" and req.remote_op_id
    assert (req.note or "").startswith(
        f"{NOT_VISIBLE}: alpha gives this node no 'ops' grant for plan 'docs'"
    )
    assert request_record(req).followable is False
    (op_a,) = await ops_for(a, req.id)
    assert (await a.engine.wait(op_a.pk)).status == OpStatus.SUCCESS  # type: ignore[union-attr]
    assert await store(b).list_operations(OpFilter(origin="alpha")) == []
    assert (await remote(b).get_request(req.id)).state == "accepted"


async def test_a_failing_remote_backup_fails_the_request_with_the_reason(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a, b = await two(make_node, restic_bin, ["run", "ops"])
    await with_plan(a, tmp_path)
    assert a.engine
    await a.engine.add_plan("gone", repo_id="r1", paths=[str(tmp_path / "no-such-dir")])
    req = await remote(b).request_run("alpha", "gone")
    failed = await until(b, req.id, "failed", "done")
    (op_a,) = await ops_for(a, req.id)
    assert op_a.status == OpStatus.ERROR and op_a.error
    assert failed.state == "failed"
    assert failed.error == f"the backup on alpha ended error: {op_a.error}"
    assert request_record(failed).message == failed.error


# -- delivery ------------------------------------------------------------------------------


async def test_a_request_to_an_offline_peer_waits_and_runs_when_it_returns(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a, b = await two(make_node, restic_bin, ["run", "ops"])
    await with_plan(a, tmp_path)
    port = port_of(a)
    await a.stop()
    await wait_state(b, "alpha", "offline")
    req = await remote(b).request_run("alpha", "docs")
    assert req.state == "queued"
    assert (
        request_record(req).message
        == offline_note("alpha")
        == ("peer alpha is offline; the request is queued and will be delivered when it comes back")
    )
    with pytest.raises(RemoteError) as offline:
        await remote(b).snapshots("alpha", "r1")
    assert str(offline.value) == (
        "peer alpha is offline (not connected now); try again when it is online"
    )

    a2 = await make_node("alpha", restic_path=restic_bin, listen=f"127.0.0.1:{port}")
    done = await until(b, req.id, "done", "failed")
    assert done.state == "done", done.error
    (op_a,) = await ops_for(a2, req.id)
    assert done.snapshot_id == op_a.snapshot_id


async def test_a_queued_request_survives_a_restart_of_the_asking_node(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a, b = await two(make_node, restic_bin, ["run", "ops"])
    await with_plan(a, tmp_path)
    port = port_of(a)
    await a.stop()
    await wait_state(b, "alpha", "offline")
    req = await remote(b).request_run("alpha", "docs")
    assert req.state == "queued"
    await b.stop()

    a2 = await make_node("alpha", restic_path=restic_bin, listen=f"127.0.0.1:{port}")
    b2 = await make_node("bravo", restic_path=restic_bin)
    done = await until(b2, req.id, "done", "failed")
    assert done.state == "done", done.error
    assert len(await ops_for(a2, req.id)) == 1


async def test_a_lost_accept_is_delivered_again_and_starts_nothing_twice(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    # No 'ops' for B: nothing but the second delivery can tell B that A accepted.
    a, b = await two(make_node, restic_bin, ["run"])
    await with_plan(a, tmp_path)
    method = rpc(a)._methods["remote.run"]
    original = method.handler
    answers: list[dict[str, Any]] = []

    async def drop_first_answer(ctx: CallContext, args: Mapping[str, Any]) -> Any:
        result = await original(ctx, args)  # type: ignore[misc]
        answers.append(result)
        if len(answers) == 1:
            await ctx.link.close("test: the link drops before the answer leaves")
        return result

    method.handler = drop_first_answer
    req = await remote(b).request_run("alpha", "docs")
    # The answer never arrived (the redelivery on reconnect may have been quicker than us).
    assert req.state in ("queued", "accepted")
    accepted = await until(b, req.id, "accepted")
    assert [x["again"] for x in answers] == [False, True]
    assert answers[0]["op_id"] == answers[1]["op_id"] == accepted.remote_op_id
    (first,) = await ops_for(a, req.id)
    # A backup of a plan already queued or running is refused (not stacked), so the next
    # request waits for this one to end.
    assert a.engine
    await a.engine.wait(first.pk)

    # Several deliveries of one id at the same moment: still one operation.
    results = await asyncio.gather(
        *(
            rpc(b).call("alpha", "remote.run", {"request_id": "dup-1", "plan": "docs"})
            for _ in range(4)
        )
    )
    assert len({r["op_id"] for r in results}) == 1
    assert sorted(r["again"] for r in results) == [False, True, True, True]
    assert len(await ops_for(a, "dup-1")) == 1
    # An id already used for another plan is not a way to learn about that plan's backup.
    assert a.engine
    await a.engine.add_plan("other", repo_id="r1", paths=[str(tmp_path)])
    with pytest.raises(CallError) as err:
        await rpc(b).call("alpha", "remote.run", {"request_id": "dup-1", "plan": "other"})
    assert err.value.code == proto.ErrorCode.BAD_REQUEST
    assert err.value.message == "that request id was already used for another request"


async def test_a_request_not_delivered_in_time_times_out_and_never_runs(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a, b = await two(make_node, restic_bin, ["run", "ops"], remote_ttl=0.5)
    await with_plan(a, tmp_path)
    port = port_of(a)
    await a.stop()
    await wait_state(b, "alpha", "offline")
    req = await remote(b).request_run("alpha", "docs")
    assert req.state == "queued"
    gone = await until(b, req.id, "timed out", within=10)
    assert gone.error == (
        "not delivered to alpha within 0.5s (it was offline all that time); "
        "nothing was started there"
    )
    a2 = await make_node("alpha", restic_path=restic_bin, listen=f"127.0.0.1:{port}")
    await wait_state(b, "alpha", "online")
    # A call after the link-up goes out after any delivery the link-up would have made.
    assert len(await remote(b).snapshots("alpha", "r1")) == 0
    assert await store(a2).list_operations(OpFilter(kind=OpKind.BACKUP)) == []
    assert (await remote(b).get_request(req.id)).state == "timed out"


# -- browse and restore --------------------------------------------------------------------


@pytest.mark.parametrize("restic_bin", RESTIC_BUILDS, indirect=True)
async def test_remote_snapshots_and_a_large_listing_stream_fully(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a, b = await two(make_node, restic_bin, ["run:repo:r1"])
    src = await with_plan(a, tmp_path)
    many = src / "many"
    many.mkdir()
    names = {f"n{i:05d}.txt" for i in range(5000)}
    for name in names:
        (many / name).write_text(name)
    assert a.engine
    op = await a.engine.wait((await a.engine.backup("docs")).pk)
    assert op.status == OpStatus.SUCCESS and op.snapshot_id

    snaps = await remote(b).snapshots("alpha", "r1")
    assert len(snaps) == 1 and snaps[0]["id"].startswith(op.snapshot_id)
    assert set(snaps[0]["tags"]) == {"host:alpha", "plan:docs"}
    got: list[str] = []
    async for node in remote(b).ls("alpha", "r1", op.snapshot_id[:8], str(many)):
        got.append(node["path"])
    below = {p.rsplit("/", 1)[1] for p in got if p.startswith(str(many) + "/")}
    assert below == names
    with pytest.raises(RemoteError) as failed:
        async for _ in remote(b).ls("alpha", "r1", "deadbeef"):
            pass
    assert str(failed.value) == "alpha could not do it: snapshot deadbeef was not found in r1"


async def test_remote_restore_restores_real_bytes_on_the_peer(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a, b = await two(make_node, restic_bin, ["run:repo:r1,plan:docs", "ops"])
    src = await with_plan(a, tmp_path)
    run = await until(b, (await remote(b).request_run("alpha", "docs")).id, "done", "failed")
    assert run.state == "done" and run.snapshot_id
    target = tmp_path / "restored-on-alpha"
    req = await remote(b).request_restore(
        "alpha", "r1", run.snapshot_id, str(target), [str(src / "sub")]
    )
    assert req.args == {
        "repo": "r1",
        "snapshot": run.snapshot_id,
        "target": str(target),
        "include": [str(src / "sub")],
    }
    done = await until(b, req.id, "done", "failed")
    assert done.state == "done", done.error
    (op_a,) = await ops_for(a, req.id, OpKind.RESTORE)
    assert op_a.status == OpStatus.SUCCESS
    restored = target / str(src).lstrip("/")
    for f in sorted((src / "sub").iterdir()):
        assert (restored / "sub" / f.name).read_bytes() == f.read_bytes()
    assert not (restored / "big.bin").exists()  # only what was included


# -- the admin API behind the CLI ----------------------------------------------------------


async def test_the_admin_api_queues_a_request_and_follows_it_to_the_end(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a, b = await two(make_node, restic_bin, ["run", "ops"])
    await with_plan(a, tmp_path)
    port = port_of(a)
    await a.stop()
    await wait_state(b, "alpha", "offline")
    connector = aiohttp.UnixConnector(path=str(b.socket_path))
    async with aiohttp.ClientSession(connector=connector) as s:
        async with s.post("http://n/v1/remote/run", json={"peer": "alpha", "plan": "docs"}) as r:
            assert r.status == 202
            req = await r.json()
        assert req["state"] == "queued" and req["message"] == offline_note("alpha")
        async with s.get("http://n/v1/peers/alpha/repos/r1/snapshots") as r:
            assert r.status == 409
            assert await r.json() == {
                "error": "peer alpha is offline (not connected now); try again when it is online"
            }
        body = {"peer": "alpha", "repo": "r1", "snapshot": "latest", "target": "here"}
        async with s.post("http://n/v1/remote/restore", json=body) as r:
            assert r.status == 409
            assert (await r.json())["error"].startswith("restore target 'here' is relative")

        lines: list[dict[str, Any]] = []
        async with s.get(f"http://n/v1/remote/requests/{req['id']}/wait") as r:
            first = json.loads(await r.content.readline())
            assert first["state"] == "queued" and first["op"] is None
            a2 = await make_node("alpha", restic_path=restic_bin, listen=f"127.0.0.1:{port}")
            async with asyncio.timeout(60):
                async for raw in r.content:
                    if raw.strip() != b"{}":
                        lines.append(json.loads(raw))
        last = lines[-1]
        assert last["state"] == "done" and last["final"] is True
        (op_a,) = await ops_for(a2, req["id"])
        assert last["op"]["id"] == op_a.op_id and last["op"]["status"] == "success"
        assert last["snapshot_id"] == op_a.snapshot_id
        assert [x["state"] for x in lines] == sorted(
            (x["state"] for x in lines), key=["queued", "accepted", "running", "done"].index
        )
        async with s.get("http://n/v1/remote/requests") as r:
            assert [x["id"] for x in await r.json()] == [req["id"]]
        async with s.get("http://n/v1/remote/requests/nope") as r:
            assert r.status == 404


async def test_a_listing_that_goes_silent_stops_with_an_error_not_as_complete(
    make_node: MakeNode, restic_bin: str
) -> None:
    a, b = await two(make_node, restic_bin, ["run"])
    remote(b).browse_silence = 0.5
    stuck = asyncio.Event()

    async def listing(ctx: CallContext, args: Mapping[str, Any]) -> Any:
        for i in range(600):
            yield {"path": f"/d/{i}"}
        stuck.set()
        await asyncio.Event().wait()  # restic hangs after 600 entries
        yield {}

    rpc(a)._methods["remote.ls"].handler = listing
    got: list[str] = []
    with pytest.raises(RemoteError) as err:
        async for node in remote(b).ls("alpha", "r1", "latest"):
            got.append(node["path"])
    assert str(err.value) == "alpha sent nothing for 0.5s; the listing stopped"
    assert stuck.is_set() and got == [f"/d/{i}" for i in range(500)]  # one full chunk arrived
