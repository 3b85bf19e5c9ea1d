"""A peer that removes this node: the tray's Peers page and the tray itself say so, with the
reason, from a real second node over a real link (issue 10: "the other side is told ... and
shows it")."""

from __future__ import annotations

from typing import Any

from tests.gui.conftest import GuiEnv, QLoop, wait_for


def test_a_peer_that_removes_this_node_is_shown_as_removed_by_it(
    gui: GuiEnv, qloop: QLoop, qtbot: Any
) -> None:
    from peerstash.peer.cli import AdminClient
    from peerstash.peer.node import Node
    from tests.gui.conftest import node_options

    w = gui.window
    qtbot.addWidget(w)
    page = w.peers
    tray = gui.app.tray
    notes: list[tuple[str, str]] = []
    tray.notified.connect(lambda title, msg: notes.append((title, msg)))

    async def body() -> None:
        w.show_page(page)
        await page.tasks.idle()
        other = Node(gui.tmp / "bravo-data", node_options(instance_id="bravo"))
        await other.start()
        try:
            assert other.peer_url and other.peers
            async with AdminClient(gui.tmp / "bravo-data") as client:
                made = await client.call("POST", "/v1/tokens", {"label": "gui", "ttl": "1h"})
            async with AdminClient(gui.data_dir) as client:
                await client.call(
                    "POST", "/v1/peers", {"token": made["token"], "url": other.peer_url}
                )
            b = gui.backend
            await b.refresh_peers()

            def state() -> str:
                for r in range(page.hosts.rowCount()):
                    if page.hosts.item(r, 0).text() == "bravo":
                        return str(page.hosts.item(r, 1).text())
                return ""

            await wait_for(lambda: state() == "online", b.peersChanged, what="bravo online")
            assert not tray.peers_attention

            # bravo removes this node: told on the live link, shown here with the reason.
            await other.peers.remove("guitest")
            await wait_for(
                lambda: state() == "auth failed (removed by bravo)",
                b.peersChanged,
                what="removed by bravo",
            )
            assert tray.peers_attention
            assert ("bravo is auth failed", "removed by bravo") in notes, notes
            texts = [a.text() for a in tray.peers_menu.actions()]
            assert any(t.startswith("bravo: ") and "auth failed" in t for t in texts), texts
        finally:
            await other.stop()

    qloop.run(body())
