"""The peer port: ``/v1/sync`` (the link WebSocket) and a bare health check, nothing else.

A reverse proxy in front of a server node needs to pass only ``/v1/sync``. Admin functions are
never served here; they live on the Unix socket (``admin.py``). What an unauthenticated client
may hold here, and for how long, is bounded by :mod:`peerstash.peer.links.guard`.
"""

from __future__ import annotations

from aiohttp import web

from peerstash.peer.links.guard import request_started_middleware, server_header
from peerstash.peer.links.link import PeerManager


async def _health(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def make_peer_app(manager: PeerManager) -> web.Application:
    app = web.Application(client_max_size=64 * 1024, middlewares=[request_started_middleware])
    app.on_response_prepare.append(server_header)
    app.router.add_get("/v1/sync", manager.handle_ws)
    app.router.add_get("/healthz", _health)
    return app


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. 0.0.0.0:9797")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)
