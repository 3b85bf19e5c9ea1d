"""Small building blocks shared by the pages: a page base, an inline message, table helpers."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from peerstash.desktop.api import ApiError
from peerstash.desktop.backend import Backend
from peerstash.desktop.tasks import Tasks

LEVEL_STYLES = {
    "info": "background:#e8f1fb;color:#1d4f8a;border:1px solid #c4dbf5;",
    "ok": "background:#e7f5ec;color:#1e6b3c;border:1px solid #bfe3cc;",
    "warning": "background:#fdf3e1;color:#7a5200;border:1px solid #f2d9a6;",
    "error": "background:#fbe9e8;color:#8c2320;border:1px solid #f1c4c2;",
}


class Banner(QLabel):
    """A one-line message inside a page (never a modal box): errors in words, results, hints."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.level = ""
        self.hide()

    def show_message(self, text: str, level: str = "info") -> None:
        self.level = level
        self.setText(text)
        self.setStyleSheet(
            f"QLabel{{{LEVEL_STYLES.get(level, '')}border-radius:4px;padding:6px 8px;}}"
        )
        self.setVisible(bool(text))

    def clear_message(self) -> None:
        self.level = ""
        self.setText("")
        self.hide()


class FieldError(QLabel):
    """The inline error under one form field; hidden while there is none."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setStyleSheet("QLabel{color:#c0392b;font-size:90%;}")
        self.hide()

    def set_error(self, text: str) -> None:
        self.setText(text)
        self.setVisible(bool(text))


class Page(QWidget):
    """A sidebar page. ``activate()`` runs when it is shown (to refresh what it lists)."""

    title = ""

    def __init__(self, backend: Backend, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.backend = backend
        self.banner = Banner()
        self.tasks = Tasks(on_error=self._task_failed)
        self.outer = QVBoxLayout(self)
        self.outer.setContentsMargins(18, 14, 18, 14)
        self.outer.setSpacing(10)
        heading = QLabel(self.title)
        heading.setObjectName("pageTitle")
        heading.setStyleSheet("QLabel#pageTitle{font-size:17pt;font-weight:600;}")
        self.outer.addWidget(heading)
        self.outer.addWidget(self.banner)

    def _task_failed(self, exc: BaseException) -> None:
        if isinstance(exc, ApiError):
            self.banner.show_message(str(exc), "error")
        else:
            self.banner.show_message(f"Something went wrong: {exc}", "error")

    def run(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> None:
        self.tasks.spawn(coro, name=name)

    def activate(self) -> None:
        """Called when the page becomes visible."""

    async def close_page(self) -> None:
        await self.tasks.close()


def confirm(
    parent: QWidget, title: str, text: str, yes: str, on_yes: Callable[[], None]
) -> QMessageBox:
    """Ask before something that cannot be undone, without a nested event loop (``open()``)."""
    box = QMessageBox(
        QMessageBox.Icon.Question, title, text, QMessageBox.StandardButton.Cancel, parent
    )
    ok = box.addButton(yes, QMessageBox.ButtonRole.DestructiveRole)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)

    def done() -> None:
        if box.clickedButton() is ok:
            on_yes()

    box.finished.connect(done)
    box.open()
    return box


def make_table(headers: Sequence[str], stretch: int | None = None) -> QTableWidget:
    t = QTableWidget(0, len(headers))
    t.setHorizontalHeaderLabels(list(headers))
    t.verticalHeader().hide()
    t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    t.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    t.setAlternatingRowColors(True)
    t.setShowGrid(False)
    t.setWordWrap(False)
    h = t.horizontalHeader()
    h.setHighlightSections(False)
    h.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    if stretch is not None:
        h.setSectionResizeMode(stretch, QHeaderView.ResizeMode.Stretch)
    else:
        h.setStretchLastSection(True)
    return t


def item(text: str, data: Any = None) -> QTableWidgetItem:
    it = QTableWidgetItem(text)
    if data is not None:
        it.setData(Qt.ItemDataRole.UserRole, data)
    return it


def selected_data(table: QTableWidget) -> Any:
    rows = table.selectionModel().selectedRows()
    if not rows:
        return None
    it = table.item(rows[0].row(), 0)
    return None if it is None else it.data(Qt.ItemDataRole.UserRole)


def button_row(*buttons: QPushButton, stretch_first: bool = False) -> QHBoxLayout:
    row = QHBoxLayout()
    if stretch_first:
        row.addStretch(1)
    for b in buttons:
        row.addWidget(b)
    if not stretch_first:
        row.addStretch(1)
    return row
