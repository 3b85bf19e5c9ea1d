"""The main window: a sidebar of pages and a status line saying whether the node answers.

It has to fit a small laptop screen (1366x768) at 100 % and at 200 % scale, where only
683x384 logical pixels are left: every page sits in a scroll area, so no page's content makes
the window's minimum size larger than the screen, and the window's size is clamped to the
screen's available area when it opens and when a remembered geometry is restored (a screen
may have shrunk since). Keyboard: Ctrl+1…6 open a page, Ctrl+Tab / Ctrl+Shift+Tab the next
and previous one. Size, position and page are remembered in the desktop's preferences
(:mod:`peerstash.desktop.prefs`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QEvent, QRect, QSize, Qt, Signal
from PySide6.QtGui import QCloseEvent, QGuiApplication, QKeySequence, QResizeEvent, QShortcut
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QScrollArea,
    QStackedWidget,
    QWidget,
)

from peerstash.desktop.backend import Backend
from peerstash.desktop.dialogs.assistant import SetupAssistant
from peerstash.desktop.icons import app_icon
from peerstash.desktop.pages.operations import OperationsPage
from peerstash.desktop.pages.overview import OverviewPage
from peerstash.desktop.pages.peers import PeersPage
from peerstash.desktop.pages.plans import PlansPage
from peerstash.desktop.pages.settings import SettingsPage
from peerstash.desktop.pages.snapshots import SnapshotsPage
from peerstash.desktop.widgets import Page, state_color

#: The window's size on a first start, when the screen has room for it.
DEFAULT_SIZE = QSize(1100, 680)

SIDEBAR_STYLE = """
QListWidget#sidebar { border: none; background: palette(window); font-size: 11pt; }
QListWidget#sidebar::item { padding: 9px 14px; border-radius: 6px; margin: 1px 6px; }
QListWidget#sidebar::item:selected { background: palette(highlight); color: palette(highlighted-text); }
"""


class MainWindow(QMainWindow):
    #: The person closed the window and there is no tray to bring it back: quit.
    closedWithoutTray = Signal()

    def __init__(self, backend: Backend, *, autostart_command: list[str] | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.setWindowTitle("Peerstash")
        self.setWindowIcon(app_icon())
        self.resize(DEFAULT_SIZE)
        self.has_tray = False
        #: Without a tray, what a close means (DesktopApp decides, it may ask first): "quit"
        #: (the window closes, :attr:`closedWithoutTray` fires), "hide" (it closes, the app
        #: runs on) or "keep" (the window stays while a question is open).
        self.close_without_tray: Callable[[], str] | None = None

        self.overview = OverviewPage(backend)
        self.operations = OperationsPage(backend)
        self.plans = PlansPage(backend)
        self.snapshots = SnapshotsPage(backend)
        self.peers = PeersPage(backend)
        self.settings = SettingsPage(backend, autostart_command=autostart_command)
        #: The first-run assistant while it is open (one at a time).
        self.assistant: SetupAssistant | None = None
        self.plans.setupRequested.connect(self.open_assistant)
        self.pages: list[Page] = [
            self.overview,
            self.operations,
            self.plans,
            self.snapshots,
            self.peers,
            self.settings,
        ]

        self.sidebar = QListWidget()
        self.sidebar.setObjectName("sidebar")
        self.sidebar.setStyleSheet(SIDEBAR_STYLE)
        self.sidebar.setIconSize(QSize(18, 18))
        self.sidebar.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.stack = QStackedWidget()
        for page in self.pages:
            self.sidebar.addItem(QListWidgetItem(page.title))
            # A page larger than the window scrolls instead of growing the window off-screen.
            scroll = QScrollArea()
            scroll.setWidget(page)
            scroll.setWidgetResizable(True)
            scroll.setFrameShape(QFrame.Shape.NoFrame)
            scroll.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # not a stop for Tab
            self.stack.addWidget(scroll)
        # As wide as the longest page name needs (not a fixed 200 px: fonts and scales vary).
        self._sidebar_width = (
            # the items' own padding is in their size hint; 6 px of margin on either side
            max(self.sidebar.sizeHintForColumn(0), 100) + 2 * self.sidebar.frameWidth() + 14
        )
        self._item_height = self.sidebar.sizeHintForRow(0)
        self.sidebar.setFixedWidth(self._sidebar_width)
        self.sidebar.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.sidebar.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.sidebar.currentRowChanged.connect(self._page_changed)
        self.shortcuts: list[QShortcut] = []
        for i in range(len(self.pages)):
            self._shortcut(f"Ctrl+{i + 1}", lambda i=i: self.sidebar.setCurrentRow(i))
        for keys in ("Ctrl+Tab", "Ctrl+PgDown"):
            self._shortcut(keys, lambda: self.step_page(1))
        for keys in ("Ctrl+Shift+Tab", "Ctrl+Backtab", "Ctrl+PgUp"):
            self._shortcut(keys, lambda: self.step_page(-1))

        central = QWidget()
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 8, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.sidebar)
        layout.addWidget(self.stack, 1)
        self.setCentralWidget(central)

        self.connection = QLabel("")
        # A long reason must not widen the window: it is cut here and whole in the tooltip.
        self.connection.setMinimumWidth(1)
        self.statusBar().addPermanentWidget(self.connection)
        backend.connectionChanged.connect(self._connection_changed)
        self._connection_changed(backend.connected, "")
        self.sidebar.setCurrentRow(0)

    def _shortcut(self, keys: str, action: Any) -> None:
        sc = QShortcut(QKeySequence(keys), self)
        sc.setContext(Qt.ShortcutContext.WindowShortcut)
        sc.activated.connect(action)
        self.shortcuts.append(sc)

    def show_page(self, page: Page) -> None:
        self.sidebar.setCurrentRow(self.pages.index(page))

    def step_page(self, step: int) -> None:
        """The next (1) or previous (-1) page, wrapping around."""
        self.sidebar.setCurrentRow((self.sidebar.currentRow() + step) % len(self.pages))

    @property
    def current_page(self) -> Page:
        return self.pages[self.stack.currentIndex()]

    # -- size and place ------------------------------------------------------------------------

    def available(self) -> QRect:
        """The screen area a window may use (without panels), in logical pixels."""
        screen = self.screen() or QGuiApplication.primaryScreen()
        return screen.availableGeometry() if screen is not None else QRect(0, 0, 1024, 768)

    def fit_to_screen(self, geometry: QRect | None = None) -> None:
        """Place the window at ``geometry`` (or where it is), shrunk and moved onto the screen.

        Sizes here are of the frame-less client area; the window manager's frame is added
        around it, so a margin for it is kept free.
        """
        area = self.available()
        frame_w = max(0, self.frameGeometry().width() - self.geometry().width())
        frame_h = max(0, self.frameGeometry().height() - self.geometry().height())
        # Before the first show the frame is unknown: assume a usual title bar.
        frame_w = frame_w or 2
        frame_h = frame_h or 32
        want = QRect(geometry) if geometry is not None else QRect(self.geometry())
        w = max(self.minimumSizeHint().width(), min(want.width(), area.width() - frame_w))
        h = max(self.minimumSizeHint().height(), min(want.height(), area.height() - frame_h))
        w, h = min(w, area.width()), min(h, area.height())
        x = min(max(want.x(), area.left()), area.left() + area.width() - w - frame_w)
        y = min(max(want.y(), area.top()), area.top() + area.height() - h - frame_h)
        self.resize(w, h)
        if geometry is not None or self.isVisible():
            self.move(max(x, area.left()), max(y, area.top()))

    def restore_state(self, saved: dict[str, Any]) -> None:
        """Size, place and page as :meth:`saved_state` gave them (from the preferences)."""
        geo = saved.get("window")
        rect: QRect | None = None
        if isinstance(geo, list) and len(geo) == 4 and all(isinstance(v, int) for v in geo):
            rect = QRect(*geo)
        if rect is not None and rect.width() > 0 and rect.height() > 0:
            self.fit_to_screen(rect)
        else:
            self.fit_to_screen()
        page = saved.get("page")
        names = [p.title for p in self.pages]
        if isinstance(page, str) and page in names:
            self.sidebar.setCurrentRow(names.index(page))
        if saved.get("maximized") is True:
            self.setWindowState(self.windowState() | Qt.WindowState.WindowMaximized)

    def saved_state(self) -> dict[str, Any]:
        """What to remember: the normal (not maximized) geometry, maximized or not, the page."""
        maximized = self.isMaximized()
        geo = self.normalGeometry() if maximized else self.geometry()
        return {
            "window": [geo.x(), geo.y(), geo.width(), geo.height()],
            "maximized": maximized,
            "page": self.current_page.title,
        }

    def _page_changed(self, row: int) -> None:
        if row < 0:
            return
        self.stack.setCurrentIndex(row)
        self.pages[row].activate()

    def _connection_changed(self, ok: bool, why: str) -> None:
        self._connection_why = why
        if ok:
            where = "in this app" if self.backend.in_process else "attached"
            self.connection.setText(f"● node {self.backend.instance_id} ({where})")
            self.connection.setStyleSheet(f"color:{state_color('ok', self)};padding-right:8px;")
        else:
            self.connection.setText(f"● node not reachable: {why}" if why else "● connecting…")
            self.connection.setStyleSheet(f"color:{state_color('error', self)};padding-right:8px;")
        self.connection.setToolTip(self.connection.text())

    def resizeEvent(self, event: QResizeEvent) -> None:
        # A narrow window (a small screen at 200 %) gives the page the room: the sidebar
        # takes at most a quarter of the width, its longest names shortened with "…".
        width = min(self._sidebar_width, max(110, self.width() // 4))
        if width != self.sidebar.width():
            self.sidebar.setFixedWidth(width)
            # Items as wide as the sidebar, so a long name is elided, not scrolled.
            inner = width - 2 * self.sidebar.frameWidth() - 12
            for row in range(self.sidebar.count()):
                it = self.sidebar.item(row)
                it.setSizeHint(QSize(inner, self._item_height))
        super().resizeEvent(event)

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ApplicationPaletteChange:
            # The theme changed while running (light ↔ dark). Style sheets resolve palette(...)
            # and our mixed colours when they are set, so set them again from the new palette.
            self._restyle()
        return super().event(event)

    def _restyle(self) -> None:
        for widget in [self, *self.findChildren(QWidget)]:
            sheet = widget.styleSheet()
            if sheet:
                widget.setStyleSheet("")
                widget.setStyleSheet(sheet)
        for page in self.pages:
            if page.banner.level:
                page.banner.show_message(page.banner.text(), page.banner.level)
        self._connection_changed(self.backend.connected, self._connection_why)

    def remember(self) -> None:
        """Save size, place and page (best effort: an unwritable config loses only this)."""
        if not self.isVisible():
            return
        from peerstash.desktop import prefs

        try:
            prefs.save(self.saved_state())
        except OSError:
            pass

    def open_assistant(self) -> SetupAssistant:
        """Open "Set up a backup" (or bring up the one already open)."""
        if self.assistant is not None and self.assistant.isVisible():
            self.assistant.raise_()
            self.assistant.activateWindow()
            return self.assistant
        self.assistant = SetupAssistant(self.backend, self)
        self.assistant.setupDone.connect(lambda _plan: self.show_page(self.operations))
        self.assistant.open()
        return self.assistant

    def bring_up(self) -> None:
        self.show()
        self.setWindowState(self.windowState() & ~Qt.WindowState.WindowMinimized)
        self.raise_()
        self.activateWindow()

    def closeEvent(self, event: QCloseEvent) -> None:
        # With a tray the window only hides (the app lives on in the tray); without one,
        # the app decides (desktop/dialogs/closing.py): quit, keep running hidden, or ask first.
        self.remember()
        if self.has_tray:
            event.accept()
            return
        what = self.close_without_tray() if self.close_without_tray is not None else "quit"
        if what == "keep":
            event.ignore()
            return
        event.accept()
        if what == "quit":
            self.closedWithoutTray.emit()

    async def close_pages(self) -> None:
        if self.assistant is not None:
            await self.assistant.close_assistant()
        for page in self.pages:
            await page.close_page()
