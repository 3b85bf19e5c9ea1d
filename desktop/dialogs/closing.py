"""What closing the window and quitting mean, asked without a nested event loop.

Scheduled backups run in the node. When the node runs inside this app (``DesktopApp.in_process``)
quitting the app stops them until Peerstash runs again, so Quit says so first (with "don't ask
again"). When the node runs in its own process (``peerstash --no-gui``, a systemd service)
quitting only closes the window and nothing is asked.

Without a tray (stock GNOME) closing the window would otherwise be the only way out, and a
person closing a window does not expect backups to stop. Peerstash asks once what closing
means: keep running in the background (the default; launching Peerstash again brings the
window back, and it offers to start at login too) or quit. "Don't ask again" remembers the
answer in the desktop preferences (desktop/prefs.py).
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtWidgets import QCheckBox, QMessageBox, QWidget

#: What a closed window means without a tray (the ``close_without_tray`` preference).
CLOSE_ASK, CLOSE_BACKGROUND, CLOSE_QUIT = "ask", "background", "quit"

QUIT_TEXT = (
    "Scheduled backups stop while Peerstash is closed: they run again when you start "
    "Peerstash. To keep them running, leave Peerstash open, turn on Settings → Start at "
    "login, or run the node as a service (peerstash service install)."
)
CLOSE_TEXT = (
    "This desktop has no tray, so Peerstash cannot stay there after the window closes.\n\n"
    "Keep running in the background: scheduled backups go on and failures still show as "
    "notifications; start Peerstash again from your applications menu to bring this window "
    "back.\n\nQuit: scheduled backups stop until Peerstash runs again."
)


def ask_quit(parent: QWidget | None, on_quit: Callable[[bool], None]) -> QMessageBox:
    """ "Quit Peerstash?" with the warning; ``on_quit(dont_ask_again)`` runs on Quit."""
    box = QMessageBox(
        QMessageBox.Icon.Warning,
        "Quit Peerstash?",
        "Quit Peerstash?",
        QMessageBox.StandardButton.Cancel,
        parent,
    )
    box.setObjectName("quitWarning")
    box.setInformativeText(QUIT_TEXT)
    quit_button = box.addButton("Quit", QMessageBox.ButtonRole.DestructiveRole)
    quit_button.setObjectName("quit")
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    dont_ask = QCheckBox("Don't ask again")
    box.setCheckBox(dont_ask)

    def done() -> None:
        if box.clickedButton() is quit_button:
            on_quit(dont_ask.isChecked())

    box.finished.connect(done)
    box.open()
    return box


def ask_close_without_tray(
    parent: QWidget | None,
    on_choice: Callable[[str, bool, bool], None],
    *,
    offer_autostart: bool,
) -> QMessageBox:
    """Ask what closing the window means; ``on_choice(choice, remember, start_at_login)``.

    ``choice`` is :data:`CLOSE_BACKGROUND` or :data:`CLOSE_QUIT`; Cancel (or Escape) keeps
    the window open and calls nothing.
    """
    box = QMessageBox(
        QMessageBox.Icon.Question,
        "Keep Peerstash running?",
        "Keep backing up in the background?",
        QMessageBox.StandardButton.Cancel,
        parent,
    )
    box.setObjectName("closeWithoutTray")
    box.setInformativeText(CLOSE_TEXT)
    keep = box.addButton("Keep running in the background", QMessageBox.ButtonRole.AcceptRole)
    keep.setObjectName("background")
    keep_login = None
    if offer_autostart:
        keep_login = box.addButton(
            "Keep running, and start at login", QMessageBox.ButtonRole.AcceptRole
        )
        keep_login.setObjectName("backgroundAndLogin")
    quit_button = box.addButton("Quit", QMessageBox.ButtonRole.DestructiveRole)
    quit_button.setObjectName("quit")
    box.setDefaultButton(keep)
    box.setEscapeButton(QMessageBox.StandardButton.Cancel)
    remember = QCheckBox("Don't ask again")
    box.setCheckBox(remember)

    def done() -> None:
        clicked = box.clickedButton()
        if clicked is keep:
            on_choice(CLOSE_BACKGROUND, remember.isChecked(), False)
        elif keep_login is not None and clicked is keep_login:
            on_choice(CLOSE_BACKGROUND, remember.isChecked(), True)
        elif clicked is quit_button:
            on_choice(CLOSE_QUIT, remember.isChecked(), False)

    box.finished.connect(done)
    box.open()
    return box
