"""A peer that removes this node: the tray's Peers page and the tray itself say so, with the
reason, from a real second node over a real link (issue 10: "the other side is told ... and
shows it")."""

from __future__ import annotations

from typing import Any

from tests.fixtures.gui import GuiEnv, QLoop, wait_for


def test_a_peer_that_removes_this_node_is_shown_as_removed_by_it(
    gui: GuiEnv, qloop: QLoop, qtbot: Any
) -> None:
    from peerstash.peer.cli import AdminClient
    from peerstash.peer.node import Node
    from tests.fixtures.gui import node_options

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


def test_same_named_machines_are_told_apart_and_a_rename_shows_at_once(
    gui: GuiEnv, qloop: QLoop, qtbot: Any, monkeypatch: Any
) -> None:
    """Two machines called ``raspberrypi`` pair with this node: the Peers page and the tray's
    Peers menu tell them apart; when one is renamed, both show the new name without a restart
    or a reload (it arrives over the link)."""
    import socket

    from peerstash.peer.cli import AdminClient
    from peerstash.peer.node import Node
    from tests.fixtures.gui import node_options

    w = gui.window
    qtbot.addWidget(w)
    page = w.peers
    tray = gui.app.tray

    async def body() -> None:
        w.show_page(page)
        await page.tasks.idle()
        b = gui.backend
        monkeypatch.setattr(socket, "gethostname", lambda: "raspberrypi")
        pis = [Node(gui.tmp / f"pi{i}-data", node_options()) for i in (1, 2)]
        for pi in pis:
            await pi.start()
        try:
            ids = [pi.instance_id for pi in pis]
            assert len(set(ids)) == 2 and all(pi.name == "raspberrypi" for pi in pis)
            for pi in pis:
                assert pi.peer_url
                async with AdminClient(pi.data_dir) as client:
                    made = await client.call("POST", "/v1/tokens", {"label": "gui", "ttl": "1h"})
                async with AdminClient(gui.data_dir) as client:
                    await client.call(
                        "POST", "/v1/peers", {"token": made["token"], "url": pi.peer_url}
                    )
            await b.refresh_peers()

            def rows() -> dict[str, str]:
                """The Peers page: shown name -> link state."""
                t = page.hosts
                return {t.item(r, 0).text(): t.item(r, 1).text() for r in range(t.rowCount())}

            labels = {f"raspberrypi ({i})" for i in ids}
            await wait_for(
                lambda: rows() == dict.fromkeys(labels, "online"), b.peersChanged, what="online"
            )
            menu = {a.text() for a in tray.peers_menu.actions()}
            assert {f"{label}: online" for label in labels} <= menu, menu

            # pi1 is renamed (its Settings or `peerstash rename`): shown here at once.
            async with AdminClient(pis[0].data_dir) as client:
                await client.call("POST", "/v1/rename", {"name": "garage pi"})
            await wait_for(
                lambda: rows() == {"garage pi": "online", "raspberrypi": "online"},
                b.peersChanged,
                what="the new name",
            )
            menu = {a.text() for a in tray.peers_menu.actions()}
            assert {"garage pi: online", "raspberrypi: online"} <= menu, menu
        finally:
            for pi in pis:
                await pi.stop()

    qloop.run(body())
