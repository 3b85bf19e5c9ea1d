"""The operations list: a virtual table model over ``/v1/ops`` kept live by ``/v1/ops/follow``.

Rows are the admin API's operations decoded once as records (``ListedOpRecord`` from a
list, ``OpRecord`` from the event stream), newest first (by the store's ``pk``), so finding the
row of a changed operation is a binary search and a new operation is one insert: 100,000 rows
cost nothing until they are painted, and only the visible ones are.

The node is asked for one page at first (the first paint must not wait for a long history);
older rows are fetched a page at a time when the view scrolls near the end (``canFetchMore``/
``fetchMore``), with ``before=<oldest pk loaded>``: each page is exactly the rows below the
last one, so every operation is reachable however long the history. (A node too old for
``before`` answers with the newest rows again; none of them is older, so the list just ends.)
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QRect,
    QSize,
    Qt,
    Signal,
)
from PySide6.QtGui import QColor, QPainter, QPalette
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from peerstash.core.ops import OpStatus
from peerstash.core.records import ListedOpRecord, OpRecord
from peerstash.core.text import printable, printable_lines
from peerstash.desktop import fmt
from peerstash.desktop.api import ApiError, query
from peerstash.desktop.backend import Backend, decode
from peerstash.desktop.icons import STATUS_COLORS, status_icon
from peerstash.desktop.tasks import Tasks

#: Rows per request, first page and older ones alike: small enough that an in-process node
#: builds a page on the Qt thread without a visible pause.
PAGE = 500

COLUMNS = ("Status", "Kind", "Plan", "Repository", "Node", "Started", "Took", "Progress / result")
COL_STATUS, COL_KIND, COL_PLAN, COL_REPO, COL_NODE, COL_STARTED, COL_TOOK, COL_DETAIL = range(8)

#: The operation's record, for views and tests.
OpRole = Qt.ItemDataRole.UserRole + 1
#: 0..1 progress of a running operation, or None.
ProgressRole = Qt.ItemDataRole.UserRole + 2

Index = QModelIndex | QPersistentModelIndex


@dataclass(frozen=True)
class OpFilter:
    """What the list shows; empty means any. Mirrors the ``/v1/ops`` query parameters."""

    plan: str = ""
    repo: str = ""
    status: str = ""
    origin: str = ""

    def params(self) -> dict[str, str]:
        return {"plan": self.plan, "repo": self.repo, "status": self.status, "origin": self.origin}

    def matches(self, op: OpRecord) -> bool:
        return (
            (not self.plan or op.plan == self.plan)
            and (not self.repo or op.repo == self.repo)
            and (not self.status or op.status == self.status)
            and (not self.origin or op.origin == self.origin)
        )


class OpsModel(QAbstractTableModel):
    #: The first page after a (re)load is in: the view can paint real rows.
    loaded = Signal()
    #: A load failed; the text says why.
    loadFailed = Signal(str)

    def __init__(self, backend: Backend | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.backend = backend
        self.filter = OpFilter()
        self._rows: list[OpRecord] = []
        self._keys: list[int] = []  # -pk of each row: ascending, for bisect
        self._more = False
        self._fetching = False
        self._generation = 0
        self._buffer: list[OpRecord] | None = None
        self.tasks = Tasks(on_error=lambda exc: self.loadFailed.emit(str(exc)))
        if backend is not None:
            backend.opChanged.connect(self.apply)
            backend.opsReset.connect(self.reload)

    # -- Qt model API ------------------------------------------------------------------------

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        op = self._rows[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            # Plan, repository, node and error texts may come from a peer: shown inert.
            return printable(self._text(op, col))
        if role == Qt.ItemDataRole.DecorationRole and col == COL_STATUS:
            return status_icon(op.status)
        if role == OpRole:
            return op
        if role == ProgressRole:
            return fmt.op_progress(op)
        if role == Qt.ItemDataRole.ToolTipRole and col == COL_DETAIL:
            if op.error:
                return printable_lines(op.error)
            return printable(fmt.op_detail(op)) or None  # the whole line, if the column is narrow
        if role == Qt.ItemDataRole.ForegroundRole and col == COL_DETAIL and op.error:
            return QColor(STATUS_COLORS.get(op.status, "#d64541"))
        return None

    @staticmethod
    def _text(op: OpRecord, col: int) -> str:
        if col == COL_STATUS:
            return fmt.STATUS_WORDS.get(op.status, op.status)
        if col == COL_KIND:
            return op.kind
        if col == COL_PLAN:
            return op.plan or "—"
        if col == COL_REPO:
            return op.repo or "—"
        if col == COL_NODE:
            return op.origin
        if col == COL_STARTED:
            return fmt.local_time(op.started_at or op.created_at, seconds=True)
        if col == COL_TOOK:
            return fmt.took(op)
        return fmt.op_detail(op)

    def canFetchMore(self, parent: Index = QModelIndex()) -> bool:  # noqa: B008
        return not parent.isValid() and self._more and not self._fetching

    def fetchMore(self, parent: Index = QModelIndex()) -> None:  # noqa: B008
        if self.canFetchMore(parent):
            self._fetching = True
            self.tasks.spawn(self._fetch_older(self._generation), name="ops:more")

    # -- access for views and tests -----------------------------------------------------------

    def op_at(self, row: int) -> OpRecord:
        return self._rows[row]

    def row_of(self, op_id: str, origin: str | None = None) -> int | None:
        for i, op in enumerate(self._rows):
            if op.id == op_id and (origin is None or op.origin == origin):
                return i
        return None

    def ops(self) -> list[OpRecord]:
        return list(self._rows)

    # -- loading -----------------------------------------------------------------------------

    def set_filter(self, flt: OpFilter) -> None:
        if flt != self.filter:
            self.filter = flt
            self.reload()

    def reload(self) -> None:
        self.tasks.spawn(self.load(), name="ops:load")

    async def load(self) -> None:
        """(Re)load the first page for the current filter."""
        assert self.backend is not None
        self._generation += 1
        gen = self._generation
        self._buffer = []  # changes that arrive while the page is on its way
        try:
            answer = await self.backend.call(
                "GET", "/v1/ops" + query({**self.filter.params(), "limit": PAGE})
            )
            ops = decode(answer, list[ListedOpRecord], "a list of operations")
        except ApiError as exc:
            self._buffer = None
            self.loadFailed.emit(str(exc))
            return
        if gen != self._generation:
            return
        buffered, self._buffer = self._buffer or [], None
        self.set_ops(list(ops), more=len(ops) >= PAGE)
        for op in buffered:
            self.apply(op)
        self.loaded.emit()

    def set_ops(self, ops: list[OpRecord], *, more: bool = False) -> None:
        """Replace every row (newest first by pk is restored if the input is not)."""
        rows = sorted(ops, key=lambda o: -o.pk)
        self.beginResetModel()
        self._rows = rows
        self._keys = [-o.pk for o in rows]
        self._more = more
        self._fetching = False
        self.endResetModel()

    async def _fetch_older(self, gen: int) -> None:
        """The page of operations just older than the oldest row loaded."""
        assert self.backend is not None
        try:
            oldest = -self._keys[-1] if self._keys else None
            params = {**self.filter.params(), "limit": PAGE, "before": oldest}
            answer = await self.backend.call("GET", "/v1/ops" + query(params))
            ops = decode(answer, list[ListedOpRecord], "a list of operations")
        finally:
            self._fetching = False
        if gen != self._generation:
            return
        older: list[OpRecord] = [o for o in ops if oldest is None or o.pk < oldest]
        older.sort(key=lambda o: -o.pk)
        self._more = bool(older) and len(ops) >= PAGE
        if older:
            first = len(self._rows)
            self.beginInsertRows(QModelIndex(), first, first + len(older) - 1)
            self._rows.extend(older)
            self._keys.extend(-o.pk for o in older)
            self.endInsertRows()

    # -- live changes ------------------------------------------------------------------------

    def apply(self, op: OpRecord) -> None:
        """Insert, update or drop one changed operation (from the follow stream)."""
        if self._buffer is not None:
            self._buffer.append(op)
        key = -op.pk
        pos = bisect.bisect_left(self._keys, key)
        present = pos < len(self._keys) and self._keys[pos] == key
        if not self.filter.matches(op):
            if present:
                self.beginRemoveRows(QModelIndex(), pos, pos)
                del self._rows[pos]
                del self._keys[pos]
                self.endRemoveRows()
            return
        if present:
            current = self._rows[pos]
            if current.origin == op.origin and op.modno < current.modno:
                return  # an older state arrived late
            self._rows[pos] = self.labelled(op, current)
            self.dataChanged.emit(self.index(pos, 0), self.index(pos, len(COLUMNS) - 1))
            return
        if pos == len(self._keys) and self._more:
            return  # older than anything loaded: it will come with the next page
        self.beginInsertRows(QModelIndex(), pos, pos)
        self._rows.insert(pos, self.labelled(op, None))
        self._keys.insert(pos, key)
        self.endInsertRows()

    def labelled(self, op: OpRecord, current: OpRecord | None) -> OpRecord:
        """``op`` as a row: an operation from the stream carries no ``origin_label`` (the
        list's rows do), so it keeps the row's, or takes the backend's name for its machine."""
        if isinstance(op, ListedOpRecord):
            return op
        if isinstance(current, ListedOpRecord) and current.origin == op.origin:
            label = current.origin_label
        elif self.backend is not None:
            label = self.backend.machine_name(op.origin)
        else:
            return op
        return ListedOpRecord.extending(op, origin_label=label)

    async def close(self) -> None:
        await self.tasks.close()


class ProgressDelegate(QStyledItemDelegate):
    """Draws a slim progress bar with the percentage and ETA for running operations.

    Painted by hand rather than with the style's progress bar: the same calm look on every
    platform style, text that stays readable over both the filled and the empty part, and a
    cost of a few primitives per visible running row.
    """

    FILL = QColor(STATUS_COLORS[OpStatus.RUNNING])

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: Index) -> None:
        frac = index.data(ProgressRole)
        if frac is None:
            super().paint(painter, option, index)
            return
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        if selected:
            painter.fillRect(option.rect, option.palette.brush(QPalette.ColorRole.Highlight))
        rect = QRect(option.rect).adjusted(4, 4, -4, -4)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        # The empty part and the text come from the palette (a dark theme stays dark).
        base = option.palette.color(QPalette.ColorRole.Base)
        ink = option.palette.color(QPalette.ColorRole.Text)
        track = QColor(
            round(base.red() * 0.85 + ink.red() * 0.15),
            round(base.green() * 0.85 + ink.green() * 0.15),
            round(base.blue() * 0.85 + ink.blue() * 0.15),
        )
        painter.setBrush(track)
        painter.drawRoundedRect(rect, 4, 4)
        filled = QRect(rect)
        filled.setWidth(max(0, int(rect.width() * float(frac))))
        if filled.width() > 0:
            painter.setBrush(self.FILL)
            painter.drawRoundedRect(filled, 4, 4)
        text = str(index.data(Qt.ItemDataRole.DisplayRole) or "")
        align = Qt.AlignmentFlag.AlignCenter
        painter.setPen(ink)
        painter.drawText(rect, align, text)
        if filled.width() > 0:
            painter.setClipRect(filled)
            painter.setPen(QColor("white"))
            painter.drawText(rect, align, text)
        painter.restore()

    def sizeHint(self, option: QStyleOptionViewItem, index: Index) -> QSize:
        hint = super().sizeHint(option, index)
        return QSize(max(hint.width(), 220), hint.height())
