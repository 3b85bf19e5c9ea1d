"""Operation sync costs: full sync to a new peer, a reconnect with nothing changed, live latency.

Usage: .venv/bin/python benchmarks/sync.py [--ops 100000] [--changes 500]

Two real nodes (stores, peer servers, encrypted WebSocket links on 127.0.0.1) run in this one
process and event loop, so both sides share one CPU's worth of Python: the figures are a
pessimistic bound for two machines.

1. Full sync: node A holds ``--ops`` finished operations; a fresh node B pairs with A (A grants
   ``ops``) and the clock runs from the link coming up until B's digest matches A's. Baseline,
   measured in the same run: inserting the same rows into an empty copy of the same schema
   with bare ``sqlite3.executemany`` (same batch size, one commit per batch), i.e. the floor
   set by SQLite alone.
2. Reconnect with nothing changed: the link is dropped and comes back; every byte the
   WebSocket carries until both sides' digests match is counted. Reported twice: the sync
   messages alone (Hello/Welcome, OpsSince, OpsDigest, Close; heartbeats excluded), which is
   what the design's "≤ 2 KB" is about, and everything including the hybrid post-quantum
   handshake (whose ML-KEM key and ciphertext alone are 2.3 KB).
3. Live latency: ``--changes`` changes on A (a new operation, then its end, alternately), one at
   a time; each from just before A's store write until B's store has committed it (B publishes
   OperationChanged after its commit). Baseline: A's own store write for the same change.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from peerstash.core.events import OperationChanged
from peerstash.core.ids import new_ulid
from peerstash.core.models import Operation, OpKind, OpStatus
from peerstash.core.store import Store, utcnow
from peerstash.peer import channel as ch
from peerstash.peer import protocol as proto
from peerstash.peer.node import Node, NodeOptions
from peerstash.peer.pairing import create_token
from peerstash.peer.sync import BATCH_OPS, OpsSynced

KB = 1024


async def start(data: Path, name: str) -> Node:
    node = Node(
        data / name,
        NodeOptions(instance_id=name, listen="127.0.0.1:0", schedule=False, discovery=False),
    )
    await node.start()
    return node


def seed_rows(origin: str, n: int) -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {
            "op_id": new_ulid(),
            "origin": origin,
            "modno": i + 1,
            "flow_id": f"flow{i}",
            "kind": "backup",
            "status": "success",
            "plan_id": f"plan{i % 8}",
            "repo_id": f"repo{i % 3}",
            "created_at": now,
            "started_at": now,
            "ended_at": now,
            "bytes_done": 1_000_000 + i,
            "bytes_total": 1_000_000 + i,
            "files_done": 100,
            "files_total": 100,
            "eta_seconds": None,
            "summary": {
                "snapshot_id": f"{i:064x}",
                "files_new": i % 50,
                "files_changed": 3,
                "files_unmodified": 1000,
                "data_added": 123_456 + i,
                "total_duration": 12.5,
                "warnings": [],
            },
            "snapshot_id": f"{i:064x}",
            "error": None,
        }
        for i in range(n)
    ]


async def seed(node: Node, rows: list[dict[str, Any]]) -> None:
    assert node.engine
    store = node.engine.store
    for i in range(0, len(rows), 10_000):
        async with store.session() as s, s.begin():
            await s.execute(insert(Operation), rows[i : i + 10_000])
    store._modno.pop(node.instance_id, None)  # re-read from the table on the next change


async def raw_sqlite_baseline(data: Path, node: Node, n: int) -> float:
    """Bare sqlite3 inserts of the same rows (as sync rows) into a fresh copy of the schema."""
    assert node.engine
    store = node.engine.store
    rows = await store.ops_since(node.instance_id, 0, n + 1)
    empty = await Store.open(data_dir=data / "baseline")
    await empty.close()
    db = sqlite3.connect(data / "baseline" / "peerstash.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    cols = ", ".join(("origin", *Store.SYNC_OP_COLUMNS))
    sql = f"INSERT INTO operations ({cols}) VALUES ({', '.join('?' * (len(rows[0]) + 1))})"
    params = [(node.instance_id, *r) for r in rows]
    t0 = time.perf_counter()
    for i in range(0, len(params), BATCH_OPS):
        db.executemany(sql, params[i : i + BATCH_OPS])
        db.commit()
    elapsed = time.perf_counter() - t0
    db.close()
    return elapsed


def wait_for(node: Node, pred: Any, *topics: str) -> asyncio.Future[float]:
    """A future for the time of the first event matching ``pred`` (subscribed now)."""
    sub = node.bus.subscribe(*topics)
    fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def run() -> None:
        with sub:
            while True:
                ev = await sub.get()
                if pred(ev):
                    fut.set_result(time.perf_counter())
                    return

    task = asyncio.ensure_future(run())
    fut.add_done_callback(lambda _f: task.cancel())
    return fut


def in_sync(node: Node, peer_id: str) -> asyncio.Future[float]:
    return wait_for(
        node,
        lambda ev: isinstance(ev, OpsSynced) and ev.peer_id == peer_id and ev.in_sync,
        "sync",
    )


async def full_sync(a: Node, b: Node) -> tuple[float, float]:
    """Pair B to A and time link-up → B in sync; returns (seconds, seconds incl. pairing)."""
    assert a.engine and a.identity and b.peers and a.peer_url
    token, _ = await create_token(a.engine.store, a.identity, "a", grants=["ops"])
    online = wait_for(
        b,
        lambda ev: getattr(ev, "peer_id", None) == "a" and getattr(ev, "state", None) == "online",
        "link",
    )
    done = in_sync(b, "a")
    t0 = time.perf_counter()
    await b.peers.pair(token, a.peer_url, [])
    t_end = await asyncio.wait_for(done, 600)
    t_up = await online
    return t_end - t_up, t_end - t0


async def reconnect_bytes(a: Node, b: Node) -> tuple[int, int, int]:
    """Drop A↔B and count what the WebSocket carries until both digests match again."""
    sync_bytes = 0
    frames = 0
    wire_bytes = 0
    original_send = ch.SecureChannel.send
    original_transport = ch.websocket_transport

    async def counting_send(self: ch.SecureChannel, data: bytes) -> None:
        nonlocal sync_bytes, frames
        if not isinstance(proto.decode(data), proto.Heartbeat):
            sync_bytes += len(data) + ch.FRAME_OVERHEAD
            frames += 1
        await original_send(self, data)

    def counting_transport(ws: Any) -> Any:
        send, recv = original_transport(ws)

        async def counted(data: bytes) -> None:
            nonlocal wire_bytes
            wire_bytes += len(data)
            await send(data)

        return counted, recv

    ch.SecureChannel.send = counting_send  # type: ignore[method-assign]
    ch.websocket_transport = counting_transport  # type: ignore[assignment]
    try:
        both = asyncio.gather(in_sync(b, "a"), in_sync(a, "b"))
        assert a.peers
        await a.peers.links["b"].close("benchmark: reconnect")
        await asyncio.wait_for(both, 60)
    finally:
        ch.SecureChannel.send = original_send  # type: ignore[method-assign]
        ch.websocket_transport = original_transport
    return sync_bytes, frames, wire_bytes


async def latency(a: Node, b: Node, changes: int) -> tuple[list[float], list[float]]:
    assert a.engine
    store = a.engine.store
    lat: list[float] = []
    local: list[float] = []
    op = None
    for i in range(changes):
        creating = i % 2 == 0
        target_modno = await store.max_modno("a") + 1
        arrived = wait_for(
            b,
            lambda ev, m=target_modno: (
                isinstance(ev, OperationChanged) and ev.op.origin == "a" and ev.op.modno == m
            ),
            "operation",
        )
        t0 = time.perf_counter()
        if creating or op is None:
            op = await store.create_operation(OpKind.BACKUP, repo_id="repo1", plan_id="plan1")
        else:
            op = await store.update_operation(
                op.pk, status=OpStatus.SUCCESS, ended_at=utcnow(), snapshot_id="f" * 64
            )
        t_local = time.perf_counter()
        a.bus.publish(OperationChanged(op=op))
        t1 = await asyncio.wait_for(arrived, 10)
        lat.append((t1 - t0) * 1000)
        local.append((t_local - t0) * 1000)
    return lat, local


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(ops: int, changes: int) -> None:
    with tempfile.TemporaryDirectory(prefix="psync-") as tmp:
        data = Path(tmp)
        a = await start(data, "a")
        b = await start(data, "b")
        try:
            print(f"seeding {ops:,} operations on A ...", flush=True)
            await seed(a, seed_rows("a", ops))
            baseline = await raw_sqlite_baseline(data, a, ops)

            secs, with_pairing = await full_sync(a, b)
            assert b.engine
            held = await b.engine.store.op_versions("a")
            assert len(held) == ops, (len(held), ops)
            print(f"\n1. full sync of {ops:,} operations to a new peer")
            print(f"   link up → B in sync:  {secs:6.2f} s   (target ≤ 5 s)")
            print(f"   incl. pairing:        {with_pairing:6.2f} s")
            print(f"   bare sqlite3 insert:  {baseline:6.2f} s   (same rows, same batches)")
            print(f"   ratio:                {secs / baseline:6.2f}x")

            sync_bytes, frames, wire = await reconnect_bytes(a, b)
            print(f"\n2. reconnect with nothing changed, {ops:,} operations each way checked")
            print(
                f"   sync messages:        {sync_bytes:6,} B in {frames} frames"
                f"   (target ≤ {2 * KB:,} B)"
            )
            print(f"   incl. PQ handshake:   {wire:6,} B   (WebSocket payloads, both ways)")

            lat, local = await latency(a, b, changes)
            print(f"\n3. change on A visible in B's store, {changes} changes, one at a time")
            print(
                f"   p50 {pct(lat, 0.5):6.1f} ms   p99 {pct(lat, 0.99):6.1f} ms"
                f"   max {max(lat):6.1f} ms   (target p99 ≤ 100 ms)"
            )
            print(
                f"   A's own store write:  p50 {statistics.median(local):5.1f} ms"
                f"   p99 {pct(local, 0.99):5.1f} ms"
            )
        finally:
            await b.stop()
            await a.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=100_000)
    ap.add_argument("--changes", type=int, default=500)
    args = ap.parse_args()
    asyncio.run(run(args.ops, args.changes))


if __name__ == "__main__":
    main()
