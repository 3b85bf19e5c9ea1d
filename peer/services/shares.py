"""Shared repositories over the peer links: owners push, receivers apply.

Both sides must agree before a repository travels (DESIGN.md, "Permissions"): the owner marks
it shared (``peerstash repo share``), and the receiver grants the owner ``repos.receive`` for it
(scoped by the owner's repository id). Each side enforces its half where its data lives:

* the **owner** sends a peer only what that peer's grant to it allows (``peer.their_grants``,
  as the peer declared it in Hello/Welcome; a change of grants reconnects the link, so it is
  always the current one). Nothing else leaves, and no password is resolved for a peer that
  grants nothing;
* the **receiver** checks every entry against *its own* grant to the sender
  (``peer.grants``) and stores nothing it does not allow, with a warning.

The owner always sends its *full* set (``ReposShared``): on every link-up, and whenever one of
its repositories changes (the engine's ``ConfigChanged`` events). What is missing from a set was
unshared; the receiver removes it and disables the plans that used it (``Engine.receive_shared``
holds those rules). A set identical to the last one sent on that link is not sent again, and a
receiver given the same set changes nothing.

When the owner's forget or prune on a shared repository succeeds, receivers that hold it get a
``RepoSnapshotsChanged`` and publish ``SnapshotsChanged`` for their views.

Like operation sync, each link has one outgoing queue and worker (:class:`_LinkShares`): the
link's read loop only enqueues, so a slow password command, a restic ``cat config`` or a
database write never stalls heartbeats. Passwords travel only inside the encrypted channel and
never in logs: the wire structs and :class:`~peerstash.core.sharing.SharedRepoSpec` redact
them in their repr, and nothing here formats a spec's fields into a message.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging

from peerstash.core.engine import Engine, EngineError
from peerstash.core.events import ConfigChanged, EventBus, Notice, SnapshotsChanged
from peerstash.core.sharing import SharedRepoSpec, received_repo_id
from peerstash.core.store import NotFound
from peerstash.peer.links import protocol as proto
from peerstash.peer.links.link import Link, PeerManager, PeerRemoved
from peerstash.peer.links.outbox import LinkOutbox, LinkService
from peerstash.peer.trust.permissions import Grants

log = logging.getLogger(__name__)

#: Jobs queued on one link before the peer is considered abusive (each push coalesces, so a
#: well-behaved peer never gets near this).
MAX_QUEUED_JOBS = 200


class RepoShareService(LinkService):
    """Pushes our shared repositories to peers and applies theirs here.

    It wires itself to its :class:`PeerManager` when built; :meth:`start` it before the
    links come up.
    """

    def __init__(
        self, engine: Engine, bus: EventBus, manager: PeerManager, instance_id: str
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.bus = bus
        self.manager = manager
        self.instance_id = instance_id
        super().__init__()
        self._links: dict[str, _LinkShares] = {}
        self._attach()

    # -- lifecycle ---------------------------------------------------------------------------

    def _attach(self) -> None:
        self.manager.add_handler(self.handle, proto.ReposShared, proto.RepoSnapshotsChanged)
        self.manager.add_link_up(self.on_link_up)
        self.manager.add_peer_removed(self.on_peer_removed)

    async def start(self) -> None:
        """Follow repository changes (subscribed now, so none is missed)."""
        self._follow_bus(
            self.bus.subscribe("config", "snapshots", maxsize=10_000), self._follow(), "repos:pump"
        )

    # -- link events -------------------------------------------------------------------------

    async def on_link_up(self, link: Link) -> None:
        """A link came up: queue our full set for it (no I/O here; the worker sends)."""
        old = self._links.pop(link.peer_id, None)
        if old is not None:
            self._spawn(old.stop())
        ls = _LinkShares(self, link)
        self._links[link.peer_id] = ls
        ls.request_push()

    async def on_peer_removed(self, removed: PeerRemoved) -> None:
        """A peer was removed: stop its queue (no set of its may land after this), then
        remove what it shared here, passwords and all, and disable the plans on it."""
        ls = self._links.pop(removed.peer_id, None)
        if ls is not None:
            await ls.stop()
        await self.engine.forget_peer(removed.peer_id)

    async def _follow(self) -> None:
        sub = self._sub
        assert sub is not None
        while True:
            event = await sub.get()
            if sub.lagged:
                sub.lagged = False
                for ls in self._links.values():
                    ls.request_push()
            if isinstance(event, ConfigChanged) and event.what == "repo":
                # Any repository change may change what we share (or its password, URI...);
                # a set equal to the last one sent is not sent again.
                for ls in list(self._links.values()):
                    ls.request_push()
            elif isinstance(event, SnapshotsChanged) and event.origin is None:
                await self._announce_snapshots(event)

    async def _announce_snapshots(self, event: SnapshotsChanged) -> None:
        try:
            repo = await self.store.get_repo(event.repo_id)
        except NotFound:
            return
        if not repo.shared or repo.origin is not None:
            return
        msg = proto.RepoSnapshotsChanged(name=repo.id, reason=event.reason or "changed")
        for ls in list(self._links.values()):
            ls.enqueue(functools.partial(ls.send_if_granted, repo.id, msg))

    # -- incoming ----------------------------------------------------------------------------

    async def handle(self, link: Link, msg: proto.Message) -> None:
        """The link's handler for our message types: only enqueues, never raises."""
        ls = self._links.get(link.peer_id)
        if ls is None or ls.link is not link:
            log.debug("ignoring %s from a replaced link to %s", type(msg).__name__, link.peer_id)
            return
        if isinstance(msg, proto.ReposShared):
            ls.enqueue(lambda: self._apply(ls, msg))
        elif isinstance(msg, proto.RepoSnapshotsChanged):
            ls.enqueue(lambda: self._owner_snapshots(ls, msg))

    async def _apply(self, ls: _LinkShares, msg: proto.ReposShared) -> None:
        """Apply a peer's full set, letting in only what our grant to it allows."""
        try:
            peer = await self.store.get_peer(ls.peer_id)
        except NotFound:
            return
        ours = Grants.stored(peer.grants, whose=f"our grants stored for {ls.peer_id}")

        def allow(name: str) -> bool:
            return ours.allows("repos.receive", repo=name)

        specs = [
            SharedRepoSpec(
                name=r.name,
                uri=r.uri,
                guid=r.guid,
                password=r.password,
                env=dict(r.env),
                options=tuple(r.options),
            )
            for r in msg.repos
        ]
        result = await self.engine.receive_shared(ls.peer_id, specs, allow)
        if result.changed:
            log.info(
                "shared repositories from %s: %d added, %d updated, %d removed",
                ls.peer_id,
                len(result.added),
                len(result.updated),
                len(result.removed),
            )

    async def _owner_snapshots(self, ls: _LinkShares, msg: proto.RepoSnapshotsChanged) -> None:
        local_id = received_repo_id(msg.name, ls.peer_id)
        try:
            repo = await self.store.get_repo(local_id)
        except NotFound:
            return
        if repo.origin != ls.peer_id:
            return
        self.engine.owner_changed_snapshots(ls.peer_id, msg.name, msg.reason)

    # -- outgoing ----------------------------------------------------------------------------

    async def shared_for(self, peer_id: str) -> list[SharedRepoSpec]:
        """What we share with ``peer_id`` now: our shared repositories its grant admits.

        No secret is resolved for a peer that grants us nothing.
        """
        peer = await self.store.get_peer(peer_id)
        theirs = Grants.stored(peer.their_grants, whose=f"their grants stored for {peer_id}")
        if not theirs.allows_any("repos.receive"):
            return []
        return [
            spec
            for spec in await self.engine.shared_repo_specs()
            if theirs.allows("repos.receive", repo=spec.name)
        ]


