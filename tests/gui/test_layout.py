"""Layout, keyboard and scaling of the window (issue 12, "Layout, keyboard, scaling").

Offscreen, against a real node and real restic where a node is involved. The window's fit on a
1366x768 screen at 100 % and 200 % runs in child processes (fit_probe.py), because Qt reads
``QT_SCALE_FACTOR`` only once, when it starts.
"""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("qasync")

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QWidget

from tests.gui.conftest import GuiEnv, QLoop, wait_for

ROOT = Path(__file__).resolve().parents[2]
SCREEN = {"width": 1366, "height": 768}


def _probe(tmp_path: Path, scale: int) -> dict[str, Any]:
    config = tmp_path / f"screen-{scale}.json"
    config.write_text(
        json.dumps(
            {
                "screens": [
                    {
                        "name": "laptop",
                        "x": 0,
                        "y": 0,
                        **SCREEN,
                        "logicalDpi": 96,
                        "logicalDpiBase": 96,
                        "dpr": 1,
                    }
                ]
            }
        )
    )
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": f"offscreen:configfile={config}",
        "QT_SCALE_FACTOR": str(scale),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    res = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "gui" / "fit_probe.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("scale", [1, 2])
def test_window_fits_a_1366x768_screen(tmp_path: Path, scale: int) -> None:
    out = _probe(tmp_path, scale)
    assert out["scale"] == scale
    assert out["screen"] == [1366, 768]
    min_w, min_h = out["min"]
    assert min_w <= 1366 and min_h <= 768, out
    x, y, w, h = out["window"]
    # Nothing of the window off-screen (device pixels).
    assert x >= 0 and y >= 0 and x + w <= 1366 and y + h <= 768, out
    assert w >= min_w and h >= min_h
    # At 100 % the first start uses the default size, not the whole screen.
    if scale == 1:
        assert w < 1366 and h < 768, out
    # The progress/result column is in view and wide enough to read at the default size.
    left, width, viewport = out["detail"]
    assert left + min(width, 100) <= viewport, out
    from peerstash.desktop.page_operations import MIN_DETAIL

    assert width >= (MIN_DETAIL if scale == 1 else 120), out


async def _first_focus(dlg: Any) -> QWidget:
    """The widget that has the focus in ``dlg`` once it is shown and active."""
    app = QApplication.instance()
    return await wait_for(
        lambda: dlg.isActiveWindow() and dlg.focusWidget(),
        app.focusChanged,  # type: ignore[attr-defined]
        timeout=10,
        what="focus in the dialog",
    )


async def _activate(w: QWidget) -> None:
    """Make ``w`` the active window (shortcuts go to the active window only)."""
    app = QApplication.instance()
    w.activateWindow()
    w.setFocus()
    await wait_for(w.isActiveWindow, app.focusChanged, timeout=10, what="window active")  # type: ignore[attr-defined]


async def _has_focus(widget: QWidget) -> None:
    app = QApplication.instance()
    await wait_for(widget.hasFocus, app.focusChanged, timeout=10, what=f"focus on {widget}")  # type: ignore[attr-defined]


