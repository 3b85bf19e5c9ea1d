"""The tray icon, its menu, its tooltip and desktop notifications.

The menu and the state are built whether or not a system tray exists (offscreen, or a desktop
without a tray host): the icon is simply not shown then, and the window stays the way in. That
also makes every menu action testable by triggering its ``QAction``.

Notifications say which machine they are about ("laptop: the backup of docs failed"), go
through the desktop's notification service (desktop/platform/notify.py; it works without a tray) with
the tray balloon as the fallback, and are rate-limited so a failure repeating every few minutes
is said once, while a new kind of failure (another plan, machine or error class) is always said.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction, QIcon
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from peerstash.core.records import OpRecord, StatusRecord
from peerstash.core.restic import ErrorKind
from peerstash.core.text import printable, printable_lines
from peerstash.desktop import fmt
from peerstash.desktop.backend import Backend
from peerstash.desktop.icons import dot_pixmap, state_icon
from peerstash.desktop.platform.notify import Notifier
from peerstash.desktop.tasks import Tasks

log = logging.getLogger(__name__)

STATE_WORDS = {
    "ok": "all backups are fine",
    "running": "a backup is running",
    "warning": "something needs a look",
    "error": "a backup failed",
    "paused": "scheduled backups are paused",
    "attention": "a peer needs attention",
}
#: The node's health level (``StatusRecord.health``, core/health.py) → the tray icon state.
HEALTH_STATES = {"ok": "ok", "attention": "warning", "failing": "error"}
#: How many of the node's reasons the tooltip lists (the overview lists them all).
TOOLTIP_REASONS = 5

FAILED = frozenset({"error", "interrupted"})
#: The error classes a failed operation records (``summary["error_kind"]``, core/runner.py).
ERROR_CLASSES = frozenset({*(k.value for k in ErrorKind), "unexpected"})
PEER_STATE_COLORS = {
    "online": "#2e9d58",
    "connecting": "#2f7ed8",
    "offline": "#858b94",
    "unreachable": "#d99a1e",
    "auth failed": "#d64541",
}
#: Peer link states a person should hear about.
PEER_ATTENTION = frozenset({"unreachable", "auth failed"})


def compute_state(
    status: StatusRecord | None, active: dict[Any, OpRecord], peers_attention: bool = False
) -> str:
    """The tray state: what a person most needs to know, in this order.

    Running work is shown first (it is what is happening now and ends by itself); then the
    node's own verdict on the fleet (``health``: failing → error, attention → warning), which
    the tray displays and never second-guesses; then a peer link in trouble, then paused
    schedules; otherwise ok. Until the node has answered, the state is unknown: "warning",
    never a green it cannot vouch for.
    """
    if any(op.status == "running" for op in active.values()):
        return "running"
    if status is None:
        return "warning"
    state = HEALTH_STATES.get(status.health.level, "warning")
    if state != "ok":
        return state
    if peers_attention:
        return "attention"
    if status.paused:
        return "paused"
    return "ok"


def health_words(status: StatusRecord | None) -> tuple[str, list[str]]:
    """The node's health summary ("attention — 2 things need a look") and its reasons."""
    if status is None:
        return "not known yet (no answer from the node)", []
    health = status.health
    return health.summary or health.level, [r.message for r in health.reasons]


def tooltip_text(status: StatusRecord | None, state: str) -> str:
    summary, reasons = health_words(status)
    lines = [f"Peerstash — {STATE_WORDS.get(state, state)}", f"Health: {summary}"]
    lines += [f"• {r}" for r in reasons[:TOOLTIP_REASONS]]
    if len(reasons) > TOOLTIP_REASONS:
        lines.append(f"• … and {len(reasons) - TOOLTIP_REASONS} more (see the overview)")
    paused = status.paused if status else False
    for p in status.plans if status else []:
        last = p.last
        if last:
            when = last.ended_at or last.started_at or last.created_at
            res = f"{fmt.STATUS_WORDS.get(last.status, last.status)} {fmt.ago(when)}"
        else:
            res = "never backed up"
        if p.stale:
            res += " (stale)"
        nxt = p.next_due_at
        tail = f"; next {fmt.local_time(nxt)}" if nxt and not paused else ""
        lines.append(f"{p.id}: {res}{tail}")
    if paused:
        lines.append("Scheduled backups are paused.")
    return "\n".join(lines)


