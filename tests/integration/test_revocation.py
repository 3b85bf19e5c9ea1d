"""Removing a peer revokes it: real nodes in one process, real links over loopback, real restic.

An owner O shares a repository with a receiver R; R has a plan on it, a request to O that is
still open, and a copy of O's history. When R removes O, all of that goes from R (the plan is
kept, disabled with the reason), O is told and stops dialing. Waits are on events (link states,
shares, requests, sync); "O dials no more" is measured by another link of O cycling through its
reconnects, not by sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from peerstash.core.engine import PasswordSpec
from peerstash.core.models import Plan, Secret
from peerstash.core.sharing import gone_reason_prefix
from peerstash.core.store import Store, StoreError, repo_record, utcnow
from peerstash.peer.links import channel as ch
from peerstash.peer.links import protocol as proto
from peerstash.peer.links.link import LinkStateChanged
from peerstash.peer.node import Node
from peerstash.peer.services.opsync import OpsSynced
from peerstash.peer.services.remote_commands import ACCEPTED, FAILED, NOT_VISIBLE
from peerstash.peer.trust.identity import Identity
from tests.fixtures.nodes import (
    MakeNode,
    as_row,
    change,
    converge,
    fake_peer,
    held,
    record,
    store_of,
    token_for,
    until,
    wait_state,
)
from tests.fixtures.sharing import PW1, assert_no_secret_in_files, next_shares

ENV_SECRET = "env-Kx93-never-in-clear"
#: What O grants R: its history of plan p1 only (so the backup R asks for stays "accepted",
#: progress not visible: an open request), and running its plan po.
O_GIVES_R = ["ops:plan:p1", "run:plan:po"]


# -- helpers -------------------------------------------------------------------------------


async def pair(o: Node, r: Node, *, r_dials: bool) -> None:
    """O and R paired both ways of granting, with ``r_dials`` choosing who dials."""
    if r_dials:
        assert r.peers and o.peer_url
        await r.peers.pair(await token_for(o, grants=O_GIVES_R), o.peer_url, ["repos.receive"])
    else:
        assert o.peers and r.peer_url
        await o.peers.pair(await token_for(r, grants=["repos.receive"]), r.peer_url, O_GIVES_R)
    await wait_state(o, r.instance_id, "online")
    await wait_state(r, o.instance_id, "online")


async def secret_names(node: Node) -> list[str]:
    """The names in the node's secret store, read from its table directly."""
    async with store_of(node).session() as s:
        return sorted((await s.scalars(select(Secret.name))).all())


def count_authentications(node: Node, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every link that reaches authentication on ``node``'s server (the instance it claims)."""
    assert node.peers
    calls: list[str] = []
    original = node.peers._authenticate

    async def counting(chan: Any, hello: proto.Hello, remote: str) -> Any:
        calls.append(hello.instance_id)
        return await original(chan, hello, remote)

    monkeypatch.setattr(node.peers, "_authenticate", counting)
    return calls


async def reconnect_cycles(node: Node, peer_id: str, n: int = 3) -> None:
    """Drop ``node``'s link to ``peer_id`` ``n`` times and await each reconnect: a window of
    several full dial/backoff cycles of ``node``'s dialers, measured by events."""
    assert node.peers
    with node.bus.subscribe("link") as sub:  # a node just started: its link comes up first
        async with asyncio.timeout(15):
            while peer_id not in node.peers.links:
                await sub.get()
    for _ in range(n):
        with node.bus.subscribe("link") as sub:
            await node.peers.links[peer_id].close("test: another cycle")
            dropped = False
            async with asyncio.timeout(15):
                while True:
                    ev = await sub.get()
                    if not isinstance(ev, LinkStateChanged) or ev.peer_id != peer_id:
                        continue
                    if ev.state != "online":
                        dropped = True
                    elif dropped:
                        break


async def share_and_use(o: Node, r: Node, tmp_path: Path) -> str:
    """O shares r1 (password and an env secret) and has plan po; R gets r1@o and makes plan
    pr on it; O has history R holds; R asks O to run po (stays accepted, not visible).
    Returns the request id."""
    assert o.engine and r.engine and r.remote
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "f.txt").write_text("data\n")
    await o.engine.add_repo(
        "r1",
        str(tmp_path / "repo1"),
        PasswordSpec("secret", value=PW1),
        env={"AWS_SESSION_TOKEN": ENV_SECRET},
        init=True,
    )
    await o.engine.add_plan("po", repo_id="r1", paths=[str(src)])
    got = next_shares(r, "o")
    await o.engine.share_repo("r1")
    assert (await got).added == ["r1@o"]
    await r.engine.add_plan("pr", repo_id="r1@o", paths=[str(src)])
    await change(o)
    await converge(o, r, ["ops:plan:p1"])
    req = await r.remote.request_run("o", "po")
    accepted = await until(r, req.id, ACCEPTED, FAILED)
    assert accepted.state == ACCEPTED and (accepted.note or "").startswith(NOT_VISIBLE)
    names = await secret_names(r)
    assert {"repo/r1@o/password", "repo/r1@o/env/AWS_SESSION_TOKEN"} <= set(names)
    return req.id


