"""What an unauthenticated client may hold on the peer port, and for how long.

The peer port faces the network: anyone can open a TCP connection to it. Before this module, a
client could open a thousand connections, send half a request line on each and keep them for
aiohttp's hour of keep-alive, until the node ran out of file descriptors and its admin socket,
scheduler and backups stopped with it. The guard bounds that:

* at most ``max_unauthenticated`` connections that have not finished a peer handshake, and at
  most ``per_source`` of them from one address (an IPv6 /64 counts as one address); a connection
  over either cap is closed the moment it is accepted, so it holds a descriptor for one loop
  iteration;
* a connection must deliver a complete request (headers) within ``request_timeout`` seconds;
* a connection that has not completed a peer handshake within ``unauthenticated_lifetime``
  seconds is closed, whatever it is doing (the backstop behind the per-step deadlines in
  :mod:`peerstash.peer.links.link`).

A connection stops counting once :func:`mark_authenticated` is called for its request (the link
code does that when a peer's handshake and Hello are done): a paired peer's long-lived link
never occupies an unauthenticated slot. An address a peer authenticated from within the last
``trusted_for`` seconds may use ``reserve`` slots beyond the total cap (its own per-address cap
still holds), so a flood from other addresses does not keep a paired peer from reconnecting.

Every response, error pages included, says ``Server: peerstash`` and no version: the port need
not tell a scanner which aiohttp or Python it runs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)

#: The ``Server`` header of every response on the peer port.
SERVER_HEADER = "peerstash"


def source_key(address: str) -> str:
    """The address a connection counts under: IPv4-mapped IPv6 as IPv4, IPv6 by its /64."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class PeerPortGuard:
    """Counts the unauthenticated connections of one peer port and enforces its limits."""

    def __init__(
        self,
        *,
        max_unauthenticated: int = 256,
        per_source: int = 32,
        request_timeout: float = 10.0,
        unauthenticated_lifetime: float = 60.0,
        reserve: int = 64,
        trusted_for: float = 24 * 3600.0,
        max_trusted: int = 4096,
    ) -> None:
        self.max_unauthenticated = max_unauthenticated
        self.per_source = per_source
        self.request_timeout = request_timeout
        self.unauthenticated_lifetime = unauthenticated_lifetime
        self.reserve = reserve
        self.trusted_for = trusted_for
        self.max_trusted = max_trusted
        #: Addresses peers authenticated from, with when (most recent last).
        self._trusted: OrderedDict[str, float] = OrderedDict()
        self._unauthenticated: dict[GuardedHandler, str] = {}
        self._by_source: Counter[str] = Counter()
        #: Connections closed at accept because a cap was reached (for logs and tests).
        self.refused = 0
        #: Connections closed by a deadline.
        self.expired = 0

    @property
    def unauthenticated(self) -> int:
        return len(self._unauthenticated)

    def admit(self, handler: GuardedHandler, source: str) -> str | None:
        """Count ``handler`` in, or return why it is refused."""
        total = len(self._unauthenticated)
        if total >= self.max_unauthenticated and not (
            total < self.max_unauthenticated + self.reserve and self._is_trusted(source)
        ):
            return f"{total} unauthenticated connections in all"
        if self._by_source[source] >= self.per_source:
            return f"{self._by_source[source]} unauthenticated connections from that address"
        self._unauthenticated[handler] = source
        self._by_source[source] += 1
        return None

    def _is_trusted(self, source: str) -> bool:
        since = self._trusted.get(source)
        return since is not None and time.monotonic() - since < self.trusted_for

    def trust(self, source: str) -> None:
        """A peer authenticated from ``source``: it may use the reserve from now on."""
        self._trusted[source] = time.monotonic()
        self._trusted.move_to_end(source)
        while len(self._trusted) > self.max_trusted:
            self._trusted.popitem(last=False)

    def release(self, handler: GuardedHandler) -> None:
        """``handler`` authenticated or went away: it no longer counts."""
        source = self._unauthenticated.pop(handler, None)
        if source is None:
            return
        self._by_source[source] -= 1
        if self._by_source[source] <= 0:
            del self._by_source[source]

    def protocol_factory(self, server: web.Server) -> Callable[[], GuardedHandler]:
        """What ``loop.create_server`` calls per accepted connection instead of ``server``."""
        kwargs: dict[str, Any] = dict(server._kwargs)

        def make() -> GuardedHandler:
            return GuardedHandler(self, server, loop=server._loop, **kwargs)

        return make


class GuardedHandler(RequestHandler):
    """aiohttp's request handler, counted and timed by a :class:`PeerPortGuard`."""

    def __init__(self, guard: PeerPortGuard, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._deadlines: list[asyncio.TimerHandle] = []
        self._guard_transport: asyncio.Transport | None = None
        self._source = ""
        self.accepted_at = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert isinstance(transport, asyncio.Transport)
        self._guard_transport = transport
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else str(peer)
        source = self._source = source_key(address)
        refused = self._guard.admit(self, source)
        if refused is not None:
            self._guard.refused += 1
            log.warning("peer port: refused a connection from %s: %s", source, refused)
            transport.abort()
            return
        loop = asyncio.get_running_loop()
        self._deadlines = [
            loop.call_later(
                self._guard.request_timeout, self._expire, "no complete request", source
            ),
            loop.call_later(
                self._guard.unauthenticated_lifetime, self._expire, "no peer handshake", source
            ),
        ]

    def _expire(self, why: str, source: str) -> None:
        self._guard.expired += 1
        log.info("peer port: closed a connection from %s: %s in time", source, why)
        self._guard.release(self)
        if self._guard_transport is not None:
            self._guard_transport.abort()

    def request_started(self) -> None:
        """A complete request arrived: the header deadline is met."""
        if self._deadlines:
            self._deadlines[0].cancel()

    def authenticated(self) -> None:
        """A peer completed its handshake on this connection: no deadline, no slot."""
        for handle in self._deadlines:
            handle.cancel()
        self._deadlines = []
        self._guard.release(self)
        if self._source:
            self._guard.trust(self._source)

    def connection_lost(self, exc: BaseException | None) -> None:
        for handle in self._deadlines:
            handle.cancel()
        self._deadlines = []
        self._guard.release(self)
        self._guard_transport = None
        super().connection_lost(exc)

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # Error pages (a malformed request line, say) bypass the application's signals.
        resp = super().handle_error(request, status, exc, message)
        resp.headers["Server"] = SERVER_HEADER
        return resp


def mark_authenticated(request: web.BaseRequest) -> None:
    """The connection carrying ``request`` belongs to an authenticated peer from now on."""
    handler = request.protocol
    if isinstance(handler, GuardedHandler):
        handler.authenticated()


@web.middleware
async def request_started_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Disarm the header deadline once aiohttp has parsed a whole request."""
    protocol = request.protocol
    if isinstance(protocol, GuardedHandler):
        protocol.request_started()
    return await handler(request)


async def server_header(_request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: no software version in the ``Server`` header."""
    response.headers["Server"] = SERVER_HEADER


class GuardedTCPSite(web.TCPSite):
    """A TCP site whose connections go through a :class:`PeerPortGuard`."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        guard: PeerPortGuard,
        *,
        backlog: int = 128,
    ) -> None:
        # asyncio accepts up to ``backlog`` connections in one go, each holding a descriptor
        # until the guard's close runs: a node with few descriptors wants a small batch.
        super().__init__(runner, host, port, backlog=backlog)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        self._server = await loop.create_server(
            self.guard.protocol_factory(server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
