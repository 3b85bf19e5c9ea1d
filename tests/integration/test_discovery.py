"""Discovery over real mDNS on loopback: real python-zeroconf sockets bound to 127.0.0.1 only.

Every zeroconf instance here (our ``Discovery`` objects, the raw "hostile" responder, the one
in a child process) is created with ``interfaces=["127.0.0.1"]``, so multicast goes out on ``lo``
and nowhere else. Linux delivers 224.0.0.251 on ``lo`` even though ``ip link show lo`` lists no
MULTICAST flag: the multicast route lookup honours ``IP_MULTICAST_IF=127.0.0.1`` and loopback
delivery (``IP_MULTICAST_LOOP``) hands the packets to every socket in the group on this host,
in this process or another. Nothing here sleeps: every wait is on a discovery event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace

import pytest
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from peerstash.peer.links.discovery import (
    SERVICE_TYPE,
    Announcement,
    DiscoveredPeer,
    Discovery,
)
from peerstash.peer.links.protocol import PROTOCOL_VERSION
from peerstash.peer.trust.identity import Identity

LOOPBACK = ["127.0.0.1"]
STEP = 10.0  # seconds for any single expected event; they normally take well under 2 s


@dataclass
class Node:
    """A Discovery on loopback plus everything its on_change callback saw."""

    discovery: Discovery
    announcement: Announcement
    events: list[tuple[str, DiscoveredPeer, int]] = field(default_factory=list)

    def kinds_for(self, instance_id: str, key_id: str | None = None) -> list[str]:
        return [
            kind
            for kind, peer, _ in self.events
            if peer.instance_id == instance_id and key_id in (None, peer.key_id)
        ]


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
async def make_node() -> AsyncIterator[NodeFactory]:
    """Start Discovery objects on loopback; all of them are closed (goodbyes sent) at the end."""
    async with contextlib.AsyncExitStack() as stack:

        async def factory(
            instance_id: str,
            *,
            display_name: str | None = None,
            port: int = 40000,
            identity: Identity | None = None,
            announce: bool = True,
        ) -> Node:
            key = (identity or Identity.generate()).key_id
            announcement = Announcement(instance_id, key, port, display_name or instance_id)
            node: Node | None = None

            def record(peer: DiscoveredPeer | None, kind: str) -> None:
                assert peer is not None and node is not None
                # How many keys discovery knew for this instance id when it told us.
                conflicts = len(node.discovery.duplicates.get(peer.instance_id, ()))
                node.events.append((kind, peer, conflicts))

            discovery = Discovery(
                interfaces=LOOPBACK,
                on_change=record,
                self_instance_id=instance_id,
                self_key_id=key,
            )
            node = Node(discovery, announcement)
            await discovery.start()
            stack.push_async_callback(discovery.close)
            if announce:
                await discovery.announce(announcement)
            return node

        yield factory


def by_id(instance_id: str, key_id: str | None = None) -> Callable[[DiscoveredPeer], bool]:
    return lambda p: p.instance_id == instance_id and key_id in (None, p.key_id)


async def test_two_nodes_find_each_other_update_and_withdraw(make_node: NodeFactory) -> None:
    a, b = await asyncio.gather(make_node("node-a", port=41001), make_node("node-b", port=41002))
    da, db = a.discovery, b.discovery

    seen_b = await da.wait_for(by_id("node-b"), STEP)
    seen_a = await db.wait_for(by_id("node-a"), STEP)
    assert seen_b.key_id == b.announcement.key_id
    assert seen_b.port == 41002
    assert seen_b.addresses == ("127.0.0.1",)
    assert seen_b.version == PROTOCOL_VERSION and seen_b.compatible
    assert seen_b.service_name == f"node-b.{SERVICE_TYPE}"
    assert seen_a.port == 41001 and seen_a.key_id == a.announcement.key_id
    assert da.find("node-b") == seen_b
    assert da.find("node-b", b.announcement.key_id.upper()) == seen_b
    assert da.find("node-b", a.announcement.key_id) is None

    # Each one saw its own announcement come back and ignored it.
    await da.wait_until(lambda: da.ignored.get(f"node-a.{SERVICE_TYPE}") == "self", STEP)
    await db.wait_until(lambda: db.ignored.get(f"node-b.{SERVICE_TYPE}") == "self", STEP)
    assert [p.instance_id for p in da.peers()] == ["node-b"]
    assert [p.instance_id for p in db.peers()] == ["node-a"]
    assert a.kinds_for("node-a") == [] and b.kinds_for("node-b") == []
    assert da.duplicates == {"node-b": {b.announcement.key_id}}

    # The peer server moved to another port: same name, records updated, seen as "updated".
    await db.announce(replace(b.announcement, port=41999))
    moved = await da.wait_for(lambda p: p.instance_id == "node-b" and p.port == 41999, STEP)
    assert moved.service_name == seen_b.service_name
    assert db.service_name == f"node-b.{SERVICE_TYPE}"
    assert ("updated", 41999) in [(k, p.port) for k, p, _ in a.events if p.instance_id == "node-b"]
    assert len(da.peers()) == 1

    # Goodbye packets: a drops b at once (no TTL wait), and says so.
    await db.withdraw()
    await da.wait_until(lambda: da.find("node-b") is None, STEP)
    assert a.kinds_for("node-b")[0] == "added"
    assert a.kinds_for("node-b")[-1] == "removed"
    assert "removed" not in a.kinds_for("node-b")[:-1]
    assert da.peers() == []
    assert "node-b" not in da.duplicates  # a single key that left is not a conflict to keep

    # Announcing again after a withdraw registers afresh.
    await db.announce(b.announcement)
    back = await da.wait_for(by_id("node-b"), STEP)
    assert back.port == 41002


async def test_duplicate_instance_id_is_reported_never_replaced(make_node: NodeFactory) -> None:
    observer, victim = await asyncio.gather(
        make_node("observer", port=42001), make_node("nas", display_name="Shared name", port=42002)
    )
    original = await observer.discovery.wait_for(by_id("nas"), STEP)
    assert observer.discovery.duplicates == {"nas": {victim.announcement.key_id}}

    # Another key claims the same instance id (and the same display name, after the victim
    # holds it: probing must give it "Shared name (2)").
    impostor = await make_node("nas", display_name="Shared name", port=42003)
    imp_key = impostor.announcement.key_id
    assert impostor.discovery.service_name == f"Shared name (2).{SERVICE_TYPE}"
    assert victim.discovery.service_name == f"Shared name.{SERVICE_TYPE}"

    fake = await observer.discovery.wait_for(by_id("nas", imp_key), STEP)
    assert fake.port == 42003
    keys = {victim.announcement.key_id, imp_key}
    assert observer.discovery.duplicates["nas"] == keys
    # The callback heard about the impostor with the conflict already recorded.
    assert ("added", imp_key, 2) in [(k, p.key_id, n) for k, p, n in observer.events]
    # The pinned key's entry is untouched, and an ambiguous lookup refuses to guess.
    assert observer.discovery.find("nas", victim.announcement.key_id) == original
    assert observer.discovery.find("nas") is None
    assert {p.key_id for p in observer.discovery.peers() if p.instance_id == "nas"} == keys

    # The victim sees someone else using its own instance id: listed, and flagged.
    await victim.discovery.wait_for(by_id("nas", imp_key), STEP)
    assert victim.discovery.duplicates["nas"] == keys
    assert victim.discovery.find("nas", victim.announcement.key_id) is None  # self stays out

    # The impostor leaves; the conflict stays on record for the node to show.
    await impostor.discovery.close()
    await observer.discovery.wait_until(
        lambda: observer.discovery.find("nas", imp_key) is None, STEP
    )
    assert observer.discovery.find("nas") == original
    assert observer.discovery.duplicates["nas"] == keys


def _raw_info(
    label: str, txt: dict[bytes, bytes | None] | bytes, port: int = 43000
) -> AsyncServiceInfo:
    return AsyncServiceInfo(
        SERVICE_TYPE,
        f"{label}.{SERVICE_TYPE}",
        port=port,
        properties=txt,
        server="hostile-host.local.",
        addresses=[socket.inet_aton("127.0.0.1")],
    )


async def test_hostile_announcements_are_ignored_quietly(
    make_node: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="peerstash.peer.links.discovery")
    # The observer only listens (knowing who it is, so it can spot "spoofs-us").
    observer = await make_node("observer", port=43001, announce=False)
    obs = observer.discovery
    me = observer.announcement
    good_key = Identity.generate().key_id
    valid: dict[bytes, bytes | None] = {b"id": b"h", b"v": b"1", b"fp": good_key.encode()}

    hostile: dict[str, dict[bytes, bytes | None] | bytes] = {
        # ~1.8 KB of TXT in 200-byte strings (a TXT string cannot exceed 255 bytes).
        "huge": {**valid, **{f"pad{i}".encode(): b"x" * 200 for i in range(9)}},
        "huge-id": {**valid, b"id": b"x" * 250},
        "bad-utf8": {**valid, b"id": b"\xff\xfe\xfd"},
        "missing-fp": {b"id": b"h", b"v": b"1"},
        "empty": {},
        "bad-version": {**valid, b"v": b"one"},
        "keys-without-values": b"\x02id\x01v\x02fp",
        "truncated-txt": b"\x40id=h",  # length byte claims 64, only 4 follow
        "control-chars": {**valid, b"id": b"h\x1b]0;pwned\x07"},
        "spoofs-us": {b"id": me.instance_id.encode(), b"v": b"1", b"fp": me.key_id.encode()},
    }
    incompatible = {**valid, b"id": b"future-node", b"v": b"99"}

    async with AsyncZeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only) as raw:

        async def register(info: AsyncServiceInfo) -> None:
            # cooperating_responders skips the ~1 s of probing: these names are ours alone.
            task = await raw.async_register_service(info, cooperating_responders=True)
            await task

        infos = [_raw_info(label, txt) for label, txt in hostile.items()]
        await asyncio.gather(
            *(register(i) for i in infos), register(_raw_info("future", incompatible, 43002))
        )

        names = {f"{label}.{SERVICE_TYPE}" for label in hostile}
        await obs.wait_until(lambda: names <= set(obs.ignored), STEP)
        future = await obs.wait_for(by_id("future-node"), STEP)

        # The wrong-version node is listed so the UI can say "incompatible", marked as such.
        assert future.version == 99 and not future.compatible and future.port == 43002
        assert [p.instance_id for p in obs.peers()] == ["future-node"]
        assert obs.ignored[f"spoofs-us.{SERVICE_TYPE}"] == "self"
        assert "over" in obs.ignored[f"huge.{SERVICE_TYPE}"]
        assert "UTF-8" in obs.ignored[f"bad-utf8.{SERVICE_TYPE}"]
        assert "'fp' is missing" in obs.ignored[f"missing-fp.{SERVICE_TYPE}"]

        # Changed junk under an already-ignored name is re-read (the reason changes) but not
        # logged again: one line per name, ever.
        changed = _raw_info("huge-id", {**valid, b"id": b"\xc3\x28"})
        await (await raw.async_update_service(changed))
        await obs.wait_until(lambda: "UTF-8" in obs.ignored[f"huge-id.{SERVICE_TYPE}"], STEP)

        # A valid announcement under a formerly bad name becomes a normal peer.
        fixed = _raw_info("bad-utf8", {**valid, b"id": b"fixed"})
        await (await raw.async_update_service(fixed))
        await obs.wait_for(by_id("fixed"), STEP)
        assert f"bad-utf8.{SERVICE_TYPE}" not in obs.ignored

    ours = [r for r in caplog.records if r.name == "peerstash.peer.links.discovery"]
    for label in hostile:
        if label == "spoofs-us":
            continue
        lines = [r for r in ours if f"{label}.{SERVICE_TYPE}" in r.getMessage()]
        assert len(lines) == 1, (label, [r.getMessage() for r in lines])
        assert lines[0].levelno == logging.DEBUG
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert not any(r.exc_info for r in caplog.records)


CHILD = textwrap.dedent(
    """
    import asyncio, json, sys

    from peerstash.peer.links.discovery import Announcement, Discovery


    def say(**event):
        print(json.dumps(event), flush=True)


    async def main() -> None:
        instance_id, key_id, port, want = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
        events = []
        d = Discovery(interfaces=["127.0.0.1"], on_change=lambda p, k: events.append(k))
        await d.start()
        await d.announce(Announcement(instance_id, key_id, port, "child process"))
        say(event="announced", name=d.service_name)
        peer = await d.wait_for(lambda p: p.instance_id == want, 10)
        say(event="found", instance_id=peer.instance_id, key_id=peer.key_id, port=peer.port,
            addresses=list(peer.addresses), self_listed=any(
                p.instance_id == instance_id for p in d.peers()))
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        await reader.readline()  # the parent says when to leave
        await d.close()
        say(event="closed")


    asyncio.run(main())
    """
)


async def test_node_in_another_process(make_node: NodeFactory) -> None:
    """Two processes, two zeroconf stacks, one loopback: they find each other both ways."""
    parent_id = Identity.generate()
    child_key = Identity.generate().key_id
    # Start the child first: its interpreter start-up overlaps with our own announcement.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        "child",
        child_key,
        "44002",
        "parent",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=os.environ.copy(),
    )
    assert proc.stdin is not None and proc.stdout is not None
    parent = await make_node("parent", port=44001, identity=parent_id)

    async def event() -> dict[str, object]:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), STEP)
        assert line, "child exited early"
        return dict(json.loads(line))

    try:
        assert await event() == {"event": "announced", "name": f"child process.{SERVICE_TYPE}"}
        child = await parent.discovery.wait_for(by_id("child", child_key), STEP)
        assert child.port == 44002 and child.addresses == ("127.0.0.1",)
        found = await event()
        assert found == {
            "event": "found",
            "instance_id": "parent",
            "key_id": parent.announcement.key_id,
            "port": 44001,
            "addresses": ["127.0.0.1"],
            "self_listed": False,
        }
        # Two nodes on one host, two processes sharing port 5353: a node taking the child's
        # display name still hears the child defend it while probing, and is renamed.
        late = await make_node("late", display_name="child process", port=44003)
        assert late.discovery.service_name == f"child process (2).{SERVICE_TYPE}"

        proc.stdin.write(b"quit\n")
        await proc.stdin.drain()
        assert (await event())["event"] == "closed"
        await parent.discovery.wait_until(lambda: parent.discovery.find("child") is None, STEP)
        assert parent.kinds_for("child") == ["added", "removed"]
        assert await asyncio.wait_for(proc.wait(), STEP) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_close_is_idempotent_and_cancellation_safe(make_node: NodeFactory) -> None:
    node = await make_node("short-lived", port=45001, announce=False)
    d = node.discovery
    announcing = asyncio.create_task(d.announce(node.announcement))
    await asyncio.sleep(0)  # let it start probing, then cancel it mid-way
    announcing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await announcing
    closing = asyncio.create_task(d.close())
    await asyncio.wait_for(closing, STEP)
    await d.close()
    with pytest.raises(RuntimeError):
        await d.start()
    with pytest.raises(RuntimeError):
        await d.announce(node.announcement)
    with pytest.raises(TimeoutError):
        await d.wait_for(by_id("nobody"), 0.05)


async def test_reflections_merge_into_one_entry(make_node: NodeFactory) -> None:
    """One node seen under two service names / two addresses (an mDNS reflector, or a restart
    that re-registered as "name (2)" while the old records were still cached) is one peer."""
    observer = await make_node("observer", port=46001, announce=False)
    obs = observer.discovery
    key = Identity.generate().key_id
    txt: dict[bytes, bytes | None] = {b"id": b"twin", b"v": b"1", b"fp": key.encode()}

    def info(label: str, host: str, address: str) -> AsyncServiceInfo:
        # 127.0.0.2 is only *announced* in an A record; nothing is ever sent to it.
        return AsyncServiceInfo(
            SERVICE_TYPE,
            f"{label}.{SERVICE_TYPE}",
            port=46002,
            properties=txt,
            server=host,
            parsed_addresses=[address],
        )

    first = info("twin", "twin-a.local.", "127.0.0.1")
    second = info("twin (2)", "twin-b.local.", "127.0.0.2")
    async with AsyncZeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only) as raw:
        for i in (first, second):  # in this order, so "second" is the freshest sighting
            await (await raw.async_register_service(i, cooperating_responders=True))
        merged = await obs.wait_for(
            lambda p: p.instance_id == "twin" and len(p.addresses) == 2, STEP
        )
        assert set(merged.addresses) == {"127.0.0.1", "127.0.0.2"}
        assert merged.addresses[0] == "127.0.0.2"  # freshest sighting first
        assert merged.service_name == second.name
        assert len(obs.peers()) == 1

        # One of the two names says goodbye: still listed, with what is left.
        await (await raw.async_unregister_service(second))
        left = await obs.wait_for(lambda p: p.instance_id == "twin" and len(p.addresses) == 1, STEP)
        assert left.addresses == ("127.0.0.1",) and left.service_name == first.name

        await (await raw.async_unregister_service(first))
        await obs.wait_until(lambda: obs.find("twin") is None, STEP)
    kinds = observer.kinds_for("twin")
    assert kinds[0] == "added" and kinds[-1] == "removed" and kinds.count("removed") == 1
    assert obs.duplicates.get("twin") is None
