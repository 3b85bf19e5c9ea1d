"""Paired peers, one-time pairing tokens, and the requests this node sends to peers.

``redeem_token`` uses a token and registers the peer in one transaction, so two racing
redemptions cannot both succeed; :class:`TokenRefused` words every bad token the same way, so a
prober learns nothing about which it was; :class:`KeyConflict` refuses an instance id already
pinned to another key. ``replace_peer`` pins an id to a new key and keeps what the old key's
node sent under an archive origin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update

from peerstash.core.models import (
    REQUEST_FINAL_STATES,
    Operation,
    OperationLog,
    PairingTokenRow,
    Peer,
    RemoteRequest,
)
from peerstash.core.store.base import AlreadyExists, StoreBase, StoreError, utcnow


class TokenRefused(StoreError):
    """A pairing token that does not exist, has expired or is used up (one message for all,
    so a prober learns nothing about which)."""


class KeyConflict(StoreError):
    """A valid token was presented under an instance id already pinned to another key."""


class PeersMixin(StoreBase):
    """Peers, remote requests and pairing tokens."""

    # -- peers -------------------------------------------------------------------------------

    async def list_peers(self) -> list[Peer]:
        return await self._list(Peer)

    async def get_peer(self, peer_id: str) -> Peer:
        return await self._get(Peer, peer_id, "peer")

    async def put_peer(self, peer: Peer) -> Peer:
        """Insert or replace a peer row (pairing decides whether replacing is allowed)."""
        now = utcnow()
        peer.updated_at = now
        async with self.session() as s, s.begin():
            old = await s.get(Peer, peer.id)
            peer.created_at = old.created_at if old is not None else now
            if old is not None:
                await s.delete(old)
                await s.flush()
            s.add(peer)
        return peer

    async def update_peer(self, peer_id: str, **fields: Any) -> Peer:
        return await self._update(Peer, peer_id, "peer", fields)

    async def delete_peer(self, peer_id: str) -> None:
        async with self.session() as s, s.begin():
            await s.execute(delete(Peer).where(Peer.id == peer_id))

    async def replace_peer(self, peer: Peer, archive_origin: str) -> int:
        """Pin ``peer`` in place of the row with its id (another key), in one transaction.

        The operations the old key's node sent us move to ``archive_origin`` (an origin no
        instance can have): left under the id, the new node's first sync would find them
        missing from its history and delete them. Returns how many were kept that way.
        """
        now = utcnow()
        async with self.session() as s, s.begin():
            old = await s.get(Peer, peer.id)
            # An archive made by an earlier replace of the same key may hold copies of the same
            # operations (the key came back and synced them again): the newer copies win.
            moving = select(Operation.op_id).where(Operation.origin == peer.id)
            stale = select(Operation.pk).where(
                Operation.origin == archive_origin, Operation.op_id.in_(moving)
            )
            await s.execute(delete(OperationLog).where(OperationLog.op_pk.in_(stale)))
            await s.execute(
                delete(Operation).where(
                    Operation.origin == archive_origin, Operation.op_id.in_(moving)
                )
            )
            res = await s.execute(
                update(Operation).where(Operation.origin == peer.id).values(origin=archive_origin)
            )
            if old is not None:
                await s.delete(old)
                await s.flush()
            peer.created_at = now
            peer.updated_at = now
            s.add(peer)
        return int(getattr(res, "rowcount", 0) or 0)

    # -- remote requests ---------------------------------------------------------------------

    async def add_request(self, req: RemoteRequest) -> RemoteRequest:
        """Persist a new request to a peer (its id is minted by the caller)."""
        now = utcnow()
        req.created_at = req.created_at or now
        req.updated_at = now
        async with self.session() as s, s.begin():
            if await s.get(RemoteRequest, req.id) is not None:
                raise AlreadyExists(f"a request with id {req.id!r} exists already")
            s.add(req)
        return req

    async def get_request(self, request_id: str) -> RemoteRequest:
        return await self._get(RemoteRequest, request_id, "remote request")

    async def update_request(self, request_id: str, **fields: Any) -> RemoteRequest:
        return await self._update(RemoteRequest, request_id, "remote request", fields)

    async def list_requests(
        self,
        *,
        peer: str | None = None,
        states: Iterable[str] | None = None,
        limit: int = 1000,
        newest_first: bool = False,
    ) -> list[RemoteRequest]:
        """Requests, oldest first (the order they are delivered in) unless ``newest_first``."""
        q = select(RemoteRequest)
        if peer is not None:
            q = q.where(RemoteRequest.peer == peer)
        if states is not None:
            q = q.where(RemoteRequest.state.in_(list(states)))
        if newest_first:
            q = q.order_by(RemoteRequest.created_at.desc(), RemoteRequest.id.desc())
        else:
            q = q.order_by(RemoteRequest.created_at, RemoteRequest.id)
        q = q.limit(limit)
        async with self.session() as s:
            return list((await s.scalars(q)).all())

    async def trim_requests(self, *, older_than: timedelta) -> int:
        """Delete requests that ended (``REQUEST_FINAL_STATES``) and last changed before
        ``older_than`` ago; the operations they started stay, with their own history."""
        cutoff = utcnow() - older_than
        async with self.session() as s, s.begin():
            res = await s.execute(
                delete(RemoteRequest).where(
                    RemoteRequest.state.in_(REQUEST_FINAL_STATES),
                    RemoteRequest.updated_at < cutoff,
                )
            )
        return int(getattr(res, "rowcount", 0) or 0)

    # -- pairing tokens ----------------------------------------------------------------------

    async def add_token(self, row: PairingTokenRow) -> PairingTokenRow:
        row.created_at = utcnow()
        row.uses = 0
        async with self.session() as s, s.begin():
            s.add(row)
        return row

    async def list_tokens(self) -> list[PairingTokenRow]:
        """Live tokens; expired ones are deleted on the way."""
        async with self.session() as s, s.begin():
            await s.execute(delete(PairingTokenRow).where(PairingTokenRow.expires_at <= utcnow()))
            q = select(PairingTokenRow).order_by(PairingTokenRow.created_at)
            return list((await s.scalars(q)).all())

    async def delete_token(self, token_id: str) -> bool:
        async with self.session() as s, s.begin():
            res = await s.execute(delete(PairingTokenRow).where(PairingTokenRow.id == token_id))
            return bool(getattr(res, "rowcount", 0))

    async def redeem_token(
        self, token_id: str, check: Callable[[str], bool], peer: Peer
    ) -> PairingTokenRow:
        """Use a token once and register ``peer`` with its grants, in one transaction.

        ``check(secret_hash)`` compares the presented secret with the stored hash (in constant
        time). The token is deleted when expired or used up. Raises TokenRefused.
        """
        now = utcnow()
        async with self.session() as s, s.begin():
            row = await s.get(PairingTokenRow, token_id, with_for_update=True)
            if row is None or not check(row.secret_hash):
                raise TokenRefused("the pairing token is not valid (wrong, expired or used up)")
            if row.expires_at <= now or row.uses >= row.max_uses:
                await s.delete(row)
                raise TokenRefused("the pairing token is not valid (wrong, expired or used up)")
            row.uses += 1
            if row.uses >= row.max_uses:
                await s.delete(row)
            old = await s.get(Peer, peer.id)
            if old is not None:
                if old.public_key != peer.public_key:
                    raise KeyConflict(
                        f"instance {peer.id!r} is already paired there with key {old.key_id}; "
                        f"this node's key is {peer.key_id}; if {peer.id!r} was reinstalled, "
                        f"remove it on that node first (`peerstash peer remove {peer.id}`)"
                    )
                await s.delete(old)
                await s.flush()
            peer.grants = list(row.grants)
            peer.created_at = old.created_at if old is not None else now
            peer.updated_at = now
            s.add(peer)
        return row
