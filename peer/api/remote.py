"""Admin routes that ask a peer over the link: its configuration (plans and repositories)
and remote commands (runs, restores, snapshots, listings, the requests' states)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from msgspec import UNSET, UnsetType

from peerstash.core.events import OperationChanged
from peerstash.core.records import FollowedRemoteRecord, OpRecord, to_json
from peerstash.core.store import NotFound, OpFilter
from peerstash.peer.api.common import (
    NODE_KEY,
    BadRequest,
    engine_of,
    int_param,
    keepalive,
    ndjson,
    read_body,
    running_node,
    send,
)
from peerstash.peer.api.config import check_retention
from peerstash.peer.api.schema import (
    AddPlan,
    AddRepo,
    EditPlan,
    EditRepo,
    Password,
    RemoteRestore,
    RemoteRun,
)
from peerstash.peer.links.rpc import RpcService
from peerstash.peer.services import remote_config
from peerstash.peer.services.remote_commands import (
    RemoteError,
    RemoteRequestChanged,
    RemoteService,
    is_followable,
    op_kind_of,
    request_record,
)


def _rpc(request: web.Request) -> tuple[RpcService, str]:
    """The request layer and the peer named in the path (which must be paired)."""
    return running_node(request).rpc, request.match_info["id"]


async def _paired(request: web.Request, peer_id: str) -> None:
    try:
        await engine_of(request).store.get_peer(peer_id)
    except NotFound:
        raise NotFound(f"{peer_id!r} is not a paired peer (see `peerstash peer list`)") from None


async def peer_config_route(request: web.Request) -> web.Response:
    """The peer's repos and plans that it lets us read (never a secret: it sends none)."""
    rpc, peer_id = _rpc(request)
    await _paired(request, peer_id)
    return web.json_response(await remote_config.read(rpc, peer_id))


async def peer_add_plan_route(request: web.Request) -> web.Response:
    rpc, peer_id = _rpc(request)
    body = await read_body(request, AddPlan)
    check_retention(body.retention)
    # The fields as the peer's config.write takes them (the same names as this API's).
    fields = to_json(body)
    await _paired(request, peer_id)
    return web.json_response(await remote_config.add_plan(rpc, peer_id, fields), status=201)


async def peer_edit_plan_route(request: web.Request) -> web.Response:
    rpc, peer_id = _rpc(request)
    changes = (await read_body(request, EditPlan)).changes()
    await _paired(request, peer_id)
    plan = await remote_config.edit_plan(rpc, peer_id, request.match_info["plan"], changes)
    return web.json_response(plan)


async def peer_remove_plan_route(request: web.Request) -> web.Response:
    rpc, peer_id = _rpc(request)
    await _paired(request, peer_id)
    res = await remote_config.remove_plan(rpc, peer_id, request.match_info["plan"])
    return web.json_response(res)


def _peer_password(pw: Password) -> dict[str, Any]:
    """A password object's shape, forwarded as given (absent keys stay absent): the peer
    decides what it accepts."""
    out: dict[str, Any] = {"source": pw.source}
    if pw.ref is not None:
        out["ref"] = pw.ref
    if pw.value is not None:
        out["value"] = pw.value
    return out


async def peer_add_repo_route(request: web.Request) -> web.Response:
    """Add a repository on the peer (config.write there; the peer enforces what a peer may
    set, see peer/services/remote_config.py). The password goes only into the link, never a log."""
    rpc, peer_id = _rpc(request)
    body = await read_body(request, AddRepo)
    fields: dict[str, Any] = {
        "id": body.id,
        "uri": body.uri,
        "password": _peer_password(body.password),
        "env": body.env,
        "options": body.options,
        "init": body.init,
    }
    await _paired(request, peer_id)
    return web.json_response(await remote_config.add_repo(rpc, peer_id, fields), status=201)


async def peer_edit_repo_route(request: web.Request) -> web.Response:
    rpc, peer_id = _rpc(request)
    body = await read_body(request, EditRepo)
    changes: dict[str, Any] = {}
    if body.uri is not UNSET:
        if body.uri is None:
            raise BadRequest("field 'uri' must be a string", field="uri")
        changes["uri"] = body.uri
    if not isinstance(body.password, UnsetType):
        changes["password"] = _peer_password(body.password)
    if body.env is None:
        raise BadRequest("field 'env' must map names to strings", field="env")
    if body.env is not UNSET:
        changes["env"] = body.env
    if body.options is not UNSET:
        changes["options"] = body.options
    await _paired(request, peer_id)
    res = await remote_config.edit_repo(rpc, peer_id, request.match_info["repo"], changes)
    return web.json_response(res)