async def assert_gone_on(r: Node, request_id: str, *, history_kept: bool) -> None:
    """What came from O is gone from R (or kept, for the history, when asked)."""
    assert r.engine and r.remote
    assert "o" not in {p.id for p in await r.engine.store.list_peers()}
    assert [x.id for x in await r.engine.list_repos()] == []
    assert not [n for n in await secret_names(r) if n.startswith("repo/r1@o/")]
    plan = await r.engine.store.get_plan("pr")
    assert not plan.enabled
    assert plan.disabled_reason == "repository r1@o is gone: peer o was removed"
    req = await r.remote.get_request(request_id)
    assert req.state == FAILED and "peer o was removed" in (req.error or "")
    history = await held(r, "o")
    assert bool(history) is history_kept
    assert_no_secret_in_files(r, PW1, ENV_SECRET)


# -- removing a peer -----------------------------------------------------------------------


@pytest.mark.parametrize("r_dials", [False, True], ids=["removed-one-dials", "remover-dials"])
async def test_removing_a_peer_removes_what_came_from_it_and_tells_it(
    make_node: MakeNode,
    restic_bin: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    r_dials: bool,
) -> None:
    o = await make_node("o", restic_path=restic_bin)
    r = await make_node("r", restic_path=restic_bin)
    await pair(o, r, r_dials=r_dials)
    request_id = await share_and_use(o, r, tmp_path)
    assert r.peers and o.peers and o.engine and r.engine
    # A share of O's whose row never made it (applied while O was being removed), and secrets
    # that are not O's business.
    for name in ("repo/ghost@o/password", "repo/mine/password", "repo/keep@other/password"):
        await r.engine.secrets.put(name, "x")
    dials = count_authentications(r, monkeypatch)

    await r.peers.remove("o")

    await assert_gone_on(r, request_id, history_kept=False)
    assert await secret_names(r) == ["repo/keep@other/password", "repo/mine/password"]
    # O is told on the live link, and shows it.
    await wait_state(o, "r", "auth failed")
    shown = await o.engine.store.get_peer("r")
    assert (shown.state, shown.state_reason) == ("auth failed", "removed by r")
    if r_dials:
        # O (which R dialed) keeps showing it, also after a restart.
        assert "r" not in o.peers.links
        await o.stop()
        o2 = await make_node("o", restic_path=restic_bin)
        assert o2.engine
        again = await o2.engine.store.get_peer("r")
        assert (again.state, again.state_reason) == ("auth failed", "removed by r")
        return
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(o.socket_path))) as s,
        s.post("http://node/v1/peers/r/check") as resp,
    ):
        checked = await resp.json()
    assert checked["state_reason"] == "removed by r"
    assert checked["message"].startswith("r removed this node, so it is not dialed again")
    # O (the dialer) dials no more, even woken or asked: over several reconnect cycles of
    # another link of O's, R's server sees no attempt.
    c = await make_node("c")
    assert c.peer_url
    await o.peers.pair(await token_for(c), c.peer_url, [])
    await wait_state(o, "c", "online")
    o.peers.wake_all()
    o.peers.check_now("r")
    await reconnect_cycles(o, "c")
    assert dials == []
    assert (await o.engine.store.get_peer("r")).state_reason == "removed by r"


