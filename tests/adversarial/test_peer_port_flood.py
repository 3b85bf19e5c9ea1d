"""The peer port under a flood: the node keeps serving its owner and its peers.

Issue 11 measured a node with 1,024 descriptors and 1,100 half-sent requests: the admin socket
stopped answering, backups could not start, peers could not reconnect, and asyncio wrote
289 MB of "Too many open files" in 107 s. These tests replay that against a real node process
and assert what its owner sees. Hostile connections come from 127.0.0.2 and up; the paired
peer comes from 127.0.0.1, as a peer on another machine would come from its own address.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from peerstash.peer.links import channel as ch
from peerstash.peer.links import protocol as proto
from peerstash.peer.trust.identity import Identity
from tests.fixtures.netnodes import (
    FloodProcess,
    Forwarder,
    LinkWatch,
    Node,
    open_file_limit,
    pair,
)

HOSTILE = [f"127.0.0.{i}" for i in range(2, 13)]  # 11 addresses, 100 connections each
FIGURES: dict[str, object] = {}


async def admin_status_seconds(node: Node, socket_path: str) -> float:
    """One ``GET /v1/status`` on the admin socket, timed; fails after 2 s."""
    started = time.monotonic()
    conn = aiohttp.UnixConnector(path=socket_path)
    async with aiohttp.ClientSession(connector=conn) as s:
        async with asyncio.timeout(2):
            async with s.get("http://node/v1/status") as r:
                assert r.status == 200
                body = await r.json()
    assert body["instance_id"] == node.instance_id
    return time.monotonic() - started


async def sample_fds(pid: int, into: list[int]) -> None:
    """How many descriptors the node has open, five times a second, until cancelled."""
    while True:
        into.append(len(os.listdir(f"/proc/{pid}/fd")))
        await asyncio.sleep(0.2)  # a sampling interval: there is no event to wait for


async def add_backup_plan(node: Node, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}.txt").write_text(f"file {i}\n" * 100)
    await node.cli(
        "repo",
        "add",
        "r",
        "--uri",
        str(tmp_path / "repo"),
        "--password-stdin",
        "--init",
        input="pw-for-flood-test\n",
    )
    await node.cli("plan", "add", "docs", "--repo", "r", "--path", str(src))


async def snapshot_count(node: Node, plan: str | None = None) -> int:
    """Snapshots in ``r`` (those of ``plan`` only, when given), as ``snapshots --json`` says."""
    snaps = await node.cli_json("snapshots", "r")
    return len([s for s in snaps if plan is None or f"plan:{plan}" in (s.get("tags") or [])])


@pytest.mark.parametrize("limit", [1024, 256])
async def test_flood_of_half_sent_requests_leaves_the_node_working(
    tmp_path: Path, limit: int
) -> None:
    # Soft and hard limit the same: the node raises its soft limit to the hard one at start.
    # 1,024 is the common default; at 256 the flood's 1,100 connections could not all be
    # accepted even without caps, and the node's share for strangers shrinks with its limit.
    a = Node(
        tmp_path / "a-data", "alpha", timings="heartbeat=1,offline_after=4", nofile=(limit, limit)
    )
    b = Node(tmp_path / "b-data", "beta", timings="heartbeat=1,offline_after=4")
    await a.start()
    await b.start()
    try:
        assert a.proc is not None
        assert open_file_limit(a.proc.pid) == (str(limit), str(limit))
        socket_path = (await a.cli_json("status"))["admin_socket"]
        await add_backup_plan(a, tmp_path)
        # A plan only the scheduler runs (every minute, the shortest interval): its first
        # run falls inside the flood, which is held until it has finished.
        await a.cli(
            "plan",
            "add",
            "tick",
            "--repo",
            "r",
            "--path",
            str(tmp_path / "src"),
            "--every",
            "1m",
            "--no-backup-now",
        )
        tick_added = time.monotonic()
        async with Forwarder(a.port) as fwd, LinkWatch(a) as wa, LinkWatch(b) as wb:
            await pair(b, a, fwd.url)
            await wb.wait("alpha", "online", 30)
            baseline = await admin_status_seconds(a, socket_path)
            cli_baseline = (await a.cli("status", "--json", within=30)).seconds
            log_before = a.log_size()
            started = time.monotonic()
            fd_counts: list[int] = []
            sampler = asyncio.create_task(sample_fds(a.proc.pid, fd_counts))
            async with FloodProcess(a.port, HOSTILE, 1100, "half-request") as flood:
                # The flood is on: the node holds what its caps allow and closes the rest.
                await flood.wait_held(min(256, limit // 4) * 3 // 4, 30)
                latencies = [await admin_status_seconds(a, socket_path) for _ in range(10)]
                cli = await a.cli("status", "--json", within=30)
                assert json.loads(cli.stdout)["instance_id"] == "alpha"
                # A backup starts and finishes with the real restic.
                before = await snapshot_count(a)
                await a.cli("backup", "docs", "--wait", within=120)
                assert await snapshot_count(a) == before + 1
                # The paired peer loses its path and comes back during the flood.
                cut_at = time.monotonic()
                fwd.cut()
                back = await wb.wait("alpha", "online", 10, after=cut_at + 0.001)
                reconnect_in_flood = back - cut_at
                await wa.wait("beta", "online", 10)
                # Hold the flood past the request deadline (10 s): the node closes the
                # half-sent requests and the flooder opens new ones.
                remaining = 25 - (time.monotonic() - started)
                if remaining > 0:
                    await asyncio.sleep(remaining)  # the attack's duration, not a wait for state
                latencies += [await admin_status_seconds(a, socket_path) for _ in range(5)]
                # The scheduler kept working: its plan is backed up during the flood.
                tick_at, _ = await wa.wait_op(
                    "tick", "success", max(5.0, tick_added + 60 + 60 - time.monotonic())
                )
                scheduled = await snapshot_count(a, "tick")
                stats = await flood.finish()
                attempts, max_held = stats["attempts"], stats["max_held"]
            sampler.cancel()
            flood_seconds = time.monotonic() - started
            log_growth = a.log_size() - log_before
            # After the flood: another cut, and the peer comes back.
            cut_at = time.monotonic()
            fwd.cut()
            back = await wb.wait("alpha", "online", 10, after=cut_at + 0.001)
            reconnect_after = back - cut_at
        assert max(latencies) < 2.0
        # The caps hold: a quarter of the descriptors (at most 256) for unauthenticated
        # connections, plus a quarter of that reserved for addresses peers come from, far
        # below the 1,100 the attacker tried to hold ...
        assert attempts > 1100  # the flooder really reopened what the node closed
        assert scheduled == 1 and started < tick_at, "the scheduled backup ran in the flood"
        assert log_growth < 1_000_000, log_growth
        emfile = a.log_text().count("Too many open files")
        # The node's descriptors stay clear of its limit ...
        assert max(fd_counts) < limit * 0.6, max(fd_counts)
        if limit == 1024:
            cap = min(256, limit // 4)
            assert max_held <= cap + cap // 4, max_held
            assert emfile == 0
        else:
            # ... though with 256, connections also wait in the kernel's backlog, so the client
            # cannot count what the node holds; and should accept() hit the limit in a burst,
            # the error is written a few times with a count, not once per failed accept.
            assert emfile <= 10, emfile
        FIGURES[f"flood_{limit}"] = dict(
            flood_seconds=round(flood_seconds, 1),
            flood_attempts=attempts,
            flood_max_held=max_held,
            node_max_fds=max(fd_counts),
            status_baseline_s=round(baseline, 3),
            status_max_s=round(max(latencies), 3),
            status_cli_baseline_s=round(cli_baseline, 2),
            status_cli_s=round(cli.seconds, 2),
            reconnect_in_flood_s=round(reconnect_in_flood, 2),
            reconnect_after_s=round(reconnect_after, 2),
            scheduled_backup_done_s_into_flood=round(tick_at - started, 1),
            log_growth_bytes=log_growth,
            emfile_log_lines=emfile,
        )
        print("flood figures:", FIGURES)
    finally:
        await b.stop()
        await a.stop()


async def test_idle_websockets_do_not_block_reconnects_or_pairing(tmp_path: Path) -> None:
    a = Node(tmp_path / "a-data", "alpha", timings="heartbeat=1,offline_after=4")
    b = Node(tmp_path / "b-data", "beta", timings="heartbeat=1,offline_after=4")
    c = Node(tmp_path / "c-data", "gamma", timings="heartbeat=1,offline_after=4")
    await a.start()
    await b.start()
    await c.start()
    try:
        async with Forwarder(a.port) as fwd, LinkWatch(b) as wb, LinkWatch(c) as wc:
            await pair(b, a, fwd.url)
            await wb.wait("alpha", "online", 30)
            # 300 upgraded WebSockets that never send a handshake frame, kept up: each one the
            # node closes is opened again.
            async with FloodProcess(a.port, HOSTILE[:10], 300, "idle-ws", respawn=0.5) as flood:
                await flood.wait_held(250, 30)
                cut_at = time.monotonic()
                fwd.cut()
                back = await wb.wait("alpha", "online", 10, after=cut_at + 0.001)
                reconnect = back - cut_at
                pair_at = time.monotonic()
                paired = await pair(c, a)
                assert paired["id"] == "alpha"
                await wc.wait("alpha", "online", 15)
                pairing = time.monotonic() - pair_at
                held = (await flood.finish())["max_held"]
        assert held >= 250  # the attack really held its WebSockets
        peers = {p["id"]: p for p in await a.cli_json("peer", "list")}
        assert set(peers) == {"beta", "gamma"}
        FIGURES.update(idle_ws=300, idle_ws_reconnect_s=round(reconnect, 2))
        FIGURES.update(idle_ws_pairing_s=round(pairing, 2))
        print("idle websocket figures:", FIGURES)
    finally:
        for n in (c, b, a):
            await n.stop()


async def test_server_header_names_no_version_and_limit_is_raised(tmp_path: Path) -> None:
    a = Node(tmp_path / "a-data", "alpha", nofile=(512, 2048))
    await a.start()
    try:
        assert a.proc is not None
        assert open_file_limit(a.proc.pid) == ("2048", "2048")
        headers = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            for path in ("/healthz", "/nope", "/v1/sync"):
                async with s.get(a.url + path) as r:
                    headers.append((path, r.status, r.headers.get("Server")))
            async with s.ws_connect(a.url + "/v1/sync") as ws:
                assert ws._response.headers.get("Server") == "peerstash"
        # A malformed request gets aiohttp's own error page: no version there either.
        reader, writer = await asyncio.open_connection("127.0.0.1", a.port)
        writer.write(b"\x16\x03\x01 not http\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert raw.split(b"\r\n", 1)[0].split()[1] == b"400", raw[:200]
        head = raw.split(b"\r\n\r\n", 1)[0].decode()
        assert "Server: peerstash" in head.splitlines(), head
        assert headers == [
            ("/healthz", 200, "peerstash"),
            ("/nope", 404, "peerstash"),
            ("/v1/sync", 400, "peerstash"),
        ]
        assert "aiohttp" not in head.lower() and "python" not in head.lower()
    finally:
        await a.stop()


async def test_an_idle_keep_alive_connection_is_closed_after_5_s(tmp_path: Path) -> None:
    """A client that completes a request and then idles on the connection holds it 5 s (the
    node's keep-alive), not aiohttp's default nor the guard's 60 s backstop."""
    a = Node(tmp_path / "a-data", "alpha")
    await a.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", a.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.split(b"\r\n", 1)[0].split()[1] == b"200", head
        assert b"connection: close" not in head.lower()  # kept alive: the idle wait is ours
        answered = time.monotonic()
        # Whatever is left of the body, then the node's close (EOF): 5 s of idling at most.
        rest = await asyncio.wait_for(reader.read(), 30)
        idle = time.monotonic() - answered
        writer.close()
        assert len(rest) < 1000
        assert 4.0 <= idle < 8.0, idle
        FIGURES["keepalive_idle_closed_after_s"] = round(idle, 1)
    finally:
        await a.stop()


async def secretless_attempt(url: str, key_id: str, source: str) -> str:
    """A stranger's handshake with no token: what the node answers."""
    me = Identity.generate()
    conn = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=20)) as s:
        async with s.ws_connect(url + "/v1/sync", max_msg_size=ch.WS_MAX_MSG_SIZE) as ws:
            send, recv = ch.websocket_transport(ws)
            try:
                chan = await ch.initiate(me, send, recv, expected_key_id=key_id)
            except ch.PeerRejectedError as exc:
                return f"rejected: {exc.code}"
            await chan.send_msg(
                proto.Hello(instance_id="stranger", grants=(), pairing_secret=None, software="x")
            )
            reply = await asyncio.wait_for(chan.recv_msg(), 10)
            assert isinstance(reply, proto.Error)
            return f"error: {reply.code}"


