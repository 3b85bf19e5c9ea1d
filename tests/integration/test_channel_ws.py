"""The channel over a real aiohttp WebSocket server on 127.0.0.1 (port 0), real client.

The server here is a stand-in for the peer endpoint at ``/v1/sync``: handshake, then a
``Hello``/``Welcome`` exchange, then an echo loop over raw channel messages. What we check is
what only a real socket can show: frames really are binary WebSocket messages, nothing readable
leaves the machine, the largest frame fits aiohttp's limits, and one broken connection does not
disturb another.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from peerstash.peer.links.channel import (
    MAX_WIRE_FRAME_SIZE,
    WS_MAX_MSG_SIZE,
    ChannelError,
    HandshakeError,
    OversizedFrameError,
    RecvFn,
    SecureChannel,
    SendFn,
    TamperedFrameError,
    initiate,
    respond,
    websocket_transport,
)
from peerstash.peer.links.protocol import MAX_FRAME_SIZE, Close, Hello, Welcome, encode
from peerstash.peer.trust.identity import Identity

STEP = 10.0
MARKER = b"SECRET-MARKER-123"


@dataclass
class PeerServer:
    identity: Identity
    url: str
    errors: list[BaseException] = field(default_factory=list)
    peers: list[bytes] = field(default_factory=list)
    handlers_done: int = 0


SERVER = web.AppKey("server", PeerServer)


async def sync_handler(request: web.Request) -> web.WebSocketResponse:
    server = request.app[SERVER]
    ws = web.WebSocketResponse(max_msg_size=WS_MAX_MSG_SIZE)
    await ws.prepare(request)
    send, recv = websocket_transport(ws)
    try:
        channel = await respond(server.identity, send, recv, handshake_timeout=STEP)
        server.peers.append(channel.peer_public_key)
        hello = await channel.recv_msg()
        assert isinstance(hello, Hello)
        await channel.send_msg(Welcome(instance_id="server", grants=("ops:*",)))
        while True:
            data = await channel.recv()
            if data == b"close":
                await channel.send_msg(Close(reason="bye"))
                break
            await channel.send(b"echo:" + data)
    except ChannelError as exc:
        # Anything wrong with this connection ends this connection only.
        server.errors.append(exc)
        await ws.close(code=aiohttp.WSCloseCode.PROTOCOL_ERROR, message=b"channel error")
    finally:
        server.handlers_done += 1
    await ws.close()
    return ws


@pytest.fixture
async def peer_server() -> AsyncIterator[PeerServer]:
    server = PeerServer(identity=Identity.generate(), url="")
    app = web.Application()
    app[SERVER] = server
    app.router.add_get("/v1/sync", sync_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    assert host == "127.0.0.1"
    server.url = f"http://127.0.0.1:{port}/v1/sync"
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@dataclass
class Wire:
    """Records every raw frame the client sends and receives; can corrupt outgoing ones."""

    send_inner: SendFn
    recv_inner: RecvFn
    sent: list[bytes] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    corrupt_next: bool = False

    async def send(self, data: bytes) -> None:
        self.sent.append(data)
        if self.corrupt_next:
            self.corrupt_next = False
            data = data[:-1] + bytes([data[-1] ^ 0x01])
        await self.send_inner(data)

    async def recv(self) -> bytes:
        data = await self.recv_inner()
        self.received.append(data)
        return data


async def connect(
    session: aiohttp.ClientSession, server: PeerServer, name: str = "client"
) -> tuple[SecureChannel, Wire, aiohttp.ClientWebSocketResponse]:
    ws = await session.ws_connect(server.url, max_msg_size=WS_MAX_MSG_SIZE)
    wire = Wire(*websocket_transport(ws))
    channel = await initiate(
        Identity.generate(),
        wire.send,
        wire.recv,
        expected_key_id=server.identity.key_id,
        handshake_timeout=STEP,
    )
    await channel.send_msg(Hello(instance_id=name))
    welcome = await asyncio.wait_for(channel.recv_msg(), STEP)
    assert welcome == Welcome(instance_id="server", grants=("ops:*",))
    return channel, wire, ws


async def echo(channel: SecureChannel, data: bytes) -> bytes:
    await channel.send(data)
    return await asyncio.wait_for(channel.recv(), STEP)


async def test_handshake_and_messages_both_ways(
    peer_server: PeerServer, session: aiohttp.ClientSession
) -> None:
    channel, _, ws = await connect(session, peer_server)
    assert channel.peer_public_key == peer_server.identity.public_key
    assert len(peer_server.peers) == 1
    for i in range(20):
        assert await echo(channel, f"message {i}".encode()) == f"echo:message {i}".encode()
    await channel.send(b"close")
    assert await asyncio.wait_for(channel.recv_msg(), STEP) == Close(reason="bye")
    await ws.close()
    assert peer_server.errors == []


async def test_largest_message_crosses_the_websocket(
    peer_server: PeerServer, session: aiohttp.ClientSession
) -> None:
    channel, _, ws = await connect(session, peer_server)
    payload = os.urandom(MAX_FRAME_SIZE - len(b"echo:"))
    assert await echo(channel, payload) == b"echo:" + payload
    await ws.close()


async def test_wire_capture_never_shows_plaintext(
    peer_server: PeerServer, session: aiohttp.ClientSession
) -> None:
    channel, wire, ws = await connect(session, peer_server)
    handshake_frames = (len(wire.sent), len(wire.received))
    reply = await echo(channel, b"the password is " + MARKER)
    assert reply == b"echo:the password is " + MARKER  # it really went through, both ways
    # A typed message carrying the marker, echoed back (encrypted) by the server.
    await channel.send_msg(Close(reason=MARKER.decode()))
    assert await asyncio.wait_for(channel.recv(), STEP) == b"echo:" + encode(
        Close(reason=MARKER.decode())
    )
    frames = wire.sent + wire.received
    assert len(wire.sent) > handshake_frames[0] and len(wire.received) > handshake_frames[1]
    assert all(MARKER not in frame for frame in frames)
    assert all(MARKER.lower() not in frame.lower() for frame in frames)
    await ws.close()


async def test_a_tampered_frame_closes_only_that_connection(
    peer_server: PeerServer, session: aiohttp.ClientSession
) -> None:
    victim, victim_wire, victim_ws = await connect(session, peer_server, "victim")
    other, _, other_ws = await connect(session, peer_server, "other")
    assert await echo(other, b"before") == b"echo:before"

    victim_wire.corrupt_next = True
    await victim.send(b"tampered in transit")
    with pytest.raises(ChannelError):
        await asyncio.wait_for(victim.recv(), STEP)  # the server hung up on it
    assert victim_ws.closed
    assert victim_ws.close_code == aiohttp.WSCloseCode.PROTOCOL_ERROR
    assert len(peer_server.errors) == 1
    assert isinstance(peer_server.errors[0], TamperedFrameError)

    # The other connection to the same server is untouched.
    for i in range(5):
        assert await echo(other, f"after {i}".encode()) == f"echo:after {i}".encode()
    # And the server still accepts new connections.
    fresh, _, fresh_ws = await connect(session, peer_server, "fresh")
    assert await echo(fresh, b"hi") == b"echo:hi"
    assert len(peer_server.errors) == 1
    await other_ws.close()
    await fresh_ws.close()


async def test_wrong_server_key_is_refused_by_the_client(
    peer_server: PeerServer, session: aiohttp.ClientSession
) -> None:
    ws = await session.ws_connect(peer_server.url, max_msg_size=WS_MAX_MSG_SIZE)
    send, recv = websocket_transport(ws)
    with pytest.raises(HandshakeError, match="key id"):
        await initiate(
            Identity.generate(),
            send,
            recv,
            expected_key_id=Identity.generate().key_id,
            handshake_timeout=STEP,
        )
    await ws.close()
    # The server sees the connection go away mid-handshake, and only that.
    for _ in range(100):
        if peer_server.handlers_done:
            break
        await asyncio.sleep(0.01)
    assert len(peer_server.errors) == 1
    assert isinstance(peer_server.errors[0], HandshakeError)
    assert peer_server.peers == []


async def test_text_and_garbage_frames_before_the_handshake(
    peer_server: PeerServer, session: aiohttp.ClientSession
) -> None:
    ws = await session.ws_connect(peer_server.url)
    await ws.send_str("hello?")
    msg = await asyncio.wait_for(ws.receive(), STEP)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    ws2 = await session.ws_connect(peer_server.url)
    await ws2.send_bytes(os.urandom(64))
    # A cleartext reject, then the close.
    msgs = [await asyncio.wait_for(ws2.receive(), STEP) for _ in range(2)]
    assert msgs[0].type == aiohttp.WSMsgType.BINARY
    assert msgs[1].type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert len(peer_server.errors) == 2
    assert all(isinstance(e, HandshakeError) for e in peer_server.errors)
    await ws.close()
    await ws2.close()


async def test_an_oversized_frame_is_refused_by_the_channel(
    peer_server: PeerServer, session: aiohttp.ClientSession
) -> None:
    """Bigger than our limit but within aiohttp's: the channel refuses it, not a crash."""
    channel, wire, ws = await connect(session, peer_server)
    await wire.send_inner(bytes(MAX_WIRE_FRAME_SIZE + 1))
    with pytest.raises(ChannelError):
        await asyncio.wait_for(channel.recv(), STEP)
    assert len(peer_server.errors) == 1
    assert isinstance(peer_server.errors[0], OversizedFrameError)
    await ws.close()
