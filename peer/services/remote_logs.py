"""Logs of a peer's operations, fetched from that peer when someone asks (grant ``ops``).

Operation sync copies the rows, not their logs: a log is up to 2,000 lines and almost never
read, so copying every one to every peer would cost far more than it is worth. Instead the log
stays with the operation's owner, and opening a remote operation asks the owner for it.

The owner checks the same grant and scope that let the operation itself reach the caller
(``ops`` for that repo and plan), so a log is never readable where its operation is not. When
the owner is offline the caller gets one sentence saying so (:class:`LogUnavailable`), not a
timeout.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from peerstash.core.models import Operation
from peerstash.core.store import NotFound, Store
from peerstash.peer.links.rpc import CallContext, CallError, PeerUnavailable, RpcService, arg

GRANT = "ops"
METHOD = "ops.log"


class LogUnavailable(Exception):
    """The log lives on a peer that cannot be asked now; worded for a person."""


class RemoteLogs:
    """Serves our operations' logs to peers, and fetches theirs for us."""

    def __init__(self, store: Store, rpc: RpcService, instance_id: str) -> None:
        self.store = store
        self.rpc = rpc
        self.instance_id = instance_id
        self._register()

    def _register(self) -> None:
        self.rpc.register(METHOD, self._serve, grant=GRANT)

    async def _serve(self, ctx: CallContext, args: Mapping[str, Any]) -> AsyncIterator[str]:
        """Stream the lines of one of *our* operations (a long log goes in several chunks)."""
        op_id = arg(args, "id")
        try:
            op = await self.store.find_operation(op_id, origin=self.instance_id)
        except NotFound:
            raise NotFound(f"{self.instance_id} has no operation {op_id}") from None
        ctx.require(GRANT, repo=op.repo_id, plan=op.plan_id)
        for line in await self.store.get_log(op.pk):
            yield line

    async def lines(self, op: Operation) -> list[str]:
        """The log of ``op``: read here when it is ours, asked of its owner otherwise."""
        if op.origin == self.instance_id:
            return await self.store.get_log(op.pk)
        try:
            # A log is at most 2,000 lines here: call() gathers it within its bounds, so a
            # peer that sends an endless "log" fails the call instead of filling our memory.
            lines = await self.rpc.call(op.origin, METHOD, {"id": op.op_id})
            return [str(line) for line in lines or ()]
        except PeerUnavailable:
            raise LogUnavailable(
                f"the log of this operation is on {op.origin}, which is offline now; "
                "try again when it is back online"
            ) from None
        except CallError as exc:
            raise LogUnavailable(f"{op.origin} did not send the log: {exc.message}") from None


__all__ = ["LogUnavailable", "RemoteLogs"]
