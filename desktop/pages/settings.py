"""Settings: what this node is, the node's own settings, and this desktop's preferences.

Node settings (the name shown to other machines, the peer port, LAN discovery and its
interfaces, the restic binary) go through the admin API's ``/v1/settings`` and take effect when
the node next restarts, except the name, which the node applies at once (its peers learn it
over their links); the node checks each value and its refusal is shown under the field. An
empty field puts the node's default back. A node without that endpoint shows them read-only.
Start at login (an XDG autostart entry) and notifications belong to this desktop.

"This node" shows what the running node really uses, from its status (the peer port it is
bound to, whether discovery runs), which may differ from the settings until it restarts or when
it was started with ``--listen`` or ``--no-discovery``; start at login starts it with those
same options (:func:`peerstash.desktop.platform.autostart.node_args`).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from peerstash.desktop import prefs
from peerstash.desktop.api import ApiError
from peerstash.desktop.backend import Backend
from peerstash.desktop.platform import autostart
from peerstash.desktop.widgets import FieldError, Page, WrappingLabel, button_row
from peerstash.peer.api import schema

#: The peer port's address when the setting is unset (peer/node.py DEFAULT_LISTEN).
DEFAULT_LISTEN = "0.0.0.0:9797"
RESTART_NOTE = "Takes effect when the node next restarts."


class SettingsPage(Page):
    title = "Settings"
    #: Desktop notifications were switched on or off.
    notificationsToggled = Signal(bool)

    def __init__(
        self,
        backend: Backend,
        parent: QWidget | None = None,
        *,
        autostart_command: list[str] | None = None,
    ) -> None:
        super().__init__(backend, parent)
        self.autostart_command = autostart_command or autostart.default_command()

        about = QGroupBox("This node")
        form = QFormLayout(about)
        self.fields: dict[str, WrappingLabel] = {}
        for key, label in (
            ("instance_id", "Instance"),
            ("version", "Peerstash version"),
            ("data_dir", "Data directory"),
            ("admin_socket", "Admin socket"),
            ("key_id", "Key id"),
            ("peer_url", "Peer address"),
            ("listen", "Peer port in use"),
            ("discovery", "LAN discovery now"),
            ("mode", "Node"),
        ):
            # Long paths wrap instead of widening the page past a small screen.
            value = WrappingLabel("…")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.fields[key] = value
            form.addRow(label, value)
        self.outer.addWidget(about)

        node = QGroupBox("Node settings")
        nl = QVBoxLayout(node)
        nform = QFormLayout()
        self.display_name = QLineEdit()
        self.display_name.setPlaceholderText("the instance name")
        self.display_name.setToolTip(
            "The name your other machines show for this one; they learn a new one at once. "
            "The instance id, which keeps this machine's history apart, never changes."
        )
        self.listen = QLineEdit()
        self.listen.setPlaceholderText(f"{DEFAULT_LISTEN} (HOST:PORT)")
        self.discovery = QCheckBox("Find and announce machines on the LAN")
        self.interfaces = QLineEdit()
        self.interfaces.setPlaceholderText("all interfaces (or e.g. 192.168.1.20, eth0)")
        self.restic_path = QLineEdit()
        self.restic_path.setPlaceholderText("restic from PATH")
        #: The inline error under each node setting, by its key in ``/v1/settings``.
        self.errors: dict[str, FieldError] = {}
        for key, label, widget in (
            ("display_name", "Name on the network", self.display_name),
            ("listen", "Peer port", self.listen),
            ("discovery", "LAN discovery", self.discovery),
            ("discovery_interfaces", "Only on", self.interfaces),
            ("restic_path", "restic binary", self.restic_path),
        ):
            box = QWidget()
            v = QVBoxLayout(box)
            v.setContentsMargins(0, 0, 0, 0)
            v.setSpacing(2)
            v.addWidget(widget)
            self.errors[key] = FieldError()
            v.addWidget(self.errors[key])
            nform.addRow(label, box)
        nl.addLayout(nform)
        self.save_button = QPushButton("Save")
        self.save_button.clicked.connect(self._save_node_settings)
        self.node_note = QLabel(RESTART_NOTE + " Leave a field empty for the default.")
        self.node_note.setStyleSheet("color:palette(placeholder-text);")
        self.node_note.setWordWrap(True)
        nl.addLayout(button_row(self.save_button))
        nl.addWidget(self.node_note)
        self.outer.addWidget(node)
        self._node_settings: dict[str, Any] | None = None

        desk = QGroupBox("This desktop")
        dl = QVBoxLayout(desk)
        self.start_at_login = QCheckBox("Start Peerstash when I log in (in the tray)")
        self.start_at_login.setChecked(autostart.is_enabled())
        self.start_at_login.toggled.connect(self._toggle_autostart)
        self.notifications = QCheckBox("Notify me of failed and stale backups")
        self.notifications.setChecked(bool(prefs.load()["notifications"]))
        self.notifications.toggled.connect(self._toggle_notifications)
        self.autostart_note = WrappingLabel("")
        self.autostart_note.hide()  # until there is something to say
        self.autostart_note.setStyleSheet("color:palette(placeholder-text);")
        dl.addWidget(self.start_at_login)
        dl.addWidget(self.autostart_note)
        dl.addWidget(self.notifications)
        self.outer.addWidget(desk)
        self.outer.addStretch(1)
        backend.statusChanged.connect(lambda _st: self._show())
        self._show()

    def _show(self) -> None:
        st = self.backend.status
        if st is None:
            return  # "…" until the node answered
        for key, label in self.fields.items():
            if key == "mode":
                text = (
                    "runs inside this app (it stops when you quit)"
                    if self.backend.in_process
                    else f"attached to the node of process {st.pid} "
                    "(it keeps running when you quit)"
                )
            elif key == "listen":
                # What the running node is bound to (its status), not the settings file: a
                # --listen option or a change that waits for a restart make them differ.
                text = st.listen or "off: this node has no peer port"
            elif key == "discovery":
                text = "on: announcing this machine on the local network" if st.discovery else "off"
            else:
                value = getattr(st, key)
                text = "—" if value in (None, "") else str(value)
            label.setText(text)

    def activate(self) -> None:
        self.start_at_login.blockSignals(True)
        self.start_at_login.setChecked(autostart.is_enabled())
        self.start_at_login.blockSignals(False)
        self.run(self.load_node_settings(), name="settings:load")

    async def load_node_settings(self) -> None:
        data = await self.backend.call("GET", "/v1/settings")
        self._fill_node_settings(dict(data))  # the node's settings: not a record, a dict

    def _fill_node_settings(self, data: dict[str, Any]) -> None:
        self._node_settings = data
        self.display_name.setPlaceholderText(str(data.get("instance_id") or "the instance name"))
        self.display_name.setText(str(data.get("display_name") or ""))
        self.listen.setText(str(data.get("listen") or ""))
        self.discovery.setChecked(data.get("discovery") is not False)
        self.interfaces.setText(", ".join(data.get("discovery_interfaces") or []))
        self.restic_path.setText(str(data.get("restic_path") or ""))
        for err in self.errors.values():
            err.set_error("")

    def wanted_settings(self) -> dict[str, Any]:
        """What the form asks for, as ``/v1/settings`` values (None = the node's default)."""
        return {
            "display_name": self.display_name.text().strip() or None,
            "listen": self.listen.text().strip() or None,
            "discovery": self.discovery.isChecked(),
            "discovery_interfaces": [
                p.strip() for p in self.interfaces.text().split(",") if p.strip()
            ]
            or None,
            "restic_path": self.restic_path.text().strip() or None,
        }

    def _save_node_settings(self) -> None:
        self.save_button.setEnabled(False)
        self.run(self.save_node_settings(), name="settings:save")

    async def save_node_settings(self) -> None:
        """Send each changed setting; the node's refusal of one is shown under its field."""
        current = self._node_settings or {}
        changed = {k: v for k, v in self.wanted_settings().items() if current.get(k) != v}
        if "discovery" in changed and current.get("discovery") is None and changed["discovery"]:
            changed.pop("discovery")  # unset means on: nothing to store
        refused: dict[str, str] = {}
        try:
            for key, value in changed.items():
                try:
                    current = await self.backend.call(
                        "POST", "/v1/settings", schema.Setting(key=key, value=value)
                    )
                except ApiError as exc:
                    if exc.status is None:  # the node is not reachable: nothing more to try
                        raise
                    text = str(exc)
                    refused[key] = text[:1].upper() + text[1:] + "."
        finally:
            self.save_button.setEnabled(True)
        self._node_settings = dict(current)
        for key, err in self.errors.items():
            err.set_error(refused.get(key, ""))
        if refused:
            saved = len(changed) - len(refused)
            self.banner.show_message(
                "The node refused the settings marked in red"
                + (f"; the other {saved} were saved." if saved else "; nothing was saved."),
                "error",
            )
        elif set(changed) == {"display_name"}:
            self.banner.show_message("Saved. Your other machines show the new name now.", "ok")
        elif changed:
            self.banner.show_message(f"Saved. {RESTART_NOTE}", "ok")
        else:
            self.banner.show_message("Nothing changed.", "ok")

    def _toggle_autostart(self, on: bool) -> None:
        try:
            if on:
                path = autostart.enable(self.autostart_command)
                self.autostart_note.setText(
                    f"Wrote {path}: it starts {' '.join(self.autostart_command)}"
                )
            else:
                autostart.disable()
                self.autostart_note.setText("Removed the autostart entry.")
            self.autostart_note.show()
        except OSError as exc:
            self.banner.show_message(f"Could not change the autostart entry: {exc}", "error")

    def _toggle_notifications(self, on: bool) -> None:
        try:
            prefs.save({"notifications": on})
        except OSError as exc:
            self.banner.show_message(f"Could not save the preference: {exc}", "error")
        self.notificationsToggled.emit(on)
