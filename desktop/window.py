"""The main window: a sidebar of pages and a status line saying whether the node answers."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QStackedWidget,
    QWidget,
)

from peerstash.desktop.assistant import SetupAssistant
from peerstash.desktop.backend import Backend
from peerstash.desktop.icons import app_icon
from peerstash.desktop.page_operations import OperationsPage
from peerstash.desktop.page_overview import OverviewPage
from peerstash.desktop.page_peers import PeersPage
from peerstash.desktop.page_plans import PlansPage
from peerstash.desktop.page_settings import SettingsPage
from peerstash.desktop.page_snapshots import SnapshotsPage
from peerstash.desktop.widgets import Page

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
        self.resize(1040, 680)
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
        self.sidebar.setFixedWidth(200)
        self.sidebar.setIconSize(QSize(18, 18))
        self.sidebar.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.stack = QStackedWidget()
        for page in self.pages:
            self.sidebar.addItem(QListWidgetItem(page.title))
            self.stack.addWidget(page)
        self.sidebar.currentRowChanged.connect(self._page_changed)

        central = QWidget()
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 8, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.sidebar)
        layout.addWidget(self.stack, 1)
        self.setCentralWidget(central)

        self.connection = QLabel("")
        self.statusBar().addPermanentWidget(self.connection)
        backend.connectionChanged.connect(self._connection_changed)
        self._connection_changed(backend.connected, "")
        self.sidebar.setCurrentRow(0)

    def show_page(self, page: Page) -> None:
        self.sidebar.setCurrentRow(self.pages.index(page))

    def _page_changed(self, row: int) -> None:
        if row < 0:
            return
        self.stack.setCurrentIndex(row)
        self.pages[row].activate()

    def _connection_changed(self, ok: bool, why: str) -> None:
        if ok:
            where = "in this app" if self.backend.in_process else "attached"
            self.connection.setText(f"● node {self.backend.instance_id} ({where})")
            self.connection.setStyleSheet("color:#2e9d58;padding-right:8px;")
        else:
            self.connection.setText(f"● node not reachable: {why}" if why else "● connecting…")
            self.connection.setStyleSheet("color:#d64541;padding-right:8px;")

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
        # the app decides (desktop/closing.py): quit, keep running hidden, or ask first.
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
