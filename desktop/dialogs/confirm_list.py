"""Ask before a destructive action, showing exactly what it will touch.

"Apply retention now" lists the snapshots the node's dry run would remove; a restore over
existing files lists the files it would overwrite. The rows come from the node (the admin API
computed them); this dialog only shows them and reports the person's answer. It opens with
``open()`` (no nested event loop) and Cancel is the default button.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPushButton,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from peerstash.core.text import printable
from peerstash.desktop.widgets import item, make_table


class ListConfirmDialog(QDialog):
    """A question, a table of what is affected, and two buttons: ``yes`` (destructive) and
    Cancel. ``on_yes`` runs only when ``yes`` was clicked."""

    def __init__(
        self,
        parent: QWidget | None,
        title: str,
        text: str,
        headers: Sequence[str],
        rows: Sequence[Sequence[str]],
        yes: str,
        on_yes: Callable[[], None],
        *,
        footer: str = "",
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        layout = QVBoxLayout(self)
        self.text = QLabel(text)
        self.text.setWordWrap(True)
        layout.addWidget(self.text)
        self.table: QTableWidget = make_table(headers)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, cell in enumerate(row):
                # Paths and names may come from a peer or a file system: shown inert.
                self.table.setItem(r, c, item(printable(cell)))
        self.table.setVisible(bool(rows))
        layout.addWidget(self.table, 1)
        self.footer = QLabel(footer)
        self.footer.setWordWrap(True)
        self.footer.setVisible(bool(footer))
        layout.addWidget(self.footer)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.yes_button: QPushButton = self.buttons.addButton(
            yes, QDialogButtonBox.ButtonRole.DestructiveRole
        )
        self.cancel_button = self.buttons.button(QDialogButtonBox.StandardButton.Cancel)
        self.cancel_button.setDefault(True)
        self.cancel_button.setFocus()
        self.yes_button.clicked.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self.accepted.connect(on_yes)
        self.resize(640, 380)

    def rows(self) -> list[list[str]]:
        """What the table shows (for tests and screen readers alike)."""
        out: list[list[str]] = []
        for r in range(self.table.rowCount()):
            cells = (self.table.item(r, c) for c in range(self.table.columnCount()))
            out.append([cell.text() if cell is not None else "" for cell in cells])
        return out
