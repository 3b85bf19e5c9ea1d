"""The local admin API: JSON over HTTP on the node's Unix socket (mode 0600).

The CLI and the tray (when it attaches to a running node) speak this. It never listens on the
network: whoever can open the socket is the user who owns the data directory.

Every failure answers ``{"error": "..."}`` with one sentence a person can act on; request bodies
are never logged, because some carry passwords.

The route table comes first (:func:`make_admin_app`), then the error middleware. The handlers
live by area in this package (``config``, ``ops``, ``streams``, ``peers``, ``remote``,
``node``) and share ``common``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from peerstash.core.engine import EngineError
from peerstash.core.secrets import SecretError
from peerstash.core.store import NotFound, StoreError
from peerstash.peer.api.common import MAX_BODY, NODE_KEY, WINDOWS_KEY, BadRequest, Handler
from peerstash.peer.api.config import (
    add_plan,
    add_repo,
    delete_plan,
    delete_repo,
    edit_plan,
    edit_repo,
    list_plans,
    list_repos,
    reveal_repo_password,
    settings_route,
    share_repo,
    unshare_repo,
)
from peerstash.peer.api.node import present, rename_route, status
from peerstash.peer.api.ops import (
    _maintenance,
    backup,
    cancel_op,
    gc,
    get_op,
    get_op_log,
    list_ops,
    ls,
    pause,
    restore,
    restore_preview,
    snapshots,
)
from peerstash.peer.api.peers import (
    add_peer_route,
    check_peer_route,
    create_token_route,
    delete_token_route,
    discovered,
    grant_peer_route,
    list_peers_route,
    list_tokens_route,
    remove_peer_route,
)
from peerstash.peer.api.remote import (
    peer_add_plan_route,
    peer_add_repo_route,
    peer_config_route,
    peer_edit_plan_route,
    peer_edit_repo_route,
    peer_remove_plan_route,
    peer_remove_repo_route,
    remote_get,
    remote_list,
    remote_ls,
    remote_restore,
    remote_run,
    remote_snapshots,
    remote_wait,
)
from peerstash.peer.api.streams import events, follow_ops, wait_op
from peerstash.peer.links.rpc import CallError
from peerstash.peer.services.remote_commands import RemoteError
from peerstash.peer.services.remote_logs import LogUnavailable

if TYPE_CHECKING:
    from peerstash.peer.node import Node

log = logging.getLogger(__name__)


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
