"""Peers: discovered machines, known hosts, authorized clients, pairing tokens.

Everything goes through :class:`~peerstash.desktop.api.PeersApi`. The node does not serve the
pairing endpoints yet; then the page says so calmly (one sentence, no error colours) and hides
its controls. When the endpoints land, the tables fill from the same calls without changes here
beyond column tuning.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import (
    QApplication,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from peerstash.desktop.api import ApiError, Unavailable
from peerstash.desktop.backend import Backend
from peerstash.desktop.widgets import Page, item, make_table

UNAVAILABLE_TEXT = (
    "Pairing with other machines is not available in this version of the Peerstash node.\n\n"
    "When it is, this page lists the machines found on your network, the hosts this one backs "
    "up with, and the clients allowed to reach it, and lets you create a pairing token or pair "
    "with one."
)


class PeersPage(Page):
    title = "Peers"

    def __init__(self, backend: Backend, parent: QWidget | None = None) -> None:
        super().__init__(backend, parent)
        self.available: bool | None = None
        self.placeholder = QLabel(UNAVAILABLE_TEXT)
        self.placeholder.setWordWrap(True)
        self.placeholder.setStyleSheet(
            "QLabel{color:palette(placeholder-text);font-size:11pt;padding:24px;"
            "border:1px dashed palette(mid);border-radius:8px;}"
        )
        self.placeholder.hide()
        self.outer.addWidget(self.placeholder)

        self.content = QWidget()
        cl = QVBoxLayout(self.content)
        cl.setContentsMargins(0, 0, 0, 0)
        known = QGroupBox("Paired machines")
        kl = QVBoxLayout(known)
        self.peers = make_table(("Machine", "State", "Key", "Grants", "Address"), stretch=3)
        kl.addWidget(self.peers)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self._remove)
        kl.addWidget(self.remove_button)
        cl.addWidget(known, 2)

        disc = QGroupBox("Found on this network")
        dl = QVBoxLayout(disc)
        self.discovered = make_table(("Machine", "Key", "Address"), stretch=2)
        dl.addWidget(self.discovered)
        cl.addWidget(disc, 1)

        pair = QGroupBox("Pair")
        pl = QHBoxLayout(pair)
        self.token_in = QLineEdit()
        self.token_in.setPlaceholderText("paste a pairing token: keyid:secret#instance")
        self.pair_button = QPushButton("Pair with token")
        self.pair_button.clicked.connect(self._pair)
        self.create_button = QPushButton("Create token…")
        self.create_button.clicked.connect(self._create_token)
        pl.addWidget(self.token_in, 1)
        pl.addWidget(self.pair_button)
        pl.addWidget(self.create_button)
        cl.addWidget(pair)
        self.token_out = QLineEdit()
        self.token_out.setReadOnly(True)
        self.token_out.hide()
        cl.addWidget(self.token_out)
        self.content.hide()
        self.outer.addWidget(self.content, 1)
        self.outer.addStretch(0)

    def activate(self) -> None:
        self.run(self.refresh(), name="peers:refresh")

    async def refresh(self) -> None:
        try:
            peers = await self.backend.peers.peers()
        except Unavailable:
            self._set_available(False)
            return
        self._set_available(True)
        self._fill_peers(peers)
        try:
            found = await self.backend.peers.discovered()
        except ApiError:
            found = []
        self.discovered.setRowCount(len(found))
        for r, d in enumerate(found):
            self.discovered.setItem(r, 0, item(str(d.get("instance_id") or d.get("id") or "?"), d))
            self.discovered.setItem(r, 1, item(str(d.get("key_id") or d.get("fp") or "")))
            self.discovered.setItem(r, 2, item(str(d.get("address") or "")))

    def _set_available(self, ok: bool) -> None:
        self.available = ok
        self.placeholder.setVisible(not ok)
        self.content.setVisible(ok)

    def _fill_peers(self, peers: list[dict[str, Any]]) -> None:
        self.peers.setRowCount(len(peers))
        for r, p in enumerate(peers):
            name = str(p.get("instance_id") or p.get("id") or "?")
            self.peers.setItem(r, 0, item(name, name))
            self.peers.setItem(r, 1, item(str(p.get("state") or "")))
            self.peers.setItem(r, 2, item(str(p.get("key_id") or "")))
            grants = p.get("grants") or []
            text = ", ".join(g if isinstance(g, str) else str(g.get("grant", g)) for g in grants)
            self.peers.setItem(r, 3, item(text))
            self.peers.setItem(r, 4, item(str(p.get("address") or "")))

    def _pair(self) -> None:
        token = self.token_in.text().strip()
        if token:
            self.run(self._do_pair(token))

    async def _do_pair(self, token: str) -> None:
        res = await self.backend.peers.pair(token)
        self.banner.show_message(f"Paired with {res.get('instance_id', 'the peer')}.", "ok")
        self.token_in.clear()
        await self.refresh()

    def _create_token(self) -> None:
        self.run(self._do_create_token())

    async def _do_create_token(self) -> None:
        res = await self.backend.peers.create_token("desktop", 3600, 1, ["ops", "config.read"])
        text = str(res.get("token") or "")
        self.token_out.setText(text)
        self.token_out.show()
        QApplication.clipboard().setText(text)
        self.banner.show_message(
            "Token created and copied; it is shown only now and works once within an hour.", "ok"
        )

    def _remove(self) -> None:
        rows = self.peers.selectionModel().selectedRows()
        if rows:
            name = self.peers.item(rows[0].row(), 0).text()
            self.run(self._do_remove(name))

    async def _do_remove(self, name: str) -> None:
        await self.backend.peers.remove(name)
        await self.refresh()
