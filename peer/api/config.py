"""Admin routes for this node's configuration: repositories, plans and node settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from msgspec import UNSET

from peerstash.core.engine import Engine, EngineError, PasswordSpec
from peerstash.core.records import OpRecord, PlanRecord, RepoRecord, to_json
from peerstash.core.retention import RetentionPolicy
from peerstash.peer.api.common import NODE_KEY, BadRequest, engine_of, read_body, reply
from peerstash.peer.api.schema import (
    AddPlan,
    AddRepo,
    EditPlan,
    EditRepo,
    Password,
    Setting,
    ShareRepo,
)
from peerstash.peer.health import OFFLINE_SETTING, STALE_SETTING
from peerstash.peer.links.protocol import check_display_name
from peerstash.peer.server import parse_listen


async def list_repos(request: web.Request) -> web.Response:
    return reply([RepoRecord.of(r) for r in await engine_of(request).list_repos()])


async def add_repo(request: web.Request) -> web.Response:
    body = await read_body(request, AddRepo)
    repo, said = await engine_of(request).add_repo(
        body.id,
        body.uri,
        password_spec(body.password),
        env=body.env,
        options=body.options,
        init=body.init,
    )
    return reply({"repo": RepoRecord.of(repo), "message": said}, status=201)


def password_spec(pw: Password) -> PasswordSpec:
    """The engine's password spec of a request's (the engine checks the combination)."""
    return PasswordSpec(source=pw.source, ref=pw.ref or "", value=pw.value)


async def reveal_repo_password(request: web.Request) -> web.Response:
    """The repository's password, for its owner's eyes (recovery sheet, ``repo show``).

    Only on this explicit request (a POST: nothing fetches it by accident), only over the
    owner-only admin socket, never to a peer, and never logged. For a password Peerstash does
    not store (file, variable, command) the answer says where it comes from instead.
    """
    engine = engine_of(request)
    repo_id = request.match_info["id"]
    said = await engine.repo_password(repo_id)
    repo = to_json(RepoRecord.of(await engine.store.get_repo(repo_id)))
    return web.json_response({"repo": repo, **said})


async def delete_repo(request: web.Request) -> web.Response:
    await engine_of(request).delete_repo(request.match_info["id"])
    return web.json_response({"deleted": request.match_info["id"]})


async def share_repo(request: web.Request) -> web.Response:
    """Share one of our repositories with the peers that grant us ``repos.receive``.

    Body: ``{"client_uri": "..."}`` optionally (absent keeps the one set before, "" clears it).
    """
    body = await read_body(request, ShareRepo)
    repo = await engine_of(request).share_repo(request.match_info["id"], client_uri=body.client_uri)
    return reply(RepoRecord.of(repo))


async def unshare_repo(request: web.Request) -> web.Response:
    repo = await engine_of(request).unshare_repo(request.match_info["id"])
    return reply(RepoRecord.of(repo))


async def list_plans(request: web.Request) -> web.Response:
    return reply([PlanRecord.of(p) for p in await engine_of(request).list_plans()])


def check_retention(retention: dict[str, Any]) -> None:
    """A retention policy's shape (its keys and their values), as a field error."""
    try:
        RetentionPolicy.from_dict(retention)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"bad retention policy: {exc}", field="retention") from None


async def add_plan(request: web.Request) -> web.Response:
    body = await read_body(request, AddPlan)
    check_retention(body.retention)
    plan = await engine_of(request).add_plan(
        body.id,
        repo_id=body.repo,
        paths=body.paths,
        excludes=body.excludes,
        cron=body.schedule,
        every=body.every,
        retention=body.retention,
    )
    out = to_json(PlanRecord.of(plan))
    if body.backup_now:
        out["first_backup"] = await first_backup(engine_of(request), plan.id)
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
    return to_json(OpRecord.of(op))


async def edit_plan(request: web.Request) -> web.Response:
    changes = (await read_body(request, EditPlan)).changes()
    plan = await engine_of(request).update_plan(request.match_info["id"], **changes)
    return reply(PlanRecord.of(plan))


async def edit_repo(request: web.Request) -> web.Response:
    body = await read_body(request, EditRepo)
    repo = await engine_of(request).update_repo(
        request.match_info["id"],
        uri=None if body.uri is UNSET else body.uri,
        password=None if body.password is UNSET else password_spec(body.password),
        env=None if body.env is UNSET else body.env,
        options=None if body.options is UNSET else body.options,
    )
    return reply(RepoRecord.of(repo))


async def delete_plan(request: web.Request) -> web.Response:
    await engine_of(request).delete_plan(request.match_info["id"])
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
    store = engine_of(request).store
    if request.method == "POST":
        body = await read_body(request, Setting)
        key, value = body.key, body.value
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