def test_dialogs_focus_tab_enter_and_shortcuts(gui: GuiEnv, qloop: QLoop, qtbot: Any) -> None:
    """Focus on the first field, Tab out of multi-line fields, Enter opens, Ctrl+N switches."""
    w = gui.window
    qtbot.addWidget(w)
    w.show()
    w.activateWindow()
    qtbot.waitActive(w, timeout=5000)

    async def body() -> None:
        b = gui.backend
        await b.add_plan(
            {"backup_now": False, "id": "docs", "repo": "main", "paths": [str(gui.src)]}
        )
        await b.refresh_config()

        # Pages from the keyboard: Ctrl+1…6, Ctrl+Tab and Ctrl+Shift+Tab (wrapping around).
        for n, page in enumerate(w.pages, start=1):
            QTest.keyClick(w, getattr(Qt.Key, f"Key_{n}"), Qt.KeyboardModifier.ControlModifier)
            assert w.current_page is page, (n, w.current_page.title)
        QTest.keyClick(w, Qt.Key.Key_Tab, Qt.KeyboardModifier.ControlModifier)
        assert w.current_page is w.overview
        QTest.keyClick(
            w,
            Qt.Key.Key_Backtab,
            Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier,
        )
        assert w.current_page is w.settings
        QTest.keyClick(w, Qt.Key.Key_3, Qt.KeyboardModifier.ControlModifier)
        page = w.plans
        assert w.current_page is page
        await wait_for(lambda: page.plans.rowCount() == 1, b.configChanged, what="plan row")

        # Add plan: focus on the name; Tab out of the folders box moves on, types no tab.
        add = page.open_add_plan()
        assert await _first_focus(add) is add.name
        add.paths.setFocus()
        await _has_focus(add.paths)
        QTest.keyClick(add.paths, Qt.Key.Key_Tab)
        assert not add.paths.hasFocus()
        assert "\t" not in add.paths.toPlainText()
        add.excludes.setFocus()
        await _has_focus(add.excludes)
        QTest.keyClick(add.excludes, Qt.Key.Key_Backtab, Qt.KeyboardModifier.ShiftModifier)
        assert not add.excludes.hasFocus()
        assert "\t" not in add.excludes.toPlainText()
        add.reject()

        # Add repository: focus on the name; its options box lets Tab go too.
        add_repo = page.open_add_repo()
        assert await _first_focus(add_repo) is add_repo.name
        add_repo.options.setFocus()
        await _has_focus(add_repo.options)
        QTest.keyClick(add_repo.options, Qt.Key.Key_Tab)
        assert not add_repo.options.hasFocus() and "\t" not in add_repo.options.toPlainText()
        add_repo.reject()

        # Enter on a plan opens it in the editor, focus on its first field that can change
        # (the name is fixed, so the repository).
        await _activate(w)
        page.plans.setFocus()
        page.plans.selectRow(0)
        QTest.keyClick(page.plans, Qt.Key.Key_Return)
        edit = page.dialog
        assert edit is not None and edit.isVisible() and edit.windowTitle() == "Edit the plan docs"
        assert await _first_focus(edit) is edit.repo
        edit.reject()
        # Enter on a repository opens its editor, focus on the location (name fixed).
        page.repos.setFocus()
        page.repos.selectRow(0)
        QTest.keyClick(page.repos, Qt.Key.Key_Enter)
        edit_repo = page.dialog
        assert edit_repo is not None and edit_repo.isVisible()
        assert edit_repo.windowTitle() == "Edit the repository main"
        assert await _first_focus(edit_repo) is edit_repo.uri
        edit_repo.reject()

        # A backup, then Enter on it in Operations goes to its log, and Enter on its
        # snapshot goes into the snapshot's files.
        op = await b.backup("docs")
        await wait_for(
            lambda: b.active.get((op["origin"], op["id"])) is None,
            b.opChanged,
            timeout=120,
            what="backup done",
        )
        ops = w.operations
        await _activate(w)
        QTest.keyClick(w, Qt.Key.Key_2, Qt.KeyboardModifier.ControlModifier)
        assert w.current_page is ops
        await wait_for(
            lambda: ops.select_op(op["id"]),
            ops.model.rowsInserted,
            ops.model.modelReset,
            what="op row",
        )
        ops.view.setFocus()
        QTest.keyClick(ops.view, Qt.Key.Key_Return)
        assert ops.log.hasFocus()
        await wait_for(
            lambda: "backup of plan docs" in ops.log.toPlainText(),
            ops.log.textChanged,
            what="log text",
        )
        assert str(op["id"]) in ops.detail_title.text()

        snaps = w.snapshots
        QTest.keyClick(w, Qt.Key.Key_4, Qt.KeyboardModifier.ControlModifier)
        assert w.current_page is snaps
        snaps.select_repo("main")
        await snaps.tasks.idle()
        await wait_for(lambda: snaps.snapshots.rowCount() == 1, what="snapshot row")
        snaps.snapshots.setFocus()
        snaps.snapshots.selectRow(0)
        QTest.keyClick(snaps.snapshots, Qt.Key.Key_Return)
        assert snaps.tree.hasFocus()
        assert snaps.tree.currentIndex().isValid()
        assert snaps.tree.currentIndex().data() == "/"

    qloop.run(body(), timeout=180)


def test_enter_on_a_peer_opens_its_details(gui: GuiEnv, qloop: QLoop, qtbot: Any) -> None:
    """A real second node paired through the admin API; Enter on it opens what it may do."""
    from peerstash.peer.cli import AdminClient
    from peerstash.peer.node import Node
    from tests.gui.conftest import node_options

    w = gui.window
    qtbot.addWidget(w)
    w.show()
    page = w.peers

    async def body() -> None:
        w.show_page(page)
        await page.tasks.idle()
        if not page.available:
            pytest.skip("this node has no pairing API")
        other = Node(gui.tmp / "bravo-data", node_options(instance_id="bravo"))
        await other.start()
        try:
            async with AdminClient(gui.tmp / "bravo-data") as client:
                made = await client.call(
                    "POST", "/v1/tokens", {"label": "guitest", "ttl": "1h", "grants": ["ops"]}
                )
            await gui.backend.peers.pair(made["token"], str(other.peer_url), ["ops"])
            await gui.backend.refresh_peers()
            await wait_for(lambda: page.hosts.rowCount() == 1, what="peer row")
            page.tabs.setCurrentIndex(0)
            page.hosts.setFocus()
            page.hosts.selectRow(0)
            QTest.keyClick(page.hosts, Qt.Key.Key_Return)
            dlg = page.dialog
            assert dlg is not None and dlg.isVisible()
            assert dlg.windowTitle() == "What bravo may do here"
            # Focus on its first field (the first grant's box).
            first = await _first_focus(dlg)
            assert first is next(iter(dlg.boxes.values()))
            dlg.reject()
        finally:
            await other.stop()

    qloop.run(body(), timeout=120)