class _LinkShares(LinkOutbox):
    """One link's shared-repository messages, sent in order."""

    what = "shared repositories"

    def __init__(self, service: RepoShareService, link: Link) -> None:
        self.svc = service
        self.push_queued = False
        #: Hash of the last set sent on this link (kept in memory only): an equal set is
        #: not sent again.
        self.last_sent: bytes | None = None
        super().__init__(
            link, service._links, service._spawn, max_jobs=MAX_QUEUED_JOBS, name="repos"
        )

    def request_push(self) -> None:
        """Queue one push of our full set (bursts of changes coalesce into one)."""
        if not self.push_queued:
            self.push_queued = True
            self.enqueue(self.push)

    def job_failed(self, exc: Exception) -> None:
        # Never the exception's repr with arguments (it could hold a secret): its type and
        # message, which the engine words without secrets.
        log.warning(
            "shared repositories with %s: a job failed: %s: %s",
            self.peer_id,
            type(exc).__name__,
            exc,
        )

    async def push(self) -> None:
        """Send our full set to this peer, unless it equals the last one sent here."""
        self.push_queued = False
        try:
            specs = await self.svc.shared_for(self.peer_id)
        except NotFound:
            return
        except EngineError as exc:
            message = f"shared repositories not sent to {self.peer_id}: {exc}"
            log.warning(message)
            self.svc.bus.publish(Notice(level="warning", message=message))
            return
        msg = proto.ReposShared(
            repos=tuple(
                proto.SharedRepo(
                    name=s.name,
                    uri=s.uri,
                    guid=s.guid,
                    password=s.password,
                    env=dict(s.env),
                    options=tuple(s.options),
                )
                for s in specs
            )
        )
        try:
            data = proto.encode(msg)
            # msgspec checks bounds only while decoding: a value over a limit would make the
            # peer's decoder close the link on every connect. Check here, as it will.
            proto.decode(data)
        except proto.ProtocolError as exc:
            log.error("shared repositories not sent to %s: %s", self.peer_id, exc)
            return
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest == self.last_sent:
            return
        await self.link.channel.send(data)
        self.last_sent = digest
        log.info("sent %d shared repositories to %s", len(specs), self.peer_id)

    async def send_if_granted(self, repo_id: str, msg: proto.RepoSnapshotsChanged) -> None:
        with contextlib.suppress(NotFound):
            peer = await self.svc.store.get_peer(self.peer_id)
            theirs = Grants.stored(
                peer.their_grants, whose=f"their grants stored for {self.peer_id}"
            )
            if theirs.allows("repos.receive", repo=repo_id):
                await self.link.channel.send(proto.encode(msg))


__all__ = ["RepoShareService"]