async def test_handshakes_without_a_secret_are_rate_limited(tmp_path: Path) -> None:
    a = Node(tmp_path / "a-data", "alpha", timings="heartbeat=1,offline_after=4")
    b = Node(tmp_path / "b-data", "beta", timings="heartbeat=1,offline_after=4")
    await a.start()
    await b.start()
    try:
        key_id = (await a.cli_json("status"))["key_id"]
        answers = [await secretless_attempt(a.url, key_id, "127.0.0.20") for _ in range(7)]
        assert answers[:5] == ["error: unknown_peer"] * 5
        # From the sixth on, the node refuses before doing the handshake's work.
        assert answers[5:] == ["rejected: rate_limited"] * 2
        # Another address is not affected, and nothing was stored for the stranger.
        assert await secretless_attempt(a.url, key_id, "127.0.0.21") == "error: unknown_peer"
        assert await a.cli_json("peer", "list") == []
        # Pairing from elsewhere works as before.
        async with LinkWatch(b) as wb:
            await pair(b, a)
            await wb.wait("alpha", "online", 30)
    finally:
        await b.stop(signal.SIGTERM)
        await a.stop()


@pytest.fixture(autouse=True, scope="module")
def _print_figures() -> object:
    yield
    if FIGURES:
        print("\nadversarial figures:", json.dumps(FIGURES))
