"""The desktop's view of the node: the admin API, nothing else.

The tray and every page talk to the node through the one admin client
(:class:`~peerstash.peer.api.client.AdminClient`, shared with the CLI), whose errors tell *why*
a call failed (their HTTP status and the field they are about), so a page can put a refusal
under the right input. This module adds the views of the API the pages share
(:class:`PeersApi`), :func:`decode` (the admin client's: an answer that is a record becomes
``core/records.py``'s struct once, where it arrives) and the helpers to build request paths.
The tray and the node come from one package, so every endpoint here exists on the node
(docs/architecture.md, "Version skew"). This module knows no
Qt, so it is usable (and testable) without a display.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from peerstash.core.records import (
    DiscoveredRecord,
    ListedPeerRecord,
    NewTokenRecord,
    PeerRecord,
    TokenRecord,
)
from peerstash.peer.api import schema
from peerstash.peer.api.client import AdminClient, AdminError, decode

#: The desktop's name for the admin client's error (what the pages catch).
ApiError = AdminError


def q(value: str) -> str:
    """Quote one path segment (plan, repo and op ids are safe today; this keeps it so)."""
    return quote(value, safe="")


def query(params: Mapping[str, Any]) -> str:
    """``?a=1&b=2`` from the non-empty values of ``params`` (empty string if none)."""
    clean = {k: v for k, v in params.items() if v not in (None, "")}
    return "?" + urlencode(clean) if clean else ""


async def node_answers(data_dir: Path, wait: float = 2.0) -> bool:
    """True when a node already serves the admin socket of ``data_dir``.

    A socket file left by a node that died does not count: we ask ``/v1/status``.
    """
    client = AdminClient(data_dir)
    if not client.socket.exists():
        return False
    async with client:
        with contextlib.suppress(ApiError, TimeoutError, OSError, aiohttp.ClientError):
            await asyncio.wait_for(client.call("GET", "/v1/status"), wait)
            return True
    return False


# -- peers -----------------------------------------------------------------------------------


class PeersApi:
    """Everything the Peers page and the tray's Peers menu ask the node, in one place."""

    #: The grants one side can give the other (DESIGN.md, "Permissions").
    GRANTS = ("ops", "config.read", "config.write", "repos.receive", "run")

    def __init__(self, client: AdminClient) -> None:
        self.client = client

    async def peers(self) -> list[ListedPeerRecord]:
        """Known hosts (``role`` ``known_host``) and authorized clients, with their ``state``,
        their ``label`` (the name, told apart from same-named ones) and ``plans`` (the last
        backup per plan they synced to us)."""
        answer = await self.client.call("GET", "/v1/peers") or []
        return decode(answer, list[ListedPeerRecord], "a list of peers")

    async def discovered(self) -> list[DiscoveredRecord]:
        """Peerstash instances announced on the LAN (zeroconf), with ``paired``/``key_matches``."""
        answer = await self.client.call("GET", "/v1/discovered") or []
        return decode(answer, list[DiscoveredRecord], "a list of machines on the network")

    async def tokens(self) -> list[TokenRecord]:
        answer = await self.client.call("GET", "/v1/tokens") or []
        return decode(answer, list[TokenRecord], "a list of pairing tokens")

    async def create_token(
        self, label: str, ttl: str, max_uses: int, grants: list[str]
    ) -> NewTokenRecord:
        """A new pairing token; its ``token`` text is shown once and never again."""
        body = schema.CreateToken(label=label, ttl=ttl, max_uses=max_uses, grants=grants)
        made = await self.client.call("POST", "/v1/tokens", body)
        return decode(made, NewTokenRecord, "a new pairing token")

    async def delete_token(self, token_id: str) -> None:
        await self.client.call("DELETE", f"/v1/tokens/{q(token_id)}")

    async def pair(self, token: str, url: str, grants: list[str]) -> PeerRecord:
        """Dial the issuer at ``url`` with its token; ``grants`` are what we give it."""
        body = schema.AddPeer(token=token, url=url, grants=grants)
        return decode(await self.client.call("POST", "/v1/peers", body), PeerRecord, "a peer")

    async def check(self, peer_id: str) -> tuple[PeerRecord, str]:
        """Reconnect now: the peer, and what the node did (``message``, beside the record)."""
        res = await self.client.call("POST", f"/v1/peers/{q(peer_id)}/check")
        peer = decode(res, PeerRecord, "a peer")
        return peer, str(res.get("message") or "checking")

    async def set_grants(self, peer_id: str, grants: list[str]) -> PeerRecord:
        """Replace what we grant ``peer_id`` (entries like ``ops`` or ``run:plan:x,!repo:y``)."""
        body = schema.Grants(grants=grants)
        res = await self.client.call("PATCH", f"/v1/peers/{q(peer_id)}", body)
        return decode(res, PeerRecord, "a peer")

    async def remove(self, peer_id: str) -> None:
        await self.client.call("DELETE", f"/v1/peers/{q(peer_id)}")
