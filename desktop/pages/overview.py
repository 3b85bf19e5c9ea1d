"""Overview: this node and the paired machines at a glance.

Other machines' plans are known from their synced operations (``/v1/ops?origin=...``): the
newest backup per (machine, plan) is its last result. Live changes from the event stream update
that table without asking the node again.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from peerstash.core import __version__
from peerstash.core.records import LastBackupRecord, ListedPeerRecord, OpRecord, StatusRecord
from peerstash.core.text import printable, printable_lines
from peerstash.desktop import fmt
from peerstash.desktop.backend import Backend
from peerstash.desktop.icons import STATUS_COLORS, status_icon
from peerstash.desktop.tray import HEALTH_STATES, health_words
from peerstash.desktop.widgets import LEVEL_STYLES, Page, item, make_table

PLAN_HEADERS = ("Plan", "Repository", "Last backup", "Result", "Next run", "")
FLEET_HEADERS = ("Machine", "Link", "Plan", "Last backup", "Result")
PEER_COLORS = {"online": "#2e9d58", "unreachable": "#d99a1e", "auth failed": "#d64541"}


def restart_words(st: StatusRecord, ours: str | None = None) -> str:
    """Why a restart is due, from the node's status, or "" when none is.

    The tray and the node come from one package (docs/architecture.md, "Version skew"): they
    differ only after an upgrade, until the process that still runs the old code restarts.
    ``ours`` is the version this window runs (default: this process's).
    """
    ours = ours or __version__
    running, installed = st.version, st.installed_version
    if not running:
        return ""
    if installed and installed != running:
        return (
            f"Restart due: this node runs Peerstash {running}, but {installed} is installed. "
            "Quit Peerstash and start it again (or restart its service) to use the new version."
        )
    if running != ours:
        return (
            f"Restart due: this window is Peerstash {ours}, but the node runs {running}. "
            "Quit Peerstash and start it again."
        )
    return ""


class OverviewPage(Page):
    title = "Overview"

    def __init__(self, backend: Backend, parent: QWidget | None = None) -> None:
        super().__init__(backend, parent)
        # After a package upgrade: which process still runs the old code (from the status).
        self.restart_due = QLabel("")
        self.restart_due.setObjectName("overviewRestartDue")
        self.restart_due.setWordWrap(True)
        self.restart_due.setTextFormat(Qt.TextFormat.PlainText)
        self.restart_due.setStyleSheet(
            f"QLabel{{{LEVEL_STYLES.get('warning', '')}border-radius:4px;padding:6px 8px;}}"
        )
        self.restart_due.hide()
        self.outer.addWidget(self.restart_due)
        card = QFrame()
        card.setObjectName("nodeCard")
        card.setStyleSheet(
            "QFrame#nodeCard{border:1px solid palette(mid);border-radius:8px;"
            "background:palette(base);}"
        )
        cl = QHBoxLayout(card)
        cl.setContentsMargins(14, 10, 14, 10)
        text = QVBoxLayout()
        self.node_title = QLabel("…")
        self.node_title.setTextFormat(Qt.TextFormat.PlainText)  # a name is never markup
        self.node_title.setStyleSheet("font-size:13pt;font-weight:600;")
        self.node_sub = QLabel("")
        self.node_sub.setStyleSheet("color:palette(placeholder-text);")
        self.node_sub.setWordWrap(True)  # one long line would widen the page past the screen
        text.addWidget(self.node_title)
        text.addWidget(self.node_sub)
        cl.addLayout(text, 1)
        self.pause_button = QPushButton("Pause schedules")
        self.pause_button.clicked.connect(self._toggle_pause)
        cl.addWidget(self.pause_button, 0, Qt.AlignmentFlag.AlignVCenter)
        self.outer.addWidget(card)
        # The node's verdict on the whole fleet (status "health"), shown as the node words it.
        self.health = QLabel("")
        self.health.setObjectName("overviewHealth")
        self.health.setWordWrap(True)
        self.health.setTextFormat(Qt.TextFormat.PlainText)
        self.health.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.health.hide()
        self.outer.addWidget(self.health)

        plans_label = QLabel("Backup plans")
        plans_label.setStyleSheet("font-weight:600;")
        self.outer.addWidget(plans_label)
        self.plans = make_table(PLAN_HEADERS, stretch=3)
        self.plans.setSelectionMode(self.plans.SelectionMode.NoSelection)
        self.outer.addWidget(self.plans)
        self.empty = QLabel(
            "No backup plans yet. Add a repository and a plan on the "
            "<b>Plans &amp; repositories</b> page."
        )
        self.empty.setStyleSheet("color:palette(placeholder-text);")
        self.empty.hide()
        self.outer.addWidget(self.empty)

        running_label = QLabel("Running now")
        running_label.setStyleSheet("font-weight:600;")
        self.outer.addWidget(running_label)
        self.running_box = QWidget()
        self.running_layout = QGridLayout(self.running_box)
        self.running_layout.setContentsMargins(0, 0, 0, 0)
        self.outer.addWidget(self.running_box)
        self.idle = QLabel("Nothing is running.")
        self.idle.setStyleSheet("color:palette(placeholder-text);")
        self.outer.addWidget(self.idle)
        self._bars: dict[tuple[str, str], tuple[QLabel, QProgressBar]] = {}

        fleet_label = QLabel("Other nodes")
        fleet_label.setStyleSheet("font-weight:600;")
        self.outer.addWidget(fleet_label)
        self.fleet = QLabel("…")
        self.fleet.setWordWrap(True)
        self.fleet.setStyleSheet("color:palette(placeholder-text);")
        self.outer.addWidget(self.fleet)
        self.fleet_table = make_table(FLEET_HEADERS, stretch=4)
        self.fleet_table.setSelectionMode(self.fleet_table.SelectionMode.NoSelection)
        self.fleet_table.hide()
        self.outer.addWidget(self.fleet_table)
        #: Each peer's last backup per plan, from the operations it synced to us: as the peer
        #: list gives it, replaced by the operation itself when one arrives on the stream.
        self.remote: dict[str, dict[str, LastBackupRecord | OpRecord]] = {}
        self.outer.addStretch(1)

        backend.statusChanged.connect(self._show_status)
        backend.opChanged.connect(self._op_changed)
        backend.opsReset.connect(self._show_running)
        backend.peersChanged.connect(self._show_peers)
        if backend.status is not None:
            self._show_status(backend.status)
        self._show_running()
        self._show_peers()

    def activate(self) -> None:
        self.run(self._refresh())

    async def _refresh(self) -> None:
        await self.backend.refresh_status()
        await self.backend.refresh_peers()
        await self.load_remote()

    async def load_remote(self) -> None:
        """The newest backup of each plan of each paired machine, as the node lists it with
        each peer (from synced operations)."""
        for p in list(self.backend.peer_list):
            if p.id:
                self.remote[p.id] = {r.plan: r for r in p.plans if r.plan}
        self._show_peers()

    def _show_peers(self) -> None:
        peers = self.backend.peer_list
        if not peers:
            self.fleet.setText("No paired machines yet: pair one on the Peers page.")
            self.fleet.show()
            self.fleet_table.hide()
            return
        self.fleet.hide()
        rows: list[tuple[ListedPeerRecord, str, LastBackupRecord | OpRecord | None]] = []
        for p in peers:
            plans = self.remote.get(p.id, {})
            if not plans:
                rows.append((p, "", None))
            rows += [(p, plan, op) for plan, op in sorted(plans.items())]
        t = self.fleet_table
        t.setRowCount(len(rows))
        for r, (p, plan, op) in enumerate(rows):
            state = p.state or "?"
            # Peer ids, plan names, reasons and errors come from peers: shown inert.
            t.setItem(r, 0, item(printable(p.label)))
            link = item(state)
            link.setForeground(QColor(PEER_COLORS.get(state, "#858b94")))
            if p.state_reason:
                link.setToolTip(printable(p.state_reason))
            t.setItem(r, 1, link)
            t.setItem(r, 2, item(printable(plan or "—")))
            if op is None:
                t.setItem(r, 3, item("—"))
                t.setItem(r, 4, item("no operations shared" if not plan else ""))
                continue
            # The peer's last backup as the list gave it, or as the event stream told since.
            when, status, error = op.ended_at or op.started_at or op.created_at, op.status, op.error
            t.setItem(r, 3, item(fmt.ago(when)))
            res = item(fmt.STATUS_WORDS.get(status, status))
            res.setIcon(status_icon(status))
            if error:
                res.setToolTip(printable_lines(str(error)))
            t.setItem(r, 4, res)
        rows_h = sum(t.rowHeight(r) for r in range(min(len(rows), 8)))
        t.setFixedHeight(t.horizontalHeader().height() + rows_h + 4)
        t.show()

    # -- status ------------------------------------------------------------------------------

    def _show_status(self, st: StatusRecord) -> None:
        where = (
            "running inside this app"
            if self.backend.in_process
            else f"attached to the node running as process {st.pid}"
        )
        paused, ident = st.paused, st.instance_id
        name = st.name or ident
        self.node_title.setText(f"This node: {name}" + ("" if name == ident else f" (id {ident})"))
        self.node_sub.setText(
            f"Peerstash {st.version} · {where} · "
            + ("scheduled backups are <b>paused</b>" if paused else "scheduled backups are on")
        )
        self.pause_button.setText("Resume schedules" if paused else "Pause schedules")
        restart = restart_words(st)
        self.restart_due.setText(restart)
        self.restart_due.setVisible(bool(restart))
        self._show_health(st)
        plans = st.plans
        self.plans.setRowCount(len(plans))
        for r, p in enumerate(plans):
            last = p.last
            self.plans.setItem(r, 0, item(p.id, p.id))
            self.plans.setItem(r, 1, item(p.repo))
            when = (last.ended_at or last.started_at or last.created_at) if last else None
            self.plans.setItem(r, 2, item(fmt.ago(when) if last else "never"))
            if p.stale:
                res = item("stale: no recent successful backup")
                res.setIcon(status_icon("warning"))
                res.setForeground(QColor(STATUS_COLORS["warning"]))
            elif last:
                res = item(fmt.STATUS_WORDS.get(last.status, last.status))
                res.setIcon(status_icon(last.status))
                if last.error:
                    res.setToolTip(last.error)
            else:
                res = item("not backed up yet")
            self.plans.setItem(r, 3, res)
            nxt = p.next_due_at
            due = (
                "disabled"
                if not p.enabled
                else (f"{fmt.local_time(nxt)} ({fmt.until(nxt)})" if nxt else "manual")
            )
            if paused and nxt:
                due += " · paused"
            self.plans.setItem(r, 4, item(due))
            button = QPushButton("Back up now")
            button.setObjectName(f"overview-backup-{p.id}")
            plan_id = p.id
            button.clicked.connect(lambda _=False, pid=plan_id: self.run(self._backup(pid)))
            self.plans.setCellWidget(r, 5, button)
        self.plans.setVisible(bool(plans))
        self.empty.setVisible(not plans)
        # As tall as its rows (up to ten), so "Running now" sits right below the plans.
        rows_h = sum(self.plans.rowHeight(r) for r in range(min(len(plans), 10)))
        self.plans.setFixedHeight(self.plans.horizontalHeader().height() + rows_h + 4)

    def _show_health(self, st: StatusRecord) -> None:
        """The node's health and its reasons, one line each (plain text: a peer's words)."""
        summary, reasons = health_words(st)
        level = st.health.level
        self.health.setText("\n".join([f"Health: {summary}", *(f"• {r}" for r in reasons)]))
        style = LEVEL_STYLES.get(HEALTH_STATES.get(level, "warning"), "")
        self.health.setStyleSheet(f"QLabel{{{style}border-radius:4px;padding:6px 8px;}}")
        self.health.show()

    def _toggle_pause(self) -> None:
        self.run(self.backend.set_paused(not self.backend.paused))

    async def _backup(self, plan_id: str) -> None:
        op, already = await self.backend.backup(plan_id)
        if already:  # the node queued nothing: one is on its way already
            self.banner.show_message(already, "info")
            return
        self.banner.show_message(f"Backup of {plan_id} queued (operation {op.id[-8:]}).", "ok")

    # -- running operations --------------------------------------------------------------------

    def _op_changed(self, op: OpRecord) -> None:
        self._show_running()
        origin = op.origin
        if origin and origin != self.backend.instance_id and op.kind == "backup" and op.plan:
            self.remote.setdefault(origin, {})[op.plan] = op
            self._show_peers()

    def _show_running(self) -> None:
        active = self.backend.active
        for key in list(self._bars):
            if key not in active:
                label, bar = self._bars.pop(key)
                label.deleteLater()
                bar.deleteLater()
        for key, op in sorted(active.items(), key=lambda kv: kv[1].pk):
            if key not in self._bars:
                label, bar = QLabel(), QProgressBar()
                bar.setRange(0, 1000)
                bar.setTextVisible(True)
                row = len(self._bars)
                self.running_layout.addWidget(label, row, 0)
                self.running_layout.addWidget(bar, row, 1)
                self._bars[key] = (label, bar)
            label, bar = self._bars[key]
            what = f"{op.kind} {op.plan or op.repo or ''}".strip()
            label.setText(what)
            frac = fmt.op_progress(op)
            if frac is None:
                bar.setRange(0, 0 if op.status == "running" else 1000)
                bar.setFormat(fmt.op_detail(op))
            else:
                bar.setRange(0, 1000)
                bar.setValue(int(frac * 1000))
                bar.setFormat(fmt.op_detail(op))
        self.idle.setVisible(not active)
        self.running_box.setVisible(bool(active))
