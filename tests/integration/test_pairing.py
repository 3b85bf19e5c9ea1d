"""Pairing and links between real nodes in one process: real aiohttp servers on 127.0.0.1,
real stores, real handshakes. Rejections must leave nothing registered on the accepting side.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import update

from peerstash.core.events import Woke
from peerstash.core.models import PairingTokenRow
from peerstash.core.store import utcnow
from peerstash.peer.links import channel as ch
from peerstash.peer.links import protocol as proto
from peerstash.peer.links.link import LinkStateChanged, PairingError, Timings
from peerstash.peer.node import Node
from peerstash.peer.trust.identity import Identity
from peerstash.peer.trust.permissions import GrantError
from peerstash.peer.trust.tokens import parse_token
from tests.fixtures.nodes import FAST, MakeNode, token_for, wait_state


async def peer_ids(node: Node) -> list[str]:
    assert node.engine
    return [p.id for p in await node.engine.store.list_peers()]


async def test_pair_and_link_both_ways(make_node: MakeNode) -> None:
    a, b = await make_node("a"), await make_node("b")
    token = await token_for(b, grants=["ops", "run:plan:nightly"], label="laptop")
    assert a.peers and b.peers and a.peer_url and b.peer_url
    peer = await a.peers.pair(token, b.peer_url, ["config.read"])
    assert peer.id == "b" and peer.role == "known_host" and b.identity
    assert peer.key_id == b.identity.key_id
    await wait_state(a, "b", "online")
    await wait_state(b, "a", "online")
    assert b.engine and a.engine
    on_b = await b.engine.store.get_peer("a")
    assert on_b.role == "authorized_client"
    assert on_b.grants == ["ops:*", "run:plan:nightly"]
    assert on_b.their_grants == ["config.read:*"]
    assert (await a.engine.store.get_peer("b")).their_grants == ["ops:*", "run:plan:nightly"]
    assert await b.engine.store.list_tokens() == []  # used up


async def test_link_survives_restart_of_either_side(make_node: MakeNode, tmp_path: Path) -> None:
    a, b = await make_node("a"), await make_node("b")
    assert a.peers and b.peer_url
    await a.peers.pair(await token_for(b), b.peer_url, [])
    await wait_state(b, "a", "online")
    await a.stop()
    await wait_state(b, "a", "offline")
    a2 = await make_node("a")
    await wait_state(a2, "b", "online")
    await wait_state(b, "a", "online")
    # The accepting side restarts on the same port: the dialer comes back by itself.
    port = b.peer_url.rsplit(":", 1)[1]
    await b.stop()
    await wait_state(a2, "b", "offline")
    b2 = await make_node("b", listen=f"127.0.0.1:{port}")
    await wait_state(a2, "b", "online")
    await wait_state(b2, "a", "online")


async def test_silence_makes_a_link_offline(make_node: MakeNode) -> None:
    b = await make_node("b")
    assert b.peer_url and b.identity
    token = parse_token(await token_for(b))
    # A hand-driven peer that pairs, then goes silent without closing its socket.
    silent = Identity.generate()
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(b.peer_url + "/v1/sync", max_msg_size=ch.WS_MAX_MSG_SIZE) as ws,
    ):
        send, recv = ch.websocket_transport(ws)
        chan = await ch.initiate(silent, send, recv, expected_key_id=token.key_id)
        await chan.send_msg(proto.Hello(instance_id="quiet", pairing_secret=token.secret))
        assert isinstance(await chan.recv_msg(), proto.Welcome)
        await wait_state(b, "quiet", "online")
        await wait_state(b, "quiet", "offline", within=FAST.offline_after * 5)
        assert b.engine
        reason = (await b.engine.store.get_peer("quiet")).state_reason
        assert reason == f"no frame for {FAST.offline_after:g}s"


async def test_expired_token_refused(make_node: MakeNode) -> None:
    a, b = await make_node("a"), await make_node("b")
    token = await token_for(b)
    assert b.engine and a.peers and b.peer_url
    async with b.engine.store.session() as s, s.begin():
        await s.execute(update(PairingTokenRow).values(expires_at=utcnow() - timedelta(seconds=1)))
    with pytest.raises(PairingError, match="refused"):
        await a.peers.pair(token, b.peer_url, [])
    assert await peer_ids(b) == [] and await peer_ids(a) == []


async def test_used_up_token_refused(make_node: MakeNode) -> None:
    a, b, c = await make_node("a"), await make_node("b"), await make_node("c")
    token = await token_for(b, max_uses=1)
    assert a.peers and c.peers and b.peer_url
    await a.peers.pair(token, b.peer_url, [])
    with pytest.raises(PairingError, match="wrong, expired or used up"):
        await c.peers.pair(token, b.peer_url, [])
    assert await peer_ids(b) == ["a"]


async def test_wrong_secret_refused(make_node: MakeNode) -> None:
    a, b = await make_node("a"), await make_node("b")
    token = await token_for(b)
    key, rest = token.split(":", 1)
    secret, inst = rest.split("#")
    forged = f"{key}:{'A' * len(secret)}#{inst}"
    assert a.peers and b.peer_url
    parse_token(forged)  # well-formed, just wrong
    with pytest.raises(PairingError, match="refused"):
        await a.peers.pair(forged, b.peer_url, [])
    assert await peer_ids(b) == []


async def test_wrong_key_id_refused_before_anything_is_sent(make_node: MakeNode) -> None:
    a, b, d = await make_node("a"), await make_node("b"), await make_node("d")
    token = await token_for(b)
    assert a.peers and d.peer_url
    with pytest.raises(PairingError, match="not the one that issued"):
        await a.peers.pair(token, d.peer_url, [])  # D answers at the URL, not B
    assert await peer_ids(d) == [] and await peer_ids(a) == []


async def test_revoked_peer_is_cut_off(make_node: MakeNode) -> None:
    a, b = await make_node("a"), await make_node("b")
    assert a.peers and b.peers and b.peer_url
    await a.peers.pair(await token_for(b), b.peer_url, [])
    await wait_state(a, "b", "online")
    await b.peers.remove("a")
    await wait_state(a, "b", "auth failed")
    assert a.engine
    peer = await a.engine.store.get_peer("b")
    assert peer.state_reason == "removed by b"
    assert await peer_ids(b) == []


async def test_protocol_version_mismatch(make_node: MakeNode) -> None:
    a, b = await make_node("a"), await make_node("b", protocol_version=2)
    assert a.peers and b.peer_url
    with pytest.raises(PairingError, match="protocol version 2, this one 1"):
        await a.peers.pair(await token_for(b), b.peer_url, [])
    assert await peer_ids(b) == []


async def test_flood_of_bad_pairings_is_rate_limited_but_peers_still_connect(
    make_node: MakeNode,
) -> None:
    a, b = await make_node("a"), await make_node("b")
    assert a.peers and b.peers and b.peer_url and b.identity
    await a.peers.pair(await token_for(b), b.peer_url, [])
    await wait_state(a, "b", "online")
    good = await token_for(b)
    errors = []
    for i in range(8):
        intruder = await make_node(f"x{i}")
        assert intruder.peers
        forged = good.rsplit("#", 1)[0][:-4] + "AAAA#b"
        try:
            await intruder.peers.pair(forged, b.peer_url, [])
        except PairingError as exc:
            errors.append(str(exc))
        await intruder.stop()
    assert any("too many failed" in e for e in errors[5:]), errors
    # The known peer reconnects regardless (its key is pinned, no token involved).
    await a.peers.links["b"].close("test: drop")
    await wait_state(a, "b", "online")
    # And even the right token is refused from the flooding address until the window passes.
    c = await make_node("c")
    assert c.peers
    with pytest.raises(PairingError, match="too many failed"):
        await c.peers.pair(good, b.peer_url, [])


async def test_newer_connection_replaces_older(make_node: MakeNode) -> None:
    a, b = await make_node("a"), await make_node("b")
    assert a.peers and b.peers and b.peer_url
    await a.peers.pair(await token_for(b), b.peer_url, [])
    await wait_state(b, "a", "online")
    await wait_state(a, "b", "online")
    old = b.peers.links["a"]
    a.peers.check_now("b")
    # A second connection with A's key (as after a network change where the old one lingers).
    assert a.identity and b.identity
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(b.peer_url + "/v1/sync", max_msg_size=ch.WS_MAX_MSG_SIZE) as ws,
    ):
        send, recv = ch.websocket_transport(ws)
        chan = await ch.initiate(a.identity, send, recv, expected_public_key=b.identity.public_key)
        await chan.send_msg(proto.Hello(instance_id="a"))
        assert isinstance(await chan.recv_msg(), proto.Welcome)
        await asyncio.wait_for(old.closed.wait(), 5)
        assert old.close_reason == "replaced by a newer connection"
        assert b.peers.links["a"] is not old


async def test_garbage_on_one_connection_leaves_other_links_alone(make_node: MakeNode) -> None:
    a, b = await make_node("a"), await make_node("b")
    assert a.peers and b.peers and b.peer_url
    with b.bus.subscribe("link") as sub:
        await a.peers.pair(await token_for(b), b.peer_url, [])
        # The pairing connection ends right after pairing ("pairing done; reconnecting"); the
        # link under test is the dialer's, which B announces after that one went offline.
        async with asyncio.timeout(10):
            while True:
                ev = await sub.get()
                if isinstance(ev, LinkStateChanged) and "pairing done" in (ev.reason or ""):
                    break
    await wait_state(b, "a", "online")
    link = b.peers.links["a"]
    async with aiohttp.ClientSession() as s, s.ws_connect(b.peer_url + "/v1/sync") as ws:
        await ws.send_bytes(b"\x00garbage" * 100)
        msg = await ws.receive()
        assert msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.BINARY,
        )
    # A stranger's well-formed handshake with no token is refused too, and registers nothing.
    stranger = Identity.generate()
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(b.peer_url + "/v1/sync", max_msg_size=ch.WS_MAX_MSG_SIZE) as ws,
    ):
        send, recv = ch.websocket_transport(ws)
        assert b.identity
        chan = await ch.initiate(stranger, send, recv, expected_public_key=b.identity.public_key)
        await chan.send_msg(proto.Hello(instance_id="a"))  # claims to be A, with another key
        reply = await chan.recv_msg()
        assert isinstance(reply, proto.Error) and reply.code == proto.ErrorCode.UNKNOWN_PEER
    assert b.peers.links["a"] is link and not link.closed.is_set()
    assert await peer_ids(b) == ["a"]


async def test_peer_port_serves_nothing_else(make_node: MakeNode) -> None:
    b = await make_node("b")
    assert b.peer_url
    async with aiohttp.ClientSession() as s:
        async with s.get(b.peer_url + "/healthz") as r:
            assert r.status == 200 and (await r.text()).strip() == "ok"
        for path in ("/", "/v1/status", "/v1/repos", "/v1/ops", "/admin"):
            async with s.get(b.peer_url + path) as r:
                assert r.status == 404, path


async def test_changing_grants_applies_on_the_live_link(make_node: MakeNode) -> None:
    a, b = await make_node("a"), await make_node("b")
    assert a.peers and b.peers and b.peer_url and a.engine
    await a.peers.pair(await token_for(b, grants=["ops"]), b.peer_url, [])
    await wait_state(a, "b", "online")
    old = b.peers.links["a"]
    with a.bus.subscribe("link") as sub:
        await b.peers.set_grants("a", ["ops:repo:r1", "run:plan:p"])
        async with asyncio.timeout(10):
            while True:  # the link went down and came back up with the new grants
                ev = await sub.get()
                if isinstance(ev, LinkStateChanged) and ev.peer_id == "b" and ev.state == "online":
                    break
    assert old.close_reason == "grants changed; reconnecting"
    assert (await a.engine.store.get_peer("b")).their_grants == ["ops:repo:r1", "run:plan:p"]
    with pytest.raises(GrantError, match="everything"):
        await b.peers.set_grants("a", ["everything"])


async def test_wake_makes_dialers_retry_at_once(make_node: MakeNode) -> None:
    slow = Timings(heartbeat=0.2, offline_after=1.0, backoff_min=60, backoff_max=60)
    a, b = await make_node("a", link_timings=slow), await make_node("b")
    assert a.peers and b.peer_url
    await a.peers.pair(await token_for(b), b.peer_url, [])
    await wait_state(a, "b", "online")
    port = b.peer_url.rsplit(":", 1)[1]
    await b.stop()
    await wait_state(a, "b", "offline")
    b2 = await make_node("b", listen=f"127.0.0.1:{port}")
    assert b2.peer_url
    # The dialer now waits out a 30-60 s backoff; a wake (as the scheduler reports after a
    # suspend) cuts it short.
    a.bus.publish(Woke())
    await wait_state(a, "b", "online", within=10)