async def test_the_owner_removing_the_receiver_removes_what_came_from_the_receiver(
    make_node: MakeNode, restic_bin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other side of the removal: O, which shares a repository with R and holds R's
    history, removes R. What came from R goes from O (its history, O's open request to it);
    what is O's own (its repository, its password) stays; R is told and stops dialing."""
    o = await make_node("o", restic_path=restic_bin)
    r = await make_node("r", restic_path=restic_bin)
    assert o.peers and o.engine and r.engine and o.remote and r.peer_url
    # R gives O its history and lets O run its plan pr; O gives R nothing but a share.
    await o.peers.pair(
        await token_for(r, grants=["ops:plan:p1", "run:plan:pr", "repos.receive"]),
        r.peer_url,
        [],
    )
    await wait_state(o, "r", "online")
    await wait_state(r, "o", "online")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("data\n")
    await o.engine.add_repo(
        "r1", str(tmp_path / "repo1"), PasswordSpec("secret", value=PW1), init=True
    )
    got = next_shares(r, "o")
    await o.engine.share_repo("r1")
    assert (await got).added == ["r1@o"]
    await r.engine.add_plan("pr", repo_id="r1@o", paths=[str(src)])
    await change(r)
    assert len(await converge(r, o, ["ops:plan:p1"])) == 1
    req = await o.remote.request_run("r", "pr")
    accepted = await until(o, req.id, ACCEPTED, FAILED)
    assert accepted.state == ACCEPTED  # open: its progress is not visible to O
    dials = count_authentications(o, monkeypatch)

    await o.peers.remove("r")

    assert "r" not in {p.id for p in await o.engine.store.list_peers()}
    assert await held(o, "r") == {}
    ended = await o.remote.get_request(req.id)
    assert ended.state == FAILED and "peer r was removed" in (ended.error or "")
    assert [x.id for x in await o.engine.list_repos()] == ["r1"]  # O's own stays
    assert "repo/r1/password" in await secret_names(o)
    # R is told, shows it, and dials no more (R dialed nobody: O dialed it; R answers only).
    await wait_state(r, "o", "auth failed")
    assert (await r.engine.store.get_peer("o")).state_reason == "removed by o"
    assert dials == []


async def test_remove_with_keep_history_over_the_admin_api_keeps_only_the_history(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    o = await make_node("o", restic_path=restic_bin)
    r = await make_node("r", restic_path=restic_bin)
    await pair(o, r, r_dials=False)
    request_id = await share_and_use(o, r, tmp_path)
    before = await held(r, "o")
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(r.socket_path))) as s:
        async with s.delete("http://node/v1/peers/o?keep_history=1") as resp:
            assert resp.status == 200
            assert await resp.json() == {"removed": "o", "kept_history": True}
        async with s.delete("http://node/v1/peers/o") as resp:
            assert resp.status == 404  # said once: it is gone
    await assert_gone_on(r, request_id, history_kept=True)
    assert await held(r, "o") == before
    await wait_state(o, "r", "auth failed")

    # Paired again (a new token) and shared again: the plan the removal disabled runs again.
    assert o.peers and r.peer_url and r.engine
    got = next_shares(r, "o")
    await o.peers.pair(await token_for(r, grants=["repos.receive"]), r.peer_url, O_GIVES_R)
    back = await got
    assert back.added == ["r1@o"] and back.enabled_plans == ["pr"]
    plan = await r.engine.store.get_plan("pr")
    assert (plan.enabled, plan.disabled_reason) == (True, None)


async def test_a_peer_removed_while_offline_is_refused_on_its_next_dial(
    make_node: MakeNode, restic_bin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    o = await make_node("o", restic_path=restic_bin)
    r = await make_node("r", restic_path=restic_bin)
    await pair(o, r, r_dials=False)
    assert o.identity and r.engine
    o_identity = o.identity
    await o.stop()
    await wait_state(r, "o", "offline")
    assert r.peers
    await r.peers.remove("o")
    dials = count_authentications(r, monkeypatch)

    # O comes back and dials: refused as removed, it says so and stops.
    o2 = await make_node("o", restic_path=restic_bin)
    assert o2.engine and o2.peers
    await wait_state(o2, "r", "auth failed")
    assert (await o2.engine.store.get_peer("r")).state_reason == "removed by r"
    assert dials == ["o"]
    c = await make_node("c")
    assert c.peer_url
    await o2.peers.pair(await token_for(c), c.peer_url, [])
    await wait_state(o2, "c", "online")
    o2.peers.wake_all()
    await reconnect_cycles(o2, "c")
    assert dials == ["o"]
    # ... also after another restart.
    await o2.stop()
    o3 = await make_node("o", restic_path=restic_bin)
    await reconnect_cycles(o3, "c")
    assert dials == ["o"]

    # Hostile: O's key dialing by hand, ignoring the refusal, gets nothing stored.
    assert r.peer_url and r.identity
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(r.peer_url + "/v1/sync", max_msg_size=ch.WS_MAX_MSG_SIZE) as ws,
    ):
        send, recv = ch.websocket_transport(ws)
        chan = await ch.initiate(o_identity, send, recv, expected_public_key=r.identity.public_key)
        await chan.send_msg(proto.Hello(instance_id="o", grants=("ops:*",)))
        reply = await asyncio.wait_for(chan.recv_msg(), 5)
        assert reply == proto.Error(code=proto.ErrorCode.REVOKED, message="removed by r")
        with pytest.raises((ch.ChannelError, proto.ProtocolError)):
            await chan.send_msg(proto.OpsBatch(origin="o", ops=(record(),), done=True))
            await asyncio.wait_for(chan.recv_msg(), 5)
    # Even under another name: the key is what was removed.
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(r.peer_url + "/v1/sync", max_msg_size=ch.WS_MAX_MSG_SIZE) as ws,
    ):
        send, recv = ch.websocket_transport(ws)
        chan = await ch.initiate(o_identity, send, recv, expected_public_key=r.identity.public_key)
        await chan.send_msg(proto.Hello(instance_id="o-renamed"))
        reply = await asyncio.wait_for(chan.recv_msg(), 5)
        assert isinstance(reply, proto.Error) and reply.code == proto.ErrorCode.REVOKED
    assert await r.engine.store.list_peers() == []
    assert await r.engine.store.list_operations(limit=10) == []


