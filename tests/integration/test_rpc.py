"""Requests over a real link between two in-process nodes (peer/links/rpc.py).

Each test pairs B to A with the grants A gives B, registers methods on A the way a feature
does, and calls them from B. What is asserted is what a caller sees: the answer, the words
of a refusal, a stream that arrives in pieces, a dropped link that fails a call at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from peerstash.core.engine import EngineError
from peerstash.peer.links import protocol as proto
from peerstash.peer.links.rpc import CallContext, CallError, PeerUnavailable, RpcService, arg
from peerstash.peer.node import Node
from tests.fixtures.nodes import MakeNode, link


def rpc(node: Node) -> RpcService:
    assert node.rpc is not None
    return node.rpc


async def two(make_node: MakeNode, a_gives_b: list[str]) -> tuple[Node, Node]:
    a = await make_node("alpha")
    b = await make_node("bravo")
    await link(a, b, a_gives_b)
    return a, b


async def test_call_answers_and_checks_the_grant_where_the_data_lives(
    make_node: MakeNode,
) -> None:
    a, b = await two(make_node, ["run:plan:docs"])
    seen: list[tuple[str, Any]] = []

    async def start(ctx: CallContext, args: Mapping[str, Any]) -> dict[str, Any]:
        plan = arg(args, "plan")
        ctx.require("run", plan=plan)
        seen.append((ctx.peer_id, plan))
        return {"started": plan}

    async def config(ctx: CallContext, args: Mapping[str, Any]) -> str:
        return "never"

    rpc(a).register("test.start", start, grant="run")
    rpc(a).register("test.config", config, grant="config.read")

    assert await rpc(b).call("alpha", "test.start", {"plan": "docs"}) == {"started": "docs"}
    assert seen == [("bravo", "docs")]
    # In the grant, but not in its scope: refused by A, with the reason.
    with pytest.raises(CallError) as err:
        await rpc(b).call("alpha", "test.start", {"plan": "photos"})
    assert err.value.code == proto.ErrorCode.FORBIDDEN
    assert "no 'run' grant for plan 'photos'" in err.value.message
    # A grant B does not hold at all: the handler never runs.
    with pytest.raises(CallError) as err:
        await rpc(b).call("alpha", "test.config")
    assert err.value.code == proto.ErrorCode.FORBIDDEN
    assert "no 'config.read' grant" in err.value.message
    # Bad arguments and unknown methods are answered, and the link stays up.
    with pytest.raises(CallError) as err:
        await rpc(b).call("alpha", "test.start", {"plan": 7})
    assert err.value.code == proto.ErrorCode.BAD_REQUEST
    with pytest.raises(CallError) as err:
        await rpc(b).call("alpha", "test.nothing")
    assert err.value.code == proto.ErrorCode.UNKNOWN_METHOD
    assert "does not offer 'test.nothing'" in err.value.message
    assert await rpc(b).call("alpha", "test.start", {"plan": "docs"}) == {"started": "docs"}
    assert seen == [("bravo", "docs"), ("bravo", "docs")]


async def test_errors_are_words_and_internal_details_stay_home(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await two(make_node, ["ops"])

    async def engine_says(ctx: CallContext, args: Mapping[str, Any]) -> None:
        raise EngineError("repository 'main' is locked by host x (pid 12)")

    async def crashes(ctx: CallContext, args: Mapping[str, Any]) -> None:
        raise RuntimeError("secret path /home/alice/.secret-thing")

    rpc(a).register("test.engine", engine_says, grant=None)
    rpc(a).register("test.crash", crashes, grant=None)
    with pytest.raises(CallError) as err:
        await rpc(b).call("alpha", "test.engine")
    assert err.value.code == proto.ErrorCode.FAILED
    assert err.value.message == "repository 'main' is locked by host x (pid 12)"
    with pytest.raises(CallError) as err:
        await rpc(b).call("alpha", "test.crash")
    assert err.value.code == proto.ErrorCode.INTERNAL
    assert ".secret-thing" not in err.value.message
    assert "its log says why" in err.value.message
    # The answering side logged the real cause for its owner.
    assert any(".secret-thing" in r.getMessage() or r.exc_info for r in caplog.records)


async def test_a_stream_arrives_in_pieces_and_is_bounded_by_silence_not_length(
    make_node: MakeNode,
) -> None:
    a, b = await two(make_node, ["ops"])
    gate = asyncio.Event()
    produced = 0

    async def listing(ctx: CallContext, args: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        nonlocal produced
        for i in range(arg(args, "n", int)):
            if i == 600:
                # The first chunk (500 items) must already be with the caller by now.
                await gate.wait()
            produced += 1
            yield {"path": f"/data/file{i:05d}"}

    rpc(a).register("test.ls", listing, grant="ops")
    got: list[str] = []
    async for item in rpc(b).stream("alpha", "test.ls", {"n": 1200}, silence=5):
        got.append(item["path"])
        if len(got) == 500:
            assert produced < 1200
            gate.set()
    assert got == [f"/data/file{i:05d}" for i in range(1200)]
    # call() gathers a stream into a list.
    gate.set()
    assert len(await rpc(b).call("alpha", "test.ls", {"n": 3})) == 3


async def test_a_dropped_link_fails_the_call_at_once_and_cancels_the_handler(
    make_node: MakeNode,
) -> None:
    a, b = await two(make_node, ["ops"])
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow(ctx: CallContext, args: Mapping[str, Any]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    rpc(a).register("test.slow", slow, grant=None)
    call = asyncio.create_task(rpc(b).call("alpha", "test.slow", silence=60))
    await asyncio.wait_for(started.wait(), 10)
    assert b.peers is not None
    await b.peers.links["alpha"].close("test drops the link")
    with pytest.raises(PeerUnavailable) as err:
        await asyncio.wait_for(call, 10)
    assert "dropped before it answered" in err.value.message
    await asyncio.wait_for(cancelled.wait(), 10)
    # Not linked at all: said at once.
    await a.stop()
    with pytest.raises(PeerUnavailable) as err:
        await asyncio.wait_for(rpc(b).call("alpha", "test.slow"), 10)
    assert "not connected" in err.value.message or "dropped" in err.value.message


async def test_a_caller_that_gives_up_stops_the_work(make_node: MakeNode) -> None:
    a, b = await two(make_node, ["ops"])
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow(ctx: CallContext, args: Mapping[str, Any]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    rpc(a).register("test.slow", slow, grant=None)
    from peerstash.peer.links.rpc import CallTimeout

    with pytest.raises(CallTimeout) as err:
        await rpc(b).call("alpha", "test.slow", silence=0.5)
    assert "did not answer test.slow within 0.5s" in err.value.message
    assert started.is_set()
    await asyncio.wait_for(cancelled.wait(), 10)
    # The link is still up and answers the next call.
    rpc(a).register("test.ok", _ok, grant=None)
    assert await rpc(b).call("alpha", "test.ok") == "ok"


async def _ok(ctx: CallContext, args: Mapping[str, Any]) -> str:
    return "ok"


async def test_too_many_calls_in_flight_are_refused_not_queued(make_node: MakeNode) -> None:
    a, b = await two(make_node, ["ops"])
    rpc(a).max_in_flight = 2
    release = asyncio.Event()
    both_running = asyncio.Event()
    running = 0

    async def held(ctx: CallContext, args: Mapping[str, Any]) -> int:
        nonlocal running
        running += 1
        if running == 2:
            both_running.set()
        await release.wait()
        return 1

    rpc(a).register("test.held", held, grant=None)
    first = [asyncio.create_task(rpc(b).call("alpha", "test.held")) for _ in range(2)]
    # Both are running on A before the third is sent.
    await asyncio.wait_for(both_running.wait(), 10)
    with pytest.raises(CallError) as err:
        await rpc(b).call("alpha", "test.held")
    assert err.value.code == proto.ErrorCode.BUSY
    release.set()
    assert await asyncio.gather(*first) == [1, 1]