async def peer_remove_repo_route(request: web.Request) -> web.Response:
    rpc, peer_id = _rpc(request)
    await _paired(request, peer_id)
    res = await remote_config.remove_repo(rpc, peer_id, request.match_info["repo"])
    return web.json_response(res)


# -- remote commands (peer/services/remote_commands.py) --------------------------------------------


def _remote(request: web.Request) -> RemoteService:
    return running_node(request).remote


async def remote_run(request: web.Request) -> web.Response:
    """Ask a peer to back up one of its plans; answers with the request as it stands now
    (``queued`` when the peer is offline, ``failed`` when it refused)."""
    body = await read_body(request, RemoteRun)
    req = await _remote(request).request_run(body.peer, body.plan)
    return web.json_response(to_json(request_record(req)), status=202)


async def remote_restore(request: web.Request) -> web.Response:
    """Ask a peer to restore a snapshot of its repository into a folder on that peer."""
    body = await read_body(request, RemoteRestore)
    req = await _remote(request).request_restore(
        body.peer, body.repo, body.snapshot, body.target, body.include
    )
    return web.json_response(to_json(request_record(req)), status=202)


async def remote_list(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", 100, 10_000)
    reqs = await _remote(request).list_requests(limit)
    return web.json_response([to_json(request_record(r)) for r in reqs])


async def remote_get(request: web.Request) -> web.Response:
    req = await _remote(request).get_request(request.match_info["id"])
    return web.json_response(to_json(request_record(req)))


async def remote_wait(request: web.Request) -> web.StreamResponse:
    """Stream a request as NDJSON until it ends or can no longer be followed (``--wait``).

    Each line is the request with ``op``: the peer's operation for it as last synced here
    (progress included), or null before it arrives.
    """
    node = request.app[NODE_KEY]
    remote = _remote(request)
    rid = request.match_info["id"]
    with node.bus.subscribe("remote", "operation") as sub:
        req = await remote.get_request(rid)
        resp = await ndjson(request)
        op: Any = None
        kind = op_kind_of(req)
        ops = await remote.store.list_operations(
            OpFilter(origin=req.peer, flow_id=rid, kind=kind), limit=1
        )
        if ops:
            op = ops[0]

        async def line() -> None:
            followed = FollowedRemoteRecord.extending(
                request_record(req), op=OpRecord.of(op) if op is not None else None
            )
            await send(resp, to_json(followed))

        await line()
        while is_followable(req):
            event = await keepalive(sub, resp)
            if event is None:
                continue
            if sub.lagged:
                sub.lagged = False
                req = await remote.get_request(rid)
                await line()
            elif isinstance(event, RemoteRequestChanged) and event.request.id == rid:
                req = event.request
                await line()
            elif (
                isinstance(event, OperationChanged)
                and event.op is not None
                and event.op.origin == req.peer
                and event.op.flow_id == rid
                and event.op.kind == kind
            ):
                op = event.op
                await line()
    await resp.write_eof()
    return resp


async def remote_snapshots(request: web.Request) -> web.Response:
    snaps = await _remote(request).snapshots(request.match_info["peer"], request.match_info["id"])
    return web.json_response(snaps)


async def remote_ls(request: web.Request) -> web.StreamResponse:
    """Stream a peer's snapshot listing as NDJSON while it arrives over the link.

    An error before the first entry is an ordinary error answer; one after it (the link
    dropped mid-listing) is a last line ``{"error": ...}``, so a listing cut short is never
    mistaken for a complete one.
    """
    nodes = _remote(request).ls(
        request.match_info["peer"],
        request.match_info["id"],
        request.match_info["snap"],
        request.query.get("path"),
    )
    resp: web.StreamResponse | None = None
    try:
        async for node in nodes:
            if resp is None:
                resp = await ndjson(request)
            await send(resp, node)
    except RemoteError as exc:
        if resp is None:
            raise
        await send(resp, {"error": str(exc)})
    if resp is None:
        resp = await ndjson(request)
    await resp.write_eof()
    return resp
