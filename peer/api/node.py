"""Admin routes about this node itself: its status, its name, bringing up its window."""

from __future__ import annotations

import asyncio

from aiohttp import web

from peerstash.core import installed_version
from peerstash.core.records import OpRecord, iso_time, to_json
from peerstash.peer.api.common import (
    NODE_KEY,
    WINDOWS_KEY,
    BadRequest,
    WindowWanted,
    engine_of,
    read_body,
    running_node,
)
from peerstash.peer.api.schema import Rename
from peerstash.peer.health import node_health
from peerstash.peer.links.protocol import check_display_name
from peerstash.peer.services import fleet as fleet_view


async def status(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    engine = engine_of(request)
    latest = await engine.store.latest_per_plan()
    plans = []
    for plan in await engine.list_plans():
        last = latest.get((engine.instance_id, plan.id))
        plans.append(
            {
                "id": plan.id,
                "repo": plan.repo_id,
                "enabled": plan.enabled,
                "next_due_at": iso_time(plan.next_due_at),
                "stale": plan.id in engine.stale_plans,
                "last": to_json(OpRecord.of(last)) if last else None,
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