class RateLimiter:
    """At most one message per key per ``per_key`` seconds, and one per ``spacing`` overall.

    A repository that fails every five minutes must not bury the desktop in notifications:
    the first one says it, the operations page has the rest. A failure's key is its kind
    (machine, plan, error class): ``allow(key, new_kind=True)`` lets a kind not seen within
    ``per_key`` through even inside the overall spacing, so a second, different failure is
    never hidden behind the first; the same failure repeating stays quiet. At most ``burst``
    new kinds pass within one ``spacing``: a peer inventing plan names or error classes
    cannot turn that into a flood (the rest wait their turn like any message).
    """

    def __init__(
        self,
        per_key: float = 900.0,
        spacing: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        burst: int = 4,
    ) -> None:
        self.per_key = per_key
        self.spacing = spacing
        self.burst = burst
        self.clock = clock
        self._bursts: list[float] = []
        self._last_key: dict[str, float] = {}
        self._last_any: float | None = None

    def allow(self, key: str, *, new_kind: bool = False) -> bool:
        now = self.clock()
        last = self._last_key.get(key)
        if last is not None and now - last < self.per_key:
            return False
        spaced = self._last_any is None or now - self._last_any >= self.spacing
        if not spaced:
            self._bursts = [t for t in self._bursts if now - t < self.spacing]
            if not new_kind or len(self._bursts) >= self.burst:
                return False
            self._bursts.append(now)
        if len(self._last_key) > 1000:  # keys from peers: keep the table bounded
            self._last_key = {k: t for k, t in self._last_key.items() if now - t < self.per_key}
        self._last_key[key] = now
        self._last_any = now
        return True


