"""Settings: what this node is (read-only for now) and whether Peerstash starts at login."""

from __future__ import annotations

from PySide6.QtWidgets import QCheckBox, QFormLayout, QLabel, QWidget

from peerstash.desktop import autostart
from peerstash.desktop.backend import Backend
from peerstash.desktop.widgets import Page


class SettingsPage(Page):
    title = "Settings"

    def __init__(
        self,
        backend: Backend,
        parent: QWidget | None = None,
        *,
        autostart_command: list[str] | None = None,
    ) -> None:
        super().__init__(backend, parent)
        self.autostart_command = autostart_command or autostart.default_command()
        form = QFormLayout()
        self.fields: dict[str, QLabel] = {}
        for key, label in (
            ("instance_id", "Instance"),
            ("version", "Peerstash version"),
            ("data_dir", "Data directory"),
            ("admin_socket", "Admin socket"),
            ("key_id", "Key id (compare it when pairing)"),
            ("peer_url", "Peer address"),
            ("mode", "Node"),
        ):
            value = QLabel("…")
            value.setTextInteractionFlags(
                value.textInteractionFlags() | value.textInteractionFlags().TextSelectableByMouse
            )
            self.fields[key] = value
            form.addRow(label, value)
        self.outer.addLayout(form)
        self.start_at_login = QCheckBox("Start Peerstash when I log in")
        self.start_at_login.setChecked(autostart.is_enabled())
        self.start_at_login.toggled.connect(self._toggle_autostart)
        self.outer.addWidget(self.start_at_login)
        self.autostart_note = QLabel("")
        self.autostart_note.setStyleSheet("color:palette(placeholder-text);")
        self.outer.addWidget(self.autostart_note)
        note = QLabel(
            "Instance name, peer port, discovery, notifications and the restic path will be "
            "editable here once the node's settings API exists; today they are set on the "
            "command line (see `peerstash --help`)."
        )
        note.setWordWrap(True)
        note.setStyleSheet("color:palette(placeholder-text);")
        self.outer.addWidget(note)
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
                    else f"attached to the node of process {st.get('pid', '?')} (it keeps running when you quit)"
                )
            else:
                value = st.get(key)
                text = "—" if value in (None, "") else str(value)
            label.setText(text)

    def activate(self) -> None:
        self.start_at_login.blockSignals(True)
        self.start_at_login.setChecked(autostart.is_enabled())
        self.start_at_login.blockSignals(False)

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
