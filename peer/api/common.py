"""What every admin route module shares: the app keys, :func:`read_body` (a request body as
its struct from :mod:`peerstash.peer.api.schema`), :func:`int_param`, the request's node and
engine, the NDJSON writers, and :class:`BadRequest` (which the error middleware in
:mod:`peerstash.peer.api.server` turns into a 400)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from aiohttp import web

from peerstash.core.engine import Engine
from peerstash.core.events import Event, Subscription
from peerstash.peer.api import schema

if TYPE_CHECKING:
    from peerstash.peer.node import Node

MAX_BODY = 1 << 20
T = TypeVar("T", bound=schema.Request)
Q = TypeVar("Q", bound=schema.Query)
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


async def read_body(request: web.Request, kind: type[T]) -> T:
    """The request body (at most :data:`MAX_BODY` bytes) decoded as ``kind``, one of the
    request structs of :mod:`peerstash.peer.api.schema`; an empty body is ``{}``.

    Any shape problem becomes one :class:`BadRequest` sentence naming the field (see
    :func:`peerstash.peer.api.schema.refusal`), before a handler sees a single value: what is
    left in the handlers are checks of meaning (a path must be absolute, a plan must exist).
    """
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadRequest("request body too large")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise BadRequest("request body too large")
    try:
        return msgspec.json.decode(raw or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        message, field = schema.refusal(kind, exc)
        raise BadRequest(message, field=field) from None
    except msgspec.DecodeError:
        raise BadRequest("request body is not valid JSON") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None


def read_query(request: web.Request, kind: type[Q]) -> Q:
    """The request's query parameters decoded as ``kind`` (a :class:`schema.Query`): numbers
    from their text, a bad one refused in one sentence (no ``field``: no form shows these)."""
    try:
        return msgspec.convert(dict(request.query), type=kind, strict=False)
    except msgspec.ValidationError as exc:
        raise BadRequest(schema.refusal(kind, exc)[0]) from None


def running_node(request: web.Request) -> Node:
    """The node, whose services are all up; 503 while it shuts down (the admin API stops
    first, so only a request already under way can see that)."""
    node = request.app[NODE_KEY]
    if not node.running:
        raise web.HTTPServiceUnavailable(reason="the node is shutting down")
    return node


def engine_of(request: web.Request) -> Engine:
    """The running node's engine (503 while the node shuts down, as :func:`running_node`)."""
    return running_node(request).engine


def int_param(request: web.Request, name: str, default: int, maximum: int) -> int:
    """A whole-number query parameter from 1 to ``maximum`` (``default`` when absent)."""
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


def reply(data: Any, *, status: int = 200) -> web.Response:
    """A JSON answer of records (structs, or lists and dicts of them) or plain builtins."""
    return web.json_response(msgspec.to_builtins(data), status=status)


async def send(resp: web.StreamResponse, data: Any) -> None:
    """Write ``data`` (a record or event struct, or plain builtins) as one NDJSON line.

    ``json.dumps`` writes it, as before the structs: the bytes on the wire are unchanged."""
    await resp.write(json.dumps(msgspec.to_builtins(data)).encode() + b"\n")


async def keepalive(sub: Subscription, resp: web.StreamResponse) -> Event | None:
    """The next event of ``sub``; ``None`` after :data:`KEEPALIVE` seconds without one, once a
    keep-alive line ``{}`` is written (so the client can tell the node is alive)."""
    try:
        return await asyncio.wait_for(sub.get(), timeout=KEEPALIVE)
    except TimeoutError:
        await resp.write(b"{}\n")
        return None
