"""Remote commands: run a plan on a peer, browse its snapshots, restore on it.

Both roles live here, because every node plays both:

* **Answering** (where the data lives). ``remote.run``, ``remote.restore``,
  ``remote.snapshots`` and ``remote.ls`` are registered on the node's :class:`RpcService`
  under the ``run`` grant; each handler then checks the scope of the exact plan or repository
  (``run:plan:ID``, ``run:repo:ID``) before it touches anything, so a peer learns nothing about
  what it may not use.
* **Asking.** Browsing (snapshots, ls) is a live call: it needs the peer online now and says so
  when it is not; ``ls`` streams, so a huge directory never times out while entries flow.
  Running and restoring are *requests*, persisted in the store (``remote_requests``) until
  they end, because the peer may be away for hours: a request made while it is offline waits
  ``queued`` and is delivered when its link comes up (also after a restart here), or turns
  ``timed out`` after the TTL.

**Delivery is idempotent.** The request id travels with the call and the answering side
starts the operation with that id as its *flow id*. A repeated delivery (the accept reply was
lost with the link) finds that operation and answers with it instead of starting another.

**Progress comes through operation sync, not through extra messages.** The peer's operation
arrives in our store (origin = peer) like any other synced operation, carrying the request id
as its flow id; that is how ``accepted → running → done | failed`` is driven, even when the
accept reply itself was lost. A peer that does not give us ``ops`` for that plan or repository
never sends the operation: the request then stays ``accepted`` with a note saying why, instead
of pretending to wait for something that cannot arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any

from peerstash.core.engine import Engine
from peerstash.core.events import Event, EventBus, OperationChanged
from peerstash.core.ids import new_ulid
from peerstash.core.models import REQUEST_FINAL_STATES, Operation, OpKind, OpStatus, RemoteRequest
from peerstash.core.records import (
    LsNodeRecord,
    RemoteRequestRecord,
    SnapshotRecord,
    iso_time,
    to_json,
)
from peerstash.core.store import NotFound, OpFilter, Store, utcnow
from peerstash.peer.links import protocol as proto
from peerstash.peer.links.link import Link, PeerManager, PeerRemoved
from peerstash.peer.links.rpc import (
    CallContext,
    CallError,
    CallTimeout,
    PeerUnavailable,
    ReplyTooLarge,
    RpcService,
    arg,
)
from peerstash.peer.services.opsync import OpsSynced, is_plain_id
from peerstash.peer.trust.permissions import Grants

log = logging.getLogger(__name__)

RUN = "run"
RESTORE = "restore"

QUEUED = "queued"
ACCEPTED = "accepted"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
TIMED_OUT = "timed out"

#: States a request can still leave; the rest are final.
OPEN_STATES = (QUEUED, ACCEPTED, RUNNING)
FINAL_STATES = (DONE, FAILED, TIMED_OUT)
if FINAL_STATES != REQUEST_FINAL_STATES:  # pragma: no cover - a dev error
    raise RuntimeError("peer.remote.FINAL_STATES and core REQUEST_FINAL_STATES disagree")
#: Requests only move forward: a late or repeated event never rolls one back.
_RANK = {QUEUED: 0, ACCEPTED: 1, RUNNING: 2, DONE: 3, FAILED: 3, TIMED_OUT: 3}

#: How long a request may wait for its peer before it is given up (a day: a laptop that is
#: away over night still gets it in the morning; a week-old "back up now" would surprise).
DEFAULT_TTL = 24 * 3600.0
#: How long a caller waits for the peer to accept a request (it only queues an operation).
CALL_SILENCE = 30.0
#: How long browsing waits for the peer to say anything (streams: between chunks). restic may
#: take minutes to list the snapshots of a large remote repository before its first byte; a
#: peer that is gone is noticed by the link itself (heartbeats), not by this.
BROWSE_SILENCE = 300.0
#: When a peer was busy or slow to answer while online, try again after this long.
RETRY_AFTER = 30.0

#: The operation kind each request kind starts on the peer.
_OP_KIND = {RUN: OpKind.BACKUP.value, RESTORE: OpKind.RESTORE.value}
#: Beginning of the note on a request whose progress the peer does not share with us.
NOT_VISIBLE = "progress not visible"


@dataclass(frozen=True)
class RemoteRequestChanged(Event):
    """A request this node made changed state (``request`` is a detached RemoteRequest)."""

    topic: str = field(init=False, default="remote")
    request: Any = None


class RemoteError(Exception):
    """A remote command could not be done; the message says why, in words."""


def op_kind_of(req: RemoteRequest) -> str:
    """The kind of the operation a request starts on its peer (its flow may hold more, e.g.
    the retention that follows a backup)."""
    return _OP_KIND.get(req.kind, "")


def offline_note(peer_id: str) -> str:
    return (
        f"peer {peer_id} is offline; the request is queued and will be delivered when it comes back"
    )


def is_followable(req: RemoteRequest) -> bool:
    """Whether waiting on ``req`` can still learn something (it is open and visible)."""
    if req.state in FINAL_STATES:
        return False
    return not (req.state == ACCEPTED and (req.note or "").startswith(NOT_VISIBLE))


def describe(req: RemoteRequest) -> str:
    """One sentence saying where the request stands."""
    peer, op = req.peer, req.remote_op_id
    if req.state == QUEUED:
        return req.note or f"waiting to be delivered to {peer}"
    if req.state == ACCEPTED:
        said = f"{peer} accepted it as operation {op}"
        return f"{said}; {req.note}" if req.note else f"{said}; it has not started yet"
    if req.state == RUNNING:
        return f"running on {peer} as operation {op}"
    if req.state == DONE:
        snap = f", snapshot {req.snapshot_id[:8]}" if req.snapshot_id else ""
        warn = f" (with a warning: {req.error})" if req.error else ""
        return f"done on {peer}: operation {op}{snap}{warn}"
    return req.error or f"{req.state} on {peer}"


def request_record(req: RemoteRequest) -> RemoteRequestRecord:
    """The record every surface shows (never a secret: ``args`` holds none)."""
    return RemoteRequestRecord(
        id=req.id,
        peer=req.peer,
        kind=req.kind,
        args=dict(req.args or {}),
        state=req.state,
        remote_op_id=req.remote_op_id,
        snapshot_id=req.snapshot_id,
        error=req.error if req.state != DONE else None,
        warning=req.error if req.state == DONE else None,
        note=req.note,
        message=describe(req),
        final=req.state in FINAL_STATES,
        followable=is_followable(req),
        created_at=iso_time(req.created_at),
        updated_at=iso_time(req.updated_at),
    )


def _human_seconds(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


class RemoteService:
    """Remote commands of one node, in both roles (see the module docstring).

    It wires itself to the links and the rpc methods when built; :meth:`start` it before the
    links start.
    """

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        engine: Engine,
        manager: PeerManager,
        rpc: RpcService,
        instance_id: str,
        *,
        ttl: float = DEFAULT_TTL,
        silence: float = CALL_SILENCE,
        browse_silence: float = BROWSE_SILENCE,
        retry_after: float = RETRY_AFTER,
    ) -> None:
        self.store = store
        self.bus = bus
        self.engine = engine
        self.manager = manager
        self.rpc = rpc
        self.instance_id = instance_id
        self.ttl = ttl
        self.silence = silence
        self.browse_silence = browse_silence
        self.retry_after = retry_after
        #: Open requests by id → (peer, operation kind): matching a synced operation to its
        #: request must not cost a query for every operation a busy fleet syncs.
        self._open: dict[str, tuple[str, str]] = {}
        #: Requests whose delivery call is under way (never delivered twice at once, and
        #: never timed out while the peer may be accepting them).
        self._in_flight: set[str] = set()
        #: Requests asked to be delivered while their delivery was in flight: tried once more.
        self._again: set[str] = set()
        #: Queued request ids per peer, so a link-up with nothing to deliver does no I/O at all
        #: (link code and its tests rely on the order a link's state is written and read).
        self._queued: dict[str, set[str]] = {}
        #: Serialises read-check-write of request rows (transitions only move forward).
        self._write = asyncio.Lock()
        #: Serialises "already started for this request id?" with starting it (answering side).
        self._accepting = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sub: Any = None
        self._closing = False
        self._attach()

    # -- lifecycle ---------------------------------------------------------------------------

    def _attach(self) -> None:
        """Offer the remote methods to peers, and deliver queued requests on every link-up."""
        self.rpc.register("remote.run", self._answer_run, grant="run")
        self.rpc.register("remote.restore", self._answer_restore, grant="run")
        self.rpc.register("remote.snapshots", self._answer_snapshots, grant="run")
        self.rpc.register("remote.ls", self._answer_ls, grant="run")
        self.manager.add_link_up(self._on_link_up)
        self.manager.add_peer_removed(self._on_peer_removed)

    async def start(self) -> None:
        """Follow synced operations, catch up with what is stored already, and start the TTL
        clock. Subscribed first, so nothing that arrives meanwhile is missed."""
        self._sub = self.bus.subscribe("operation", "sync", maxsize=100_000)
        for req in await self.store.list_requests(states=OPEN_STATES):
            self._open[req.id] = (req.peer, op_kind_of(req))
            if req.state == QUEUED:
                self._queued.setdefault(req.peer, set()).add(req.id)
        self._spawn(self._follow(), "remote:follow")
        # The first pass runs here, in line with the node's other start-up queries: a query
        # racing them would make the store open a second connection, and link code (and its
        # tests) rely on the order a single connection gives a link's state writes and reads.
        self._spawn(self._expire_loop(await self._expire_due()), "remote:ttl")
        for peer_id in sorted({peer for peer, _ in self._open.values()}):
            await self._reconcile_peer(peer_id)

    async def stop(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        if self._sub is not None:
            self._sub.close()
            self._sub = None

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any] | None:
        if self._closing:
            coro.close()
            return None
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- asking: requests ----------------------------------------------------------------------

    async def request_run(self, peer_id: str, plan_id: str) -> RemoteRequest:
        """Ask ``peer_id`` to back up its plan ``plan_id``; delivered now if it is online."""
        if not plan_id:
            raise RemoteError("name the plan to run on the peer")
        return await self._new(peer_id, RUN, {"plan": plan_id})

    async def request_restore(
        self,
        peer_id: str,
        repo_id: str,
        snapshot_id: str,
        target: str,
        include: list[str] | None = None,
    ) -> RemoteRequest:
        """Ask ``peer_id`` to restore a snapshot of its repository into ``target`` *there*."""
        if not repo_id or not snapshot_id:
            raise RemoteError("name the repository and the snapshot to restore on the peer")
        if not PurePosixPath(target).is_absolute():
            raise RemoteError(
                f"restore target {target!r} is relative; give an absolute path on {peer_id} "
                "(the restore happens there, not here)"
            )
        args: dict[str, Any] = {"repo": repo_id, "snapshot": snapshot_id, "target": target}
        args["include"] = list(include or [])
        return await self._new(peer_id, RESTORE, args)

    async def _new(self, peer_id: str, kind: str, args: dict[str, Any]) -> RemoteRequest:
        await self._known_peer(peer_id)
        req = await self.store.add_request(
            RemoteRequest(id=new_ulid(), peer=peer_id, kind=kind, args=args, state=QUEUED)
        )
        self._open[req.id] = (peer_id, _OP_KIND[kind])
        self._queued.setdefault(peer_id, set()).add(req.id)
        self.bus.publish(RemoteRequestChanged(request=req))
        self._wake.set()  # the TTL clock has a new deadline
        log.info("remote %s request %s to %s: %s", kind, req.id, peer_id, args)
        # Shielded: a client that stops waiting (Ctrl-C on the CLI) must not cut the delivery
        # in half and leave the request waiting for the next link-up.
        first = self._spawn(self.deliver(req.id), f"remote:deliver:{req.id}")
        if first is not None:
            await asyncio.shield(first)
        return await self.store.get_request(req.id)

    async def _known_peer(self, peer_id: str) -> None:
        try:
            await self.store.get_peer(peer_id)
        except NotFound:
            raise RemoteError(
                f"{peer_id!r} is not a paired peer of this node (see `peerstash peer list`)"
            ) from None

    async def list_requests(self, limit: int = 1000) -> list[RemoteRequest]:
        return await self.store.list_requests(limit=limit, newest_first=True)

    async def get_request(self, request_id: str) -> RemoteRequest:
        return await self.store.get_request(request_id)

    async def deliver(self, request_id: str) -> None:
        """Send one queued request to its peer and record the answer.

        Offline, slow or busy: it stays ``queued`` with a note (the next link-up, or a retry
        shortly, sends it again). Refused: ``failed`` with the peer's reason. Accepted: the
        peer's operation id is kept, and a synced operation already here is applied at once.
        """
        if request_id in self._in_flight:
            # The delivery under way may just have found the peer offline while its link came
            # up: make sure this moment's chance is not lost.
            self._again.add(request_id)
            return
        self._in_flight.add(request_id)
        try:
            req = await self.store.get_request(request_id)
            if req.state != QUEUED:
                return
            if self._expired(req):
                await self._time_out(req)
                return
            try:
                await self.store.get_peer(req.peer)
            except NotFound:
                await self._transition(
                    req.id,
                    FAILED,
                    error=f"{req.peer} is no longer paired with this node; nothing was sent",
                    note=None,
                )
                return
            method = f"remote.{req.kind}"
            try:
                result = await self.rpc.call(
                    req.peer, method, {"request_id": req.id, **req.args}, silence=self.silence
                )
            except PeerUnavailable:
                await self._transition(req.id, QUEUED, note=offline_note(req.peer))
                return
            except CallTimeout:
                await self._transition(
                    req.id,
                    QUEUED,
                    note=(
                        f"{req.peer} did not answer within {self.silence:g}s; the request "
                        "stays queued and is sent again (it never starts twice)"
                    ),
                )
                self._retry_later(req.id)
                return
            except CallError as exc:
                if exc.code == proto.ErrorCode.BUSY:
                    await self._transition(
                        req.id, QUEUED, note=f"{req.peer} is busy; the request is sent again soon"
                    )
                    self._retry_later(req.id)
                    return
                await self._transition(req.id, FAILED, error=self.words(req.peer, exc), note=None)
                return
            if (
                not isinstance(result, dict)
                or not isinstance(result.get("op_id"), str)
                # Stored, shown and matched against synced operations, whose ids are plain.
                or not is_plain_id(result["op_id"])
            ):
                await self._transition(
                    req.id, FAILED, error=f"{req.peer} answered the request in a way not understood"
                )
                return
            note = await self._visibility_note(req, result)
            await self._transition(
                req.id, ACCEPTED, remote_op_id=result["op_id"], note=note, error=None
            )
            log.info("%s accepted request %s as operation %s", req.peer, req.id, result["op_id"])
        finally:
            self._in_flight.discard(request_id)
            self._wake.set()  # the TTL clock skipped it while it was in flight
            if request_id in self._again:
                self._again.discard(request_id)
                self._spawn(self.deliver(request_id), f"remote:deliver:{request_id}")
        await self._reconcile(request_id)

    def _retry_later(self, request_id: str) -> None:
        async def again() -> None:
            await asyncio.sleep(self.retry_after)
            await self.deliver(request_id)

        self._spawn(again(), f"remote:retry:{request_id}")

    async def _visibility_note(self, req: RemoteRequest, result: Mapping[str, Any]) -> str | None:
        """None when the peer shares this operation with us (``ops`` in scope), else why not."""
        try:
            peer = await self.store.get_peer(req.peer)
        except NotFound:
            theirs = Grants.none()
        else:
            theirs = Grants.stored(peer.their_grants, whose=f"their grants stored for {req.peer}")
        plan = result.get("plan") if isinstance(result.get("plan"), str) else None
        repo = result.get("repo") if isinstance(result.get("repo"), str) else None
        plan = plan or req.args.get("plan")
        repo = repo or req.args.get("repo")
        if theirs.allows("ops", repo=repo, plan=plan):
            return None
        what = f"plan {plan!r}" if req.kind == RUN else f"repository {repo!r}"
        return (
            f"{NOT_VISIBLE}: {req.peer} gives this node no 'ops' grant for {what}, so "
            f"operation {result['op_id']} cannot be followed from here; see it on {req.peer}"
        )

    def words(self, peer_id: str, exc: CallError) -> str:
        """A peer's refusal or failure, said from this side."""
        if isinstance(exc, PeerUnavailable):
            return f"peer {peer_id} is offline (not connected now); try again when it is online"
        if isinstance(exc, CallTimeout):
            return f"{peer_id} did not answer within {self.silence:g}s"
        if exc.code == proto.ErrorCode.UNKNOWN_METHOD:
            return f"{peer_id} does not offer remote commands (it may run an older Peerstash)"
        if exc.code in (
            proto.ErrorCode.FORBIDDEN,
            proto.ErrorCode.NOT_FOUND,
            proto.ErrorCode.BAD_REQUEST,
        ):
            return f"{peer_id} refused: {exc.message}"
        if exc.code == proto.ErrorCode.BUSY:
            return f"{peer_id} is busy: {exc.message}"
        if isinstance(exc, ReplyTooLarge):
            return exc.message  # "peer X sent a reply larger than ..."
        return f"{peer_id} could not do it: {exc.message}"

    # -- asking: state -------------------------------------------------------------------------

    async def _transition(self, request_id: str, state: str, **fields: Any) -> RemoteRequest | None:
        """Move a request to ``state`` (or update it in place), never backwards; a final
        state is kept (a late or repeated event changes nothing)."""
        async with self._write:
            try:
                req = await self.store.get_request(request_id)
            except NotFound:
                return None
            before = req.state
            if before in FINAL_STATES or _RANK[state] < _RANK[before]:
                return None
            changes = {k: v for k, v in fields.items() if getattr(req, k) != v}
            if state == before and not changes:
                return req
            req = await self.store.update_request(request_id, state=state, **changes)
        if state in FINAL_STATES:
            self._open.pop(request_id, None)
        if state != QUEUED:
            waiting = self._queued.get(req.peer)
            if waiting is not None:
                waiting.discard(request_id)
                if not waiting:
                    del self._queued[req.peer]
        self.bus.publish(RemoteRequestChanged(request=req))
        if state != before:
            log.info("remote request %s: %s", req.id, describe(req))
        return req

    def _expired(self, req: RemoteRequest) -> bool:
        return req.created_at + timedelta(seconds=self.ttl) <= utcnow()

    async def _time_out(self, req: RemoteRequest) -> None:
        why = "it was offline all that time" if req.note == offline_note(req.peer) else req.note
        await self._transition(
            req.id,
            TIMED_OUT,
            error=(
                f"not delivered to {req.peer} within {_human_seconds(self.ttl)}"
                + (f" ({why})" if why else "")
                + "; nothing was started there"
            ),
            note=None,
        )

    async def _expire_due(self) -> float | None:
        """Time out the queued requests past the TTL; seconds until the next deadline."""
        self._wake.clear()
        if not self._queued:
            return None  # nothing queued: no query
        now = utcnow()
        nearest: float | None = None
        for req in await self.store.list_requests(states=[QUEUED]):
            if req.id in self._in_flight:
                continue  # the peer may be accepting it right now; decided by its answer
            left = (req.created_at + timedelta(seconds=self.ttl) - now).total_seconds()
            if left <= 0:
                await self._time_out(req)
            else:
                nearest = left if nearest is None else min(nearest, left)
        return nearest

    async def _expire_loop(self, nearest: float | None) -> None:
        """Turn queued requests older than the TTL into ``timed out``, at their deadline
        (woken early when a request is made or a delivery ends)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), nearest)
            nearest = await self._expire_due()

    async def _on_link_up(self, link: Link) -> None:
        """A peer came online: deliver what waits for it (in a task: this runs before the
        link's read loop, which must be running to receive the answers). Nothing queued for
        it: nothing is done, not even a query."""
        if self._queued.get(link.peer_id):
            self._spawn(self._deliver_queued(link.peer_id), f"remote:deliver:{link.peer_id}")

    async def _on_peer_removed(self, removed: PeerRemoved) -> None:
        """A peer was removed: every request to it that is still open ends, failed, with the
        reason (nothing more can arrive from it)."""
        for req in await self.store.list_requests(peer=removed.peer_id, states=OPEN_STATES):
            await self._transition(
                req.id,
                FAILED,
                error=f"{removed.reason}; the request ended"
                + (f" (it was operation {req.remote_op_id} there)" if req.remote_op_id else ""),
                note=None,
            )
        self._queued.pop(removed.peer_id, None)

    async def _deliver_queued(self, peer_id: str) -> None:
        for req in await self.store.list_requests(peer=peer_id, states=[QUEUED]):
            await self.deliver(req.id)

    async def _follow(self) -> None:
        """Drive requests from the peers' operations as operation sync stores them."""
        sub = self._sub
        assert sub is not None
        while True:
            event = await sub.get()
            if sub.lagged:
                sub.lagged = False
                for peer_id in sorted({peer for peer, _ in self._open.values()}):
                    await self._reconcile_peer(peer_id)
                continue
            try:
                if isinstance(event, OperationChanged) and event.op is not None:
                    op: Operation = event.op
                    if op.origin == self.instance_id:
                        continue
                    wanted = self._open.get(op.flow_id)
                    if wanted is not None and wanted == (op.origin, op.kind):
                        await self._apply(op.flow_id, op)
                elif isinstance(event, OpsSynced) and event.stored:
                    await self._reconcile_peer(event.peer_id)
            except Exception:
                log.exception("following remote requests failed on %s", type(event).__name__)

    async def _reconcile_peer(self, peer_id: str) -> None:
        for req_id, (peer, _) in list(self._open.items()):
            if peer == peer_id:
                await self._reconcile(req_id)

    async def _reconcile(self, request_id: str) -> None:
        """Apply the peer's operation for this request, if operation sync brought it here."""
        wanted = self._open.get(request_id)
        if wanted is None:
            return
        peer, kind = wanted
        ops = await self.store.list_operations(
            OpFilter(origin=peer, flow_id=request_id, kind=kind), limit=1
        )
        if ops:
            await self._apply(request_id, ops[0])

    async def _apply(self, request_id: str, op: Operation) -> None:
        status = OpStatus(op.status)
        fields: dict[str, Any] = {"remote_op_id": op.op_id, "note": None}
        if status == OpStatus.PENDING:
            state = ACCEPTED
        elif status == OpStatus.RUNNING:
            state = RUNNING
        elif status in (OpStatus.SUCCESS, OpStatus.WARNING):
            state = DONE
            fields["snapshot_id"] = op.snapshot_id
            fields["error"] = op.error if status == OpStatus.WARNING else None
        else:
            state = FAILED
            fields["error"] = (
                f"the {op.kind} on {op.origin} ended {status.value}: {op.error or 'no details'}"
            )
        await self._transition(request_id, state, **fields)

    # -- asking: live calls --------------------------------------------------------------------

    async def snapshots(self, peer_id: str, repo_id: str) -> list[dict[str, Any]]:
        """The snapshots of ``repo_id`` on ``peer_id``, asked now."""
        await self._known_peer(peer_id)
        try:
            items = await self.rpc.call(
                peer_id, "remote.snapshots", {"repo": repo_id}, silence=self.browse_silence
            )
        except CallTimeout:
            raise RemoteError(f"{peer_id} did not answer within {self.browse_silence:g}s") from None
        except CallError as exc:
            raise RemoteError(self.words(peer_id, exc)) from None
        return [i for i in (items or []) if isinstance(i, dict)]

    async def ls(
        self, peer_id: str, repo_id: str, snapshot_id: str, path: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The entries of a snapshot on ``peer_id`` as they arrive (bounded by silence)."""
        await self._known_peer(peer_id)
        args: dict[str, Any] = {"repo": repo_id, "snapshot": snapshot_id}
        if path:
            args["path"] = path
        try:
            async for item in self.rpc.stream(
                peer_id, "remote.ls", args, silence=self.browse_silence
            ):
                if isinstance(item, dict):
                    yield item
        except CallTimeout:
            raise RemoteError(
                f"{peer_id} sent nothing for {self.browse_silence:g}s; the listing stopped"
            ) from None
        except CallError as exc:
            raise RemoteError(self.words(peer_id, exc)) from None

    # -- answering -------------------------------------------------------------------------------

    def _request_id(self, args: Mapping[str, Any]) -> str:
        rid = arg(args, "request_id")
        # It becomes the flow id of our operation, which syncs to our peers: a plain id only.
        if not 0 < len(rid) <= 40 or not is_plain_id(rid):
            raise CallError(proto.ErrorCode.BAD_REQUEST, "argument 'request_id' is malformed")
        return str(rid)

    async def _started_for(
        self, request_id: str, kind: str, *, plan: str | None = None, repo: str | None = None
    ) -> Operation | None:
        """Our operation already started for this request id (a repeated delivery), if any.

        Flow ids are visible to peers with ``ops``: an id that names an operation of another
        plan or repository is refused rather than answered with that operation.
        """
        ops = await self.store.list_operations(
            OpFilter(origin=self.instance_id, flow_id=request_id, kind=kind), limit=1
        )
        if not ops:
            return None
        op = ops[0]
        if (plan is not None and op.plan_id != plan) or (repo is not None and op.repo_id != repo):
            raise CallError(
                proto.ErrorCode.BAD_REQUEST, "that request id was already used for another request"
            )
        return op

    @staticmethod
    def _accepted(op: Operation, *, again: bool) -> dict[str, Any]:
        return {
            "op_id": op.op_id,
            "status": op.status,
            "plan": op.plan_id,
            "repo": op.repo_id,
            "again": again,
        }

    async def _answer_run(self, ctx: CallContext, args: Mapping[str, Any]) -> dict[str, Any]:
        request_id = self._request_id(args)
        plan_id = arg(args, "plan")
        try:
            plan = await self.store.get_plan(plan_id)
        except NotFound:
            ctx.require("run", plan=plan_id)  # who may not run it learns nothing more
            raise CallError(
                proto.ErrorCode.NOT_FOUND, f"plan {plan_id!r} does not exist on {self.instance_id}"
            ) from None
        if not ctx.grants.allows("run", plan=plan.id, repo=plan.repo_id):
            raise CallError(
                proto.ErrorCode.FORBIDDEN,
                f"{ctx.peer_id} has no 'run' grant for plan {plan_id!r} here",
            )
        async with self._accepting:
            op = await self._started_for(request_id, OpKind.BACKUP.value, plan=plan.id)
            if op is not None:
                log.info(
                    "request %s from %s arrived again; it is operation %s",
                    request_id,
                    ctx.peer_id,
                    op.op_id,
                )
                return self._accepted(op, again=True)
            op = await self.engine.backup(
                plan.id, reason=f"requested by {ctx.peer_id}", flow_id=request_id
            )
        log.info("%s asked for a backup of plan %s: operation %s", ctx.peer_id, plan.id, op.op_id)
        return self._accepted(op, again=False)

    async def _repo_in_scope(self, ctx: CallContext, repo_id: str) -> None:
        ctx.require("run", repo=repo_id)
        try:
            await self.store.get_repo(repo_id)
        except NotFound:
            raise CallError(
                proto.ErrorCode.NOT_FOUND,
                f"repository {repo_id!r} does not exist on {self.instance_id}",
            ) from None

    async def _answer_restore(self, ctx: CallContext, args: Mapping[str, Any]) -> dict[str, Any]:
        request_id = self._request_id(args)
        repo_id = arg(args, "repo")
        snapshot_id = arg(args, "snapshot")
        target = arg(args, "target")
        include = arg(args, "include", (list, tuple), default=[])
        if not all(isinstance(i, str) for i in include):
            raise CallError(proto.ErrorCode.BAD_REQUEST, "argument 'include' must list paths")
        await self._repo_in_scope(ctx, repo_id)
        if not PurePosixPath(target).is_absolute():
            raise CallError(
                proto.ErrorCode.BAD_REQUEST,
                f"restore target {target!r} is relative; give an absolute path on {self.instance_id}",
            )
        async with self._accepting:
            op = await self._started_for(request_id, OpKind.RESTORE.value, repo=repo_id)
            if op is not None:
                return self._accepted(op, again=True)
            op = await self.engine.restore(
                repo_id, snapshot_id, target, include=list(include), flow_id=request_id
            )
        log.info(
            "%s asked for a restore of %s/%s into %s: operation %s",
            ctx.peer_id,
            repo_id,
            snapshot_id,
            target,
            op.op_id,
        )
        return self._accepted(op, again=False)

    async def _answer_snapshots(
        self, ctx: CallContext, args: Mapping[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        repo_id = arg(args, "repo")
        await self._repo_in_scope(ctx, repo_id)
        for snap in await self.engine.snapshots(repo_id):
            yield to_json(SnapshotRecord.of(snap))

    async def _answer_ls(
        self, ctx: CallContext, args: Mapping[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        repo_id = arg(args, "repo")
        snapshot_id = arg(args, "snapshot")
        path = arg(args, "path", default=None)
        await self._repo_in_scope(ctx, repo_id)
        async for node in self.engine.ls(repo_id, snapshot_id, path):
            yield to_json(LsNodeRecord.of(node))


__all__ = [
    "DEFAULT_TTL",
    "FINAL_STATES",
    "OPEN_STATES",
    "RemoteError",
    "RemoteRequestChanged",
    "RemoteService",
    "describe",
    "op_kind_of",
    "request_record",
]
