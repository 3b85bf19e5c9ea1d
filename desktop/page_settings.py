"""Settings: what this node is, the node's own settings, and this desktop's preferences.

Node settings (LAN discovery and its interfaces, the restic binary) go through the admin API's
``/v1/settings`` and apply when the node starts next; a node without that endpoint shows them
read-only. Start at login (an XDG autostart entry) and notifications belong to this desktop.
The instance name and the peer port are fixed at the node's first start / on its command line.
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

from peerstash.desktop import autostart, prefs
from peerstash.desktop.api import ApiError, Unavailable
from peerstash.desktop.backend import Backend
from peerstash.desktop.widgets import Page, button_row


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
        self.fields: dict[str, QLabel] = {}
        for key, label in (
            ("instance_id", "Instance"),
            ("version", "Peerstash version"),
            ("data_dir", "Data directory"),
            ("admin_socket", "Admin socket"),
            ("key_id", "Key id"),
            ("peer_url", "Peer address"),
            ("mode", "Node"),
        ):
            value = QLabel("…")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.fields[key] = value
            form.addRow(label, value)
        self.outer.addWidget(about)

        node = QGroupBox("Node settings")
        nl = QVBoxLayout(node)
        nform = QFormLayout()
        self.discovery = QCheckBox("Announce this machine and look for others on the local network")
        self.interfaces = QLineEdit()
        self.interfaces.setPlaceholderText("all interfaces (or e.g. 192.168.1.20, eth0)")
        self.restic_path = QLineEdit()
        self.restic_path.setPlaceholderText("restic from PATH")
        nform.addRow("LAN discovery", self.discovery)
        nform.addRow("Only on", self.interfaces)
        nform.addRow("restic binary", self.restic_path)
        nl.addLayout(nform)
        self.save_button = QPushButton("Save node settings")
        self.save_button.clicked.connect(self._save_node_settings)
        self.node_note = QLabel("Changes apply when the node starts next.")
        self.node_note.setStyleSheet("color:palette(placeholder-text);")
        nl.addLayout(button_row(self.save_button))
        nl.addWidget(self.node_note)
        self.outer.addWidget(node)
        self._node_settings: dict[str, Any] | None = None

        desk = QGroupBox("This desktop")
        dl = QVBoxLayout(desk)
        self.start_at_login = QCheckBox("Start Peerstash when I log in (in the tray)")
        self.start_at_login.setChecked(autostart.is_enabled())
        self.start_at_login.toggled.connect(self._toggle_autostart)
        self.notifications = QCheckBox("Show desktop notifications for failed and stale backups")
        self.notifications.setChecked(bool(prefs.load()["notifications"]))
        self.notifications.toggled.connect(self._toggle_notifications)
        self.autostart_note = QLabel("")
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
        for key, label in self.fields.items():
            if key == "mode":
                text = (
                    "runs inside this app (it stops when you quit)"
                    if self.backend.in_process
                    else f"attached to the node of process {st.get('pid', '?')} "
                    "(it keeps running when you quit)"
                )
            else:
                value = st.get(key)
                text = "—" if value in (None, "") else str(value)
            label.setText(text)

    def activate(self) -> None:
        self.start_at_login.blockSignals(True)
        self.start_at_login.setChecked(autostart.is_enabled())
        self.start_at_login.blockSignals(False)
        self.run(self.load_node_settings(), name="settings:load")

    async def load_node_settings(self) -> None:
        try:
            data = await self.backend.call("GET", "/v1/settings")
        except Unavailable:
            self._node_settings = None
            for w in (self.discovery, self.interfaces, self.restic_path, self.save_button):
                w.setEnabled(False)
            self.node_note.setText("This version of the node has no settings API.")
            return
        self._node_settings = dict(data)
        self.discovery.setChecked(data.get("discovery") is not False)
        self.interfaces.setText(", ".join(data.get("discovery_interfaces") or []))
        self.restic_path.setText(str(data.get("restic_path") or ""))

    def _save_node_settings(self) -> None:
        self.run(self.save_node_settings(), name="settings:save")

    async def save_node_settings(self) -> None:
        current = self._node_settings or {}
        wanted: dict[str, Any] = {
            "discovery": self.discovery.isChecked(),
            "discovery_interfaces": [
                p.strip() for p in self.interfaces.text().split(",") if p.strip()
            ]
            or None,
            "restic_path": self.restic_path.text().strip() or None,
        }
        changed = {k: v for k, v in wanted.items() if current.get(k) != v}
        if "discovery" in changed and current.get("discovery") is None and changed["discovery"]:
            changed.pop("discovery")  # unset means on: nothing to store
        try:
            for key, value in changed.items():
                self._node_settings = await self.backend.call(
                    "POST", "/v1/settings", {"key": key, "value": value}
                )
        except ApiError as exc:
            self.banner.show_message(f"The node refused the setting: {exc}", "error")
            return
        self.banner.show_message(
            "Saved; the node uses these settings from its next start."
            if changed
            else "Nothing changed.",
            "ok",
        )

    def _toggle_autostart(self, on: bool) -> None:
        try:
            if on:
                path = autostart.enable(self.autostart_command)
                self.autostart_note.setText(f"Wrote {path}.")
            else:
                autostart.disable()
                self.autostart_note.setText("Removed the autostart entry.")
        except OSError as exc:
            self.banner.show_message(f"Could not change the autostart entry: {exc}", "error")

    def _toggle_notifications(self, on: bool) -> None:
        try:
            prefs.save({"notifications": on})
        except OSError as exc:
            self.banner.show_message(f"Could not save the preference: {exc}", "error")
        self.notificationsToggled.emit(on)
