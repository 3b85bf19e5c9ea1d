"""What every admin route module shares: the app keys, the body and field parsers, the
request's engine, and :class:`BadRequest` (which the error middleware in
:mod:`peerstash.peer.api.server` turns into a 400)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from peerstash.core.engine import Engine
from peerstash.core.events import Event, Subscription

if TYPE_CHECKING:
    from peerstash.peer.node import Node

MAX_BODY = 1 << 20
NODE_KEY: web.AppKey[Node] = web.AppKey("node")
#: How many desktop windows follow ``/v1/events?ui=1`` right now (a one-element list: mutable).
WINDOWS_KEY: web.AppKey[list[int]] = web.AppKey("windows")


@dataclass(frozen=True)
class WindowWanted(Event):
    """``peerstash`` was launched again: the window that is already open should come up."""

    topic: str = field(init=False, default="ui")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    """A malformed request; ``field`` names the request field it is about, when one is."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadRequest("request body too large")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise BadRequest("request body too large")
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def _str(data: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise BadRequest(f"missing field {key!r}", field=key)
        return None
    if not isinstance(value, str):
        raise BadRequest(f"field {key!r} must be a string", field=key)
    return value


def _str_list(data: dict[str, Any], key: str) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"field {key!r} must be a list of strings", field=key)
    return value


def _running(request: web.Request) -> Node:
    """The node, whose services are all up; 503 while it shuts down (the admin API stops
    first, so only a request already under way can see that)."""
    node = request.app[NODE_KEY]
    if not node.running:
        raise web.HTTPServiceUnavailable(reason="the node is shutting down")
    return node


def _engine(request: web.Request) -> Engine:
    return _running(request).engine


def _int_param(request: web.Request, name: str, default: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number") from None
    if not 0 < value <= maximum:
        raise BadRequest(f"{name} must be between 1 and {maximum}")
    return value


#: Seconds a stream may stay quiet before it sends a keep-alive line ``{}``: clients (the CLI's
#: quick client, the tray) take a silent minute for a stuck node.
KEEPALIVE = 15


async def ndjson(request: web.Request) -> web.StreamResponse:
    """A started NDJSON response: one JSON object per line, written with :func:`send`."""
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    return resp


async def send(resp: web.StreamResponse, data: Any) -> None:
    """Write ``data`` as one NDJSON line."""
    await resp.write(json.dumps(data).encode() + b"\n")


async def keepalive(sub: Subscription, resp: web.StreamResponse) -> Event | None:
    """The next event of ``sub``; ``None`` after :data:`KEEPALIVE` seconds without one, once a
    keep-alive line ``{}`` is written (so the client can tell the node is alive)."""
    try:
        return await asyncio.wait_for(sub.get(), timeout=KEEPALIVE)
    except TimeoutError:
        await resp.write(b"{}\n")
        return None
