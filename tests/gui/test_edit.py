"""Changing what exists: edit a plan or a repository, a peer's grants, the node's settings.

Against a real node with a real restic repository, as the other GUI tests.
"""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("qasync")

from typing import Any

from PySide6.QtCore import Qt

from peerstash.peer.api import schema
from tests.fixtures.gui import GuiEnv, QLoop, wait_for


def _row_of(table: Any, key: str) -> int:
    for r in range(table.rowCount()):
        if table.item(r, 0).text() == key:
            return r
    raise AssertionError(f"{key} not listed")


def test_edit_a_plan_through_the_dialog(gui: GuiEnv, qloop: QLoop, qtbot: Any) -> None:
    w = gui.window
    qtbot.addWidget(w)

    async def body() -> None:
        b = gui.backend
        await b.add_plan(
            schema.AddPlan(
                id="docs",
                repo="main",
                paths=[str(gui.src / "docs")],
                every="6h",
                retention={"keep_last": 3},
                backup_now=False,
            )
        )
        page = w.plans
        w.show_page(page)
        assert not page.edit_plan_button.isEnabled()
        page.select_plan("docs")
        assert page.edit_plan_button.isEnabled()
        qtbot.mouseClick(page.edit_plan_button, Qt.MouseButton.LeftButton)
        dlg = page.dialog
        assert dlg is not None and dlg.isVisible()
        # Prefilled from the node, the name fixed.
        assert dlg.name.text() == "docs" and not dlg.name.isEnabled()
        assert dlg.paths.toPlainText() == str(gui.src / "docs")
        assert dlg.schedule_kind.currentData() == "every"
        assert dlg.schedule.text() == "6h"
        assert dlg.keep["last"].text() == "3"

        # A bad cron expression: inline error, the dialog stays, the node is not asked.
        dlg.schedule_kind.setCurrentIndex(dlg.schedule_kind.findData("cron"))
        dlg.schedule.setText("61 3 * * *")
        qtbot.mouseClick(dlg.save_button, Qt.MouseButton.LeftButton)
        assert set(dlg.field_errors()) == {"schedule"}, dlg.field_errors()
        assert dlg.isVisible() and not dlg.tasks.busy
        plan = (await b.call("GET", "/v1/plans"))[0]
        assert plan["every_seconds"] == 6 * 3600 and plan["schedule"] is None

        # A good one is saved and listed; what was not touched stays.
        dlg.schedule.setText("30 2 * * *")
        qtbot.mouseClick(dlg.save_button, Qt.MouseButton.LeftButton)
        await wait_for(lambda: not dlg.isVisible(), dlg.finished, what="dialog closed")
        assert dlg.field_errors() == {}
        r = _row_of(page.plans, "docs")
        assert page.plans.item(r, 2).text() == "cron 30 2 * * *"
        assert page.banner.level == "ok", page.banner.text()
        plan = (await b.call("GET", "/v1/plans"))[0]
        assert plan["schedule"] == "30 2 * * *" and plan["every_seconds"] is None
        assert plan["retention"] == {"keep_last": 3}
        assert plan["paths"] == [str(gui.src / "docs")]

        # Disable it: the list says so.
        page.select_plan("docs")
        dlg = page.open_edit_plan()
        assert dlg is not None and dlg.enabled.isChecked()
        dlg.enabled.setChecked(False)
        assert dlg.validate() == ({}, schema.EditPlan(enabled=False))
        qtbot.mouseClick(dlg.save_button, Qt.MouseButton.LeftButton)
        await wait_for(lambda: not dlg.isVisible(), dlg.finished, what="dialog closed")
        assert page.plans.item(_row_of(page.plans, "docs"), 5).text().startswith("disabled")
        assert (await b.call("GET", "/v1/plans"))[0]["enabled"] is False

    qloop.run(body())


def test_node_refusal_in_the_edit_plan_dialog_changes_nothing(
    gui: GuiEnv, qloop: QLoop, qtbot: Any
) -> None:
    """What only the node checks (here: the repository exists) comes back under the field."""
    w = gui.window
    qtbot.addWidget(w)

    async def body() -> None:
        b = gui.backend
        await b.add_plan(
            schema.AddPlan(backup_now=False, id="docs", repo="main", paths=[str(gui.src / "docs")])
        )
        page = w.plans
        w.show_page(page)
        page.select_plan("docs")
        dlg = page.open_edit_plan()
        assert dlg is not None
        dlg.repo.addItem("gone", "gone")  # a repository removed meanwhile by another client
        dlg.repo.setCurrentIndex(dlg.repo.findData("gone"))
        qtbot.mouseClick(dlg.save_button, Qt.MouseButton.LeftButton)
        await dlg.tasks.idle()
        assert dlg.isVisible()
        assert "repo" in dlg.field_errors(), (dlg.field_errors(), dlg.banner.text())
        assert (await b.call("GET", "/v1/plans"))[0]["repo"] == "main"
        dlg.reject()

    qloop.run(body())


