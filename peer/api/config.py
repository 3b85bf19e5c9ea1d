"""Admin routes for this node's configuration: repositories, plans and node settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from peerstash.core.engine import Engine, EngineError, PasswordSpec
from peerstash.core.retention import RetentionPolicy
from peerstash.core.serialize import op_to_dict, plan_to_dict, repo_to_dict
from peerstash.peer.api.common import NODE_KEY, BadRequest, _body, _engine, _str, _str_list
from peerstash.peer.health import OFFLINE_SETTING, STALE_SETTING
from peerstash.peer.links.protocol import check_display_name
from peerstash.peer.server import parse_listen


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


def _usable_name(value: object) -> bool:
    try:
        check_display_name(value)
    except ValueError:
        return False
    return True


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
