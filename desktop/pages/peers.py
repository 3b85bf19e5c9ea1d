"""Peers: paired machines (both directions), pairing tokens, pairing, machines on the LAN.

Everything goes through :class:`~peerstash.desktop.api.PeersApi`. A node without the pairing
API (an older version) answers 404, and the page then says so calmly, one paragraph without
error colours, instead of showing empty tables; a node without LAN discovery hides only that
section.
"""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from peerstash.core.records import DiscoveredRecord, ListedPeerRecord, PeerRecord, TokenRecord
from peerstash.core.text import printable
from peerstash.desktop import fmt
from peerstash.desktop.api import ApiError, PeersApi
from peerstash.desktop.backend import Backend
from peerstash.desktop.dialogs.forms import EditGrantsDialog
from peerstash.desktop.icons import STATE_COLORS
from peerstash.desktop.widgets import (
    Page,
    button_row,
    confirm,
    item,
    make_table,
    selected_data,
)

PEER_HEADERS = ("Machine", "State", "Key", "We allow", "They allow", "Last seen")
STATE_COLOR = {
    "online": STATE_COLORS["ok"],
    "connecting": STATE_COLORS["running"],
    "offline": STATE_COLORS["paused"],
    "unreachable": STATE_COLORS["warning"],
    "auth failed": STATE_COLORS["error"],
}
TTLS = (("15 minutes", "15m"), ("1 hour", "1h"), ("1 day", "1d"), ("1 week", "7d"))


def found_url(d: DiscoveredRecord) -> str:
    """Where to dial a machine the LAN announced (its freshest address), or ""."""
    if not d.addresses or not d.port:
        return ""
    host = d.addresses[0]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{d.port}"


def grants_text(grants: Any) -> str:
    """``ops:*, run:repo:nas`` reads as ``ops, run (repo:nas)``."""
    out = []
    for g in grants or []:
        name, _, scope = str(g).partition(":")
        out.append(name if scope in ("", "*") else f"{name} ({scope})")
    return ", ".join(out) or "nothing"


def grant_boxes(checked: tuple[str, ...]) -> tuple[QWidget, dict[str, QCheckBox]]:
    box = QWidget()
    row = QHBoxLayout(box)
    row.setContentsMargins(0, 0, 0, 0)
    boxes: dict[str, QCheckBox] = {}
    for g in PeersApi.GRANTS:
        cb = QCheckBox(g)
        cb.setChecked(g in checked)
        boxes[g] = cb
        row.addWidget(cb)
    row.addStretch(1)
    return box, boxes


