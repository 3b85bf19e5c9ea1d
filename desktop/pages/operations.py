"""Operations: every operation, newest first, with live progress, filters, the log and cancel."""

from __future__ import annotations

import time

from PySide6.QtCore import QEvent, QItemSelection, QObject, Qt
from PySide6.QtGui import QFont, QFontDatabase
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from peerstash.core.ops import FINISHED, OpStatus
from peerstash.core.records import ListedOpRecord, LogRecord, OpRecord
from peerstash.desktop import fmt
from peerstash.desktop.api import ApiError, q
from peerstash.desktop.backend import Backend, decode
from peerstash.desktop.opsmodel import (
    COL_DETAIL,
    COL_KIND,
    COL_NODE,
    COL_REPO,
    COL_STARTED,
    COL_STATUS,
    COL_TOOK,
    OpFilter,
    OpsModel,
    ProgressDelegate,
)
from peerstash.desktop.widgets import Page

#: Starting widths of the columns before the progress/result column, which takes the rest.
COLUMN_WIDTHS = (100, 70, 100, 100, 90, 125, 55)
#: The progress/result column keeps at least this much: it is what the page is about. When
#: the window is narrower, these columns are hidden (in this order) to make room.
MIN_DETAIL = 220
HIDE_FIRST = (COL_NODE, COL_REPO, COL_TOOK, COL_KIND, COL_STARTED)
STATUSES = tuple(OpStatus)
LOG_REFRESH = 1.0


