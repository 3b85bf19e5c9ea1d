"""The local admin API: JSON over HTTP on the node's Unix socket (mode 0600).

The CLI and the tray (when it attaches to a running node) speak this. It never listens on the
network: whoever can open the socket is the user who owns the data directory.

Every failure answers ``{"error": "..."}`` with one sentence a person can act on; request bodies
are never logged, because some carry passwords.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from peerstash.core import installed_version
from peerstash.core.engine import BackupRunning, Engine, EngineError, PasswordSpec
from peerstash.core.events import (
    ConfigChanged,
    Event,
    Notice,
    OperationChanged,
    OperationsDeleted,
    PlanStale,
    SharesReceived,
    SnapshotsChanged,
)
from peerstash.core.models import OpStatus, Peer
from peerstash.core.retention import RetentionPolicy
from peerstash.core.secrets import SecretError
from peerstash.core.serialize import (
    lsnode_to_dict,
    op_to_dict,
    plan_to_dict,
    repo_to_dict,
    snapshot_to_dict,
)
from peerstash.core.store import NotFound, OpFilter, StoreError
from peerstash.peer.health import OFFLINE_SETTING, STALE_SETTING, node_health
from peerstash.peer.links.link import (
    ARCHIVE_MARK,
    LinkStateChanged,
    PairingError,
    PeerManager,
    is_revoked,
)
from peerstash.peer.links.protocol import check_display_name
from peerstash.peer.links.rpc import CallError, RpcService
from peerstash.peer.server import parse_listen
from peerstash.peer.services import fleet as fleet_view
from peerstash.peer.services import remote_config
from peerstash.peer.services.opsync import OpsSynced
from peerstash.peer.services.remote_commands import (
    RemoteError,
    RemoteRequestChanged,
    RemoteService,
    is_followable,
    op_kind_of,
    request_to_dict,
)
from peerstash.peer.services.remote_logs import LogUnavailable
from peerstash.peer.trust.pairing import TokenError, create_token, token_to_dict
from peerstash.peer.trust.permissions import GrantError

if TYPE_CHECKING:
    from peerstash.peer.node import Node

log = logging.getLogger(__name__)

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


#: HTTP status for each reason a peer gave for not answering a request (peer/links/rpc.py codes).
CALL_STATUS = {
    "forbidden": 403,
    "not_found": 404,
    "bad_request": 400,
    "failed": 409,
    "unavailable": 503,
    "busy": 503,
    "timeout": 504,
    "unknown_method": 501,
}


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    """``{"error": sentence}``, plus ``"field"`` (a request field's name) when the refusal is
    about one field, so a form marks that field instead of parsing the sentence."""
    body = {"error": message} if field is None else {"error": message, "field": field}
    return web.json_response(body, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(exc.status, exc.reason or "request refused")
        raise
    except ConnectionResetError:
        # The client went away while we streamed to it (Ctrl-C on `ops --follow`, the tray
        # quitting): nothing to answer, nothing to log.
        raise asyncio.CancelledError from None
    except BadRequest as exc:
        return _error(400, str(exc), exc.field)
    except LogUnavailable as exc:
        return _error(503, str(exc))
    except CallError as exc:
        # A peer's answer: its own words, with the peer named when it did not say them itself.
        return _error(CALL_STATUS.get(exc.code, 502), exc.message)
    except NotFound as exc:
        return _error(404, str(exc))
    except EngineError as exc:
        return _error(409, str(exc), exc.field)
    except (StoreError, SecretError, RemoteError) as exc:
        return _error(409, str(exc))
    except Exception:
        log.exception("admin API: unexpected error in %s %s", request.method, request.path)
        return _error(500, "internal error in the node; see its log")


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


async def _labels(request: web.Request) -> dict[str, str]:
    """How each instance is shown (see :func:`peerstash.peer.services.fleet.labels`)."""
    node = request.app[NODE_KEY]
    peers = await _engine(request).store.list_peers()
    return fleet_view.labels(peers, node.instance_id, node.name)


async def list_repos(request: web.Request) -> web.Response:
    return web.json_response([repo_to_dict(r) for r in await _engine(request).list_repos()])


async def add_repo(request: web.Request) -> web.Response:
    data = await _body(request)
    pw = data.get("password")
    if not isinstance(pw, dict):
        raise BadRequest("missing field 'password' (an object with 'source')", field="password")
    spec = PasswordSpec(
        source=_str(pw, "source") or "",
        ref=_str(pw, "ref", required=False) or "",
        value=_str(pw, "value", required=False),
    )
    env = data.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise BadRequest("field 'env' must map names to strings", field="env")
    repo, said = await _engine(request).add_repo(
        _str(data, "id") or "",
        _str(data, "uri") or "",
        spec,
        env=env,
        options=_str_list(data, "options"),
        init=bool(data.get("init", False)),
    )
    return web.json_response({"repo": repo_to_dict(repo), "message": said}, status=201)


async def reveal_repo_password(request: web.Request) -> web.Response:
    """The repository's password, for its owner's eyes (recovery sheet, ``repo show``).

    Only on this explicit request (a POST: nothing fetches it by accident), only over the
    owner-only admin socket, never to a peer, and never logged. For a password Peerstash does
    not store (file, variable, command) the answer says where it comes from instead.
    """
    engine = _engine(request)
    repo_id = request.match_info["id"]
    said = await engine.repo_password(repo_id)
    repo = repo_to_dict(await engine.store.get_repo(repo_id))
    return web.json_response({"repo": repo, **said})


async def delete_repo(request: web.Request) -> web.Response:
    await _engine(request).delete_repo(request.match_info["id"])
    return web.json_response({"deleted": request.match_info["id"]})


async def share_repo(request: web.Request) -> web.Response:
    """Share one of our repositories with the peers that grant us ``repos.receive``.

    Body: ``{"client_uri": "..."}`` optionally (absent keeps the one set before, "" clears it).
    """
    data = await _body(request)
    repo = await _engine(request).share_repo(
        request.match_info["id"], client_uri=_str(data, "client_uri", required=False)
    )
    return web.json_response(repo_to_dict(repo))


async def unshare_repo(request: web.Request) -> web.Response:
    repo = await _engine(request).unshare_repo(request.match_info["id"])
    return web.json_response(repo_to_dict(repo))


async def list_plans(request: web.Request) -> web.Response:
    return web.json_response([plan_to_dict(p) for p in await _engine(request).list_plans()])


def _new_plan(data: dict[str, Any]) -> dict[str, Any]:
    """A new plan's fields from a request body, checked for shape (the engine checks meaning)."""
    retention = data.get("retention", {})
    if not isinstance(retention, dict):
        raise BadRequest("field 'retention' must be an object", field="retention")
    try:
        RetentionPolicy.from_dict(retention)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"bad retention policy: {exc}", field="retention") from None
    return {
        "id": _str(data, "id") or "",
        "repo": _str(data, "repo") or "",
        "paths": _str_list(data, "paths"),
        "excludes": _str_list(data, "excludes"),
        "schedule": _str(data, "schedule", required=False),
        "every": _str(data, "every", required=False),
        "retention": retention,
        "backup_now": _flag(data, "backup_now", default=True),
    }


