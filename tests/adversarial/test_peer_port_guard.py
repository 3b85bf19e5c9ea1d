"""The peer port's guard on a real aiohttp server on 127.0.0.1, with small limits.

Each hostile client here is a raw TCP connection that sends what our dialer never would: half
a request, then nothing. What it gets is what the guard promises: closed at accept when a cap
is full, closed at the header deadline otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from peerstash.peer.links.guard import (
    GuardedTCPSite,
    PeerPortGuard,
    request_started_middleware,
    server_header,
)


async def _ok(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


@pytest.fixture
async def guarded() -> AsyncIterator[tuple[PeerPortGuard, int]]:
    app = web.Application(middlewares=[request_started_middleware])
    app.on_response_prepare.append(server_header)
    app.router.add_get("/healthz", _ok)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=5.0, shutdown_timeout=1.0)
    await runner.setup()
    guard = PeerPortGuard(
        max_unauthenticated=5,
        per_source=3,
        request_timeout=0.5,
        unauthenticated_lifetime=30.0,
        reserve=2,
    )
    site = GuardedTCPSite(runner, "127.0.0.1", 0, guard)
    await site.start()
    try:
        yield guard, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def half_request(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    return reader, writer


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closes the connection within ``seconds`` (sending nothing)."""
    try:
        data = await asyncio.wait_for(reader.read(), seconds)
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    assert data == b""
    return True


async def test_half_sent_request_is_closed_at_the_header_deadline(
    guarded: tuple[PeerPortGuard, int],
) -> None:
    guard, port = guarded
    started = time.monotonic()
    reader, writer = await half_request(port, "127.0.0.2")
    assert await closed_within(reader, 5)
    assert 0.4 < time.monotonic() - started < 3
    assert guard.expired == 1 and guard.unauthenticated == 0
    writer.close()
    # A whole request is answered (and says who it is without a version).
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
    assert head.startswith("HTTP/1.1 200") and "Server: peerstash\r\n" in head
    writer.close()


async def test_caps_close_new_connections_at_once(guarded: tuple[PeerPortGuard, int]) -> None:
    guard, port = guarded
    guard.request_timeout = 30.0  # hold them: this test is about the caps
    held = [await half_request(port, "127.0.0.3") for _ in range(3)]
    extra, w = await half_request(port, "127.0.0.3")  # a fourth from the same address
    assert await closed_within(extra, 2)
    w.close()
    held += [await half_request(port, "127.0.0.4") for _ in range(2)]
    assert not any([await closed_within(r, 0.2) for r, _ in held])
    assert guard.unauthenticated == 5
    stranger, w = await half_request(port, "127.0.0.5")  # the total cap is full
    assert await closed_within(stranger, 2)
    w.close()
    # An address a peer authenticated from may use the reserve.
    guard.trust("127.0.0.6")
    friends = [await half_request(port, "127.0.0.6") for _ in range(2)]
    assert not any([await closed_within(r, 0.2) for r, _ in friends])
    third, w = await half_request(port, "127.0.0.6")  # the reserve is two
    assert await closed_within(third, 2)
    w.close()
    assert guard.refused == 3
    for _, writer in held + friends:
        writer.close()
