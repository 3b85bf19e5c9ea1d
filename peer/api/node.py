"""Admin routes about this node itself: its status, its name, bringing up its window."""

from __future__ import annotations

from aiohttp import web

from peerstash.core.records import to_json
from peerstash.peer.api.common import (
    WINDOWS_KEY,
    BadRequest,
    WindowWanted,
    engine_of,
    read_body,
    running_node,
)
from peerstash.peer.api.schema import Rename
from peerstash.peer.links.protocol import check_display_name


async def status(request: web.Request) -> web.Response:
    """This node, its health verdict, its plans' last runs and the fleet
    (:class:`peerstash.core.records.StatusRecord`)."""
    return web.json_response(to_json(await running_node(request).status()))


async def present(request: web.Request) -> web.Response:
    """Bring up the desktop windows that follow this node; says how many there are.

    A second ``peerstash`` launch calls this first: when a window answers, it has nothing
    more to do (no second window, no second node).
    """
    count = request.app[WINDOWS_KEY][0]
    if count:
        engine_of(request).bus.publish(WindowWanted())
    return web.json_response({"windows": count})


async def rename_route(request: web.Request) -> web.Response:
    """``{"name": NEW}`` (``null``: the host name again): this node's display name, now.

    Peers learn it at once (their links restart); the instance id, and so the origin of this
    node's history everywhere, stays as it is.
    """
    name = (await read_body(request, Rename)).name
    if name is not None:
        try:
            check_display_name(name)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    node = running_node(request)
    shown = await node.rename(name)
    return web.json_response({"instance_id": node.instance_id, "name": shown})