def _flag(data: dict[str, Any], key: str, *, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"field {key!r} must be true or false", field=key)
    return value


async def add_plan(request: web.Request) -> web.Response:
    f = _new_plan(await _body(request))
    plan = await _engine(request).add_plan(
        f["id"],
        repo_id=f["repo"],
        paths=f["paths"],
        excludes=f["excludes"],
        cron=f["schedule"],
        every=f["every"],
        retention=f["retention"],
    )
    out = plan_to_dict(plan)
    if f["backup_now"]:
        out["first_backup"] = await first_backup(_engine(request), plan.id)
    return web.json_response(out, status=201)


async def first_backup(engine: Engine, plan_id: str, *, who: str = "") -> dict[str, Any]:
    """Queue a new plan's first backup, so it is protected now rather than at its first slot.

    The plan is already added when this runs: a failure to queue is reported in the answer
    (``error``), not as a failed add.
    """
    try:
        op = await engine.backup(plan_id, reason=f"first backup{who}")
    except EngineError as exc:
        return {"error": str(exc)}
    return op_to_dict(op)


def _plan_changes(data: dict[str, Any]) -> dict[str, Any]:
    """A plan edit from a request body: only the fields given, each checked for shape."""
    extra = set(data) - {"repo", "schedule", "every", "paths", "excludes", "retention", "enabled"}
    if extra:
        raise BadRequest(f"cannot change {', '.join(sorted(extra))} of a plan")
    changes: dict[str, Any] = {}
    for key in ("repo", "schedule", "every"):
        if key in data:
            changes[key] = _str(data, key, required=False) or ""
    for key in ("paths", "excludes"):
        if key in data:
            changes[key] = _str_list(data, key)
    if "retention" in data:
        if not isinstance(data["retention"], dict):
            raise BadRequest("field 'retention' must be an object", field="retention")
        changes["retention"] = data["retention"]
    if "enabled" in data:
        if not isinstance(data["enabled"], bool):
            raise BadRequest("field 'enabled' must be true or false", field="enabled")
        changes["enabled"] = data["enabled"]
    return changes


async def edit_plan(request: web.Request) -> web.Response:
    changes = _plan_changes(await _body(request))
    plan = await _engine(request).update_plan(request.match_info["id"], **changes)
    return web.json_response(plan_to_dict(plan))


