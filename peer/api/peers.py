"""Admin routes for pairing and peers: tokens, paired peers and their grants, LAN discovery."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from peerstash.core.engine import EngineError
from peerstash.core.models import Peer
from peerstash.core.records import (
    DiscoveredRecord,
    ListedPeerRecord,
    NewTokenRecord,
    PeerRecord,
    TokenRecord,
    to_json,
)
from peerstash.core.store import NotFound
from peerstash.peer.api.common import NODE_KEY, BadRequest, engine_of, read_body, running_node
from peerstash.peer.api.schema import AddPeer, CreateToken, Grants
from peerstash.peer.links.link import ARCHIVE_MARK, PairingError, PeerManager, is_revoked
from peerstash.peer.services import fleet as fleet_view
from peerstash.peer.trust.pairing import TokenError, create_token
from peerstash.peer.trust.permissions import GrantError


def _peers(request: web.Request) -> PeerManager:
    return running_node(request).peers


def peer_to_dict(peer: Peer) -> dict[str, Any]:
    """A peer as every surface shows it (:class:`peerstash.core.records.PeerRecord`)."""
    return to_json(PeerRecord.of(peer))


async def create_token_route(request: web.Request) -> web.Response:
    node = running_node(request)
    body = await read_body(request, CreateToken)
    try:
        text, row = await create_token(
            engine_of(request).store,
            node.identity,
            node.instance_id,
            label=body.label or "",
            ttl=body.ttl or "1h",
            max_uses=body.max_uses,
            grants=body.grants,
        )
    except (TokenError, GrantError) as exc:
        raise BadRequest(str(exc)) from None
    made = NewTokenRecord.extending(TokenRecord.of(row), token=text)
    return web.json_response(to_json(made), status=201)


async def list_tokens_route(request: web.Request) -> web.Response:
    rows = await engine_of(request).store.list_tokens()
    return web.json_response([to_json(TokenRecord.of(r)) for r in rows])


async def delete_token_route(request: web.Request) -> web.Response:
    if not await engine_of(request).store.delete_token(request.match_info["id"]):
        raise NotFound(f"no token with id {request.match_info['id']!r}")
    return web.json_response({"deleted": request.match_info["id"]})


async def list_peers_route(request: web.Request) -> web.Response:
    engine = engine_of(request)
    fleet = await fleet_view.plans_by_peer(engine.store, engine.instance_id)
    peers = await engine.store.list_peers()
    shown = fleet_view.labels(peers, engine.instance_id, request.app[NODE_KEY].name)
    listed = [ListedPeerRecord.listed(p, shown[p.id], fleet.get(p.id, [])) for p in peers]
    return web.json_response([to_json(p) for p in listed])


async def add_peer_route(request: web.Request) -> web.Response:
    body = await read_body(request, AddPeer)
    try:
        peer = await _peers(request).pair(body.token, body.url, body.grants, replace=body.replace)
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
        deleted = await engine_of(request).delete_history(peer_id)
        if not deleted:
            raise NotFound(f"no history kept under {peer_id!r} (see `peerstash ops --json`)")
        return web.json_response({"removed": peer_id, "history_only": True, "operations": deleted})
    await _peers(request).remove(peer_id, keep_history=keep)
    return web.json_response({"removed": peer_id, "kept_history": keep})


async def grant_peer_route(request: web.Request) -> web.Response:
    grants = (await read_body(request, Grants)).grants
    try:
        peer = await _peers(request).set_grants(request.match_info["id"], grants)
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


async def discovered(request: web.Request) -> web.Response:
    """What LAN discovery sees, with whether each node is paired and its key matches."""
    node = running_node(request)
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
    paired = {p.id: p for p in await engine_of(request).store.list_peers()}
    out = []
    for found in node.discovery.peers():
        known = paired.get(found.instance_id)
        out.append(
            DiscoveredRecord(
                id=found.instance_id,
                key_id=found.key_id,
                version=found.version,
                compatible=found.compatible,
                addresses=list(found.addresses),
                port=found.port,
                paired=known is not None,
                key_matches=None if known is None else known.key_id == found.key_id,
                duplicate_id=len(node.discovery.duplicates.get(found.instance_id, ())) > 1,
            )
        )
    return web.json_response([to_json(d) for d in out])
