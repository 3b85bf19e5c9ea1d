"""Admin routes about this node itself: its status, its name, bringing up its window."""

from __future__ import annotations

import asyncio

from aiohttp import web

from peerstash.core import installed_version
from peerstash.core.serialize import op_to_dict
from peerstash.peer.api.common import (
    NODE_KEY,
    WINDOWS_KEY,
    BadRequest,
    WindowWanted,
    _body,
    _engine,
    _running,
)
from peerstash.peer.health import node_health
from peerstash.peer.links.protocol import check_display_name
from peerstash.peer.services import fleet as fleet_view


async def status(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    engine = _engine(request)
    latest = await engine.store.latest_per_plan()
    plans = []
    for plan in await engine.list_plans():
        last = latest.get((engine.instance_id, plan.id))
        plans.append(
            {
                "id": plan.id,
                "repo": plan.repo_id,
                "enabled": plan.enabled,
                "next_due_at": plan.next_due_at.isoformat() if plan.next_due_at else None,
                "stale": plan.id in engine.stale_plans,
                "last": op_to_dict(last) if last else None,
            }
        )
    fleet = await fleet_view.fleet(engine.store, engine.instance_id, node.name)
    health = (await node_health(engine)).to_dict()
    # What is on disk now (read off the loop): not "version" once the package was upgraded
    # under this running node, which then has to restart (the tray shows it).
    installed = await asyncio.to_thread(installed_version)
    return web.json_response(
        {
            **node.status(),
            "installed_version": installed,
            "health": health,
            "plans": plans,
            "peers": fleet,
        }
    )


async def present(request: web.Request) -> web.Response:
    """Bring up the desktop windows that follow this node; says how many there are.

    A second ``peerstash`` launch calls this first: when a window answers, it has nothing
    more to do (no second window, no second node).
    """
    count = request.app[WINDOWS_KEY][0]
    if count:
        _engine(request).bus.publish(WindowWanted())
    return web.json_response({"windows": count})


async def rename_route(request: web.Request) -> web.Response:
    """``{"name": NEW}`` (``null``: the host name again): this node's display name, now.

    Peers learn it at once (their links restart); the instance id, and so the origin of this
    node's history everywhere, stays as it is.
    """
    data = await _body(request)
    name = data.get("name")
    if name is not None:
        try:
            check_display_name(name)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    node = _running(request)
    shown = await node.rename(name)
    return web.json_response({"instance_id": node.instance_id, "name": shown})