async def edit_repo(request: web.Request) -> web.Response:
    data = await _body(request)
    spec = None
    if "password" in data:
        pw = data["password"]
        if not isinstance(pw, dict):
            raise BadRequest("field 'password' must be an object with 'source'", field="password")
        spec = PasswordSpec(
            source=_str(pw, "source") or "",
            ref=_str(pw, "ref", required=False) or "",
            value=_str(pw, "value", required=False),
        )
    env = data.get("env")
    if env is not None and not (
        isinstance(env, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        raise BadRequest("field 'env' must map names to strings", field="env")
    repo = await _engine(request).update_repo(
        request.match_info["id"],
        uri=_str(data, "uri", required=False),
        password=spec,
        env=env,
        options=_str_list(data, "options") if "options" in data else None,
    )
    return web.json_response(repo_to_dict(repo))


async def delete_plan(request: web.Request) -> web.Response:
    await _engine(request).delete_plan(request.match_info["id"])
    return web.json_response({"deleted": request.match_info["id"]})


async def backup(request: web.Request) -> web.Response:
    """Queue a backup; one already queued or running is answered (200, ``already``) instead."""
    try:
        op = await _engine(request).backup(request.match_info["id"])
    except BackupRunning as exc:
        return web.json_response({**op_to_dict(exc.op), "already": str(exc)})
    return web.json_response(op_to_dict(op), status=202)


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


async def list_ops(request: web.Request) -> web.Response:
    q = request.query
    before = q.get("before")
    if before is not None and not before.isdigit():
        raise BadRequest("before must be an operation's pk (a whole number)")
    flt = OpFilter(
        before_pk=int(before) if before is not None else None,
        origin=q.get("origin"),
        plan_id=q.get("plan"),
        repo_id=q.get("repo"),
        status=q.get("status"),
        kind=q.get("kind"),
    )
    limit = _int_param(request, "limit", 100, 100_000)
    ops = await _engine(request).list_operations(flt, limit)
    shown = await _labels(request)
    return web.json_response(
        [
            {**(d := op_to_dict(op)), "origin_label": shown.get(d["origin"], d["origin"])}
            for op in ops
        ]
    )


async def get_op(request: web.Request) -> web.Response:
    op = await _engine(request).store.find_operation(request.match_info["id"])
    return web.json_response(op_to_dict(op))


async def get_op_log(request: web.Request) -> web.Response:
    """An operation's log; a peer's operation's log is asked of that peer (``?origin=`` picks
    the copy when two origins minted the same id, which ULIDs make all but impossible)."""
    node = _running(request)
    op = await node.engine.store.find_operation(
        request.match_info["id"], origin=request.query.get("origin") or None
    )
    lines = await node.logs.lines(op)
    return web.json_response({"id": op.op_id, "origin": op.origin, "lines": lines})


async def cancel_op(request: web.Request) -> web.Response:
    ok = await _engine(request).cancel(request.match_info["id"])
    if not ok:
        raise EngineError("that operation is not running on this node")
    return web.json_response({"cancelling": request.match_info["id"]})


async def wait_op(request: web.Request) -> web.StreamResponse:
    """Stream an operation's changes as NDJSON until it ends (the CLI's ``--wait``).

    With ``?flow=1`` it also follows the operations its job queued in the same flow (the
    retention that follows a backup), so ``backup --wait`` returns when the whole run is done.
    """
    engine = _engine(request)
    first = await engine.store.find_operation(request.match_info["id"])
    whole_flow = request.query.get("flow") == "1"
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)

    async def current() -> dict[int, Any]:
        if not whole_flow:
            return {first.pk: await engine.store.get_operation(first.pk)}
        ops = await engine.list_operations(
            OpFilter(origin=first.origin, flow_id=first.flow_id), limit=1000
        )
        return {op.pk: op for op in ops}

    with engine.bus.subscribe("operation") as sub:
        known = await current()
        for op in sorted(known.values(), key=lambda o: o.pk):
            await resp.write(json.dumps(op_to_dict(op)).encode() + b"\n")
        while True:
            if all(OpStatus(op.status).finished for op in known.values()):
                # Re-read: a job may have queued a follow-up just before it finished.
                fresh = await current()
                new = [op for pk, op in fresh.items() if pk not in known]
                known = fresh
                for op in new:
                    await resp.write(json.dumps(op_to_dict(op)).encode() + b"\n")
                if all(OpStatus(op.status).finished for op in known.values()):
                    break
            try:
                event = await asyncio.wait_for(sub.get(), timeout=15)
            except TimeoutError:
                await resp.write(b"{}\n")  # keep-alive: the client can tell the node is alive
                continue
            if sub.lagged:
                sub.lagged = False
                known = await current()
                continue
            changed = getattr(event, "op", None)
            if changed is None or changed.origin != first.origin:
                continue
            if changed.pk in known or (whole_flow and changed.flow_id == first.flow_id):
                known[changed.pk] = changed
                await resp.write(json.dumps(op_to_dict(changed)).encode() + b"\n")
    await resp.write_eof()
    return resp


async def follow_ops(request: web.Request) -> web.StreamResponse:
    """Stream every operation change as NDJSON (``ops --follow``, the tray when attached)."""
    engine = _engine(request)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    with engine.bus.subscribe("operation") as sub:
        while True:
            try:
                event = await asyncio.wait_for(sub.get(), timeout=15)
            except TimeoutError:
                await resp.write(b"{}\n")
                continue
            op = getattr(event, "op", None)
            if op is not None:
                await resp.write(json.dumps(op_to_dict(op)).encode() + b"\n")


async def snapshots(request: web.Request) -> web.Response:
    snaps = await _engine(request).snapshots(request.match_info["id"])
    return web.json_response([snapshot_to_dict(s) for s in snaps])


async def ls(request: web.Request) -> web.StreamResponse:
    """Stream a snapshot listing as NDJSON: a huge directory never times out while it flows."""
    engine = _engine(request)
    nodes = engine.ls(
        request.match_info["id"], request.match_info["snap"], request.query.get("path")
    )
    resp: web.StreamResponse | None = None
    async for node in nodes:
        if resp is None:
            resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await resp.prepare(request)
        await resp.write(json.dumps(lsnode_to_dict(node)).encode() + b"\n")
    if resp is None:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
    await resp.write_eof()
    return resp


async def restore(request: web.Request) -> web.Response:
    data = await _body(request)
    op = await _engine(request).restore(
        request.match_info["id"],
        _str(data, "snapshot") or "",
        _str(data, "target") or "",
        include=_str_list(data, "include"),
    )
    return web.json_response(op_to_dict(op), status=202)


async def restore_preview(request: web.Request) -> web.Response:
    """``{"snapshot", "target", "include"}`` as for a restore: which files it would overwrite
    (200, nothing changed). A selection that is not the snapshot's is refused (409)."""
    data = await _body(request)
    extra = set(data) - {"snapshot", "target", "include"}
    if extra:
        raise BadRequest(f"unknown field(s) for a restore preview: {', '.join(sorted(extra))}")
    preview = await _engine(request).restore_preview(
        request.match_info["id"],
        _str(data, "snapshot") or "",
        _str(data, "target") or "",
        include=_str_list(data, "include"),
    )
    return web.json_response(preview.to_dict())


async def _forget(request: web.Request) -> web.Response:
    """``{"plan": ID, "dry_run": true, "expect": [IDS]}``, all optional. A dry run answers at
    once with what would go and what stays (200, no operation); otherwise the forget is queued
    (202), and with ``expect`` it removes nothing if it would remove more than those."""
    engine = _engine(request)
    repo_id = request.match_info["id"]
    data = await _body(request)
    extra = set(data) - {"plan", "dry_run", "expect"}
    if extra:
        raise BadRequest(f"unknown field(s) for forget: {', '.join(sorted(extra))}")
    plan_id = _str(data, "plan", required=False)
    dry_run = data.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise BadRequest("dry_run is true or false")
    # The snapshot ids a person confirmed from the dry run: nothing beyond them is removed.
    expect = _str_list(data, "expect") if "expect" in data else None
    if not dry_run:
        op = await engine.forget(repo_id, plan_id=plan_id or None, expect=expect)
        return web.json_response(op_to_dict(op), status=202)
    previews = await engine.forget_preview(repo_id, plan_id=plan_id or None)
    plans: list[dict[str, Any]] = []
    keep: list[dict[str, Any]] = []
    remove: list[dict[str, Any]] = []
    for plan, result in previews:
        host, tags = engine.own_snapshots(plan.id)
        plans.append(
            {
                "plan": plan.id,
                "retention": RetentionPolicy.from_dict(plan.retention).to_dict(),
                "host": host,
                "tags": list(tags),
            }
        )
        keep += [{**snapshot_to_dict(s), "plan": plan.id} for s in result.kept_snapshots]
        remove += [{**snapshot_to_dict(s), "plan": plan.id} for s in result.removed_snapshots]
    return web.json_response(
        {"repo": repo_id, "dry_run": True, "plans": plans, "keep": keep, "remove": remove}
    )


def _maintenance(name: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        engine = _engine(request)
        repo_id = request.match_info["id"]
        if name == "forget":
            return await _forget(request)
        elif name == "prune":
            op = await engine.prune(repo_id)
        elif name == "check":
            op = await engine.check(repo_id)
        else:
            data = await _body(request)
            op = await engine.unlock(repo_id, remove_all=bool(data.get("all", False)))
        return web.json_response(op_to_dict(op), status=202)

    return handler


async def pause(request: web.Request) -> web.Response:
    engine = _engine(request)
    data = await _body(request)
    if data.get("paused", True):
        engine.scheduler.pause()
    else:
        engine.scheduler.resume()
    return web.json_response({"paused": engine.scheduler.paused})


async def gc(request: web.Request) -> web.Response:
    data = await _body(request)
    days = data.get("older_than_days", 90)
    if not isinstance(days, int) or days < 1:
        raise BadRequest("older_than_days must be a positive whole number")
    removed = await _engine(request).gc(older_than=timedelta(days=days))
    return web.json_response({"removed": removed})


def _peers(request: web.Request) -> PeerManager:
    return _running(request).peers


def peer_to_dict(peer: Peer) -> dict[str, Any]:
    return {
        "id": peer.id,
        "name": peer.name or peer.id,
        "key_id": peer.key_id,
        "role": peer.role,
        "url": peer.url,
        "grants": list(peer.grants),
        "their_grants": list(peer.their_grants),
        "state": peer.state,
        "state_reason": peer.state_reason,
        "last_seen": peer.last_seen.isoformat() if peer.last_seen else None,
    }


async def create_token_route(request: web.Request) -> web.Response:
    node = _running(request)
    data = await _body(request)
    max_uses = data.get("max_uses", 1)
    if not isinstance(max_uses, int):
        raise BadRequest("max_uses must be a whole number")
    try:
        text, row = await create_token(
            _engine(request).store,
            node.identity,
            node.instance_id,
            label=_str(data, "label", required=False) or "",
            ttl=_str(data, "ttl", required=False) or "1h",
            max_uses=max_uses,
            grants=_str_list(data, "grants"),
        )
    except (TokenError, GrantError) as exc:
        raise BadRequest(str(exc)) from None
    return web.json_response({"token": text, **token_to_dict(row)}, status=201)


async def list_tokens_route(request: web.Request) -> web.Response:
    rows = await _engine(request).store.list_tokens()
    return web.json_response([token_to_dict(r) for r in rows])


async def delete_token_route(request: web.Request) -> web.Response:
    if not await _engine(request).store.delete_token(request.match_info["id"]):
        raise NotFound(f"no token with id {request.match_info['id']!r}")
    return web.json_response({"deleted": request.match_info["id"]})


async def list_peers_route(request: web.Request) -> web.Response:
    engine = _engine(request)
    fleet = await fleet_view.plans_by_peer(engine.store, engine.instance_id)
    peers = await engine.store.list_peers()
    shown = fleet_view.labels(peers, engine.instance_id, request.app[NODE_KEY].name)
    return web.json_response(
        [{**peer_to_dict(p), "label": shown[p.id], "plans": fleet.get(p.id, [])} for p in peers]
    )


async def add_peer_route(request: web.Request) -> web.Response:
    data = await _body(request)
    try:
        peer = await _peers(request).pair(
            _str(data, "token") or "",
            _str(data, "url", required=False),
            _str_list(data, "grants"),
            replace=data.get("replace") is True,
        )
    except GrantError as exc:
        raise BadRequest(str(exc), field="grants") from None
    except PairingError as exc:
        raise EngineError(str(exc)) from None
    return web.json_response(peer_to_dict(peer), status=201)


async def remove_peer_route(request: web.Request) -> web.Response:
    """Unpair (revoke) a peer: it is told, and what came from it goes (``?keep_history=1``
    keeps its operation history here)."""
    keep = request.query.get("keep_history") == "1"
    peer_id = request.match_info["id"]
    if ARCHIVE_MARK in peer_id:
        # The history a replaced peer left (``peer add --replace``): no peer row, only ops.
        deleted = await _engine(request).store.delete_origin(peer_id)
        if not deleted:
            raise NotFound(f"no history kept under {peer_id!r} (see `peerstash ops --json`)")
        return web.json_response({"removed": peer_id, "history_only": True, "operations": deleted})
    await _peers(request).remove(peer_id, keep_history=keep)
    return web.json_response({"removed": peer_id, "kept_history": keep})


async def grant_peer_route(request: web.Request) -> web.Response:
    data = await _body(request)
    try:
        peer = await _peers(request).set_grants(request.match_info["id"], _str_list(data, "grants"))
    except GrantError as exc:
        raise BadRequest(str(exc)) from None
    return web.json_response(peer_to_dict(peer))


async def check_peer_route(request: web.Request) -> web.Response:
    manager = _peers(request)
    peer = await manager.store.get_peer(request.match_info["id"])
    if is_revoked(peer):
        said = (
            f"{peer.id} removed this node, so it is not dialed again; pair again with a new "
            "token from it, or remove it here"
        )
    elif peer.role == "known_host":
        manager.check_now(peer.id)
        said = "reconnecting now"
    else:
        said = "this peer dials us; its link comes back when it reconnects"
    return web.json_response({**peer_to_dict(peer), "message": said})


def _rpc(request: web.Request) -> tuple[RpcService, str]:
    """The request layer and the peer named in the path (which must be paired)."""
    return _running(request).rpc, request.match_info["id"]


async def _paired(request: web.Request, peer_id: str) -> None:
    try:
        await _engine(request).store.get_peer(peer_id)
    except NotFound:
        raise NotFound(f"{peer_id!r} is not a paired peer (see `peerstash peer list`)") from None


async def peer_config_route(request: web.Request) -> web.Response:
    """The peer's repos and plans that it lets us read (never a secret: it sends none)."""
    rpc, peer_id = _rpc(request)
    await _paired(request, peer_id)
    return web.json_response(await remote_config.read(rpc, peer_id))


async def peer_add_plan_route(request: web.Request) -> web.Response:
    rpc, peer_id = _rpc(request)
    fields = _new_plan(await _body(request))
    await _paired(request, peer_id)
    return web.json_response(await remote_config.add_plan(rpc, peer_id, fields), status=201)


async def peer_edit_plan_route(request: web.Request) -> web.Response:
    rpc, peer_id = _rpc(request)
    changes = _plan_changes(await _body(request))
    await _paired(request, peer_id)
    plan = await remote_config.edit_plan(rpc, peer_id, request.match_info["plan"], changes)
    return web.json_response(plan)


async def peer_remove_plan_route(request: web.Request) -> web.Response:
    rpc, peer_id = _rpc(request)
    await _paired(request, peer_id)
    res = await remote_config.remove_plan(rpc, peer_id, request.match_info["plan"])
    return web.json_response(res)


def _peer_password(data: dict[str, Any], *, required: bool) -> dict[str, Any] | None:
    """A password object's shape, forwarded as given: the peer decides what it accepts."""
    pw = data.get("password")
    if pw is None and not required:
        return None
    if not isinstance(pw, dict):
        raise BadRequest("field 'password' must be an object with 'source'", field="password")
    out = {"source": _str(pw, "source") or ""}
    for key in ("ref", "value"):
        value = _str(pw, key, required=False)
        if value is not None:
            out[key] = value
    return out


def _peer_env(data: dict[str, Any]) -> dict[str, str]:
    env = data.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise BadRequest("field 'env' must map names to strings", field="env")
    return env


async def peer_add_repo_route(request: web.Request) -> web.Response:
    """Add a repository on the peer (config.write there; the peer enforces what a peer may
    set, see peer/services/remote_config.py). The password goes only into the link, never a log."""
    rpc, peer_id = _rpc(request)
    data = await _body(request)
    extra = set(data) - {"id", "uri", "password", "env", "options", "init"}
    if extra:
        raise BadRequest(f"unknown field {', '.join(sorted(extra))}")
    fields: dict[str, Any] = {
        "id": _str(data, "id") or "",
        "uri": _str(data, "uri") or "",
        "password": _peer_password(data, required=True),
        "env": _peer_env(data),
        "options": _str_list(data, "options"),
        "init": bool(data.get("init", False)),
    }
    await _paired(request, peer_id)
    return web.json_response(await remote_config.add_repo(rpc, peer_id, fields), status=201)


async def peer_edit_repo_route(request: web.Request) -> web.Response:
    rpc, peer_id = _rpc(request)
    data = await _body(request)
    extra = set(data) - {"uri", "password", "env", "options"}
    if extra:
        raise BadRequest(f"cannot change {', '.join(sorted(extra))} of a repository")
    changes: dict[str, Any] = {}
    if "uri" in data:
        changes["uri"] = _str(data, "uri")
    if "password" in data:
        changes["password"] = _peer_password(data, required=True)
    if "env" in data:
        changes["env"] = _peer_env(data)
    if "options" in data:
        changes["options"] = _str_list(data, "options")
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
    return _running(request).remote


async def remote_run(request: web.Request) -> web.Response:
    """Ask a peer to back up one of its plans; answers with the request as it stands now
    (``queued`` when the peer is offline, ``failed`` when it refused)."""
    data = await _body(request)
    req = await _remote(request).request_run(_str(data, "peer") or "", _str(data, "plan") or "")
    return web.json_response(request_to_dict(req), status=202)


async def remote_restore(request: web.Request) -> web.Response:
    """Ask a peer to restore a snapshot of its repository into a folder on that peer."""
    data = await _body(request)
    req = await _remote(request).request_restore(
        _str(data, "peer") or "",
        _str(data, "repo") or "",
        _str(data, "snapshot") or "",
        _str(data, "target") or "",
        _str_list(data, "include"),
    )
    return web.json_response(request_to_dict(req), status=202)


async def remote_list(request: web.Request) -> web.Response:
    limit = _int_param(request, "limit", 100, 10_000)
    reqs = await _remote(request).list_requests(limit)
    return web.json_response([request_to_dict(r) for r in reqs])


async def remote_get(request: web.Request) -> web.Response:
    req = await _remote(request).get_request(request.match_info["id"])
    return web.json_response(request_to_dict(req))


async def remote_wait(request: web.Request) -> web.StreamResponse:
    """Stream a request as NDJSON until it ends or can no longer be followed (``--wait``).

    Each line is the request with ``op``: the peer's operation for it as last synced here
    (progress included), or null before it arrives.
    """
    node = request.app[NODE_KEY]
    remote = _remote(request)
    rid = request.match_info["id"]
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    with node.bus.subscribe("remote", "operation") as sub:
        req = await remote.get_request(rid)
        await resp.prepare(request)
        op: Any = None
        kind = op_kind_of(req)
        ops = await remote.store.list_operations(
            OpFilter(origin=req.peer, flow_id=rid, kind=kind), limit=1
        )
        if ops:
            op = ops[0]

        async def line() -> None:
            data = {**request_to_dict(req), "op": op_to_dict(op) if op is not None else None}
            await resp.write(json.dumps(data).encode() + b"\n")

        await line()
        while is_followable(req):
            try:
                event = await asyncio.wait_for(sub.get(), timeout=15)
            except TimeoutError:
                await resp.write(b"{}\n")
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
                resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
                await resp.prepare(request)
            await resp.write(json.dumps(node).encode() + b"\n")
    except RemoteError as exc:
        if resp is None:
            raise
        await resp.write(json.dumps({"error": str(exc)}).encode() + b"\n")
    if resp is None:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
    await resp.write_eof()
    return resp


def event_to_dict(event: Event) -> dict[str, Any] | None:
    if isinstance(event, OperationChanged) and event.op is not None:
        return {"type": "operation", "op": op_to_dict(event.op)}
    if isinstance(event, LinkStateChanged):
        return {"type": "link", "peer": event.peer_id, "state": event.state, "reason": event.reason}
    if isinstance(event, ConfigChanged):
        return {"type": "config", "what": event.what, "id": event.id}
    if isinstance(event, PlanStale):
        last = event.last_success_at.isoformat() if event.last_success_at else None
        return {"type": "stale", "plan": event.plan_id, "last_success_at": last}
    if isinstance(event, Notice):
        return {"type": "notice", "level": event.level, "message": event.message}
    if isinstance(event, WindowWanted):
        return {"type": "present"}
    if isinstance(event, SnapshotsChanged):
        return {
            "type": "snapshots",
            "repo": event.repo_id,
            "reason": event.reason,
            "origin": event.origin,
        }
    if isinstance(event, SharesReceived) and event.result is not None:
        r = event.result
        return {
            "type": "shares",
            "origin": event.origin,
            "added": list(r.added),
            "updated": list(r.updated),
            "removed": list(r.removed),
            "disabled_plans": list(r.disabled_plans),
            "skipped": dict(r.skipped),
            "refused": list(r.refused),
        }
    # Operations gone (our gc, or a peer's reaching us): views drop them by reloading.
    if isinstance(event, OperationsDeleted) and event.ops:
        return {"type": "ops_deleted", "origin": event.origin, "count": len(event.ops)}
    if isinstance(event, OpsSynced) and event.deleted:
        return {"type": "ops_deleted", "origin": event.peer_id, "count": event.deleted}
    if isinstance(event, RemoteRequestChanged) and event.request is not None:
        return {"type": "remote", "request": request_to_dict(event.request)}
    return None


async def events(request: web.Request) -> web.StreamResponse:
    """Every event as NDJSON: first the current link state of each peer, then live changes.

    Subscribing before reading the current state means nothing falls between the two. A
    desktop window says ``?ui=1``: while it follows, a second launch brings it up
    (:func:`present`) instead of opening another.
    """
    engine = _engine(request)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    windows = request.app[WINDOWS_KEY]
    is_window = request.query.get("ui") == "1"
    with engine.bus.subscribe() as sub, contextlib.ExitStack() as counted:
        if is_window:
            windows[0] += 1

            def uncount() -> None:
                windows[0] -= 1

            counted.callback(uncount)
        # Tells a client the subscription is live: whatever it does after this line is seen.
        await resp.write(json.dumps({"type": "ready"}).encode() + b"\n")
        for peer in await engine.store.list_peers():
            line = {
                "type": "link",
                "peer": peer.id,
                "state": peer.state,
                "reason": peer.state_reason,
            }
            await resp.write(json.dumps(line).encode() + b"\n")
        while True:
            try:
                event = await asyncio.wait_for(sub.get(), timeout=15)
            except TimeoutError:
                await resp.write(b"{}\n")
                continue
            data = event_to_dict(event)
            if data is not None:
                await resp.write(json.dumps(data).encode() + b"\n")


async def discovered(request: web.Request) -> web.Response:
    """What LAN discovery sees, with whether each node is paired and its key matches."""
    node = _running(request)
    if node.discovery is None:
        raise EngineError(
            "LAN discovery is off on this node (started with --no-discovery or the setting)"
        )
    try:
        wait = float(request.query.get("timeout", "0"))
    except ValueError:
        raise BadRequest("timeout must be a number of seconds") from None
    if not 0 <= wait <= 60:
        raise BadRequest("timeout must be between 0 and 60 seconds")
    if wait:
        # Give announcements on the LAN time to arrive (a person asked to look for this long).
        await asyncio.sleep(wait)
    paired = {p.id: p for p in await _engine(request).store.list_peers()}
    out = []
    for found in node.discovery.peers():
        known = paired.get(found.instance_id)
        out.append(
            {
                "id": found.instance_id,
                "key_id": found.key_id,
                "version": found.version,
                "compatible": found.compatible,
                "addresses": list(found.addresses),
                "port": found.port,
                "paired": known is not None,
                "key_matches": None if known is None else known.key_id == found.key_id,
                "duplicate_id": len(node.discovery.duplicates.get(found.instance_id, ())) > 1,
            }
        )
    return web.json_response(out)


async def present(request: web.Request) -> web.Response:
    """Bring up the desktop windows that follow this node; says how many there are.

    A second ``peerstash`` launch calls this first: when a window answers, it has nothing
    more to do (no second window, no second node).
    """
    count = request.app[WINDOWS_KEY][0]
    if count:
        _engine(request).bus.publish(WindowWanted())
    return web.json_response({"windows": count})


def _usable_name(value: object) -> bool:
    try:
        check_display_name(value)
    except ValueError:
        return False
    return True


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


def _check_listen(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse_listen(value)
    except ValueError:
        return False
    return True


def _whole(low: int, high: int, *, or_zero: bool = False) -> Callable[[Any], bool]:
    """A check for a whole-number setting from ``low`` to ``high`` (and 0 for "off")."""

    def check(value: object) -> bool:
        if not isinstance(value, int) or isinstance(value, bool):
            return False
        return (or_zero and value == 0) or low <= value <= high

    return check


_positive_seconds = _whole(1, 2**53)


#: Settings a person may change, with a check and the sentence shown when it fails. Each takes
#: effect when the node next starts; ``None`` puts the default back.
SETTINGS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "display_name": (
        lambda v: _usable_name(v),
        "display_name is 1 to 63 printable characters, with no space at either end",
    ),
    "listen": (_check_listen, "listen is HOST:PORT, e.g. 0.0.0.0:9797"),
    "discovery": (lambda v: isinstance(v, bool), "discovery is on or off"),
    "discovery_interfaces": (
        lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
        "discovery_interfaces is a list of addresses or interface names",
    ),
    "restic_path": (lambda v: isinstance(v, str) and bool(v), "restic_path is a path"),
    # How much of each peer's history this node keeps (core/store/opsync.py, Store.trim_peer_ops).
    "peer_history_days": (
        _whole(1, 36500),
        "peer_history_days is a number of days from 1 to 36500",
    ),
    "peer_history_max_ops": (
        _whole(1, 100_000_000),
        "peer_history_max_ops is a number of operations from 1 to 100000000",
    ),
    "restic_retry_lock": (
        _whole(0, 3600),
        "restic_retry_lock is seconds from 0 (off) to 3600",
    ),
    "restic_stall_seconds": (
        _whole(10, 86400, or_zero=True),
        "restic_stall_seconds is 0 (off) or seconds from 10 to 86400",
    ),
    # Health (peer/health.py): read on each status, so these take effect at once.
    OFFLINE_SETTING: (_positive_seconds, f"{OFFLINE_SETTING} is a number of seconds above 0"),
    STALE_SETTING: (_positive_seconds, f"{STALE_SETTING} is a number of seconds above 0"),
}


async def settings_route(request: web.Request) -> web.Response:
    store = _engine(request).store
    if request.method == "POST":
        data = await _body(request)
        key, value = data.get("key"), data.get("value")
        if key not in SETTINGS:
            raise BadRequest(f"unknown setting {key!r} ({', '.join(SETTINGS)})")
        check, message = SETTINGS[key]
        if value is not None and not check(value):
            raise BadRequest(message)
        if key == "display_name":
            await request.app[NODE_KEY].rename(value)  # stored, and live for peers now
        else:
            await store.set_setting(key, value)
    keys = ("instance_id", *SETTINGS)
    return web.json_response({k: await store.get_setting(k) for k in keys})


def make_admin_app(node: Node) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=MAX_BODY)
    app[NODE_KEY] = node
    app[WINDOWS_KEY] = [0]
    r = app.router
    r.add_get("/v1/status", status)
    r.add_get("/v1/repos", list_repos)
    r.add_post("/v1/repos", add_repo)
    r.add_delete("/v1/repos/{id}", delete_repo)
    r.add_patch("/v1/repos/{id}", edit_repo)
    r.add_post("/v1/repos/{id}/reveal-password", reveal_repo_password)
    r.add_post("/v1/repos/{id}/share", share_repo)
    r.add_post("/v1/repos/{id}/unshare", unshare_repo)
    r.add_get("/v1/repos/{id}/snapshots", snapshots)
    r.add_get("/v1/repos/{id}/snapshots/{snap}/ls", ls)
    r.add_post("/v1/repos/{id}/restore", restore)
    r.add_post("/v1/repos/{id}/restore/preview", restore_preview)
    for name in ("forget", "prune", "check", "unlock"):
        r.add_post(f"/v1/repos/{{id}}/{name}", _maintenance(name))
    r.add_get("/v1/plans", list_plans)
    r.add_post("/v1/plans", add_plan)
    r.add_delete("/v1/plans/{id}", delete_plan)
    r.add_patch("/v1/plans/{id}", edit_plan)
    r.add_post("/v1/plans/{id}/backup", backup)
    r.add_get("/v1/ops", list_ops)
    r.add_get("/v1/ops/follow", follow_ops)
    r.add_get("/v1/ops/{id}", get_op)
    r.add_get("/v1/ops/{id}/log", get_op_log)
    r.add_get("/v1/ops/{id}/wait", wait_op)
    r.add_post("/v1/ops/{id}/cancel", cancel_op)
    r.add_post("/v1/schedules/pause", pause)
    r.add_post("/v1/gc", gc)
    r.add_get("/v1/events", events)
    r.add_post("/v1/ui/present", present)
    r.add_get("/v1/discovered", discovered)
    r.add_post("/v1/rename", rename_route)
    r.add_get("/v1/settings", settings_route)
    r.add_post("/v1/settings", settings_route)
    r.add_get("/v1/tokens", list_tokens_route)
    r.add_post("/v1/tokens", create_token_route)
    r.add_delete("/v1/tokens/{id}", delete_token_route)
    r.add_get("/v1/peers", list_peers_route)
    r.add_post("/v1/peers", add_peer_route)
    r.add_delete("/v1/peers/{id}", remove_peer_route)
    r.add_post("/v1/peers/{id}/check", check_peer_route)
    r.add_patch("/v1/peers/{id}", grant_peer_route)
    r.add_get("/v1/peers/{id}/config", peer_config_route)
    r.add_post("/v1/peers/{id}/plans", peer_add_plan_route)
    r.add_patch("/v1/peers/{id}/plans/{plan}", peer_edit_plan_route)
    r.add_delete("/v1/peers/{id}/plans/{plan}", peer_remove_plan_route)
    r.add_post("/v1/peers/{id}/repos", peer_add_repo_route)
    r.add_patch("/v1/peers/{id}/repos/{repo}", peer_edit_repo_route)
    r.add_delete("/v1/peers/{id}/repos/{repo}", peer_remove_repo_route)
    r.add_get("/v1/peers/{peer}/repos/{id}/snapshots", remote_snapshots)
    r.add_get("/v1/peers/{peer}/repos/{id}/snapshots/{snap}/ls", remote_ls)
    r.add_post("/v1/remote/run", remote_run)
    r.add_post("/v1/remote/restore", remote_restore)
    r.add_get("/v1/remote/requests", remote_list)
    r.add_get("/v1/remote/requests/{id}", remote_get)
    r.add_get("/v1/remote/requests/{id}/wait", remote_wait)
    return app
