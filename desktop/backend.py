"""The one object between the views and the node.

It holds the :class:`~peerstash.peer.api.client.AdminClient`, follows ``/v1/events`` and turns
what the node says into Qt signals, and keeps the little state every view shares (the node's
status, plans, repositories, the operations in flight). Views never open their own follow
streams: one subscription feeds the tray, the overview and the operations list alike.

Changes arrive on the node's ``/v1/events`` stream (operations, peer links, configuration,
stale plans, notices). The status (last result and next run per plan, pause) has no event of
its own, so it is re-read when an operation ends or the configuration changes, after this app
changes something, and every ``status_interval`` seconds (next-run times move with the clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import msgspec
from PySide6.QtCore import QObject, Signal

from peerstash.core.ops import FINISHED, OpStatus
from peerstash.core.records import (
    ListedOpRecord,
    ListedPeerRecord,
    OpRecord,
    PlanRecord,
    RepoRecord,
    StatusRecord,
)
from peerstash.desktop.api import ApiError, PeersApi, decode, q, query
from peerstash.desktop.tasks import Tasks
from peerstash.peer.api import schema
from peerstash.peer.api.client import AdminClient, Body

log = logging.getLogger(__name__)

#: The node sends a keep-alive on /v1/events every 15 s: three missed mean the stream is stuck
#: and is reopened (with a reload, as after any reconnect).
EVENTS_SILENCE = 45.0

__all__ = ["EVENTS_SILENCE", "Backend", "decode", "op_key"]


def op_key(op: OpRecord) -> tuple[str, str]:
    return (op.origin, op.id)


class Backend(QObject):
    #: One operation changed (a ``core/records.OpRecord``; a ``ListedOpRecord`` from a list).
    opChanged = Signal(object)
    #: The follow stream was (re)opened: changes may have been missed, reload lists.
    opsReset = Signal()
    #: ``/v1/status`` was read again.
    statusChanged = Signal(object)
    #: Plans or repositories were read again.
    configChanged = Signal()
    #: Reachability of the node changed: (connected, why not).
    connectionChanged = Signal(bool, str)
    #: The list of peers, or a peer's link state, changed (see ``peer_list``).
    peersChanged = Signal()
    #: Something the node wants a person to see: (level, message).
    notice = Signal(str, str)
    #: ``peerstash`` was launched again: this window should come to the front.
    presentRequested = Signal()
    #: A repository's snapshots changed (a forget or prune, here or by a shared repository's
    #: owner): its id. Snapshot views showing it reload.
    snapshotsChanged = Signal(str)

    def __init__(
        self,
        client: AdminClient,
        *,
        in_process: bool,
        status_interval: float = 30.0,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.client = client
        self.peers = PeersApi(client)
        self.in_process = in_process
        self.status_interval = status_interval
        #: The node's last ``/v1/status`` (None until it first answered).
        self.status: StatusRecord | None = None
        self.plans: list[PlanRecord] = []
        self.repos: list[RepoRecord] = []
        #: Pending and running operations, by (origin, id).
        self.active: dict[tuple[str, str], OpRecord] = {}
        #: Paired machines, as ``GET /v1/peers`` lists them (each with its label and last
        #: backups).
        self.peer_list: list[ListedPeerRecord] = []
        #: Whether ``peer_list`` holds the node's answer yet (False until the first one).
        self.peers_loaded = False
        self.connected = False
        self.tasks = Tasks(on_error=self._report)
        self._status_soon: asyncio.TimerHandle | None = None
        self._config_soon_handle: asyncio.TimerHandle | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Read everything once, then follow changes in the background."""
        await self.refresh_all()
        opened = asyncio.get_running_loop().create_future()
        self.tasks.spawn(self._follow(opened), name="backend:follow")
        self.tasks.spawn(self._poll_status(), name="backend:poll")
        # Wait until the stream is open so that nothing done after start() can be missed.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(opened), 10)

    async def close(self) -> None:
        self._closed = True
        for handle in (self._status_soon, self._config_soon_handle):
            if handle is not None:
                handle.cancel()
        await self.tasks.close()

    def _report(self, exc: BaseException) -> None:
        log.error("backend task failed", exc_info=exc)

    @property
    def instance_id(self) -> str:
        return self.status.instance_id if self.status else ""

    @property
    def node_name(self) -> str:
        """This node's display name ("" until it answered)."""
        return self.status.name if self.status else ""

    def machine_name(self, origin: str | None) -> str:
        """How the machine an operation came from is called: this node's name for ours, a
        peer's label (told apart from same-named ones), else the id (a replaced peer's kept
        history). Names may come from a peer: the caller shows them through ``printable``."""
        own = self.instance_id
        if not origin or origin == own:
            return self.node_name or own or "this machine"
        for p in self.peer_list:
            if p.id == origin:
                return p.label
        return origin

    @property
    def paused(self) -> bool:
        return self.status.paused if self.status else False

    # -- reading -----------------------------------------------------------------------------

    async def refresh_all(self) -> None:
        await asyncio.gather(
            self.refresh_status(),
            self.refresh_config(),
            self._refresh_active(),
            self.refresh_peers(),
        )

    async def refresh_peers(self) -> None:
        """Read the peers (an error is logged: the stream's reconnect reads them again)."""
        try:
            peers = await self.peers.peers()
        except ApiError as exc:
            log.info("could not read the peers: %s", exc)
            return
        self.peers_loaded, self.peer_list = True, peers
        self.peersChanged.emit()

    async def refresh_status(self) -> None:
        """Read ``/v1/status`` again. An answer that is not the status is logged and the status
        shown stays as it was (as for the plans: another version or a hostile listener)."""
        answer = await self.client.call("GET", "/v1/status")
        self._set_connected(True, "")
        try:
            status = decode(answer, StatusRecord, "the node's status")
        except ApiError as exc:
            log.warning("kept the node's status as it was: %s", exc)
            return
        self.status = status
        self.statusChanged.emit(status)

    async def refresh_config(self) -> None:
        plans, repos = await asyncio.gather(
            self.client.call("GET", "/v1/plans"), self.client.call("GET", "/v1/repos")
        )
        try:
            plans = decode(plans, list[PlanRecord], "a list of plans")
            repos = decode(repos, list[RepoRecord], "a list of repositories")
        except ApiError as exc:
            log.warning("kept the plans and repositories as they were: %s", exc)
            return
        self.plans, self.repos = plans, repos
        self.configChanged.emit()

    async def _refresh_active(self) -> None:
        running, pending = await asyncio.gather(
            self.client.call("GET", "/v1/ops" + query({"status": OpStatus.RUNNING, "limit": 1000})),
            self.client.call("GET", "/v1/ops" + query({"status": OpStatus.PENDING, "limit": 1000})),
        )
        try:
            ops = decode([*running, *pending], list[ListedOpRecord], "a list of operations")
        except ApiError as exc:
            log.warning("kept the operations in flight as they were: %s", exc)
            return
        self.active = {op_key(op): op for op in ops}

    def refresh_status_soon(self, delay: float = 0.2) -> None:
        """Coalesce many "something ended" moments into one status read."""
        if self._closed or self._status_soon is not None:
            return

        def fire() -> None:
            self._status_soon = None
            self.tasks.spawn(self._quiet(self.refresh_status()), name="backend:status")

        self._status_soon = asyncio.get_running_loop().call_later(delay, fire)

    async def _quiet(self, coro: Any) -> None:
        try:
            await coro
        except ApiError as exc:
            self._set_connected(False, str(exc))

    def _set_connected(self, ok: bool, why: str) -> None:
        if ok != self.connected:
            self.connected = ok
            self.connectionChanged.emit(ok, why)

    async def _follow(self, opened: asyncio.Future[None]) -> None:
        """Follow the node's changes for as long as we run, reconnecting with backoff.

        ``/v1/events`` carries everything (operations, peer links, configuration, stale plans,
        notices). After a reconnect the lists are reloaded (``opsReset``): changes made while
        the stream was down were not seen.
        """
        delay = 0.5
        ever_opened = False
        while not self._closed:

            def on_open() -> None:
                nonlocal ever_opened, delay
                if ever_opened:
                    self.tasks.spawn(self._quiet(self._after_reconnect()), name="backend:reload")
                ever_opened = True
                delay = 0.5
                self._set_connected(True, "")
                if not opened.done():
                    opened.set_result(None)

            try:
                async for event in self.client.stream(
                    "/v1/events?ui=1", on_open=on_open, idle_timeout=EVENTS_SILENCE
                ):
                    if self._closed:
                        return
                    self._on_event(event)
                why = "the node closed the stream (did it stop?)"
            except ApiError as exc:
                why = str(exc)
            self._set_connected(False, why)
            if not opened.done():
                opened.set_result(None)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _on_event(self, line: dict[str, Any]) -> None:
        """One line of ``/v1/events``, decoded as the node's own :data:`schema.ServerEvent`.

        A line that is not one (a wrong type, a missing field, a kind this version does not
        know) is logged and skipped: it changes nothing the views show.
        """
        try:
            event = msgspec.convert(line, schema.ServerEvent)
        except msgspec.ValidationError as exc:
            log.warning("skipped an event the node should not send (%s)", exc)
            return
        if isinstance(event, schema.OperationEvent):
            self._on_op(event.op)
        elif isinstance(event, schema.LinkEvent):
            self._on_link(event)
            self.refresh_status_soon()  # the node's health counts peers heard from
        elif isinstance(event, schema.ConfigEvent):
            self._config_soon()
            self.refresh_status_soon()
        elif isinstance(event, schema.StaleEvent):
            self.refresh_status_soon()
        elif isinstance(event, schema.NoticeEvent):
            self.notice.emit(event.level, event.message)
            if event.level in ("warning", "error"):
                self.refresh_status_soon()  # e.g. a shared repository not taken: health changed
        elif isinstance(event, schema.PresentEvent):
            self.presentRequested.emit()
        elif isinstance(event, schema.SnapshotsEvent) and event.repo:
            self.snapshotsChanged.emit(event.repo)
        elif isinstance(event, schema.OpsDeletedEvent):
            # Old operations were trimmed (here, or by a peer whose history we hold): the
            # lists reload rather than show rows that are gone.
            self.opsReset.emit()

    def _on_link(self, event: schema.LinkEvent) -> None:
        peer_id = event.peer
        for p in self.peer_list:
            if p.id == peer_id:
                was = p.state
                p.state = event.state or p.state
                p.state_reason = event.reason
                if p.state == "online":
                    p.last_seen = datetime.now(UTC).isoformat()
                self.peersChanged.emit()
                if p.state == "online" and was != "online":
                    # A new handshake carries the peer's name (a rename restarts its links):
                    # re-read the list so names and labels are current, not only the state.
                    self.tasks.spawn(self._quiet(self.refresh_peers()), name="backend:peers")
                return
        # A peer we have not listed yet (just paired, or paired by another client).
        self.tasks.spawn(self._quiet(self.refresh_peers()), name="backend:peers")

    def _config_soon(self, delay: float = 0.2) -> None:
        if self._closed or self._config_soon_handle is not None:
            return

        def fire() -> None:
            self._config_soon_handle = None
            self.tasks.spawn(self._quiet(self.refresh_config()), name="backend:config")

        self._config_soon_handle = asyncio.get_running_loop().call_later(delay, fire)

    async def _after_reconnect(self) -> None:
        await self.refresh_all()
        self.opsReset.emit()

    async def _poll_status(self) -> None:
        # Next-run times move with the clock: read the status now and then.
        while not self._closed:
            await asyncio.sleep(self.status_interval)
            await self._quiet(self.refresh_status())

    def _on_op(self, op: OpRecord) -> None:
        key = op_key(op)
        if op.status in FINISHED:
            was_active = self.active.pop(key, None) is not None
            if was_active or op.plan:
                self.refresh_status_soon()
        else:
            self.active[key] = op
        self.opChanged.emit(op)

    # -- doing -------------------------------------------------------------------------------

    async def call(self, method: str, path: str, body: Body = None) -> Any:
        """One admin request; ``body`` is the route's struct from ``peer/api/schema.py``."""
        return await self.client.call(method, path, body)

    async def backup(self, plan_id: str) -> tuple[OpRecord, str]:
        """Queue a backup: the operation, and the node's words when one was on its way already
        (``already``, beside the record in the answer; empty when this one is new)."""
        res = await self.call("POST", f"/v1/plans/{q(plan_id)}/backup")
        op = decode(res, OpRecord, "an operation")
        self._on_op(op)
        return op, str(res.get("already") or "")

    async def maintenance(
        self, repo_id: str, what: str, body: schema.Maintenance | schema.Forget | None = None
    ) -> OpRecord:
        """Queue ``what`` (``forget``, ``prune``, ``check``, ``unlock``) on a repository;
        without ``body``, with that route's defaults."""
        if body is None:
            body = schema.Forget() if what == "forget" else schema.Maintenance()
        res = await self.call("POST", f"/v1/repos/{q(repo_id)}/{what}", body)
        op = decode(res, OpRecord, "an operation")
        self._on_op(op)
        return op

    async def restore(
        self, repo_id: str, snapshot: str, target: str, include: list[str]
    ) -> OpRecord:
        body = schema.Restore(snapshot=snapshot, target=target, include=include)
        res = await self.call("POST", f"/v1/repos/{q(repo_id)}/restore", body)
        op = decode(res, OpRecord, "an operation")
        self._on_op(op)
        return op

    async def cancel(self, op_id: str) -> None:
        await self.call("POST", f"/v1/ops/{q(op_id)}/cancel")

    async def set_paused(self, paused: bool) -> None:
        await self.call("POST", "/v1/schedules/pause", schema.Pause(paused=paused))
        await self.refresh_status()

    async def add_plan(self, body: schema.AddPlan) -> tuple[PlanRecord, dict[str, Any] | None]:
        """Add a plan: its record, and its first backup when ``backup_now`` asked for one.

        The first backup sits beside the record in the answer and is not a record itself: the
        operation's (an :class:`OpRecord`'s JSON) or ``{"error": why it did not start}``.
        """
        res = await self.call("POST", "/v1/plans", body)
        await asyncio.gather(self.refresh_config(), self.refresh_status())
        first = res.get("first_backup") if isinstance(res, dict) else None
        return decode(res, PlanRecord, "a plan"), dict(first) if first is not None else None

    async def add_repo(self, body: schema.AddRepo) -> tuple[RepoRecord, str]:
        """Add a repository: its record and what the node said (``message``, beside it)."""
        res = await self.call("POST", "/v1/repos", body)
        await self.refresh_config()
        if not isinstance(res, dict):
            raise ApiError("the node's answer is not a repository")
        return decode(res.get("repo"), RepoRecord, "a repository"), str(res.get("message") or "")

    async def edit_plan(self, plan_id: str, changes: schema.EditPlan) -> PlanRecord:
        """Change some of a plan's settings (``PATCH``); the node validates as for a new one."""
        plan = await self.call("PATCH", f"/v1/plans/{q(plan_id)}", changes)
        await asyncio.gather(self.refresh_config(), self.refresh_status())
        return decode(plan, PlanRecord, "a plan")

    async def edit_repo(self, repo_id: str, changes: schema.EditRepo) -> RepoRecord:
        """Change how a repository is reached; the node keeps it only if it still opens."""
        repo = await self.call("PATCH", f"/v1/repos/{q(repo_id)}", changes)
        await self.refresh_config()
        return decode(repo, RepoRecord, "a repository")

    async def reveal_password(self, repo_id: str) -> dict[str, Any]:
        """The repository's password (or where it comes from), on the person's explicit click.

        Never kept here: the caller shows it, copies it or writes the recovery sheet.
        """
        return dict(await self.call("POST", f"/v1/repos/{q(repo_id)}/reveal-password"))

    async def delete_plan(self, plan_id: str) -> None:
        await self.call("DELETE", f"/v1/plans/{q(plan_id)}")
        await asyncio.gather(self.refresh_config(), self.refresh_status())

    async def delete_repo(self, repo_id: str) -> None:
        await self.call("DELETE", f"/v1/repos/{q(repo_id)}")
        await self.refresh_config()
