"""A hostile peer floods answers: a real link between two in-process nodes, where A's handler
streams 150 MB and A ignores the caller's cancel, as a malicious node would.

What is asserted is what matters to the caller B: its call fails with a clear error, its memory
stays bounded while the flood goes on (traced allocations of the whole process, both nodes),
and the link is still usable afterwards. A stream to a consumer that stops reading holds a
bounded amount, and the rest of the answer arrives once it reads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tracemalloc
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from peerstash.peer.links import protocol as proto
from peerstash.peer.links.link import Link
from peerstash.peer.links.rpc import (
    MAX_REPLY_BYTES,
    MAX_REPLY_CHUNKS,
    MAX_REPLY_ITEMS,
    CallContext,
    ReplyTooLarge,
    RpcService,
)
from peerstash.peer.node import Node
from tests.fixtures.nodes import MakeNode, link

ITEM = "x" * 1024  # 1 KiB per item: 500 items (one chunk) make a 0.5 MB frame
FLOOD_ITEMS = 150 * 1024  # 150 MiB in all
MiB = 1024 * 1024


def rpc(node: Node) -> RpcService:
    assert node.rpc is not None
    return node.rpc


def deaf_to_cancel(node: Node) -> None:
    """Make ``node`` ignore CallCancel, as a hostile peer would (it keeps sending)."""
    assert node.peers is not None

    async def ignore(link: Link, msg: proto.Message) -> None:
        return None

    node.peers._handlers[proto.CallCancel] = ignore


async def test_a_flood_of_reply_chunks_fails_the_call_with_bounded_memory(
    make_node: MakeNode,
) -> None:
    a = await make_node("alpha")
    b = await make_node("bravo")
    await link(a, b, ["ops"])
    deaf_to_cancel(a)
    flood_done = asyncio.Event()
    sent = 0

    async def flood(ctx: CallContext, args: Mapping[str, Any]) -> AsyncIterator[str]:
        nonlocal sent
        try:
            for _ in range(FLOOD_ITEMS):
                sent += 1
                yield ITEM
        finally:
            flood_done.set()

    async def ping(ctx: CallContext, args: Mapping[str, Any]) -> str:
        return "pong"

    rpc(a).register("test.flood", flood, grant=None)
    rpc(a).register("test.ping", ping, grant=None)

    rss_before = reset_peak_rss()
    tracemalloc.start()
    try:
        with pytest.raises(ReplyTooLarge) as err:
            await rpc(b).call("alpha", "test.flood", silence=10)
        # The hostile side goes on sending everything; B drops it as it arrives.
        await asyncio.wait_for(flood_done.wait(), 60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_growth = peak_rss() - rss_before
    print(f"reply flood: peak traced {peak / MiB:.1f} MiB, peak RSS +{rss_growth / MiB:.1f} MiB")
    assert sent == FLOOD_ITEMS
    # The process's resident memory too (the issue measured +140 MiB), not only Python's.
    assert rss_growth < 64 * MiB, f"peak RSS grew {rss_growth / MiB:.1f} MiB"
    assert "peer alpha sent a reply larger than 8 MiB" in err.value.message
    assert err.value.code == "too_large"
    # 150 MiB went over the link; the process never held more than a fraction of it.
    assert peak < 32 * MiB, f"peak traced memory {peak / MiB:.1f} MiB"
    assert MAX_REPLY_BYTES == 8 * MiB
    # The link survived the flood and answers the next call.
    assert await rpc(b).call("alpha", "test.ping", silence=30) == "pong"
    assert b.peers is not None and "alpha" in b.peers.links


async def test_a_stream_to_a_consumer_that_stops_reading_holds_a_bounded_amount(
    make_node: MakeNode,
) -> None:
    a = await make_node("alpha")
    b = await make_node("bravo")
    await link(a, b, ["ops"])
    produced = 0
    total = 60 * 1024  # 60 MiB

    async def listing(ctx: CallContext, args: Mapping[str, Any]) -> AsyncIterator[str]:
        nonlocal produced
        for _ in range(total):
            produced += 1
            yield ITEM

    rpc(a).register("test.ls", listing, grant=None)
    got = 0
    tracemalloc.start()
    try:
        async for item in rpc(b).stream("alpha", "test.ls", silence=10):
            assert item == ITEM
            got += 1
            if got == 1:
                # The consumer stops reading for a while (a CLI whose terminal is paused):
                # this wait is the behaviour under test, there is no event to await instead.
                await asyncio.sleep(2.0)
                held = produced - got
                _, peak = tracemalloc.get_traced_memory()
                # The producer was held back: far less than the whole answer was sent, and
                # what waits here is a few frames, not the stream.
                assert held < 30 * 1024, f"{held} items ahead of a paused consumer"
                assert peak < 40 * MiB, f"peak traced memory {peak / MiB:.1f} MiB"
    finally:
        tracemalloc.stop()
    assert got == total == produced


async def test_a_consumer_that_leaves_a_full_stream_does_not_stall_the_link(
    make_node: MakeNode,
) -> None:
    a = await make_node("alpha")
    b = await make_node("bravo")
    await link(a, b, ["ops"])

    async def listing(ctx: CallContext, args: Mapping[str, Any]) -> AsyncIterator[str]:
        for _ in range(60 * 1024):
            yield ITEM

    async def ping(ctx: CallContext, args: Mapping[str, Any]) -> str:
        return "pong"

    rpc(a).register("test.ls", listing, grant=None)
    rpc(a).register("test.ping", ping, grant=None)
    async with contextlib.aclosing(rpc(b).stream("alpha", "test.ls", silence=60)) as items:
        async for _ in items:
            # Stop reading until the queue is full and the link waits for room (the state
            # under test; nothing signals it), then leave.
            await asyncio.sleep(1.0)
            break
    # The link's reader was waiting for this consumer; it is released at once, not after
    # the stream's 60 s of silence.
    assert await rpc(b).call("alpha", "test.ping", silence=10) == "pong"


def reset_peak_rss() -> int:
    """Start the kernel's peak-RSS count over (``clear_refs`` 5); the current RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return peak_rss()