class PeersPage(Page):
    title = "Peers"

    def __init__(self, backend: Backend, parent: QWidget | None = None) -> None:
        super().__init__(backend, parent)
        self.question: Any = None
        self.dialog: EditGrantsDialog | None = None
        #: The peers as last listed, by id (what the grants dialog starts from).
        self._peers: dict[str, PeerRecord] = {}
        #: The machines the LAN announced, by id, as last listed (the table rows hold the ids).
        self._found: dict[str, DiscoveredRecord] = {}
        self.content = QWidget()
        cl = QVBoxLayout(self.content)
        cl.setContentsMargins(0, 0, 0, 0)
        self.me = QLabel("")
        self.me.setWordWrap(True)
        self.me.setTextInteractionFlags(self.me.textInteractionFlags().TextSelectableByMouse)
        cl.addWidget(self.me)
        backend.statusChanged.connect(lambda _st: self._show_me())
        self._show_me()

        self.tabs = QTabWidget()
        cl.addWidget(self.tabs, 1)
        machines = QWidget()
        ml = QVBoxLayout(machines)
        pairing = QWidget()
        pl_ = QVBoxLayout(pairing)
        hosts = QGroupBox("Machines this one connects to")
        hl = QVBoxLayout(hosts)
        self.hosts = make_table(PEER_HEADERS, stretch=3)
        # Enter (or a double click) on a machine opens what it may do here.
        self.hosts.activated.connect(lambda _i: self.open_edit_grants(self.hosts))
        hl.addWidget(self.hosts)
        self.check_button = QPushButton("Reconnect now")
        self.check_button.clicked.connect(self._check)
        self.host_grants_button = QPushButton("Edit grants…")
        self.host_grants_button.clicked.connect(lambda: self.open_edit_grants(self.hosts))
        self.remove_host_button = QPushButton("Remove")
        self.remove_host_button.clicked.connect(lambda: self._remove(self.hosts))
        hl.addLayout(
            button_row(self.check_button, self.host_grants_button, self.remove_host_button)
        )
        ml.addWidget(hosts, 1)

        clients = QGroupBox("Machines allowed to connect here")
        kl = QVBoxLayout(clients)
        self.clients = make_table(PEER_HEADERS, stretch=3)
        self.clients.activated.connect(lambda _i: self.open_edit_grants(self.clients))
        kl.addWidget(self.clients)
        self.client_grants_button = QPushButton("Edit grants…")
        self.client_grants_button.clicked.connect(lambda: self.open_edit_grants(self.clients))
        self.remove_client_button = QPushButton("Remove")
        self.remove_client_button.clicked.connect(lambda: self._remove(self.clients))
        kl.addLayout(button_row(self.client_grants_button, self.remove_client_button))
        ml.addWidget(clients, 1)

        pair = QGroupBox("Pair with a machine")
        pg = QGridLayout(pair)
        self.token_in = QLineEdit()
        self.token_in.setPlaceholderText("pairing token made on the other machine")
        self.url_in = QLineEdit()
        self.url_in.setPlaceholderText("its peer address, e.g. http://desktop.local:9797")
        grants_w, self.pair_grants = grant_boxes(("ops",))
        self.pair_button = QPushButton("Pair")
        self.pair_button.clicked.connect(self._pair)
        pg.addWidget(QLabel("Token"), 0, 0)
        pg.addWidget(self.token_in, 0, 1)
        pg.addWidget(QLabel("Address"), 1, 0)
        pg.addWidget(self.url_in, 1, 1)
        pg.addWidget(QLabel("It may"), 2, 0)
        pg.addWidget(grants_w, 2, 1)
        pg.addWidget(self.pair_button, 0, 2, 3, 1)
        pl_.addWidget(pair)

        tokens = QGroupBox("Pairing tokens made here")
        tl = QVBoxLayout(tokens)
        self.tokens = make_table(("Label", "Grants", "Used", "Expires"), stretch=1)
        self.tokens.setMaximumHeight(160)
        tl.addWidget(self.tokens)
        form = QHBoxLayout()
        self.token_label = QLineEdit()
        self.token_label.setPlaceholderText("label, e.g. laptop")
        self.token_ttl = QComboBox()
        for text, value in TTLS:
            self.token_ttl.addItem(text, value)
        self.token_ttl.setCurrentIndex(1)
        self.token_uses = QSpinBox()
        self.token_uses.setRange(1, 100)
        self.token_uses.setPrefix("uses: ")
        form.addWidget(self.token_label, 1)
        form.addWidget(self.token_ttl)
        form.addWidget(self.token_uses)
        tl.addLayout(form)
        token_grants_w, self.token_grants = grant_boxes(("ops", "config.read"))
        tl.addWidget(token_grants_w)
        self.create_button = QPushButton("Create token")
        self.create_button.clicked.connect(self._create_token)
        self.delete_token_button = QPushButton("Delete token")
        self.delete_token_button.clicked.connect(self._delete_token)
        tl.addLayout(button_row(self.create_button, self.delete_token_button))
        self.token_out = QLineEdit()
        self.token_out.setReadOnly(True)
        self.token_out.hide()
        tl.addWidget(self.token_out)
        pl_.addWidget(tokens)
        pl_.addStretch(1)

        self.discovery = QWidget()
        dl = QVBoxLayout(self.discovery)
        self.discovery_note = QLabel("")
        self.discovery_note.setWordWrap(True)
        self.discovery_note.setStyleSheet("color:palette(placeholder-text);")
        dl.addWidget(self.discovery_note)
        self.discovered = make_table(("Machine", "Key", "Address", "Paired"), stretch=2)
        dl.addWidget(self.discovered)
        self.use_found_button = QPushButton("Pair with this one…")
        self.use_found_button.clicked.connect(self._use_found)
        dl.addLayout(button_row(self.use_found_button))
        self.tabs.addTab(machines, "Paired machines")
        self.tabs.addTab(pairing, "Pair a machine")
        self.discovery_tab = self.tabs.addTab(self.discovery, "On this network")
        self.tabs.setTabVisible(self.discovery_tab, False)
        self.content.hide()
        self.outer.addWidget(self.content, 1)
        backend.peersChanged.connect(self._show_peers)

    def _show_me(self) -> None:
        st = self.backend.status
        if st is None:
            return
        ident, name = st.instance_id, st.name or st.instance_id
        shown = html.escape(name) + ("" if name == ident else f" (id {html.escape(ident)})")
        parts = [f"This machine: <b>{shown}</b>"]
        if st.key_id:
            parts.append(f"key <b>{st.key_id}</b> (compare it on the other machine)")
        parts.append(f"peer address {st.peer_url or 'not listening'}")
        self.me.setText(" · ".join(parts))

    def activate(self) -> None:
        self.run(self.refresh(), name="peers:refresh")

    async def refresh(self) -> None:
        peers = await self.backend.peers.peers()
        self.content.show()
        self._fill(peers)
        try:
            self._fill_tokens(await self.backend.peers.tokens())
        except ApiError as exc:
            self.banner.show_message(f"Could not read the tokens: {exc}", "warning")
        await self._refresh_discovered()

    async def _refresh_discovered(self) -> None:
        try:
            found = await self.backend.peers.discovered()
        except ApiError as exc:
            self.tabs.setTabVisible(self.discovery_tab, True)
            self.discovered.hide()
            self.use_found_button.hide()
            self.discovery_note.setText(str(exc)[:1].upper() + str(exc)[1:] + ".")
            self.discovery_note.show()
            return
        self.tabs.setTabVisible(self.discovery_tab, True)
        self.discovered.setVisible(bool(found))
        self.use_found_button.setVisible(bool(found))
        self.discovery_note.setText(
            "Peerstash machines that announce themselves on the local network. Discovery only "
            "proposes an address: trust comes from a pairing token and the key you compare."
            if found
            else "No other Peerstash machine announces itself on this network."
        )
        self.discovery_note.show()
        self.discovered.setRowCount(len(found))
        self._found = {d.id: d for d in found}
        for r, d in enumerate(found):
            # What the LAN announced is anyone's words: shown inert.
            self.discovered.setItem(r, 0, item(printable(d.id or "?"), d.id))
            self.discovered.setItem(r, 1, item(printable(d.key_id)))
            self.discovered.setItem(r, 2, item(found_url(d)))
            if d.paired:
                paired = "yes" if d.key_matches is not False else "KEY DIFFERS: not trusted"
            else:
                paired = "no" if d.compatible else "no (incompatible version)"
            self.discovered.setItem(r, 3, item(paired))

    def _use_found(self) -> None:
        d = self._found.get(str(selected_data(self.discovered) or ""))
        if d:
            self.url_in.setText(found_url(d))
            self.tabs.setCurrentIndex(1)
            self.token_in.setFocus()
            self.banner.show_message(
                f"Now paste a pairing token made on {printable(d.id)} (Peers → Create token "
                f"there) and check that its key reads {printable(d.key_id)}.",
                "info",
            )

    def _show_peers(self) -> None:
        if self.backend.peers_loaded:
            self.content.show()
            self._fill(self.backend.peer_list)

    def _fill(self, peers: list[ListedPeerRecord]) -> None:
        """The two tables: the machines we dial and the ones that dial us."""
        self._peers = {p.id: p for p in peers}
        hosts = [p for p in peers if p.role == "known_host"]
        clients = [p for p in peers if p.role != "known_host"]
        for table, rows in ((self.hosts, hosts), (self.clients, clients)):
            keep = selected_data(table)
            table.setRowCount(len(rows))
            for r, p in enumerate(rows):
                name = p.id
                # The label tells same-named machines apart; the row's data stays the id.
                table.setItem(r, 0, item(printable(p.label), name))
                state = p.state
                reason = p.state_reason or ""
                # Why a peer refuses us ("removed by NAME") is said in the cell, as `peer list`
                # says it: a tooltip alone hides that this peer will not be dialed again.
                shown = f"{state} ({reason})" if state == "auth failed" and reason else state
                st = item(printable(shown))
                st.setForeground(
                    QColor(STATE_COLOR[state]) if state in STATE_COLOR else table.palette().text()
                )
                if p.state_reason:
                    st.setToolTip(printable(p.state_reason))
                table.setItem(r, 1, st)
                table.setItem(r, 2, item(p.key_id))
                table.setItem(r, 3, item(grants_text(p.grants)))
                table.setItem(r, 4, item(printable(grants_text(p.their_grants))))
                table.setItem(r, 5, item(fmt.ago(p.last_seen)))
                if name == keep:
                    table.selectRow(r)

    def _fill_tokens(self, tokens: list[TokenRecord]) -> None:
        self.tokens.setRowCount(len(tokens))
        for r, t in enumerate(tokens):
            self.tokens.setItem(r, 0, item(t.label or "(no label)", t.id))
            self.tokens.setItem(r, 1, item(grants_text(t.grants)))
            self.tokens.setItem(r, 2, item(f"{t.uses} of {t.max_uses}"))
            self.tokens.setItem(r, 3, item(fmt.local_time(t.expires_at)))

    # -- actions -----------------------------------------------------------------------------

    def _pair(self) -> None:
        token, url = self.token_in.text().strip(), self.url_in.text().strip()
        if not token or not url:
            self.banner.show_message(
                "Paste the token and give the other machine's address.", "error"
            )
            return
        grants = [g for g, cb in self.pair_grants.items() if cb.isChecked()]
        self.pair_button.setEnabled(False)
        self.run(self._do_pair(token, url, grants))

    async def _do_pair(self, token: str, url: str, grants: list[str]) -> None:
        try:
            res = await self.backend.peers.pair(token, url, grants)
        finally:
            self.pair_button.setEnabled(True)
        self.banner.show_message(f"Paired with {res.id or 'the other machine'}.", "ok")
        self.token_in.clear()
        await self.backend.refresh_peers()
        await self.refresh()

    def _create_token(self) -> None:
        grants = [g for g, cb in self.token_grants.items() if cb.isChecked()]
        self.run(
            self._do_create_token(
                self.token_label.text().strip(),
                str(self.token_ttl.currentData()),
                self.token_uses.value(),
                grants,
            )
        )

    async def _do_create_token(self, label: str, ttl: str, uses: int, grants: list[str]) -> None:
        text = (await self.backend.peers.create_token(label, ttl, uses, grants)).token
        self.token_out.setText(text)
        self.token_out.show()
        QApplication.clipboard().setText(text)
        self.banner.show_message(
            "Token created and copied to the clipboard. It is shown only now: paste it on the "
            "other machine.",
            "ok",
        )
        self._fill_tokens(await self.backend.peers.tokens())

    def _delete_token(self) -> None:
        token_id = selected_data(self.tokens)
        if token_id:
            self.run(self._do_delete_token(str(token_id)))

    async def _do_delete_token(self, token_id: str) -> None:
        await self.backend.peers.delete_token(token_id)
        self._fill_tokens(await self.backend.peers.tokens())

    def _check(self) -> None:
        name = selected_data(self.hosts)
        if name:
            self.run(self._do_check(str(name)))

    async def _do_check(self, name: str) -> None:
        _peer, said = await self.backend.peers.check(name)
        self.banner.show_message(f"{name}: {said}.", "info")

    def open_edit_grants(self, table: Any) -> EditGrantsDialog | None:
        """What the selected peer may do here, in a small dialog (saved through the node)."""
        peer = self._peers.get(str(selected_data(table)))
        if peer is None:
            self.banner.show_message("Select a machine first.", "info")
            return None
        dlg = EditGrantsDialog(self.backend, peer, self)
        dlg.created.connect(
            lambda p: self.banner.show_message(
                f"{p.id} may now: {grants_text(p.grants)}. The link restarted so this applies now.",
                "ok",
            )
        )
        self.dialog = dlg
        dlg.open()
        return dlg

    def _remove(self, table: Any) -> None:
        name = selected_data(table)
        if name:
            self.question = confirm(
                self,
                "Remove peer",
                f"Remove {name}? It is told and its link closed; repositories it shared here "
                "(with their passwords) and its history are removed, plans on them disabled. "
                "Pairing again needs a new token.",
                "Remove peer",
                lambda: self.run(self._do_remove(str(name))),
            )

    async def _do_remove(self, name: str) -> None:
        await self.backend.peers.remove(name)
        self.banner.show_message(f"{name} removed; it can no longer connect.", "ok")
        await self.backend.refresh_peers()