async def test_re_pairing_a_removed_peer_with_a_new_token_works(make_node: MakeNode) -> None:
    o, r = await make_node("o"), await make_node("r")
    await pair(o, r, r_dials=False)
    assert r.peers and o.peers and r.peer_url
    await r.peers.remove("o")
    await wait_state(o, "r", "auth failed")
    await o.peers.pair(await token_for(r, grants=["repos.receive"]), r.peer_url, [])
    await wait_state(o, "r", "online")
    await wait_state(r, "o", "online")


# -- re-sharing re-enables only what unsharing disabled -------------------------------------


async def test_re_share_re_enables_only_the_plans_the_unshare_disabled(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    o = await make_node("o", restic_path=restic_bin)
    r = await make_node("r", restic_path=restic_bin)
    await pair(o, r, r_dials=False)
    assert o.engine and r.engine
    for name in ("r1", "r2"):
        await o.engine.add_repo(
            name, str(tmp_path / name), PasswordSpec("secret", value=PW1 + name), init=True
        )
    got = next_shares(r, "o")
    await o.engine.share_repo("r1")
    await got
    got = next_shares(r, "o")
    await o.engine.share_repo("r2")
    await got
    paths = [str(tmp_path)]
    await r.engine.add_plan("follows", repo_id="r1@o", paths=paths)
    await r.engine.add_plan("user-off", repo_id="r1@o", paths=paths)
    await r.engine.update_plan("user-off", enabled=False)
    await r.engine.add_plan("confirmed-off", repo_id="r2@o", paths=paths)

    got = next_shares(r, "o")
    await o.engine.unshare_repo("r1")
    assert (await got).disabled_plans == ["follows"]  # user-off was off already
    got = next_shares(r, "o")
    await o.engine.unshare_repo("r2")
    assert (await got).disabled_plans == ["confirmed-off"]
    # A person looks at the disabled plan and keeps it off: their decision, not the unshare's.
    await r.engine.update_plan("confirmed-off", enabled=False)

    got = next_shares(r, "o")
    await o.engine.share_repo("r1")
    back = await got
    assert back.added == ["r1@o"] and back.enabled_plans == ["follows"]
    got = next_shares(r, "o")
    await o.engine.share_repo("r2")
    assert (await got).enabled_plans == []
    plans = {p.id: p for p in await r.engine.list_plans()}
    assert (plans["follows"].enabled, plans["follows"].disabled_reason) == (True, None)
    assert not plans["user-off"].enabled and not plans["confirmed-off"].enabled


# -- a peer's history is bounded here ------------------------------------------------------


def _ago(days: float) -> str:
    text = Store.sync_time(utcnow() - timedelta(days=days))
    assert text
    return text


async def test_a_hostile_peer_flooding_history_keeps_at_most_the_cap(make_node: MakeNode) -> None:
    r = await make_node("r")
    assert r.engine
    store = r.engine.store
    await store.set_setting("peer_history_max_ops", 50)
    mallory = Identity.generate()
    token = await token_for(r, grants=["ops"])
    # Three plans that ran once, long ago; then a flood of one busy plan, newest last.
    lonely = [record(modno=i + 1, plan_id=f"lonely{i}", created_at=_ago(30 + i)) for i in range(3)]
    busy = [
        record(modno=10 + i, plan_id="busy", created_at=_ago(20 - i * 0.01)) for i in range(150)
    ]

    def stored_from(sub: Any) -> Callable[[], Awaitable[OpsSynced]]:
        async def wait() -> OpsSynced:
            async with asyncio.timeout(10):
                while True:
                    ev = await sub.get()
                    if isinstance(ev, OpsSynced) and ev.peer_id == "m" and ev.stored:
                        return ev

        return wait

    async with fake_peer(r, mallory, "m", token) as chan:
        with r.bus.subscribe("sync") as sub:
            await chan.send_msg(proto.OpsBatch(origin="m", ops=(*lonely, *busy[:100]), done=False))
            first = await stored_from(sub)()
            assert first.stored == 103 and first.deleted == 58  # down to 90% of the cap
            await chan.send_msg(proto.OpsBatch(origin="m", ops=tuple(busy[100:]), done=True))
            second = await stored_from(sub)()
            assert second.stored == 50 and second.deleted == 50
    kept = set(await held(r, "m"))
    assert len(kept) == 45
    # The latest of each plan, then the newest.
    want = {x.op_id for x in lonely} | {x.op_id for x in busy[-42:]}
    assert kept == want


async def test_daily_gc_ages_and_caps_peer_copies(make_node: MakeNode) -> None:
    """The daily gc applies the settings to what is already here (e.g. after lowering them)."""
    o, r = await make_node("o"), await make_node("r")
    await pair(o, r, r_dials=False)
    for _ in range(12):
        await change(o, plan="p1")
    await change(o, plan="p2")
    await converge(o, r, ["ops:plan:p1"])
    assert r.engine
    assert len(await held(r, "o")) == 12
    await r.engine.store.set_setting("peer_history_max_ops", 5)
    with r.bus.subscribe("operations-deleted") as sub:
        assert await r.engine.gc() == 7
        ev = await asyncio.wait_for(sub.get(), 5)
        assert ev.origin == "o" and len(ev.ops) == 7
    p1 = sorted((row[7], k) for k, row in (await held(o, "o")).items() if row[5] == "p1")
    assert set(await held(r, "o")) == {k for _, k in p1[-5:]}
    # O's own history is never touched by the cap on copies.
    assert len(await held(o, "o")) == 13


async def test_store_trims_a_peer_copy_by_age_and_count_on_both_backends(bare_store: Store) -> None:
    store = bare_store
    old_done = [record(modno=i + 1, plan_id="p", created_at=_ago(200 + i)) for i in range(4)]
    old_running = record(modno=10, plan_id="p", status="running", created_at=_ago(300))
    old_lonely = record(modno=11, plan_id="once", created_at=_ago(400))
    fresh = [record(modno=20 + i, plan_id="p", created_at=_ago(1 + i * 0.1)) for i in range(3)]
    everything = [*old_done, old_running, old_lonely, *fresh]
    await store.upsert_remote_ops("x", [as_row(x) for x in everything])
    await store.upsert_remote_ops("y", [as_row(x) for x in everything])
    # Age: the old finished ones go, except the newest keep_min, the latest of each plan and
    # what is still running.
    gone = await store.trim_peer_ops("x", older_than=timedelta(days=90), max_ops=1000, keep_min=4)
    assert {g.op_id for g in gone} == {x.op_id for x in old_done[1:]}
    assert {g.plan_id for g in gone} == {"p"}
    left = {r[0] for r in await store.ops_since("x", 0, 100)}
    assert left == {x.op_id for x in (*fresh, old_done[0], old_running, old_lonely)}
    # Count: the latest of each (plan, kind) first, then the newest; running ones get no
    # privilege here (a flood of "running" operations must not escape the cap).
    gone = await store.trim_peer_ops("x", older_than=timedelta(days=90), max_ops=3, keep_min=4)
    left = {r[0] for r in await store.ops_since("x", 0, 100)}
    assert {g.op_id for g in gone} == {x.op_id for x in (fresh[2], old_done[0], old_running)}
    assert left == {fresh[0].op_id, old_lonely.op_id, fresh[1].op_id}
    # Another origin is not touched, nor our own history.
    assert await store.count_ops("y") == len(everything)
    with pytest.raises(StoreError, match="another instance"):
        await store.trim_peer_ops("me", older_than=timedelta(days=1), max_ops=1)
    assert await store.peer_origins() == ["x", "y"]


async def test_store_secret_names_and_reenable_plans_on_both_backends(bare_store: Store) -> None:
    store = bare_store
    for name in ("repo/a@x/password", "repo/a@x/env/K", "repo/b/password", "other/repo/c"):
        await store.put_secret(name, b"sealed")
    assert await store.secret_names("repo/") == [
        "repo/a@x/env/K",
        "repo/a@x/password",
        "repo/b/password",
    ]
    assert await store.secret_names("repo/a@x/") == ["repo/a@x/env/K", "repo/a@x/password"]
    now = utcnow()
    received = repo_record("a@x", "/r", "secret")
    received.origin = "x"
    await store.add_repo(received)
    for plan_id in ("gone", "person", "other"):
        await store.add_plan(
            Plan(
                id=plan_id,
                repo_id="a@x",
                paths=["/"],
                excludes=[],
                retention={},
                enabled=True,
                created_at=now,
                updated_at=now,
            )
        )
    await store.update_plan("person", enabled=False, disabled_reason=None)
    await store.update_plan("other", enabled=False, disabled_reason="repository b was unshared")
    assert await store.remove_unshared_repo("a@x", "repository a@x was unshared by x") == ["gone"]
    back = repo_record("a@x", "/r", "secret")
    back.origin = "x"
    await store.add_repo(back)
    assert await store.reenable_plans("a@x", gone_reason_prefix("a@x")) == ["gone"]
    plans = {p.id: p for p in await store.list_plans()}
    assert (plans["gone"].enabled, plans["gone"].disabled_reason) == (True, None)
    assert not plans["person"].enabled and not plans["other"].enabled
