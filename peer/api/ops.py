"""Admin routes for operations and what they run on: backups, the operations list and logs,
snapshots, listings, restores and maintenance."""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web
from msgspec import UNSET

from peerstash.core.engine import BackupRunning, EngineError
from peerstash.core.records import (
    ForgetPreviewRecord,
    ListedOpRecord,
    LogRecord,
    LsNodeRecord,
    OpRecord,
    PlannedSnapshotRecord,
    RestorePreviewRecord,
    RetentionPlanRecord,
    SnapshotRecord,
    to_json,
)
from peerstash.core.retention import RetentionPolicy
from peerstash.core.store import OpFilter
from peerstash.peer.api.common import (
    NODE_KEY,
    Handler,
    engine_of,
    ndjson,
    read_body,
    read_query,
    reply,
    running_node,
    send,
)
from peerstash.peer.api.schema import (
    Forget,
    Gc,
    Maintenance,
    OpsQuery,
    Pause,
    Restore,
    RestorePreview,
)
from peerstash.peer.services import fleet as fleet_view


async def _labels(request: web.Request) -> dict[str, str]:
    """How each instance is shown (see :func:`peerstash.peer.services.fleet.labels`)."""
    node = request.app[NODE_KEY]
    peers = await engine_of(request).store.list_peers()
    return fleet_view.labels(peers, node.instance_id, node.name)


async def backup(request: web.Request) -> web.Response:
    """Queue a backup; one already queued or running is answered (200, ``already``) instead."""
    try:
        op = await engine_of(request).backup(request.match_info["id"])
    except BackupRunning as exc:
        return web.json_response({**to_json(OpRecord.of(exc.op)), "already": str(exc)})
    return reply(OpRecord.of(op), status=202)


async def list_ops(request: web.Request) -> web.Response:
    q = read_query(request, OpsQuery)
    flt = OpFilter(
        before_pk=q.before,
        origin=q.origin,
        plan_id=q.plan,
        repo_id=q.repo,
        status=q.status,
        kind=q.kind,
    )
    limit = q.limit
    ops = await engine_of(request).list_operations(flt, limit)
    shown = await _labels(request)
    return reply([ListedOpRecord.labelled(op, shown) for op in ops])


async def get_op(request: web.Request) -> web.Response:
    op = await engine_of(request).store.find_operation(request.match_info["id"])
    return reply(OpRecord.of(op))


async def get_op_log(request: web.Request) -> web.Response:
    """An operation's log; a peer's operation's log is asked of that peer (``?origin=`` picks
    the copy when two origins minted the same id, which ULIDs make all but impossible)."""
    node = running_node(request)
    op = await node.engine.store.find_operation(
        request.match_info["id"], origin=request.query.get("origin") or None
    )
    lines = await node.logs.lines(op)
    return reply(LogRecord(id=op.op_id, origin=op.origin, lines=lines))


async def cancel_op(request: web.Request) -> web.Response:
    ok = await engine_of(request).cancel(request.match_info["id"])
    if not ok:
        raise EngineError("that operation is not running on this node")
    return web.json_response({"cancelling": request.match_info["id"]})


async def snapshots(request: web.Request) -> web.Response:
    snaps = await engine_of(request).snapshots(request.match_info["id"])
    return reply([SnapshotRecord.of(s) for s in snaps])


async def ls(request: web.Request) -> web.StreamResponse:
    """Stream a snapshot listing as NDJSON: a huge directory never times out while it flows."""
    engine = engine_of(request)
    nodes = engine.ls(
        request.match_info["id"], request.match_info["snap"], request.query.get("path")
    )
    resp: web.StreamResponse | None = None
    async for node in nodes:
        if resp is None:
            resp = await ndjson(request)
        await send(resp, LsNodeRecord.of(node))
    if resp is None:
        resp = await ndjson(request)
    await resp.write_eof()
    return resp


async def restore(request: web.Request) -> web.Response:
    body = await read_body(request, Restore)
    op = await engine_of(request).restore(
        request.match_info["id"], body.snapshot, body.target, include=body.include
    )
    return reply(OpRecord.of(op), status=202)


async def restore_preview(request: web.Request) -> web.Response:
    """``{"snapshot", "target", "include"}`` as for a restore: which files it would overwrite
    (200, nothing changed). A selection that is not the snapshot's is refused (409)."""
    body = await read_body(request, RestorePreview)
    preview = await engine_of(request).restore_preview(
        request.match_info["id"], body.snapshot, body.target, include=body.include
    )
    return reply(RestorePreviewRecord.of(preview))


async def _forget(request: web.Request) -> web.Response:
    """``{"plan": ID, "dry_run": true, "expect": [IDS]}``, all optional. A dry run answers at
    once with what would go and what stays (200, no operation); otherwise the forget is queued
    (202), and with ``expect`` it removes nothing if it would remove more than those."""
    engine = engine_of(request)
    repo_id = request.match_info["id"]
    body = await read_body(request, Forget)
    plan_id = body.plan
    # The snapshot ids a person confirmed from the dry run: nothing beyond them is removed.
    expect = None if body.expect is UNSET else body.expect
    if not body.dry_run:
        op = await engine.forget(repo_id, plan_id=plan_id or None, expect=expect)
        return reply(OpRecord.of(op), status=202)
    previews = await engine.forget_preview(repo_id, plan_id=plan_id or None)
    shown = ForgetPreviewRecord(repo=repo_id, dry_run=True, plans=[], keep=[], remove=[])
    for plan, result in previews:
        host, tags = engine.own_snapshots(plan.id)
        retention = RetentionPolicy.from_dict(plan.retention).to_dict()
        shown.plans.append(
            RetentionPlanRecord(plan=plan.id, retention=retention, host=host, tags=list(tags))
        )
        shown.keep += [PlannedSnapshotRecord.for_plan(s, plan.id) for s in result.kept_snapshots]
        shown.remove += [
            PlannedSnapshotRecord.for_plan(s, plan.id) for s in result.removed_snapshots
        ]
    return reply(shown)


def _maintenance(name: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        engine = engine_of(request)
        repo_id = request.match_info["id"]
        if name == "forget":
            return await _forget(request)
        # The CLI sends ``all`` to each of the three; only unlock uses it.
        body = await read_body(request, Maintenance)
        if name == "prune":
            op = await engine.prune(repo_id)
        elif name == "check":
            op = await engine.check(repo_id)
        else:
            op = await engine.unlock(repo_id, remove_all=body.all)
        return reply(OpRecord.of(op), status=202)

    return handler


async def pause(request: web.Request) -> web.Response:
    engine = engine_of(request)
    if (await read_body(request, Pause)).paused:
        engine.scheduler.pause()
    else:
        engine.scheduler.resume()
    return web.json_response({"paused": engine.scheduler.paused})


async def gc(request: web.Request) -> web.Response:
    days = (await read_body(request, Gc)).older_than_days
    removed = await engine_of(request).gc(older_than=timedelta(days=days))
    return web.json_response({"removed": removed})