class OperationsPage(Page):
    title = "Operations"

    def __init__(self, backend: Backend, parent: QWidget | None = None) -> None:
        super().__init__(backend, parent)
        self.model = OpsModel(backend, self)
        self.model.loadFailed.connect(lambda msg: self.banner.show_message(msg, "error"))

        bar = QHBoxLayout()
        self.plan_filter = self._combo("Any plan")
        self.repo_filter = self._combo("Any repository")
        self.status_filter = self._combo("Any status")
        for s in STATUSES:
            self.status_filter.addItem(fmt.STATUS_WORDS[s], s)
        self.origin_filter = self._combo("Any node")
        # No labels beside them: "Any plan" says what each is, and the bar stays narrow enough
        # for a small screen at 200 %.
        for label, combo in (
            ("Plan", self.plan_filter),
            ("Repository", self.repo_filter),
            ("Status", self.status_filter),
            ("Node", self.origin_filter),
        ):
            combo.setToolTip(f"Show only the operations of this {label.lower()}")
            combo.setAccessibleName(f"{label} filter")
            bar.addWidget(combo)
        bar.addStretch(1)
        self.outer.addLayout(bar)

        self.view = QTableView()
        self.view.setModel(self.model)
        self.view.setItemDelegateForColumn(COL_DETAIL, ProgressDelegate(self.view))
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.setAlternatingRowColors(True)
        self.view.setShowGrid(False)
        self.view.setWordWrap(False)
        self.view.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        vh = self.view.verticalHeader()
        vh.hide()
        # Fixed row heights: the view never measures 100,000 rows.
        vh.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        vh.setDefaultSectionSize(self.view.fontMetrics().height() + 10)
        hh = self.view.horizontalHeader()
        hh.setHighlightSections(False)
        hh.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        hh.setStretchLastSection(True)
        for col, width in enumerate(COLUMN_WIDTHS):
            hh.resizeSection(col, width)
        self.view.viewport().installEventFilter(self)
        self.view.selectionModel().selectionChanged.connect(self._selection_changed)
        # Enter (or a double click) on an operation goes to its log.
        self.view.activated.connect(lambda _i: self.open_log())

        details = QWidget()
        dl = QVBoxLayout(details)
        dl.setContentsMargins(0, 6, 0, 0)
        head = QHBoxLayout()
        self.detail_title = QLabel("Select an operation to see its log.")
        self.detail_title.setStyleSheet("font-weight:600;")
        # Wrapped: unwrapped, its long line would make the page wider than a small screen.
        self.detail_title.setWordWrap(True)
        head.addWidget(self.detail_title, 1)
        self.cancel_button = QPushButton("Cancel operation")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self._cancel)
        head.addWidget(self.cancel_button)
        dl.addLayout(head)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setTabChangesFocus(True)
        self.log.setMaximumBlockCount(5000)
        self.log.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        mono.setStyleHint(QFont.StyleHint.Monospace)
        self.log.setFont(mono)
        dl.addWidget(self.log)

        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.view)
        split.addWidget(details)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        self.outer.addWidget(split, 1)

        self.selected: OpRecord | None = None
        #: Every node seen: this one, paired ones, and origins of synced operations.
        self._origins: set[str] = set()
        self._log_loaded_at = 0.0
        self._log_for: str | None = None
        self._started = False
        backend.configChanged.connect(self._fill_filters)
        backend.statusChanged.connect(lambda _st: self._fill_filters())
        backend.opChanged.connect(self._op_changed)
        backend.peersChanged.connect(self._fill_filters)
        self._fill_filters()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.view.viewport() and event.type() == QEvent.Type.Resize:
            self.fit_columns()
        return super().eventFilter(watched, event)

    def fit_columns(self) -> None:
        """Keep the progress/result column at least MIN_DETAIL wide, hiding minor columns."""
        hh = self.view.horizontalHeader()
        avail = self.view.viewport().width()
        for col in HIDE_FIRST:
            hh.setSectionHidden(col, False)
        for col in HIDE_FIRST:
            used = sum(hh.sectionSize(c) for c in range(COL_DETAIL) if not hh.isSectionHidden(c))
            if avail - used >= MIN_DETAIL:
                break
            hh.setSectionHidden(col, True)

    def _combo(self, any_text: str) -> QComboBox:
        c = QComboBox()
        c.addItem(any_text, "")
        c.setMinimumContentsLength(6)
        c.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        c.currentIndexChanged.connect(self._filters_changed)
        return c

    def activate(self) -> None:
        if not self._started:
            self._started = True
            self.model.reload()

    # -- filters -----------------------------------------------------------------------------

    def _fill_filters(self) -> None:
        def refill(combo: QComboBox, values: list[str]) -> None:
            current = combo.currentData()
            have = [combo.itemData(i) for i in range(1, combo.count())]
            if have == values:
                return
            combo.blockSignals(True)
            while combo.count() > 1:
                combo.removeItem(1)
            for v in values:
                combo.addItem(v, v)
            i = combo.findData(current)
            combo.setCurrentIndex(max(i, 0))
            combo.blockSignals(False)

        refill(self.plan_filter, sorted(p.id for p in self.backend.plans))
        refill(self.repo_filter, sorted(r.id for r in self.backend.repos))
        if self.backend.instance_id:
            self._origins.add(self.backend.instance_id)
        self._origins |= {p.id for p in self.backend.peer_list if p.id}
        refill(self.origin_filter, sorted(o for o in self._origins if o))

    def _filters_changed(self) -> None:
        self.model.set_filter(
            OpFilter(
                plan=self.plan_filter.currentData() or "",
                repo=self.repo_filter.currentData() or "",
                status=self.status_filter.currentData() or "",
                origin=self.origin_filter.currentData() or "",
            )
        )

    # -- selection, log, cancel --------------------------------------------------------------

    def _selection_changed(self, selected: QItemSelection, _deselected: QItemSelection) -> None:
        rows = self.view.selectionModel().selectedRows()
        self.selected = self.model.op_at(rows[0].row()) if rows else None
        self._show_selected(reload_log=True)

    def _show_selected(self, *, reload_log: bool) -> None:
        op = self.selected
        if op is None:
            self.detail_title.setText("Select an operation to see its log.")
            self.cancel_button.setEnabled(False)
            self.log.clear()
            self._log_for = None
            return
        status = op.status
        what = f"{op.kind} {op.plan or op.repo or ''}".strip()
        # Rows carry their origin's name (the list's, kept or given when an event replaces one).
        shown = op.origin_label if isinstance(op, ListedOpRecord) else ""
        self.detail_title.setText(
            f"{what} · {fmt.STATUS_WORDS.get(status, status)} · "
            f"{shown or op.origin} · "
            f"operation {op.id}"
        )
        local = op.origin == self.backend.instance_id
        self.cancel_button.setEnabled(local and status not in FINISHED)
        if reload_log:
            self._log_for = op.id
            self._log_loaded_at = time.monotonic()
            self.run(self._load_log(op.id, op.origin), name="ops:log")

    async def _load_log(self, op_id: str, origin: str) -> None:
        """Show the log; a peer's operation's log is fetched from that peer by the node, and
        when it cannot be (the peer is offline) the node's sentence is shown in its place."""
        lines: list[str] = []
        unavailable = ""
        try:
            res = await self.backend.call(
                "GET", f"/v1/ops/{q(op_id)}/log" + (f"?origin={q(origin)}" if origin else "")
            )
            lines = decode(res, LogRecord, "an operation's log").lines
        except ApiError as exc:  # the node's sentence (the peer is offline...) in its place
            unavailable = str(exc)
        if self._log_for != op_id:
            return
        text = "\n".join(lines) if lines else unavailable or "(no log lines yet)"
        if self.selected and self.selected.error:
            text += f"\n\n{self.selected.error}"
        bar = self.log.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 2
        self.log.setPlainText(text)
        if at_end:
            bar.setValue(bar.maximum())

    def _op_changed(self, op: OpRecord) -> None:
        origin = op.origin
        if origin and origin not in self._origins:
            self._origins.add(origin)
            self._fill_filters()
        sel = self.selected
        if sel is None or (sel.id, sel.origin) != (op.id, op.origin):
            return
        self.selected = self.model.labelled(op, sel)
        finished = op.status in FINISHED
        due = time.monotonic() - self._log_loaded_at >= LOG_REFRESH
        self._show_selected(reload_log=finished or due)

    def open_log(self) -> None:
        """The selected operation's log, with the keyboard focus (to scroll and copy it)."""
        if self.selected is None:
            return
        if self._log_for != self.selected.id:
            self._show_selected(reload_log=True)
        self.log.setFocus(Qt.FocusReason.OtherFocusReason)

    def _cancel(self) -> None:
        op = self.selected
        if op is None:
            return
        self.cancel_button.setEnabled(False)
        self.run(self._do_cancel(op.id))

    async def _do_cancel(self, op_id: str) -> None:
        await self.backend.cancel(op_id)
        self.banner.show_message(f"Cancelling operation {op_id[-8:]}…", "info")

    def select_op(self, op_id: str) -> bool:
        """Select the row of ``op_id`` (used by the tray's "show" and by tests)."""
        row = self.model.row_of(op_id)
        if row is None:
            return False
        self.view.selectRow(row)
        self.view.scrollTo(self.model.index(row, COL_STATUS))
        return True

    async def close_page(self) -> None:
        await self.model.close()
        await super().close_page()
