"""Operation history sync: each node's own operations, mirrored on the peers it grants ``ops``.

Every node *owns* the operations it minted (their ``origin`` is its instance id) and is the
only one that ever sends them; a receiver stores them with that origin, read-only. Grants are
enforced where the data lives: the owner decides what leaves (its ``ops`` grant to that peer,
scoped by repo and plan), and the receiver refuses anything that claims another origin than
the peer it came from.

The exchange on every link, in both directions at once (each side is owner of its own
operations and receiver of the other's)::

    receiver                                  owner
    OpsSince {owner: highest modno I hold} -->
                                          <-- OpsBatch ... (only modno above that, in scope)
                                          <-- OpsDigest (count + hash of (id, modno) in scope)
    (digest equal: done; a reconnect with nothing changed costs a few hundred bytes)
    OpsManifest ... (what I hold)          -->   only when the digests differ
                                          <-- OpsDeleted (gone, or out of scope now)
                                          <-- OpsBatch (missing or stale)
                                          <-- OpsDigest (should match now)

After the first catch-up, every local change is pushed live (``OpsBatch``). Each link has one
outgoing queue (:class:`_LinkSync`): catch-up, repairs and live pushes leave in order, and the
link's read loop never waits on a large send (two peers filling each other's socket from their
read loops would deadlock). Bursts coalesce to the latest state of each operation, and a
running operation's progress goes out at most every ``progress_interval`` seconds; its final
state always goes out at once.

Deletions are pushed live too: the owner's garbage collection publishes
:class:`~peerstash.core.events.OperationsDeleted` with the (id, repo, plan) of what it removed,
and each link sends ``OpsDeleted`` for the ids that peer was allowed to see (so no peer learns
an id outside its scope). Deletions made any other way (a database restored from a backup) are
still found by the digest on the next connect (a change of grants restarts the link, see
``PeerManager.set_grants``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Union

import msgspec

from peerstash.core.events import Event, EventBus, Notice, OperationChanged, OperationsDeleted
from peerstash.core.models import Operation, OpKind, OpStatus
from peerstash.core.store import DeletedOp, NotFound, Store, utcnow
from peerstash.peer.links import protocol as proto
from peerstash.peer.links.link import Link, PeerManager, PeerRemoved
from peerstash.peer.links.outbox import LinkOutbox, LinkService
from peerstash.peer.trust.permissions import Grants

log = logging.getLogger(__name__)

if proto.OpRecord.__struct_fields__ != Store.SYNC_OP_COLUMNS:  # pragma: no cover - a dev error
    raise RuntimeError("peer.protocol.OpRecord and Store.SYNC_OP_COLUMNS disagree")

#: Operations per OpsBatch: about 1 MB at typical sizes, well under the frame limit (batches
#: that still come out too large are split further).
BATCH_OPS = 2000
#: Ids per OpsManifest / OpsDeleted frame (about 0.7 MB).
IDS_PER_FRAME = 20_000
#: Digest mismatches a receiver repairs in a row on one link before it waits for the next
#: connect: a peer whose history keeps moving under the repair must not keep us busy forever.
MAX_REPAIRS = 3
#: Received batches up to this size are also announced as OperationChanged (one per op), so
#: live views show remote progress; larger ones (a catch-up) only as one OpsSynced.
ANNOUNCE_LIMIT = 32
#: Outgoing jobs queued on one link before the peer is considered abusive.
MAX_QUEUED_JOBS = 1000
#: Seconds between age trims of one peer's copy as its operations arrive (the count cap is
#: checked after every batch; the daily gc applies both rules anyway).
AGE_CHECK_EVERY = 3600.0

_STATUSES = frozenset(s.value for s in OpStatus)
_KINDS = frozenset(k.value for k in OpKind)
_RUNNING = OpStatus.RUNNING.value
_TRUNCATED_SUMMARY = '{"truncated": true}'
#: What an id from a peer may look like: the characters ``check_name`` allows for plan and
#: repository names (letters, digits, ``-_.``, not starting with ``-`` or ``.``). Operation,
#: flow and snapshot ids minted by Peerstash and restic all fit; anything else (a control
#: character, a bidi override, a space) is refused row by row, since these ids are shown in
#: listings and used as filters.
_ID_OK = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*").fullmatch


def is_plain_id(text: str) -> bool:
    """True when ``text`` may be an id that came from a peer (see ``_ID_OK``)."""
    return _ID_OK(text) is not None


# A summary must be a JSON object of bounded depth: deeper nesting could exhaust the JSON
# reader's recursion when the operation is read back later. Six levels fit every summary the
# engine writes (forget: summary → groups → group → paths → path).
_J0 = Union[str, int, float, bool, None]  # noqa: UP007 - runtime alias for msgspec
_J1 = Union[_J0, list[_J0], dict[str, _J0]]  # noqa: UP007
_J2 = Union[_J0, list[_J1], dict[str, _J1]]  # noqa: UP007
_J3 = Union[_J0, list[_J2], dict[str, _J2]]  # noqa: UP007
_J4 = Union[_J0, list[_J3], dict[str, _J3]]  # noqa: UP007
_J5 = Union[_J0, list[_J4], dict[str, _J4]]  # noqa: UP007
_summary_decoder = msgspec.json.Decoder(dict[str, _J5])


@dataclass(frozen=True)
class OpsSynced(Event):
    """Operations of a peer were stored, deleted or checked here.

    ``in_sync`` is set after a digest comparison: True when this node holds exactly what the
    peer lets it see, False when a repair follows. Views refresh on it; tests await it.
    """

    topic: str = field(init=False, default="sync")
    peer_id: str = ""
    stored: int = 0
    deleted: int = 0
    in_sync: bool | None = None


def _fit(row: Sequence[Any]) -> proto.OpRecord | None:
    """A sync row as a wire record that the receiver's decoder will accept, or None.

    The receiver validates every bound while decoding and closes the link on a violation, so
    one odd row in our own database (an error message longer than the wire allows, a negative
    ETA) must be fixed up here, or it would cut the link on every reconnect.
    """
    try:
        return msgspec.convert(row, proto.OpRecord)
    except msgspec.ValidationError:
        pass
    fixed = list(row)
    summary, error = fixed[15], fixed[17]
    if not isinstance(summary, str):
        fixed[15] = "{}"
    elif len(summary) > proto.MAX_OP_SUMMARY:
        fixed[15] = _TRUNCATED_SUMMARY
    if isinstance(error, str) and len(error) > proto.MAX_OP_ERROR:
        fixed[17] = error[: proto.MAX_OP_ERROR - 1] + "…"
    if isinstance(fixed[14], int) and not 0 <= fixed[14] < 2**31:
        fixed[14] = None
    for i in (10, 11, 12, 13):
        if not isinstance(fixed[i], int) or fixed[i] < 0:
            fixed[i] = 0
    for i in (5, 6):
        if fixed[i] == "":
            fixed[i] = None
    try:
        return msgspec.convert(fixed, proto.OpRecord)
    except msgspec.ValidationError as exc:
        log.warning("operation %s cannot be synced: %s", row[0] if row else "?", exc)
        return None


def _json_text(value: Any) -> str:
    try:
        return msgspec.json.encode(value or {}).decode()
    except (TypeError, msgspec.EncodeError):
        return json.dumps(value or {}, default=str)


def record_of(op: Operation) -> proto.OpRecord | None:
    """The wire record of an operation object (as published in OperationChanged)."""
    t = Store.sync_time
    row = (
        op.op_id,
        op.modno,
        op.flow_id,
        str(op.kind),
        str(op.status),
        op.plan_id,
        op.repo_id,
        t(op.created_at),
        t(op.started_at),
        t(op.ended_at),
        op.bytes_done or 0,
        op.bytes_total or 0,
        op.files_done or 0,
        op.files_total or 0,
        op.eta_seconds,
        _json_text(op.summary),
        op.snapshot_id,
        op.error,
    )
    return _fit(row)


def _records(rows: Sequence[Sequence[Any]]) -> list[proto.OpRecord]:
    """Sync rows as wire records: one C call for a whole page, row by row only if needed."""
    try:
        return msgspec.convert(rows, list[proto.OpRecord])
    except msgspec.ValidationError:
        return [rec for row in rows if (rec := _fit(row)) is not None]


def _accept(ops: Sequence[proto.OpRecord]) -> tuple[list[tuple[Any, ...]], int]:
    """Received records as sync rows, without those we cannot store safely; and how many
    were skipped.

    The decoder already checked types and lengths; this checks meaning: a status and kind we
    know (views switch on them), ids that are plain names (:func:`is_plain_id`), real calendar
    timestamps in the store's layout (its reader would fail on 30 February later, for every
    listing), and a summary that is a JSON object
    of bounded depth (else it is stored as ``{}``). One loop, no call per field: a full sync
    runs this 100,000 times.
    """
    statuses, kinds, id_ok = _STATUSES, _KINDS, _ID_OK
    parse = datetime.fromisoformat
    astuple = msgspec.structs.astuple
    check_summary = _summary_decoder.decode
    rows: list[tuple[Any, ...]] = []
    skipped = 0
    for rec in ops:
        if rec.status not in statuses or rec.kind not in kinds:
            skipped += 1
            continue
        if not (
            id_ok(rec.op_id)
            and (rec.plan_id is None or id_ok(rec.plan_id))
            and (rec.repo_id is None or id_ok(rec.repo_id))
            and (not rec.flow_id or id_ok(rec.flow_id))
            and (rec.snapshot_id is None or id_ok(rec.snapshot_id))
        ):
            skipped += 1
            continue
        try:
            for t in (rec.created_at, rec.started_at, rec.ended_at):
                # The exact layout SQLAlchemy's reader expects (length 26 is checked while
                # decoding), and a real date and time (fromisoformat checks the ranges).
                if t is not None and not (
                    t[4] == t[7] == "-" and t[10] == " " and t[13] == t[16] == ":" and t[19] == "."
                ):
                    raise ValueError(t)
                if t is not None:
                    parse(t)
        except ValueError:
            skipped += 1
            continue
        row = astuple(rec)
        try:
            check_summary(rec.summary)
        except (msgspec.DecodeError, RecursionError):
            row = (*row[:15], "{}", *row[16:])
        rows.append(row[:18])
    return rows, skipped


@dataclass
class _Repair:
    """Owner side of one manifest exchange: what is in scope, and what the receiver listed."""

    versions: dict[str, int]
    seen: set[str] = field(default_factory=set)


class SyncService(LinkService):
    """Runs operation sync on every link of one node.

    It wires itself to its :class:`PeerManager` when built; call :meth:`start` before links
    come up.
    """

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        manager: PeerManager,
        instance_id: str,
        *,
        batch_ops: int = BATCH_OPS,
        progress_interval: float = 0.5,
    ) -> None:
        self.store = store
        self.bus = bus
        self.manager = manager
        self.instance_id = instance_id
        self.batch_ops = max(1, min(batch_ops, proto.MAX_OPS_PER_BATCH))
        self.progress_interval = progress_interval
        super().__init__()
        self._links: dict[str, _LinkSync] = {}
        #: Highest modno held per peer origin: what OpsSince says on the next connect. Read
        #: from the store at start, raised as batches are stored (a peer paired later starts
        #: at 0, which at worst resends what we hold; storing is idempotent).
        self._marks: dict[str, int] = {}
        #: Operations held per peer origin, at most over-estimated (each stored row counts as
        #: new): the history cap is only checked against the store when this passes it.
        self._held: dict[str, int] = {}
        #: Peers whose copy here was trimmed by the history cap or age: it can no longer equal
        #: theirs, so a digest mismatch is expected and not repaired (a repair would only
        #: fetch again what the cap removes).
        self._capped: set[str] = set()
        #: When each peer's copy was last trimmed for age on arrival (monotonic): old rows
        #: arrive in every batch of a long history, and the age rule needs no more than this.
        self._aged: dict[str, float] = {}
        self._attach()

    # -- lifecycle ---------------------------------------------------------------------------

    def _attach(self) -> None:
        """Take the operation sync messages and the link-up moment of our PeerManager."""
        self.manager.add_handler(
            self.handle,
            proto.OpsSince,
            proto.OpsBatch,
            proto.OpsDigest,
            proto.OpsManifest,
            proto.OpsDeleted,
        )
        self.manager.add_link_up(self.on_link_up)
        self.manager.add_peer_removed(self.on_peer_removed)

    async def start(self) -> None:
        """Start following local operation changes (subscribed now, so none is missed), and
        read each known peer's high-water mark once (later ones are kept up to date here)."""
        self._follow_bus(
            self.bus.subscribe("operation", "operations-deleted", maxsize=100_000),
            self._follow(),
            "sync:pump",
        )
        for peer in await self.store.list_peers():
            self._marks[peer.id] = await self.store.max_modno(peer.id)

    # -- link events -------------------------------------------------------------------------

    async def on_link_up(self, link: Link) -> None:
        """A link came up: tell the peer what we hold of its operations.

        Called before the link's read loop starts, so the high-water mark we take cannot be
        raised by a live push on this same link first (which could hide a gap). It does no
        I/O at all (the mark is kept in memory; the grants are read when first needed),
        so bringing a link up takes no longer with sync than without (the link code and its
        tests rely on the exact order in which a link's state is written and read).
        """
        old = self._links.pop(link.peer_id, None)
        if old is not None:
            self._spawn(old.stop())
        ls = _LinkSync(self, link)
        self._links[link.peer_id] = ls
        since = proto.OpsSince(marks={link.peer_id: self._marks.get(link.peer_id, 0)})
        ls.enqueue(lambda: ls.send(since))

    async def on_peer_removed(self, removed: PeerRemoved) -> None:
        """A peer was removed: stop its sync, and delete our copy of its history (with the
        logs) unless the person asked to keep it."""
        ls = self._links.pop(removed.peer_id, None)
        if ls is not None:
            await ls.stop()
        self._marks.pop(removed.peer_id, None)
        self._held.pop(removed.peer_id, None)
        self._aged.pop(removed.peer_id, None)
        self._capped.discard(removed.peer_id)
        if removed.keep_history:
            return
        n = len(await self.store.delete_origin(removed.peer_id))
        if n:
            log.info("deleted %d operations of removed peer %s", n, removed.peer_id)
            self.bus.publish(OpsSynced(peer_id=removed.peer_id, deleted=n))

    async def _grants_of(self, peer_id: str) -> Grants:
        try:
            peer = await self.store.get_peer(peer_id)
        except NotFound:
            return Grants.none()
        return Grants.stored(peer.grants, whose=f"the grants stored for {peer_id}")

    # -- live pushes -------------------------------------------------------------------------

    async def _follow(self) -> None:
        sub = self._sub
        assert sub is not None
        while True:
            event = await sub.get()
            if sub.lagged:
                # Changes were dropped while we were behind: let every peer check its copy.
                sub.lagged = False
                for ls in self._links.values():
                    ls.enqueue(ls.send_digest)
            if isinstance(event, OperationsDeleted):
                if event.origin == self.instance_id:
                    for ls in list(self._links.values()):
                        ls.forget(event.ops)
                elif event.ops:
                    # Our gc trimmed a peer's copy (peer_history_days / _max_ops).
                    self._capped.add(event.origin)
                    self._held.pop(event.origin, None)
                continue
            op = getattr(event, "op", None)
            if not isinstance(event, OperationChanged) or op is None:
                continue
            if op.origin != self.instance_id or not self._links:
                continue
            rec: proto.OpRecord | None = None
            for ls in list(self._links.values()):
                if ls.allows(op.repo_id, op.plan_id):
                    rec = rec or record_of(op)
                    if rec is None:
                        break
                    ls.push(rec)

    # -- incoming messages -------------------------------------------------------------------

    async def handle(self, link: Link, msg: proto.Message) -> None:
        """The link's message handler: sync messages in, never raising into the link loop."""
        ls = self._links.get(link.peer_id)
        if ls is None or ls.link is not link:
            log.debug("ignoring %s from a replaced link to %s", type(msg).__name__, link.peer_id)
            return
        try:
            if isinstance(msg, proto.OpsSince):
                mark = msg.marks.get(self.instance_id, 0)
                ls.enqueue(lambda: ls.catch_up(mark))
            elif isinstance(msg, proto.OpsBatch):
                await self._on_batch(ls, msg)
            elif isinstance(msg, proto.OpsDigest):
                await self._on_digest(ls, msg)
            elif isinstance(msg, proto.OpsManifest):
                if msg.origin != self.instance_id or len(msg.op_ids) != len(msg.modnos):
                    await self._refuse(ls, "a malformed manifest")
                    return
                ls.enqueue(lambda: ls.repair_chunk(msg))
            elif isinstance(msg, proto.OpsDeleted):
                if msg.origin != link.peer_id:
                    await self._refuse(ls, f"deletion of operations of {msg.origin!r}")
                    return
                n = await self.store.delete_remote_ops(msg.origin, msg.op_ids)
                # What remains decides the mark (after a repair that replaced copies which
                # were ahead of the owner, e.g. once it restored its database, it must drop).
                self._marks[msg.origin] = await self.store.max_modno(msg.origin)
                self.bus.publish(OpsSynced(peer_id=link.peer_id, deleted=n))
            else:
                log.debug("ignoring %s from %s", type(msg).__name__, link.peer_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("operation sync with %s failed on %s", link.peer_id, type(msg).__name__)

    async def _refuse(self, ls: _LinkSync, what: str) -> None:
        """A peer sent something it may not: log it, store nothing, and cut the link."""
        message = f"refused {what} from peer {ls.peer_id}: it may only send its own operations"
        log.warning(message)
        self.bus.publish(Notice(level="warning", message=message))
        with contextlib.suppress(Exception):
            await ls.send(proto.Error(code=proto.ErrorCode.FORBIDDEN, message=message[:500]))
        await ls.stop()
        self._links.pop(ls.peer_id, None)
        with contextlib.suppress(Exception):
            await ls.link.close(message[:500])

    async def _on_batch(self, ls: _LinkSync, msg: proto.OpsBatch) -> None:
        if msg.origin != ls.peer_id:
            await self._refuse(ls, f"operations claiming origin {msg.origin!r}")
            return
        rows, skipped = _accept(msg.ops)
        if skipped:
            log.warning(
                "skipped %d operation(s) from %s: unknown kind or status, an id that is not "
                "a plain name, or an impossible time",
                skipped,
                ls.peer_id,
            )
        if not rows:
            return
        await self.store.upsert_remote_ops(msg.origin, rows)
        top = max(row[1] for row in rows)
        if top > self._marks.get(msg.origin, 0):
            self._marks[msg.origin] = top
        trimmed = await self._cap(msg.origin, rows)
        self.bus.publish(OpsSynced(peer_id=ls.peer_id, stored=len(rows), deleted=trimmed))
        if len(rows) <= ANNOUNCE_LIMIT:
            for row in rows:
                with contextlib.suppress(NotFound):
                    op = await self.store.find_operation(row[0], origin=msg.origin)
                    self.bus.publish(OperationChanged(op=op))

    async def _cap(self, origin: str, rows: Sequence[Sequence[Any]]) -> int:
        """Keep our copy of ``origin``'s history within this node's bounds after storing
        ``rows``; how many operations that removed.

        Cheap on the common path: no query unless the estimated count passes the cap, or a
        row is older than the age limit (each row's creation time is plain text here) and
        the age rule was not applied to this peer within :data:`AGE_CHECK_EVERY`.
        """
        days, most = await self.store.peer_history_limits()
        held = self._held.get(origin)
        held = await self.store.count_ops(origin) if held is None else held + len(rows)
        cutoff = Store.sync_time(utcnow() - timedelta(days=days)) or ""
        aged = self._aged.get(origin)
        age_due = (aged is None or time.monotonic() - aged >= AGE_CHECK_EVERY) and any(
            (r[7] or "") < cutoff for r in rows
        )
        if held <= most and not age_due:
            self._held[origin] = held
            return 0
        self._aged[origin] = time.monotonic()
        # Over the cap: down to 90% of it, so that a peer at its cap costs one trim per
        # tenth of the cap, not one per operation it sends.
        gone = await self.store.trim_peer_ops(
            origin, older_than=timedelta(days=days), max_ops=most - most // 10
        )
        self._held[origin] = await self.store.count_ops(origin)
        if gone:
            self._capped.add(origin)
            log.info(
                "history of %s over this node's bounds (%d days, %d operations): %d removed",
                origin,
                days,
                most,
                len(gone),
            )
        return len(gone)

    async def _on_digest(self, ls: _LinkSync, msg: proto.OpsDigest) -> None:
        if msg.origin != ls.peer_id:
            await self._refuse(ls, f"a digest for origin {msg.origin!r}")
            return
        ours = await self.store.op_digest(ls.peer_id)
        if ours == (msg.count, msg.hash):
            ls.mismatches = 0
            self.bus.publish(OpsSynced(peer_id=ls.peer_id, in_sync=True))
            return
        if ls.peer_id in self._capped:
            log.debug(
                "operations of %s differ (we hold %d of its %d): our copy is capped; not repaired",
                ls.peer_id,
                ours[0],
                msg.count,
            )
            return
        self.bus.publish(OpsSynced(peer_id=ls.peer_id, in_sync=False))
        if ls.mismatches >= MAX_REPAIRS:
            log.warning(
                "operations of %s still differ after %d repairs; trying again on the next connect",
                ls.peer_id,
                MAX_REPAIRS,
            )
            return
        ls.mismatches += 1
        log.info(
            "operations of %s differ (we hold %d, it has %d in scope); repairing",
            ls.peer_id,
            ours[0],
            msg.count,
        )
        ls.enqueue(ls.send_manifest)


class _LinkSync(LinkOutbox):
    """Sync state of one live link, and the one task that sends on its behalf."""

    what = "operation sync"

    def __init__(self, service: SyncService, link: Link) -> None:
        self.svc = service
        self.store = service.store
        self.link = link
        self.peer_id = link.peer_id
        #: What we grant this peer; read when first needed (None until then: nothing is
        #: queued for it before its first catch-up anyway).
        self.grants: Grants | None = None
        #: Latest unsent state of each changed operation (coalesces bursts).
        self.pending: dict[str, proto.OpRecord] = {}
        #: When each running operation was last pushed (progress is throttled).
        self.last_push: dict[str, float] = {}
        #: Live pushes start after the first catch-up, so the receiver's copy only ever grows
        #: as a prefix in modno order (its high-water mark then hides nothing).
        self.live = False
        self.repair: _Repair | None = None
        self.mismatches = 0
        #: Every change in scope up to this modno has been sent on this link (None until the
        #: first catch-up): where the next digest's snapshot starts.
        self.sent_upto: int | None = None
        super().__init__(
            link, service._links, service._spawn, max_jobs=MAX_QUEUED_JOBS, name="sync"
        )

    # -- scope -------------------------------------------------------------------------------

    def allows(self, repo_id: str | None, plan_id: str | None) -> bool:
        return self.grants is not None and self.grants.allows("ops", repo=repo_id, plan=plan_id)

    async def scope(self) -> Grants:
        """The grants this peer has from us (read from the store once per link)."""
        if self.grants is None:
            self.grants = await self.svc._grants_of(self.peer_id)
        return self.grants

    def _allow_fn(self) -> Callable[[str | None, str | None], bool]:
        grants = self.grants or Grants.none()
        return lambda repo, plan: grants.allows("ops", repo=repo, plan=plan)

    # -- queue -------------------------------------------------------------------------------

    def push(self, rec: proto.OpRecord) -> None:
        old = self.pending.get(rec.op_id)
        if old is None or old.modno < rec.modno:
            self.pending[rec.op_id] = rec
            self.wake.set()

    def forget(self, ops: Sequence[DeletedOp]) -> None:
        """Our garbage collection deleted ``ops``: tell the peer, in this link's order.

        A change still waiting to be pushed must not bring one back, so those go at once;
        the ids are filtered by scope when the job runs (the grants may not be read yet).
        """
        for op in ops:
            self.pending.pop(op.op_id, None)
            self.last_push.pop(op.op_id, None)
        self.enqueue(lambda: self.send_deleted(ops))

    async def send_deleted(self, ops: Sequence[DeletedOp]) -> None:
        """Send ``OpsDeleted`` for those of ``ops`` this peer may see (the others it never got)."""
        grants = await self.scope()
        ids = [o.op_id for o in ops if grants.allows("ops", repo=o.repo_id, plan=o.plan_id)]
        for i in range(0, len(ids), IDS_PER_FRAME):
            chunk = tuple(ids[i : i + IDS_PER_FRAME])
            await self.send(proto.OpsDeleted(origin=self.svc.instance_id, op_ids=chunk))

    async def idle(self) -> float | None:
        return await self._flush_live()

    # -- sending -----------------------------------------------------------------------------

    async def send(self, msg: proto.Message) -> None:
        await self.link.channel.send(proto.encode(msg))

    async def _send_ops(self, recs: Sequence[proto.OpRecord], *, done: bool) -> None:
        n = self.svc.batch_ops
        for i in range(0, len(recs), n):
            await self._send_chunk(recs[i : i + n], done=done and i + n >= len(recs))

    async def _send_chunk(self, recs: Sequence[proto.OpRecord], *, done: bool) -> None:
        msg = proto.OpsBatch(origin=self.svc.instance_id, ops=tuple(recs), done=done)
        try:
            data = proto.encode(msg)
        except proto.ProtocolError:
            if len(recs) == 1:  # cannot happen within the field bounds; never cut the link
                log.error("operation %s is too large to sync", recs[0].op_id)
                return
            half = len(recs) // 2
            await self._send_chunk(recs[:half], done=False)
            await self._send_chunk(recs[half:], done=done)
            return
        await self.link.channel.send(data)

    async def _flush_live(self) -> float | None:
        """Send the pending changes that are due; seconds until the next one is, or None."""
        if not self.live or not self.pending:
            return None
        now = time.monotonic()
        interval = self.svc.progress_interval
        ready: list[proto.OpRecord] = []
        wait: float | None = None
        for op_id, rec in list(self.pending.items()):
            if rec.status == _RUNNING:
                last = self.last_push.get(op_id)
                if last is not None and now - last < interval:
                    left = interval - (now - last)
                    wait = left if wait is None else min(wait, left)
                    continue
                self.last_push[op_id] = now
            else:
                self.last_push.pop(op_id, None)
            ready.append(rec)
            del self.pending[op_id]
        if ready:
            ready.sort(key=lambda r: r.modno)
            await self._send_ops(ready, done=True)
        return wait

    async def send_digest(self) -> None:
        """Send what changed since our last scan, then the digest, from one snapshot.

        Whatever is pushed or pending, the receiver then holds exactly the state the digest
        describes (see ``Store.sync_snapshot``), so an operation that is busy changing does
        not make every connect end in a repair.
        """
        if self.sent_upto is None:
            return  # before the first catch-up; it ends with a digest anyway
        local = self.svc.instance_id
        if (await self.scope()).allows_any("ops"):
            allow = self._allow_fn()
            rows, versions = await self.store.sync_snapshot(local, self.sent_upto, allow)
            if rows:
                await self._send_ops(_records([r for r in rows if allow(r[6], r[5])]), done=True)
                self.sent_upto = rows[-1][1]
                self.pending = {k: r for k, r in self.pending.items() if r.modno > rows[-1][1]}
            count, digest = await asyncio.to_thread(Store.digest_of, local, versions)
        else:
            count, digest = 0, 0
        await self.send(proto.OpsDigest(origin=local, count=count, hash=digest))

    # -- jobs --------------------------------------------------------------------------------

    async def catch_up(self, mark: int) -> None:
        """Send our operations in scope with a modno above ``mark``, then the digest."""
        try:
            if (await self.scope()).allows_any("ops"):
                allow = self._allow_fn()
                verdicts: dict[tuple[str | None, str | None], bool] = {}
                cursor = mark
                held: list[proto.OpRecord] = []
                while True:
                    rows = await self.store.ops_since(
                        self.svc.instance_id, cursor, self.svc.batch_ops
                    )
                    if not rows:
                        break
                    cursor = rows[-1][1]
                    inside = []
                    for row in rows:
                        key = (row[6], row[5])
                        ok = verdicts.get(key)
                        if ok is None:
                            ok = verdicts[key] = allow(row[6], row[5])
                        if ok:
                            inside.append(row)
                    recs = _records(inside) if inside else []
                    if recs:
                        if held:
                            await self._send_ops(held, done=False)
                        held = recs
                    if len(rows) < self.svc.batch_ops:
                        break
                if held:
                    await self._send_ops(held, done=True)
                # Queued live changes the scan already covered need not go out twice.
                self.pending = {k: r for k, r in self.pending.items() if r.modno > cursor}
                self.sent_upto = cursor
            else:
                self.sent_upto = mark
        finally:
            self.live = True
            self.wake.set()
        await self.send_digest()

    async def send_manifest(self) -> None:
        """Receiver side of a repair: list what we hold of the peer's operations."""
        versions = await self.store.op_versions(self.peer_id)
        items = list(versions.items())
        origin = self.peer_id
        if not items:
            await self.send(proto.OpsManifest(origin=origin, done=True))
            return
        for i in range(0, len(items), IDS_PER_FRAME):
            chunk = items[i : i + IDS_PER_FRAME]
            await self.send(
                proto.OpsManifest(
                    origin=origin,
                    op_ids=tuple(k for k, _ in chunk),
                    modnos=tuple(v for _, v in chunk),
                    done=i + IDS_PER_FRAME >= len(items),
                )
            )

    async def repair_chunk(self, msg: proto.OpsManifest) -> None:
        """Owner side of a repair: compare one manifest chunk with what is in scope here."""
        local = self.svc.instance_id
        if self.repair is None:
            versions = (
                await self.store.op_versions(local, self._allow_fn())
                if (await self.scope()).allows_any("ops")
                else {}
            )
            self.repair = _Repair(versions)
        rep = self.repair
        gone: list[str] = []
        resend: list[str] = []
        for op_id, modno in zip(msg.op_ids, msg.modnos, strict=True):
            have = rep.versions.get(op_id)
            if have is None:
                gone.append(op_id)
                continue
            rep.seen.add(op_id)
            if have != modno:
                # Stale there, or (after a restore of our database) ahead of us: replace it.
                resend.append(op_id)
                if have < modno:
                    gone.append(op_id)
        for i in range(0, len(gone), IDS_PER_FRAME):
            await self.send(
                proto.OpsDeleted(origin=local, op_ids=tuple(gone[i : i + IDS_PER_FRAME]))
            )
        if msg.done:
            resend += [op_id for op_id in rep.versions if op_id not in rep.seen]
            self.repair = None
        if resend:
            allow = self._allow_fn()
            rows = await self.store.ops_by_ids(local, resend)
            recs = _records([row for row in rows if allow(row[6], row[5])])
            await self._send_ops(recs, done=msg.done)
        if msg.done:
            await self.send_digest()


__all__ = ["OpsSynced", "SyncService", "record_of"]