def peak_rss() -> int:
    """The process's peak resident memory since the last reset (``VmHWM``), in bytes."""
    with open("/proc/self/status") as f:
        found = re.search(r"^VmHWM:\s+(\d+) kB$", f.read(), re.M)
    assert found is not None
    return int(found.group(1)) * 1024


@pytest.mark.parametrize(
    ("chunk_items", "items", "limit"),
    [
        # 300,000 one-byte items: 0.3 MB, far below the byte bound; only the count stops it.
        (500, MAX_REPLY_ITEMS + 100_000, f"{MAX_REPLY_ITEMS} items"),
        # One item per chunk: each chunk's frame costs far more than its byte count says.
        (1, MAX_REPLY_CHUNKS + 2_000, f"{MAX_REPLY_CHUNKS} chunks"),
    ],
)
async def test_a_flood_of_tiny_items_or_chunks_is_bounded_by_count(
    make_node: MakeNode,
    monkeypatch: pytest.MonkeyPatch,
    chunk_items: int,
    items: int,
    limit: str,
) -> None:
    a = await make_node("alpha")
    b = await make_node("bravo")
    await link(a, b, ["ops"])
    deaf_to_cancel(a)
    # The hostile answerer chooses its chunk size (both nodes share the module here).
    monkeypatch.setattr("peerstash.peer.links.rpc.CHUNK_ITEMS", chunk_items)
    flood_done = asyncio.Event()
    sent = 0

    async def flood(ctx: CallContext, args: Mapping[str, Any]) -> AsyncIterator[int]:
        nonlocal sent
        try:
            for _ in range(items):
                sent += 1
                yield 0
        finally:
            flood_done.set()

    async def ping(ctx: CallContext, args: Mapping[str, Any]) -> str:
        return "pong"

    rpc(a).register("test.tiny", flood, grant=None)
    rpc(a).register("test.ping", ping, grant=None)
    rss_before = reset_peak_rss()
    with pytest.raises(ReplyTooLarge) as err:
        await rpc(b).call("alpha", "test.tiny", silence=10)
    await asyncio.wait_for(flood_done.wait(), 120)
    rss_growth = peak_rss() - rss_before
    print(f"tiny reply flood ({limit}): peak RSS +{rss_growth / MiB:.1f} MiB")
    assert sent == items  # the hostile side sent it all; B stopped gathering at the bound
    assert err.value.code == "too_large" and limit in err.value.message
    assert rss_growth < 64 * MiB, f"peak RSS grew {rss_growth / MiB:.1f} MiB"
    assert await rpc(b).call("alpha", "test.ping", silence=30) == "pong"
