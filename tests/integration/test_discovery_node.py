"""Discovery wired into real nodes, on 127.0.0.1 only: finding, pairing without a URL,
following a moved peer, and flagging an impostor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from peerstash.core.events import Notice
from peerstash.peer.links.link import PairingError
from peerstash.peer.node import Node, NodeOptions
from tests.fixtures.nodes import FAST, MakeNode, token_for, wait_state


@pytest.fixture
async def make_node(tmp_path: Path) -> AsyncIterator[MakeNode]:
    nodes: list[Node] = []

    async def make(name: str, *, data: str | None = None, **opts: object) -> Node:
        settings: dict[str, object] = {
            "instance_id": name,
            "listen": "127.0.0.1:0",
            "link_timings": FAST,
            "schedule": False,
            "discovery": True,
            "discovery_interfaces": ["127.0.0.1"],
            **opts,
        }
        node = Node(tmp_path / (data or name), NodeOptions(**settings))  # type: ignore[arg-type]
        await node.start()
        nodes.append(node)
        return node

    yield make
    for node in reversed(nodes):
        await node.stop()


async def test_nodes_find_each_other_and_pair_without_url(make_node: MakeNode) -> None:
    a, b = await make_node("a"), await make_node("b")
    assert a.discovery and b.discovery and b.identity
    seen = await a.discovery.wait_for(lambda p: p.instance_id == "b", 10)
    assert seen.key_id == b.identity.key_id and seen.addresses == ("127.0.0.1",)
    assert b.peer_url and seen.port == int(b.peer_url.rsplit(":", 1)[1])
    assert all(p.instance_id != "a" for p in a.discovery.peers())  # never ourselves
    assert a.peers
    peer = await a.peers.pair(await token_for(b), None, [])
    assert peer.url == b.peer_url
    await wait_state(a, "b", "online")


async def test_moved_peer_is_followed_to_its_new_port(make_node: MakeNode) -> None:
    a, b = await make_node("a"), await make_node("b")
    assert a.peers and b.peer_url
    await a.peers.pair(await token_for(b), b.peer_url, [])
    await wait_state(a, "b", "online")
    old_url = b.peer_url
    await b.stop()
    await wait_state(a, "b", "offline")
    b2 = await make_node("b")  # same data dir and key, a new port
    assert b2.peer_url and b2.peer_url != old_url
    await wait_state(a, "b", "online", within=20)
    assert a.engine
    assert (await a.engine.store.get_peer("b")).url == b2.peer_url


async def test_impostor_with_a_known_name_is_flagged_not_trusted(make_node: MakeNode) -> None:
    a, b = await make_node("a"), await make_node("b")
    assert a.peers and b.peer_url
    await a.peers.pair(await token_for(b), b.peer_url, [])
    await wait_state(a, "b", "online")
    with a.bus.subscribe("notice") as sub:
        impostor = await make_node("b", data="impostor")  # same name, another key
        async with asyncio.timeout(10):
            ev = await sub.get()
    assert isinstance(ev, Notice) and ev.level == "warning"
    assert "not trusted" in ev.message and impostor.identity
    assert impostor.identity.key_id in ev.message
    assert a.engine
    assert (await a.engine.store.get_peer("b")).url == b.peer_url  # never redirected


async def test_pairing_without_url_when_nobody_answers(make_node: MakeNode) -> None:
    a = await make_node("a")
    b = await make_node("b", discovery=False)
    assert a.peers
    with pytest.raises(PairingError, match="not found on the LAN"):
        await a.peers.pair(await token_for(b), None, [])
