"""Small building blocks shared by the pages: a page base, an inline message, table helpers.

Colours follow the palette: a message's background, border and text are mixed from the
palette's window and text colours and one accent per level, so they read on a light and on a
dark theme alike (no light colour is written down). A page's banner floats over the top of
the page instead of pushing it down, and goes away by itself after a while or when the next
button on the page is pressed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, QTimer
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QApplication,
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

#: One accent per level and state; mid tones, readable on light and dark (mixed, see below).
ACCENTS = {
    "info": "#2f7ed8",
    "running": "#2f7ed8",
    "ok": "#2e9d58",
    "success": "#2e9d58",
    "warning": "#d99a1e",
    "error": "#d64541",
}


def _mix(a: QColor, b: QColor, t: float) -> QColor:
    """``a`` moved ``t`` (0…1) of the way to ``b``."""
    return QColor(
        round(a.red() + (b.red() - a.red()) * t),
        round(a.green() + (b.green() - a.green()) * t),
        round(a.blue() + (b.blue() - a.blue()) * t),
    )


def _css(c: QColor) -> str:
    return f"rgb({c.red()},{c.green()},{c.blue()})"


def _palette(widget: QWidget | None = None) -> QPalette:
    """The theme's palette for ``widget``: the application's (a widget's own palette is
    already coloured by its style sheet, so mixing from it would feed back into itself)."""
    return QApplication.palette(widget) if widget is not None else QApplication.palette()


def state_color(state: str, widget: QWidget | None = None) -> str:
    """A text colour for ``state`` (ok, error, ...) that reads on the current palette."""
    pal = _palette(widget)
    accent = QColor(ACCENTS.get(state, ACCENTS["info"]))
    return _css(_mix(accent, pal.color(QPalette.ColorRole.WindowText), 0.25))


def level_style(level: str, widget: QWidget | None = None) -> str:
    """Background, text and border for a message of ``level``, mixed from the palette."""
    pal = _palette(widget)
    accent = QColor(ACCENTS.get(level, ACCENTS["info"]))
    window = pal.color(QPalette.ColorRole.Window)
    text = pal.color(QPalette.ColorRole.WindowText)
    return (
        f"background:{_css(_mix(window, accent, 0.16))};"
        f"color:{_css(_mix(text, accent, 0.3))};"
        f"border:1px solid {_css(_mix(window, accent, 0.5))};"
    )


class _LevelStyles(Mapping[str, str]):
    """``LEVEL_STYLES[level]``: :func:`level_style` for the application's palette right now."""

    def __getitem__(self, level: str) -> str:
        if level not in ACCENTS:
            raise KeyError(level)
        return level_style(level)

    def __iter__(self) -> Iterator[str]:
        return iter(("info", "ok", "warning", "error"))

    def __len__(self) -> int:
        return 4


LEVEL_STYLES: Mapping[str, str] = _LevelStyles()

_LONG_WORD = re.compile(r"\S{32,}")


def breakable(text: str) -> str:
    """``text`` with a zero-width space after each ``/`` ``,`` ``=`` of very long words.

    A word-wrapped label breaks only at spaces, so one long path or URL would make it (and its
    dialog) as wide as that word, past the screen's edge; these are the places it may break.
    """
    return _LONG_WORD.sub(lambda m: re.sub(r"([/,=&:_-])", "\\1\u200b", m.group(0)), text)


class WrappingLabel(QLabel):
    """A label that wraps, long paths included (:func:`breakable`); ``text()`` is as given."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setText(text)

    def setText(self, text: str) -> None:
        super().setText(breakable(text))

    def text(self) -> str:
        return super().text().replace("\u200b", "")


class Banner(QLabel):
    """A message inside a page or dialog (never a modal box): errors in words, results, hints.

    ``auto_clear``: it hides itself after ``TIMEOUTS[level]`` milliseconds (a page's banner;
    a dialog's stays while the dialog shows what it is about).
    """

    TIMEOUTS = {"info": 8000, "ok": 8000, "warning": 20000, "error": 20000}

    def __init__(self, parent: QWidget | None = None, *, auto_clear: bool = False) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.level = ""
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self.clear_message)
        self.auto_clear = auto_clear
        self.hide()

    def show_message(self, text: str, level: str = "info") -> None:
        self.level = level
        self.setText(breakable(text))
        self.setStyleSheet(
            f"QLabel{{{level_style(level, self)}border-radius:4px;padding:6px 8px;}}"
        )
        self.setVisible(bool(text))
        self.timer.stop()
        if text and self.auto_clear:
            self.timer.start(self.TIMEOUTS.get(level, 8000))
        parent = self.parentWidget()
        if isinstance(parent, Page):
            parent.place_banner()

    def text(self) -> str:
        """The message as given (without the break opportunities :func:`breakable` added)."""
        return super().text().replace("\u200b", "")

    def clear_message(self) -> None:
        self.timer.stop()
        self.level = ""
        self.setText("")
        self.hide()


class FieldError(QLabel):
    """The inline error under one form field; hidden while there is none."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.hide()

    def set_error(self, text: str) -> None:
        self.setStyleSheet(f"QLabel{{color:{state_color('error', self)};font-size:90%;}}")
        self.setText(breakable(text))
        self.setVisible(bool(text))

    def text(self) -> str:
        return super().text().replace("\u200b", "")


class Page(QWidget):
    """A sidebar page. ``activate()`` runs when it is shown (to refresh what it lists)."""

    title = ""

    def __init__(self, backend: Backend, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.backend = backend
        self.tasks = Tasks(on_error=self._task_failed)
        self.outer = QVBoxLayout(self)
        self.outer.setContentsMargins(18, 14, 18, 14)
        self.outer.setSpacing(10)
        self.heading = heading = QLabel(self.title)
        heading.setObjectName("pageTitle")
        heading.setStyleSheet("QLabel#pageTitle{font-size:17pt;font-weight:600;}")
        self.outer.addWidget(heading)
        # Not in the layout: it floats under the title, over the page, so showing and clearing
        # it never moves what the person is looking at (place_banner).
        self.banner = Banner(self, auto_clear=True)
        self._watched: set[int] = set()

    def place_banner(self) -> None:
        """Put the banner under the title, as wide as the page, as tall as its text needs."""
        m = self.outer.contentsMargins()
        width = max(50, self.width() - m.left() - m.right())
        top = self.heading.geometry().bottom() + 4 if self.heading.isVisible() else m.top()
        height = self.banner.heightForWidth(width)
        self.banner.setGeometry(m.left(), top, width, max(height, self.banner.sizeHint().height()))
        self.banner.raise_()

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        if self.banner.isVisible():
            self.place_banner()

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if self.banner.isVisibleTo(self):  # shown while the page was hidden: place it now
            self.place_banner()
        # The next button pressed is the next action: the last message has had its say.
        for button in self.findChildren(QAbstractButton):
            if id(button) not in self._watched:
                self._watched.add(id(button))
                button.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if (
            event.type() == QEvent.Type.MouseButtonPress
            and isinstance(watched, QAbstractButton)
            and self.banner.isVisible()
        ):
            self.banner.clear_message()
        return False

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