def test_edit_a_repository_wrong_password_keeps_the_old_one(
    gui: GuiEnv, qloop: QLoop, qtbot: Any
) -> None:
    w = gui.window
    qtbot.addWidget(w)

    async def body() -> None:
        b = gui.backend
        page = w.plans
        w.show_page(page)
        assert not page.edit_repo_button.isEnabled()
        page.select_repo("main")
        assert page.edit_repo_button.isEnabled()
        qtbot.mouseClick(page.edit_repo_button, Qt.MouseButton.LeftButton)
        dlg = page.dialog
        assert dlg is not None and dlg.isVisible()
        assert dlg.name.text() == "main" and not dlg.name.isEnabled()
        assert dlg.uri.text() == str(gui.tmp / "repo")
        assert dlg.source.currentData() == "secret"
        assert not dlg.init.isVisible()

        # Two different passwords: caught in the form.
        dlg.password.setText("not-the-password")
        dlg.password2.setText("typo")
        qtbot.mouseClick(dlg.save_button, Qt.MouseButton.LeftButton)
        assert set(dlg.field_errors()) == {"password"}
        assert not dlg.tasks.busy

        # A wrong password: restic cannot open the repository, the node says so, inline.
        dlg.password2.setText("not-the-password")
        qtbot.mouseClick(dlg.save_button, Qt.MouseButton.LeftButton)
        await dlg.tasks.idle()
        assert dlg.isVisible()
        assert "password" in dlg.field_errors(), (dlg.field_errors(), dlg.banner.text())
        dlg.reject()

        # The old settings still work: a backup succeeds.
        await b.add_plan(
            schema.AddPlan(backup_now=False, id="docs", repo="main", paths=[str(gui.src / "docs")])
        )
        op, _ = await b.backup("docs")
        await wait_for(
            lambda: (op.origin, op.id) not in b.active,
            b.opChanged,
            timeout=120,
            what="backup end",
        )
        done = await b.call("GET", f"/v1/ops/{op.id}")
        assert done["status"] == "success", done.get("error")

        # Nothing changed: Save just closes.
        page.select_repo("main")
        dlg = page.open_edit_repo()
        assert dlg is not None
        qtbot.mouseClick(dlg.save_button, Qt.MouseButton.LeftButton)
        await wait_for(lambda: not dlg.isVisible(), dlg.finished, what="dialog closed")
        assert "nothing changed" in page.banner.text()

    qloop.run(body(), timeout=180)


def test_settings_save_round_trip_and_refusals(gui: GuiEnv, qloop: QLoop, qtbot: Any) -> None:
    w = gui.window
    qtbot.addWidget(w)
    st = w.settings

    async def body() -> None:
        b = gui.backend
        w.show_page(st)
        await st.tasks.idle()
        assert st.save_button.isEnabled()
        assert st.display_name.placeholderText() == "guitest"
        assert "next restarts" in st.node_note.text()

        # Every node setting, saved and read back from the node.
        st.display_name.setText("Guitest laptop")
        st.listen.setText("127.0.0.1:9797")
        st.discovery.setChecked(False)
        st.interfaces.setText("127.0.0.1, lo")
        st.restic_path.setText("/usr/bin/restic")
        qtbot.mouseClick(st.save_button, Qt.MouseButton.LeftButton)
        await st.tasks.idle()
        assert st.banner.level == "ok", st.banner.text()
        assert "next restarts" in st.banner.text()
        assert not any(e.text() for e in st.errors.values())
        stored = await b.call("GET", "/v1/settings")
        assert stored["display_name"] == "Guitest laptop"
        # The name applies at once (peers learn it over their links), unlike the rest.
        assert (await b.call("GET", "/v1/status"))["name"] == "Guitest laptop"
        assert stored["listen"] == "127.0.0.1:9797"
        assert stored["discovery"] is False
        assert stored["discovery_interfaces"] == ["127.0.0.1", "lo"]
        assert stored["restic_path"] == "/usr/bin/restic"

        # The page reads them back when shown again.
        st.display_name.clear()
        st.listen.clear()
        st.activate()
        await st.tasks.idle()
        assert st.display_name.text() == "Guitest laptop"
        assert st.listen.text() == "127.0.0.1:9797"
        assert not st.discovery.isChecked()

        # An invalid peer port: the node's sentence under the field; the rest still saves.
        st.listen.setText("no-port-here")
        st.display_name.setText("Renamed")
        qtbot.mouseClick(st.save_button, Qt.MouseButton.LeftButton)
        await st.tasks.idle()
        assert st.banner.level == "error", st.banner.text()
        assert st.errors["listen"].isVisibleTo(st)
        assert "HOST:PORT" in st.errors["listen"].text()
        assert not st.errors["display_name"].text()
        stored = await b.call("GET", "/v1/settings")
        assert stored["listen"] == "127.0.0.1:9797"
        assert stored["display_name"] == "Renamed"

        # Empty fields put the node's defaults back.
        st.listen.clear()
        st.display_name.clear()
        qtbot.mouseClick(st.save_button, Qt.MouseButton.LeftButton)
        await st.tasks.idle()
        assert st.banner.level == "ok", st.banner.text()
        assert not st.errors["listen"].text()
        stored = await b.call("GET", "/v1/settings")
        assert stored["listen"] is None and stored["display_name"] is None

    qloop.run(body())
