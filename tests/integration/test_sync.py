"""Operation history sync between real nodes in one process (real stores, real links).

Each test pairs nodes the way people do (B dials A with a token A made, carrying the grants A
gives B) and awaits events; nothing sleeps. "Converged" always means: B holds exactly the
operations A lets it see, field for field, and nothing else of A's.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, update

from peerstash.core.engine import PasswordSpec
from peerstash.core.events import OperationChanged
from peerstash.core.ids import new_ulid
from peerstash.core.models import Operation, OpStatus
from peerstash.core.store import OpFilter, Store, StoreError, utcnow
from peerstash.peer.links import channel as ch
from peerstash.peer.links import protocol as proto
from peerstash.peer.links.link import LinkStateChanged
from peerstash.peer.node import Node
from peerstash.peer.services.opsync import OpsSynced
from peerstash.peer.trust.identity import Identity
from tests.fixtures.nodes import (
    MakeNode,
    as_row,
    change,
    converge,
    fake_peer,
    held,
    link,
    norm_row,
    owned,
    record,
    seed,
    store_of,
    token_for,
)

# -- helpers -------------------------------------------------------------------------------


def in_sync(node: Node, peer_id: str, within: float = 15) -> Awaitable[None]:
    """The next digest match on ``node`` for ``peer_id``'s operations, from this call on
    (subscribed at once, so nothing that happens after the call is missed)."""
    sub = node.bus.subscribe("sync")

    async def wait() -> None:
        with sub:
            async with asyncio.timeout(within):
                while True:
                    ev = await sub.get()
                    if isinstance(ev, OpsSynced) and ev.peer_id == peer_id and ev.in_sync:
                        return

    return wait()


# -- live sync of a real backup ------------------------------------------------------------


async def test_real_backup_on_a_shows_on_b_within_a_second(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    await link(a, b, ["ops"])
    assert a.engine and b.engine
    src = tmp_path / "src"
    src.mkdir()
    (src / "file.txt").write_text("hello fleet\n")
    await a.engine.add_repo(
        "r1", str(tmp_path / "repo"), PasswordSpec(source="secret", value="pw"), init=True
    )
    await a.engine.add_plan("p1", repo_id="r1", paths=[str(src)])

    seen_on_a: dict[str, float] = {}
    seen_on_b: dict[str, float] = {}
    with a.bus.subscribe("operation") as sub_a, b.bus.subscribe("operation") as sub_b:
        op = await a.engine.backup("p1")
        final = await a.engine.wait(op.pk)
        assert final.status == OpStatus.SUCCESS and final.snapshot_id
        while not sub_a.queue.empty():
            ev = sub_a.queue.get_nowait()
            if isinstance(ev, OperationChanged) and ev.op.op_id == op.op_id:
                seen_on_a[ev.op.status] = time.monotonic()
        async with asyncio.timeout(5):
            while "success" not in seen_on_b:
                ev = await sub_b.get()
                if isinstance(ev, OperationChanged) and ev.op.op_id == op.op_id:
                    assert ev.op.origin == "a"
                    seen_on_b.setdefault(ev.op.status, time.monotonic())
    on_b = await b.engine.store.find_operation(op.op_id, origin="a")
    assert on_b.status == "success" and on_b.snapshot_id == final.snapshot_id
    assert on_b.summary == final.summary
    assert seen_on_b["success"] - seen_on_a["success"] < 1.0
    # Shown with its origin, filterable, and read-only on B.
    listed = await b.engine.list_operations(OpFilter(origin="a"))
    assert [o.op_id for o in listed] == [op.op_id]
    with pytest.raises(StoreError, match="read-only"):
        await b.engine.store.update_operation(on_b.pk, status="error")
    assert await converge(a, b)


# -- restart and convergence ---------------------------------------------------------------


async def test_b_restarts_after_changes_and_deletions_and_converges(make_node: MakeNode) -> None:
    a, b = await make_node("a"), await make_node("b")
    await link(a, b, ["ops"])
    ops = [await change(a, plan=f"p{i % 3}") for i in range(12)]
    for op in ops[:8]:
        await change(a, op.pk, status=OpStatus.SUCCESS, ended_at=utcnow(), snapshot_id="s" * 64)
    await converge(a, b)

    await b.stop()
    more = [await change(a, plan="p1") for _ in range(3)]
    for op in more:
        await change(a, op.pk, status=OpStatus.RUNNING, started_at=utcnow(), bytes_done=5)
        await change(a, op.pk, status=OpStatus.SUCCESS, ended_at=utcnow(), snapshot_id="t" * 64)
    # Age the first five and collect them while B is away: the digest on reconnect finds them.
    store = store_of(a)
    async with store.session() as s, s.begin():
        await s.execute(
            update(Operation)
            .where(Operation.pk.in_([o.pk for o in ops[:5]]))
            .values(created_at=utcnow() - timedelta(days=400))
        )
    assert a.engine
    assert await a.engine.gc(older_than=timedelta(days=90), keep_min=0) == 5

    b2 = await make_node("b")
    have = await converge(a, b2)
    assert len(have) == 12 + 3 - 5
    assert not {o.op_id for o in ops[:5]} & set(have)
    rows = await store_of(b2).ops_since("a", 0, 10**9)
    assert len(rows) == len({r[0] for r in rows})  # no duplicates
    assert {r[0] for r in rows} == set(await owned(a))


async def test_gc_on_the_owner_removes_the_copies_live(make_node: MakeNode) -> None:
    a, b = await make_node("a"), await make_node("b")
    await link(a, b, ["ops:repo:r1"])
    ops = [await change(a, repo="r1" if i % 3 else "r2", plan=f"p{i % 2}") for i in range(9)]
    for op in ops:
        await change(a, op.pk, status=OpStatus.SUCCESS, ended_at=utcnow())
    await converge(a, b, ["ops:repo:r1"])
    store = store_of(a)
    old = [o.pk for o in ops[:6]]
    async with store.session() as s, s.begin():
        await s.execute(
            update(Operation)
            .where(Operation.pk.in_(old))
            .values(created_at=utcnow() - timedelta(days=400))
        )
    before = set(await held(b, "a"))
    with b.bus.subscribe("sync") as sub:
        assert a.engine
        removed = await a.engine.gc(older_than=timedelta(days=90), keep_min=0)
        assert removed > 0
        async with asyncio.timeout(5):
            while True:
                ev = await sub.get()
                if isinstance(ev, OpsSynced) and ev.deleted:
                    break
    # No reconnect, no digest round: the deletion itself reached B.
    assert ev.peer_id == "a" and ev.in_sync is None
    now = await held(b, "a")
    assert now == await owned(a, ["ops:repo:r1"])
    assert len(before) - len(now) == ev.deleted > 0


async def test_reconnect_with_nothing_changed_costs_under_2kb(
    make_node: MakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await make_node("a"), await make_node("b")
    await seed(a, 10_000)
    await link(a, b, ["ops"])
    await converge(a, b, within=30)

    sent: list[int] = []
    original = ch.SecureChannel.send

    async def counting(self: ch.SecureChannel, data: bytes) -> None:
        if not isinstance(proto.decode(data), proto.Heartbeat):
            # What the socket carries: counter + AEAD tag around the message, plus the
            # WebSocket header (2 bytes, +2 for 126..65535 bytes, +4 mask from the client).
            size = len(data) + ch.FRAME_OVERHEAD
            sent.append(size + (4 if size < 126 else 6) + 4)
        await original(self, data)

    monkeypatch.setattr(ch.SecureChannel, "send", counting)
    assert a.peers
    both = asyncio.gather(in_sync(b, "a"), in_sync(a, "b"))
    await a.peers.links["b"].close("test: drop the link")
    await both
    monkeypatch.undo()
    total = sum(sent)
    print(f"reconnect sync bytes: {total} in {len(sent)} frames")
    assert total < 2048, (total, sent)


async def test_reconnect_while_an_operation_keeps_changing_needs_no_repair(
    make_node: MakeNode,
) -> None:
    a, b = await make_node("a"), await make_node("b")
    await seed(a, 2000)
    await link(a, b, ["ops"])
    await converge(a, b)
    busy = await change(a, status=OpStatus.RUNNING)
    stop = asyncio.Event()

    async def keep_changing() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            await change(a, busy.pk, bytes_done=n)

    worker = asyncio.create_task(keep_changing())
    try:
        with b.bus.subscribe("sync") as sub:
            settled = in_sync(b, "a")
            assert a.peers
            await a.peers.links["b"].close("test: drop while busy")
            await settled
            verdicts = [ev.in_sync for ev in list(sub.queue._queue) if isinstance(ev, OpsSynced)]  # type: ignore[attr-defined]
        assert False not in verdicts  # the digest matched at once: no manifest exchange
    finally:
        stop.set()
        await worker
    await change(a, busy.pk, status=OpStatus.SUCCESS, ended_at=utcnow())
    await converge(a, b)


# -- grants --------------------------------------------------------------------------------


async def test_scope_limits_what_arrives_and_a_grant_change_removes_it(make_node: MakeNode) -> None:
    a, b = await make_node("a"), await make_node("b")
    scoped = ["ops:repo:r1"]
    await link(a, b, scoped)
    assert a.sync and a.engine
    for i in range(6):
        await change(a, repo=f"r{1 + i % 2}")
    have = await converge(a, b, scoped)
    assert {r[6] for r in have.values()} == {"r1"} and len(have) == 3

    # Live: an r2 change never arrives; the r1 change right after it does.
    hidden = await change(a, repo="r2")
    shown = await change(a, repo="r1")
    have = await converge(a, b, scoped)
    assert shown.op_id in have and hidden.op_id not in have

    # Widen (as `peerstash peer grant` does: the link restarts with the new grants): the r2
    # history arrives (its modnos are below B's mark: the repair finds them).
    assert a.peers
    await a.peers.set_grants("b", ["ops:*"])
    have = await converge(a, b, ["ops:*"])
    assert {r[6] for r in have.values()} == {"r1", "r2"}

    # Narrow to one plan, then revoke: what falls out of scope is removed on B.
    await a.peers.set_grants("b", ["ops:repo:r2,!plan:p1"])
    await converge(a, b, ["ops:repo:r2,!plan:p1"])
    # (B may hold nothing already: wait for the restarted link, then for its sync.)
    with a.bus.subscribe("link") as sub:
        await a.peers.set_grants("b", [])
        async with asyncio.timeout(15):
            while True:
                ev = await sub.get()
                if isinstance(ev, LinkStateChanged) and (ev.peer_id, ev.state) == ("b", "online"):
                    break
    assert await converge(a, b, []) == {}

    # And the next connect applies the grants too (nothing comes back).
    settled = in_sync(b, "a")
    await a.peers.links["b"].close("test: drop")
    await settled
    assert await held(b, "a") == {}


async def test_sync_runs_both_ways_each_with_its_own_grant(make_node: MakeNode) -> None:
    a, b = await make_node("a"), await make_node("b")
    await link(a, b, ["ops"], ["ops:repo:x"])
    for _ in range(3):
        await change(a)
        await change(b, repo="x")
        await change(b, repo="y")
    await converge(a, b)
    have = await converge(b, a, ["ops:repo:x"])
    assert len(have) == 3
    # Nobody ever stores its own operations as someone else's.
    assert await held(a, "a") == await owned(a)


# -- a malicious peer ----------------------------------------------------------------------


async def refused(chan: ch.SecureChannel, msg: proto.Message) -> None:
    """Send ``msg`` and expect a FORBIDDEN error, then the end of the link."""
    await chan.send_msg(msg)
    async with asyncio.timeout(5):
        while True:
            reply = await chan.recv_msg()
            if isinstance(reply, proto.Error):
                assert reply.code == proto.ErrorCode.FORBIDDEN
                break
        with pytest.raises((ch.ChannelError, proto.ProtocolError)):
            while True:
                if isinstance(await chan.recv_msg(), proto.Close):
                    raise ch.ChannelClosedError("closed by the node")


async def test_malicious_peer_is_refused_and_nothing_is_stored(make_node: MakeNode) -> None:
    a, b = await make_node("a"), await make_node("b")
    await link(a, b, ["ops"])
    theirs = await change(a)
    await converge(a, b)
    assert b.engine
    mallory = Identity.generate()
    token = await token_for(b, grants=["ops"])

    # Operations claiming another peer's origin (A's), and B's own.
    async with fake_peer(b, mallory, "m", token) as chan:
        await refused(chan, proto.OpsBatch(origin="a", ops=(record(),), done=True))
    async with fake_peer(b, mallory, "m") as chan:
        await refused(chan, proto.OpsBatch(origin="b", ops=(record(),), done=True))
    # Deleting A's operations on B, or a digest that would make B repair A's copy.
    async with fake_peer(b, mallory, "m") as chan:
        await refused(chan, proto.OpsDeleted(origin="a", op_ids=(theirs.op_id,)))
    async with fake_peer(b, mallory, "m") as chan:
        await refused(chan, proto.OpsDigest(origin="a", count=0, hash=0))
    # A manifest about operations that are not B's.
    async with fake_peer(b, mallory, "m") as chan:
        await refused(chan, proto.OpsManifest(origin="a", op_ids=(theirs.op_id,), modnos=(1,)))
    ops = await b.engine.store.list_operations(limit=1000)
    assert {(o.origin, o.op_id) for o in ops} == {("a", theirs.op_id)}
    assert await held(b, "a") == await owned(a)

    # Its own operations are its business: accepted, but records B cannot store are skipped.
    mine = record(modno=3)
    odd = record(modno=4, status="exploded")
    deep = record(modno=5, summary="[" * 50 + "]" * 50)
    async with fake_peer(b, mallory, "m") as chan:
        with b.bus.subscribe("sync") as sub:
            await chan.send_msg(proto.OpsBatch(origin="m", ops=(mine, odd, deep), done=True))
            async with asyncio.timeout(5):
                while not isinstance(await sub.get(), OpsSynced):
                    pass
    got = {o.op_id: o for o in await b.engine.list_operations(OpFilter(origin="m"))}
    assert set(got) == {mine.op_id, deep.op_id}
    assert got[deep.op_id].summary == {}  # not an object: replaced, never stored as is


# -- randomized convergence ----------------------------------------------------------------


@pytest.mark.parametrize("seed_value", [1, 2, 3])
async def test_randomized_convergence_with_dropped_links(
    make_node: MakeNode, seed_value: int
) -> None:
    rng = random.Random(seed_value)
    a, b = await make_node("a"), await make_node("b")
    a_gives = ["ops:*,!repo:r3"]
    b_gives = ["ops:plan:p1,plan:p2"]
    await link(a, b, a_gives, b_gives)
    nodes = {"a": a, "b": b}
    live: dict[str, list[int]] = {"a": [], "b": []}
    drops = 0

    def pick(name: str) -> int | None:
        return rng.choice(live[name]) if live[name] else None

    actions: list[Callable[[str], Any]] = []

    async def create(name: str) -> None:
        op = await change(
            nodes[name], repo=rng.choice(["r1", "r2", "r3"]), plan=rng.choice(["p1", "p2", None])
        )
        live[name].append(op.pk)

    async def progress(name: str) -> None:
        if (pk := pick(name)) is not None:
            await change(nodes[name], pk, status=OpStatus.RUNNING, bytes_done=rng.randint(0, 10**9))

    async def finish(name: str) -> None:
        if (pk := pick(name)) is not None:
            await change(
                nodes[name],
                pk,
                status=rng.choice([OpStatus.SUCCESS, OpStatus.ERROR, OpStatus.WARNING]),
                ended_at=utcnow(),
                snapshot_id=new_ulid(),
            )

    async def forget(name: str) -> None:
        # What the owner's garbage collection does to one operation (gc itself also collects
        # other nodes' copies, which would only add repairs here).
        if (pk := pick(name)) is not None:
            live[name].remove(pk)
            store = store_of(nodes[name])
            async with store.session() as s, s.begin():
                await s.execute(delete(Operation).where(Operation.pk == pk))

    async def drop(name: str) -> None:
        nonlocal drops
        other = "b" if name == "a" else "a"
        peers = nodes[name].peers
        assert peers
        current = peers.links.get(other)
        if current is not None:
            drops += 1
            await current.close("test: random drop")

    actions = [create] * 5 + [progress] * 4 + [finish] * 3 + [forget] + [drop]
    for _ in range(300):
        await rng.choice(actions)(rng.choice(["a", "b"]))
    assert drops > 0
    # Deletions are not pushed live: one more reconnect lets the digests find them.
    settled = asyncio.gather(in_sync(b, "a"), in_sync(a, "b"))
    await drop("a")
    await settled
    await converge(a, b, a_gives, within=30)
    await converge(b, a, b_gives, within=30)
    # Sets are compared field for field; also none of the nodes holds a duplicate.
    for node, origin in ((b, "a"), (a, "b")):
        rows = await store_of(node).ops_since(origin, 0, 10**9)
        assert len(rows) == len({r[0] for r in rows})


# -- store level ---------------------------------------------------------------------------


async def test_store_sync_methods_on_both_backends(bare_store: Store) -> None:
    store = bare_store
    rec = record(
        modno=5,
        status="running",
        started_at=Store.sync_time(utcnow()),
        summary=json.dumps({"files_new": 3, "groups": [{"paths": ["/a"]}], "é": 1.5}),
        error="x" * 10,
    )
    row = as_row(rec)
    await store.upsert_remote_ops("x", [row])
    # Read back in exactly the wire form, whatever the backend.
    [back] = await store.ops_since("x", 0, 10)
    assert norm_row(back) == norm_row(row)
    older = (*row[:1], 4, *row[2:4], "success", *row[5:])
    await store.upsert_remote_ops("x", [older])
    assert (await store.find_operation(rec.op_id, "x")).status == "running"
    newer = (*row[:1], 6, *row[2:4], "success", *row[5:])
    await store.upsert_remote_ops("x", [newer])
    op = await store.find_operation(rec.op_id, "x")
    assert op.status == "success" and op.summary["groups"] == [{"paths": ["/a"]}]
    assert op.started_at == Store.sync_time_parse(rec.started_at)
    assert await store.max_modno("x") == 6
    others = [as_row(record(modno=10 + i, repo_id=f"r{i % 2}")) for i in range(600)]
    await store.upsert_remote_ops("x", others)
    assert len(await store.ops_by_ids("x", [r[0] for r in others] + ["nope"])) == 600
    versions = await store.op_versions("x", lambda repo, plan: repo == "r1")
    assert len(versions) == 300 + 1  # the first record is in r1 too
    rows, snap = await store.sync_snapshot("x", 300, lambda repo, plan: repo == "r1")
    assert [r[1] for r in rows] == list(range(301, 610)) and snap == versions
    assert await store.op_digest("x", lambda repo, plan: repo == "r1") == Store.digest_of(
        "x", versions
    )
    with pytest.raises(StoreError):
        await store.upsert_remote_ops("me", [row])
    with pytest.raises(StoreError):
        await store.delete_remote_ops("me", [rec.op_id])
    assert await store.delete_remote_ops("x", [rec.op_id, "nope"]) == 1
    assert len(await store.delete_origin("x")) == 600
    assert await store.op_digest("x") == (0, 0)


async def test_store_upserts_only_newer_and_never_touches_local(tmp_path: Path) -> None:
    store = await Store.open(data_dir=tmp_path)
    store.local_origin = "me"
    try:
        rec = record(modno=5, status="running")
        row = tuple(getattr(rec, f) for f in proto.OpRecord.__struct_fields__)
        await store.upsert_remote_ops("x", [row])
        older = (*row[:1], 4, *row[2:4], "success", *row[5:])
        await store.upsert_remote_ops("x", [older])
        assert (await store.find_operation(rec.op_id, "x")).status == "running"
        newer = (*row[:1], 6, *row[2:4], "success", *row[5:])
        await store.upsert_remote_ops("x", [newer])
        assert (await store.find_operation(rec.op_id, "x")).status == "success"
        assert await store.max_modno("x") == 6
        with pytest.raises(StoreError):
            await store.upsert_remote_ops("me", [row])
        with pytest.raises(StoreError):
            await store.delete_origin("me")
        assert await store.delete_remote_ops("x", [rec.op_id, "nope"]) == 1
        assert await store.op_digest("x") == (0, 0)
    finally:
        await store.close()
