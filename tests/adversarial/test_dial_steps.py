"""Each step of a dial after the TCP connect has a deadline too (issue 11, "every step").

test_dial_deadlines.py covers a listener that accepts and never answers the HTTP upgrade. Here
the listener goes further and then stops: a real aiohttp server on 127.0.0.1 that (a) upgrades
the WebSocket and sends nothing, (b) sends only the first handshake frame's worth of nothing
after reading ours, or (c) completes the whole handshake and never answers our Hello. A real
in-process node with the production link timings pairs with it; each attempt must fail within
its step's deadline with a clear reason, and store nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from peerstash.peer.links import channel as ch
from peerstash.peer.links.link import PairingError, Timings
from peerstash.peer.trust.identity import Identity
from peerstash.peer.trust.tokens import PairingToken
from tests.fixtures.nodes import MakeNode, store_of

DEFAULTS = Timings()  # the production deadlines: 10 s to dial, 10 s per handshake step


@asynccontextmanager
async def silent_peer(mode: str, identity: Identity) -> AsyncIterator[str]:
    """A peer port that stops answering at ``mode``; yields its URL."""
    forever = asyncio.Event()

    async def sync(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=ch.WS_MAX_MSG_SIZE)
        await ws.prepare(request)
        send, recv = ch.websocket_transport(ws)
        if mode == "after-first-frame":
            await recv()  # the dialer's first handshake frame, never answered
        elif mode == "after-handshake":
            chan = await ch.respond(identity, send, recv)
            await chan.recv_msg()  # the dialer's Hello, never answered
        await forever.wait()  # the frozen process: the socket stays open, nothing comes
        return ws

    app = web.Application()
    app.router.add_get("/v1/sync", sync)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        forever.set()
        await runner.cleanup()


@pytest.mark.parametrize("mode", ["upgraded", "after-first-frame", "after-handshake"])
async def test_a_peer_that_goes_silent_mid_dial_fails_the_dial_at_its_deadline(
    make_node: MakeNode, mode: str
) -> None:
    b = await make_node("b", link_timings=DEFAULTS)
    assert b.peers
    identity = Identity.generate()
    token = PairingToken.generate(identity.key_id, "evil").text
    async with silent_peer(mode, identity) as url:
        started = time.monotonic()
        with pytest.raises((PairingError, ConnectionError, TimeoutError, ch.ChannelError)) as err:
            async with asyncio.timeout(60):  # the test's own bound, far above the deadline
                await b.peers.pair(token, url, [])
        took = time.monotonic() - started
    # One step's deadline (10 s), plus closing the socket (aiohttp waits up to 10 s for the
    # silent side's close frame): never the 60 s bound, never for ever.
    assert DEFAULTS.handshake_timeout - 1 <= took < 2 * DEFAULTS.handshake_timeout + 5, took
    # What the person reads names the step that went silent, not a bare "failed:".
    assert str(err.value).endswith(
        "within 10 s" if mode != "after-handshake" else "no answer to our Hello within 10 s"
    ), str(err.value)
    assert await store_of(b).list_peers() == []
    print(f"dial step {mode}: failed after {took:.1f} s: {err.value}")