class Tray(QObject):
    stateChanged = Signal(str)
    openRequested = Signal()
    openPeersRequested = Signal()
    #: "Set up a backup…": open the first-run assistant.
    setupRequested = Signal()
    quitRequested = Signal()
    #: (title, message) of every notification that was let through the rate limit.
    notified = Signal(str, str)

    def __init__(
        self,
        backend: Backend,
        parent: QObject | None = None,
        *,
        limiter: RateLimiter | None = None,
        show_icon: bool | None = None,
    ) -> None:
        super().__init__(parent)
        self.backend = backend
        self.limiter = limiter or RateLimiter()
        #: Desktop notifications on or off (the Settings page; saved in desktop prefs).
        self.notifications_enabled = True
        self.tasks = Tasks(on_error=self._failed)
        self.state = ""
        self.tooltip = ""
        self.peers_attention = False
        self._stale_seen: set[str] = set()
        self._peer_states: dict[str, str] = {}
        self._failed_seen: set[str] = set()
        self.notifier = Notifier(self._balloon, self)

        self.menu = QMenu()
        self.menu.setObjectName("trayMenu")
        self.status_action = self.menu.addAction("Peerstash")
        self.status_action.setEnabled(False)
        self.menu.addSeparator()
        self.backup_actions: dict[str, QAction] = {}
        self._plans_anchor = self.menu.addSeparator()
        self.pause_action = self.menu.addAction("Pause scheduled backups")
        self.pause_action.triggered.connect(self._toggle_pause)
        self.peers_menu = self.menu.addMenu("Peers")
        self.setup_action = self.menu.addAction("Set up a backup…")
        self.setup_action.triggered.connect(self.setupRequested)
        self.menu.addSeparator()
        self.open_action = self.menu.addAction("Open Peerstash")
        self.open_action.triggered.connect(self.openRequested)
        self.quit_action = self.menu.addAction("Quit")
        self.quit_action.triggered.connect(self.quitRequested)
        self._fill_peers_menu()

        if show_icon is None:
            show_icon = QSystemTrayIcon.isSystemTrayAvailable()
        self.icon: QSystemTrayIcon | None = None
        if show_icon:
            self.icon = QSystemTrayIcon(state_icon("ok"), self)
            self.icon.setContextMenu(self.menu)
            self.icon.activated.connect(self._activated)
            self.icon.show()
        else:
            log.info("no system tray available here; Peerstash runs with its window only")

        backend.statusChanged.connect(self._status_changed)
        backend.configChanged.connect(self._rebuild_plans)
        backend.opChanged.connect(self._op_changed)
        backend.opsReset.connect(self.update_state)
        backend.peersChanged.connect(self._peers_changed)
        backend.notice.connect(self._notice)
        self._rebuild_plans()
        self._peers_changed()

    # -- menu --------------------------------------------------------------------------------

    def _rebuild_plans(self) -> None:
        for action in self.backup_actions.values():
            self.menu.removeAction(action)
            action.deleteLater()
        self.backup_actions = {}
        plans = [p for p in self.backend.plans if p.enabled]
        if not plans:
            action = QAction("No backup plans yet", self.menu)
            action.setEnabled(False)
            self.menu.insertAction(self._plans_anchor, action)
            self.backup_actions[""] = action
        for p in plans:
            plan_id = p.id
            action = QAction(f"Back up {plan_id} now", self.menu)
            action.setObjectName(f"backup:{plan_id}")
            action.triggered.connect(lambda _=False, pid=plan_id: self.backup(pid))
            self.menu.insertAction(self._plans_anchor, action)
            self.backup_actions[plan_id] = action

    def _fill_peers_menu(self) -> None:
        self.peers_menu.clear()
        peers = self.backend.peer_list
        if not self.backend.peers_loaded:
            a = self.peers_menu.addAction("…")
            a.setEnabled(False)
        elif not peers:
            a = self.peers_menu.addAction("No paired machines")
            a.setEnabled(False)
        for p in peers:
            state = p.state or "?"
            shown = p.label.replace("&", "&&")  # no mnemonic
            a = self.peers_menu.addAction(f"{shown}: {state}")
            a.setIcon(QIcon(dot_pixmap(PEER_STATE_COLORS.get(state, "#858b94"), 12)))
            a.triggered.connect(self.openPeersRequested)
        self.peers_menu.addSeparator()
        show = self.peers_menu.addAction("Manage peers…")
        show.triggered.connect(self.openPeersRequested)

    def _peers_changed(self) -> None:
        attention = False
        for p in self.backend.peer_list:
            pid = p.id
            state = p.state
            bad = state in PEER_ATTENTION
            attention = attention or bad
            if bad and self._peer_states.get(pid) not in PEER_ATTENTION:
                reason = p.state_reason or "it has not answered for a while"
                shown = p.label
                self.notify(f"{shown} is {state}", str(reason), key=f"peer:{pid}")
            self._peer_states[pid] = state
        self.peers_attention = attention
        self._fill_peers_menu()
        self.update_state()

    def backup(self, plan_id: str) -> None:
        self.tasks.spawn(self.backend.backup(plan_id), name=f"tray:backup:{plan_id}")

    def _toggle_pause(self) -> None:
        self.tasks.spawn(self.backend.set_paused(not self.backend.paused), name="tray:pause")

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (
            QSystemTrayIcon.ActivationReason.Trigger,
            QSystemTrayIcon.ActivationReason.DoubleClick,
        ):
            self.openRequested.emit()

    def _failed(self, exc: BaseException) -> None:
        self.notify("Peerstash", str(exc), key=f"failed-request:{exc}")

    # -- state -------------------------------------------------------------------------------

    def _status_changed(self, status: StatusRecord) -> None:
        self.pause_action.setText(
            "Resume scheduled backups" if status.paused else "Pause scheduled backups"
        )
        for p in status.plans:
            pid = p.id
            if p.stale and pid not in self._stale_seen:
                self._stale_seen.add(pid)
                ended = p.last.ended_at if p.last else None
                when = fmt.ago(ended) if ended else "never"
                self.notify(
                    f"{self.backend.machine_name(None)}: backups of {pid} are stale",
                    f"The last successful backup was {when}.",
                    key=f"stale:{pid}",
                )
            elif not p.stale:
                self._stale_seen.discard(pid)
        self.update_state()

    def _notice(self, level: str, message: str) -> None:
        if level in ("warning", "error") and message:
            self.notify("Peerstash", message, key=f"notice:{message}")

    def _op_changed(self, op: OpRecord) -> None:
        status = op.status
        key = f"{op.origin}/{op.id}"
        if status in FAILED and key not in self._failed_seen:
            self._failed_seen.add(key)
            target = op.plan or op.repo or "?"
            word = "failed" if status == "error" else "was interrupted"
            machine = self.backend.machine_name(op.origin)
            # The error class the node recorded (core/runner.py), else the status: a new
            # class on the same plan is a new kind of failure, worth saying at once. Only the
            # classes restic failures have (a peer sends what it likes). ``summary`` is
            # free-form, a dict.
            error_class = str(op.summary.get("error_kind") or status)
            if error_class not in ERROR_CLASSES:
                error_class = status
            self.notify(
                f"{machine}: the {op.kind} of {target} {word}",
                op.error or "See the Operations page for its log.",
                key=f"failed:{op.origin}:{target}:{error_class}",
                icon=QSystemTrayIcon.MessageIcon.Critical,
                new_kind=True,
            )
        self.update_state()

    def update_state(self) -> None:
        state = compute_state(self.backend.status, self.backend.active, self.peers_attention)
        self.tooltip = tooltip_text(self.backend.status, state)
        self.status_action.setText(f"Peerstash: {STATE_WORDS.get(state, state)}")
        self.status_action.setIcon(state_icon(state))
        if self.icon is not None:
            self.icon.setToolTip(self.tooltip)
        if state != self.state:
            self.state = state
            if self.icon is not None:
                self.icon.setIcon(state_icon(state))
            self.stateChanged.emit(state)

    def notify(
        self,
        title: str,
        message: str,
        *,
        key: str,
        icon: QSystemTrayIcon.MessageIcon = QSystemTrayIcon.MessageIcon.Warning,
        new_kind: bool = False,
    ) -> bool:
        """Say something to the person, if the rate limit lets it through (see RateLimiter)."""
        if not self.notifications_enabled or not self.limiter.allow(key, new_kind=new_kind):
            return False
        # Peer ids, plan names and error texts may come from a peer: shown inert.
        title, message = printable(title), printable_lines(message)
        log.info("notification: %s: %s", title, message)
        self.notifier.send(title, message, critical=icon == QSystemTrayIcon.MessageIcon.Critical)
        self.notified.emit(title, message)
        return True

    def _balloon(self, title: str, message: str, critical: bool) -> bool:
        """The fallback without a notification service: Qt's balloon at the tray icon."""
        if self.icon is None or not QSystemTrayIcon.supportsMessages():
            return False
        icon = (
            QSystemTrayIcon.MessageIcon.Critical
            if critical
            else QSystemTrayIcon.MessageIcon.Warning
        )
        self.icon.showMessage(title, message, icon, 10_000)
        return True

    async def close(self) -> None:
        if self.icon is not None:
            self.icon.hide()
        await self.tasks.close()
        await self.notifier.close()
