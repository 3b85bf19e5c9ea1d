"""The tray app: the node (in this process, or the one already running) plus its window and tray.

One code path: whether the node runs inside this process or in another one, every view talks to
it through the admin socket (:class:`~peerstash.peer.api.client.AdminClient`). When a node already
answers on the data directory's socket, this process never starts a second node: if a window
already follows that node (a first tray app), the node is asked to bring it up
(``POST /v1/ui/present``) and this launch ends there; if none does (a ``peerstash --no-gui``),
this process attaches to the node and opens the window.

Lifecycle (see DESIGN.md, "qasync"): :func:`peerstash.desktop.platform.qloop.run` runs :meth:`DesktopApp.run`; Quit sets an
``asyncio.Event``, cleanup is awaited (the node stops its restic processes cleanly), and only
then does the coroutine return and the loop close. Nothing here calls ``exec()`` on a dialog.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

import shiboken6
from PySide6.QtWidgets import QApplication, QMessageBox

from peerstash.core.logformat import use_printable_log_lines
from peerstash.desktop import prefs
from peerstash.desktop.api import ApiError, node_answers
from peerstash.desktop.backend import Backend
from peerstash.desktop.dialogs import closing
from peerstash.desktop.icons import app_icon
from peerstash.desktop.platform import autostart, qtfix
from peerstash.desktop.tray import Tray
from peerstash.desktop.window import MainWindow
from peerstash.peer.api.client import AdminClient
from peerstash.peer.node import Node, NodeAlreadyRunning, NodeError, NodeOptions
from peerstash.peer.paths import default_data_dir, resolve_data_dir

log = logging.getLogger(__name__)

#: Set by the autostart entry: start in the tray without opening the window.
START_HIDDEN_ENV = "PEERSTASH_START_HIDDEN"


def node_process_has_gui(pid: object) -> bool:
    """Best effort (Linux): is the node of ``pid`` a tray app rather than ``--no-gui``?

    Used to avoid a second tray icon when a second tray app attaches to the first one's node.
    """
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"--no-gui" not in argv


class DesktopApp:
    def __init__(
        self,
        data_dir: Path,
        options: NodeOptions | None = None,
        *,
        show_window: bool = True,
        show_tray: bool | None = None,
        autostart_command: list[str] | None = None,
        first_run_assistant: bool = True,
    ) -> None:
        self.data_dir = data_dir
        self.options = options or NodeOptions()
        self.show_window = show_window
        self.show_tray = show_tray
        self.autostart_command = autostart_command
        #: Open "Set up a backup" by itself when the node has no repository and no plan.
        self.first_run_assistant = first_run_assistant
        self.node: Node | None = None
        self.client: AdminClient | None = None
        self.backend: Backend | None = None
        self.window: MainWindow | None = None
        self.tray: Tray | None = None
        self.quit_requested = asyncio.Event()
        self.started = asyncio.Event()
        #: Set when an open window of another process was brought up instead of starting.
        self.handed_over = False
        #: The open "Quit?" / "keep running?" question, if any (desktop/dialogs/closing.py).
        self.question: QMessageBox | None = None

    @property
    def in_process(self) -> bool:
        return self.node is not None

    async def start(self) -> None:
        if await node_answers(self.data_dir):
            if await self._present_other_window():
                self.handed_over = True
                self.started.set()
                return
            log.info("a node already runs for %s; attaching to it", self.data_dir)
        else:
            node = Node(self.data_dir, self.options)
            try:
                await node.start()
            except NodeAlreadyRunning:
                # Another process won the race between our check and our start: attach.
                log.info("a node started for %s meanwhile; attaching to it", self.data_dir)
            else:
                self.node = node
        self.client = AdminClient(self.data_dir)
        await self.client.__aenter__()
        self.backend = backend = Backend(self.client, in_process=self.in_process)
        await backend.start()

        show_tray = self.show_tray
        if (
            show_tray is None
            and not self.in_process
            and node_process_has_gui(backend.status.pid if backend.status else None)
        ):
            log.info("the node belongs to another Peerstash window; not adding a second tray icon")
            show_tray = False
        self.window = MainWindow(backend, autostart_command=self.autostart_command)
        self.tray = Tray(backend, show_icon=show_tray)
        self.tray.notifications_enabled = bool(prefs.load()["notifications"])
        self.window.settings.notificationsToggled.connect(self._set_notifications)
        self.window.has_tray = self.tray.icon is not None
        self.tray.openRequested.connect(self.window.bring_up)
        backend.presentRequested.connect(self.window.bring_up)
        self.tray.quitRequested.connect(self.request_quit)
        self.window.close_without_tray = self._close_without_tray
        self.window.closedWithoutTray.connect(self.quit)
        self.tray.openPeersRequested.connect(self.show_peers)
        self.tray.setupRequested.connect(self.open_assistant)
        self.window.restore_state(prefs.load())
        if self.show_window or self.tray.icon is None:
            self.window.bring_up()
        if self.first_run_assistant:
            self.open_assistant_if_new()
        self.started.set()

    async def _present_other_window(self) -> bool:
        """Ask the running node to bring up a window that already follows it."""
        async with AdminClient(self.data_dir) as client:
            try:
                answer = await client.call("POST", "/v1/ui/present")
            except ApiError as exc:  # an older node, or it just stopped: open our own
                log.info("could not ask for the open window (%s); opening one here", exc)
                return False
        windows = int(answer.get("windows") or 0) if isinstance(answer, dict) else 0
        if windows:
            log.info("Peerstash is already open for %s; brought its window up", self.data_dir)
        return windows > 0

    def _set_notifications(self, on: bool) -> None:
        if self.tray is not None:
            self.tray.notifications_enabled = on

    def open_assistant_if_new(self) -> bool:
        """Open "Set up a backup" when the node has no repository and no plan (a first start)."""
        backend = self.backend
        if backend is None or backend.repos or backend.plans:
            return False
        log.info("no repository and no plan yet: opening the first-run assistant")
        self.open_assistant()
        return True

    def open_assistant(self) -> None:
        if self.window is not None:
            self.window.bring_up()
            self.window.open_assistant()

    def show_peers(self) -> None:
        if self.window is not None:
            self.window.bring_up()
            self.window.show_page(self.window.peers)

    def request_quit(self) -> None:
        """Quit as a person asks for it: say first that scheduled backups stop, if they do.

        They stop only when the node runs in this process; a node of its own (``--no-gui``, a
        service) keeps running and nothing is asked. "Don't ask again" is remembered.
        """
        if not self.in_process or not prefs.load()["ask_before_quit"]:
            self.quit()
            return
        self._ask(closing.ask_quit(self._question_parent(), self._quit_confirmed))

    def _quit_confirmed(self, dont_ask_again: bool) -> None:
        if dont_ask_again:
            prefs.save({"ask_before_quit": False})
        self.quit()

    def _close_without_tray(self) -> str:
        """The window was closed and no tray can bring it back: "quit", "hide" or "keep".

        With the node in another process the backups do not depend on us: the window quits.
        Otherwise the remembered answer applies, or the question is asked (desktop/dialogs/closing.py).
        """
        if not self.in_process:
            return "quit"
        choice = prefs.load()["close_without_tray"]
        if choice == closing.CLOSE_QUIT:
            return "quit"
        if choice == closing.CLOSE_BACKGROUND:
            self._running_in_background()
            return "hide"
        if self.question is None or not self.question.isVisible():
            self._ask(
                closing.ask_close_without_tray(
                    self.window,
                    self._close_chosen,
                    offer_autostart=not autostart.is_enabled(),
                )
            )
        return "keep"

    def _close_chosen(self, choice: str, remember: bool, start_at_login: bool) -> None:
        if remember:
            prefs.save({"close_without_tray": choice})
        if start_at_login and self.window is not None:
            try:  # the command the Settings page writes too (this data directory, hidden)
                autostart.enable(self.window.settings.autostart_command)
            except OSError as exc:
                log.warning("could not turn on start at login: %s", exc)
        if choice == closing.CLOSE_QUIT:
            self.quit()  # the question already said that scheduled backups stop
        elif self.window is not None:
            self.window.hide()
            self._running_in_background()

    def _running_in_background(self) -> None:
        log.info("window closed without a tray: Peerstash keeps running in the background")
        if self.tray is not None:
            self.tray.notify(
                "Peerstash keeps running in the background",
                "Scheduled backups go on. Start Peerstash again to open its window.",
                key="background",
            )

    def _question_parent(self) -> MainWindow | None:
        return self.window if self.window is not None and self.window.isVisible() else None

    def _ask(self, box: QMessageBox) -> None:
        self._drop_question()
        self.question = box

    def _drop_question(self) -> None:
        """Take an open question away without answering it (Quit or a new question)."""
        if self.question is not None and shiboken6.isValid(self.question):
            self.question.hide()
            self.question.deleteLater()
        self.question = None

    def quit(self) -> None:
        self.quit_requested.set()

    async def stop(self) -> None:
        """Tear down in reverse order; the node last, so views never see it vanish mid-call.

        The window and the tray icon go away first: stopping an in-process node can take a
        few seconds (restic is asked to stop and remove its lock), and Quit must feel instant.
        """
        self._drop_question()
        if self.window is not None and shiboken6.isValid(self.window):
            self.window.remember()
            self.window.has_tray = True  # hiding now must not emit "quit" again
            self.window.hide()
        if self.tray is not None:
            await self.tray.close()
        if self.window is not None and shiboken6.isValid(self.window):
            await self.window.close_pages()
        if self.backend is not None:
            await self.backend.close()
        if self.client is not None:
            await self.client.__aexit__(None, None, None)
            self.client = None
        if self.node is not None:
            await self.node.stop()
            self.node = None
        if self.window is not None:
            if shiboken6.isValid(self.window):
                self.window.deleteLater()
            self.window = None

    async def run(self) -> None:
        try:
            await self.start()
            if not self.handed_over:
                await self.quit_requested.wait()
        finally:
            await self.stop()


def _install_signal_handlers(app: DesktopApp) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, app.quit)
        except (NotImplementedError, RuntimeError, ValueError):
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(app.quit))


def run_gui(args: argparse.Namespace) -> int:
    """``peerstash`` with a display: the tray app until Quit. Returns the exit code."""
    from peerstash.desktop.platform import qloop
    from peerstash.peer.daemon import node_options

    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "verbose", False):  # as the daemon: no migration chatter on start
        logging.getLogger("alembic").setLevel(logging.WARNING)
    use_printable_log_lines()
    data_dir = resolve_data_dir(args.data_dir)
    qapp = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "peerstash"])
    assert isinstance(qapp, QApplication)
    qtfix.apply()
    qapp.setApplicationName("Peerstash")
    qapp.setApplicationDisplayName("Peerstash")
    qapp.setDesktopFileName("peerstash")
    qapp.setWindowIcon(app_icon())
    qapp.setQuitOnLastWindowClosed(False)
    desktop = DesktopApp(
        data_dir,
        node_options(args),
        show_window=os.environ.get(START_HIDDEN_ENV) != "1",
        autostart_command=autostart.default_command(
            data_dir, default_data_dir(), autostart.node_args(args)
        ),
    )

    async def main() -> None:
        _install_signal_handlers(desktop)
        await desktop.run()

    try:
        qloop.run(main(), qapp)
    except NodeError as exc:
        print(f"peerstash: {exc}", file=sys.stderr)
        if qapp.platformName() not in ("offscreen", "minimal"):
            # Started from a menu, nobody reads stderr. The asyncio loop has ended, so a
            # modal box (its own short event loop) nests in nothing here.
            from PySide6.QtWidgets import QMessageBox

            QMessageBox.critical(None, "Peerstash cannot start", str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        with contextlib.suppress(Exception):
            qapp.processEvents()
    if desktop.handed_over:
        print("peerstash: already open; brought its window to the front", file=sys.stderr)
    return 0
