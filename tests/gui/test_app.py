"""The tray app against a real node and a real restic repository (offscreen)."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("qasync")

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QPushButton

from peerstash.core.records import OpRecord
from peerstash.desktop.opsmodel import ProgressRole
from peerstash.peer.api import schema
from tests.fixtures.gate import gated_password
from tests.fixtures.gui import PASSWORD, GuiEnv, QLoop, wait_for


def _plan_rows(table: Any) -> list[str]:
    return [table.item(r, 0).text() for r in range(table.rowCount())]


def test_pages_show_the_real_node(gui: GuiEnv, qloop: QLoop, qtbot: Any) -> None:
    w = gui.window
    qtbot.addWidget(w)

    async def body() -> None:
        b = gui.backend
        await b.add_plan(
            schema.AddPlan(
                backup_now=False,
                id="docs",
                repo="main",
                paths=[str(gui.src)],
                every="6h",
            )
        )
        # Overview: this node and its plan, with a next run.
        w.show_page(w.overview)
        ov = w.overview
        await wait_for(lambda: _plan_rows(ov.plans) == ["docs"], b.statusChanged, what="plan row")
        assert "guitest" in ov.node_title.text()
        assert "attached to the node running as process" in ov.node_sub.text()
        assert ov.restart_due.isHidden()  # tray and node from one package: no restart due
        assert ov.plans.item(0, 3).text() == "not backed up yet"
        assert "in " in ov.plans.item(0, 4).text()  # "HH:MM (in 6 hours)"
        # Plans & repositories: the real repo (with its restic id) and the plan.
        w.show_page(w.plans)
        assert _plan_rows(w.plans.repos) == ["main"]
        assert len(w.plans.repos.item(0, 3).text()) == 8
        assert _plan_rows(w.plans.plans) == ["docs"]
        assert w.plans.plans.item(0, 2).text() == "every 6h00m"
        # Settings: facts about the node, its settings, this desktop's preferences.
        st = w.settings
        w.show_page(st)
        await st.tasks.idle()
        assert st.fields["instance_id"].text() == "guitest"
        assert st.fields["data_dir"].text() == str(gui.data_dir)
        entry = gui.tmp / "config" / "autostart" / "peerstash.desktop"
        st.start_at_login.setChecked(True)
        assert f"Exec=peerstash --data-dir {gui.data_dir}" in entry.read_text()
        st.start_at_login.setChecked(False)
        assert not entry.exists()
        st.notifications.setChecked(False)
        assert gui.app.tray.notifications_enabled is False
        assert (
            '"notifications": false'
            in (gui.tmp / "config" / "peerstash" / "desktop.json").read_text()
        )
        assert not gui.app.tray.notify("t", "m", key="k")
        st.notifications.setChecked(True)
        assert st.save_button.isEnabled()
        st.restic_path.setText("/usr/bin/restic")
        await st.save_node_settings()
        assert st.banner.level == "ok", st.banner.text()
        assert (await b.call("GET", "/v1/settings"))["restic_path"] == "/usr/bin/restic"
        # Peers: the real tables (no machine paired yet).
        w.show_page(w.peers)
        await w.peers.tasks.idle()
        assert not w.peers.content.isHidden()
        assert w.peers.hosts.rowCount() == 0 and w.peers.clients.rowCount() == 0

    qloop.run(body())


@pytest.mark.parametrize(("node_mode", "src_megabytes"), [("in_process", 24)])
def test_add_plan_through_dialog_then_back_up_now(gui: GuiEnv, qloop: QLoop, qtbot: Any) -> None:
    w = gui.window
    qtbot.addWidget(w)
    w.show()
    states: list[str] = []
    tray = gui.app.tray
    tray.stateChanged.connect(states.append)
    states.append(tray.state)

    async def body() -> None:
        b = gui.backend
        page = w.plans
        w.show_page(page)
        qtbot.mouseClick(page.add_plan_button, Qt.MouseButton.LeftButton)
        dlg = page.dialog
        assert dlg is not None and dlg.isVisible()
        qtbot.keyClicks(dlg.name, "laptop-docs")
        dlg.paths.setPlainText(str(gui.src))
        dlg.schedule_kind.setCurrentIndex(dlg.schedule_kind.findData("every"))
        qtbot.keyClicks(dlg.schedule, "12h")
        qtbot.keyClicks(dlg.keep["last"], "3")
        # "Back up now" is offered, checked; unchecked here so the plan waits for the button.
        assert dlg.backup_now.isChecked() and dlg.backup_now.text() == "Back up now"
        dlg.backup_now.click()
        assert not dlg.backup_now.isChecked()
        qtbot.mouseClick(dlg.save_button, Qt.MouseButton.LeftButton)
        await wait_for(
            lambda: not dlg.isVisible(), b.configChanged, dlg.finished, what="dialog closed"
        )
        assert dlg.field_errors() == {}
        assert [p.id for p in b.plans] == ["laptop-docs"]
        # Not protected yet: the tray and the overview say so, in the node's words.
        await wait_for(
            lambda: "plan laptop-docs has never succeeded" in tray.tooltip,
            tray.stateChanged,
            b.statusChanged,
            what="tray shows the plan never succeeded",
        )
        assert tray.state == "warning"
        assert tray.tooltip.splitlines()[:3] == [
            "Peerstash — something needs a look",
            "Health: attention — 1 thing needs a look",
            "• plan laptop-docs has never succeeded",
        ]
        assert tray.status_action.text() == "Peerstash: something needs a look"
        assert w.overview.health.text().splitlines() == [
            "Health: attention — 1 thing needs a look",
            "• plan laptop-docs has never succeeded",
        ]
        assert await b.call("GET", "/v1/ops") == []  # nothing started behind our back
        assert b.plans[0].retention == {"keep_last": 3}
        assert b.plans[0].every_seconds == 12 * 3600

        # The Operations page is open while the backup runs, as a person would watch it.
        ops = w.operations
        w.show_page(ops)
        await ops.model.tasks.idle()
        seen_progress: list[float] = []

        def watch(top: Any, bottom: Any, *_: Any) -> None:
            for r in range(top.row(), bottom.row() + 1):
                frac = ops.model.index(r, 0).data(ProgressRole)
                if frac is not None:
                    seen_progress.append(frac)

        ops.model.dataChanged.connect(watch)

        w.show_page(page)
        page.select_plan("laptop-docs")
        assert page.backup_button.isEnabled()
        qtbot.mouseClick(page.backup_button, Qt.MouseButton.LeftButton)
        w.show_page(ops)

        def backup_row() -> OpRecord | None:
            for op in ops.model.ops():
                if op.kind == "backup" and op.plan == "laptop-docs":
                    return op
            return None

        def ended() -> bool:
            op = backup_row()
            return op is not None and op.status not in ("pending", "running")

        try:
            await wait_for(
                ended,
                ops.model.dataChanged,
                ops.model.rowsInserted,
                ops.model.modelReset,  # a reopened event stream reloads the list
                timeout=120,
                what="backup end",
            )
        except AssertionError:
            # Say what the node holds and what the view shows: a hang and a missed update look
            # alike from here.
            node_ops = await b.call("GET", "/v1/ops?limit=20")
            raise AssertionError(
                f"no finished backup row; view: {backup_row()}; node: {node_ops}"
            ) from None
        op = backup_row()
        assert op is not None
        assert op.status == "success", op.error
        assert op.snapshot_id
        assert seen_progress, "no progress value was shown while the backup ran"
        # The retention that the plan asked for ran after it, in the same flow.
        await wait_for(
            lambda: any(o.kind == "forget" and o.status == "success" for o in ops.model.ops()),
            ops.model.dataChanged,
            ops.model.rowsInserted,
            ops.model.modelReset,
            timeout=60,
            what="forget success",
        )
        # The log of the selected operation is shown.
        assert ops.select_op(op.id)
        await ops.tasks.idle()
        assert "backup of plan laptop-docs" in ops.log.toPlainText()
        assert not ops.cancel_button.isEnabled()
        # The tray went running → ok once the status says the last backup succeeded.
        await wait_for(
            lambda: tray.state == "ok" and "running" in states,
            tray.stateChanged,
            b.statusChanged,
            what="tray ok after running",
        )
        assert states.index("running") < len(states) - 1 and states[-1] == "ok"
        assert "warning" in states[: states.index("running")]
        assert "laptop-docs: success" in tray.tooltip
        assert tray.tooltip.splitlines()[:2] == ["Peerstash — all backups are fine", "Health: ok"]
        # Overview shows the result.
        w.show_page(w.overview)
        await w.overview.tasks.idle()
        assert w.overview.plans.item(0, 3).text() == "success"
        assert w.overview.health.text() == "Health: ok"

        # Quit: the window goes at once, the in-process node stops cleanly (no operation left
        # running, the admin socket removed, the data dir lock released).
        socket_path = gui.app.node.socket_path
        tray.quit_action.trigger()
        # The node runs in this app: Quit says first that scheduled backups stop.
        assert not gui.app.quit_requested.is_set()
        assert gui.app.question is not None and gui.app.question.isVisible()
        gui.app.question.findChild(QPushButton, "quit").click()
        assert gui.app.quit_requested.is_set()
        await gui.app.stop()
        assert not w.isVisible()
        assert gui.app.node is None
        assert not socket_path.exists()
        from peerstash.desktop.api import node_answers

        assert not await node_answers(gui.data_dir)

    qloop.run(body(), timeout=240)


def test_invalid_forms_show_inline_errors_and_create_nothing(
    gui: GuiEnv, qloop: QLoop, qtbot: Any
) -> None:
    w = gui.window
    qtbot.addWidget(w)

    async def body() -> None:
        b = gui.backend
        page = w.plans
        w.show_page(page)
        dlg = page.open_add_plan()
        qtbot.keyClicks(dlg.name, "bad name!")
        dlg.paths.setPlainText(f"relative/dir\n{gui.tmp / 'does-not-exist'}")
        dlg.schedule_kind.setCurrentIndex(dlg.schedule_kind.findData("every"))
        qtbot.keyClicks(dlg.schedule, "6 parsecs")
        qtbot.keyClicks(dlg.keep["daily"], "-3")
        qtbot.keyClicks(dlg.keep_within, "forever")
        qtbot.mouseClick(dlg.save_button, Qt.MouseButton.LeftButton)
        errors = dlg.field_errors()
        assert set(errors) == {"name", "paths", "schedule", "retention"}, errors
        assert "not allowed" in errors["name"]
        assert "relative/dir is not an absolute path" in errors["paths"]
        assert "does not exist" in errors["paths"]
        assert "unit" in errors["schedule"].lower() or "interval" in errors["schedule"].lower()
        assert "whole number" in errors["retention"]
        assert dlg.isVisible() and not dlg.submitting
        assert dlg.banner.level == "error"

        # A cron expression that never fires is refused as well.
        dlg.name.setText("ok-name")
        dlg.paths.setPlainText(str(gui.src))
        dlg.keep["daily"].clear()
        dlg.keep_within.clear()
        dlg.schedule_kind.setCurrentIndex(dlg.schedule_kind.findData("cron"))
        dlg.schedule.setText("0 0 30 2 *")
        qtbot.mouseClick(dlg.save_button, Qt.MouseButton.LeftButton)
        assert set(dlg.field_errors()) == {"schedule"}
        dlg.reject()

        # Repository form: missing name, relative location, passwords that differ.
        rdlg = page.open_add_repo()
        rdlg.uri.setText("relative/repo")
        rdlg.password.setText("one")
        rdlg.password2.setText("two")
        qtbot.mouseClick(rdlg.save_button, Qt.MouseButton.LeftButton)
        assert set(rdlg.field_errors()) == {"name", "uri", "password"}
        # Password from a file that does not exist.
        rdlg.name.setText("second")
        rdlg.uri.setText(str(gui.tmp / "repo2"))
        rdlg.source.setCurrentIndex(rdlg.source.findData("file"))
        rdlg.ref.setText(str(gui.tmp / "no-such-password-file"))
        qtbot.mouseClick(rdlg.save_button, Qt.MouseButton.LeftButton)
        assert set(rdlg.field_errors()) == {"ref"}
        rdlg.reject()

        # Nothing reached the node.
        assert await b.call("GET", "/v1/plans") == []
        assert [r["id"] for r in await b.call("GET", "/v1/repos")] == ["main"]
        assert not (gui.tmp / "repo2").exists()

    qloop.run(body())


def test_new_plan_backs_up_at_once_unless_unchecked(gui: GuiEnv, qloop: QLoop, qtbot: Any) -> None:
    """The add-plan dialog's "Back up now" (checked) makes the node start the first backup."""
    w = gui.window
    qtbot.addWidget(w)

    async def body() -> None:
        b = gui.backend
        page = w.plans
        w.show_page(page)
        dlg = page.open_add_plan()
        assert dlg.backup_now.isChecked()
        dlg.name.setText("docs")
        dlg.paths.setPlainText(str(gui.src))
        qtbot.mouseClick(dlg.save_button, Qt.MouseButton.LeftButton)
        await wait_for(lambda: not dlg.isVisible(), b.configChanged, dlg.finished, what="saved")
        ops = await b.call("GET", "/v1/ops?plan=docs")
        assert [(o["kind"], o["plan"]) for o in ops] == [("backup", "docs")]
        await wait_for(
            lambda: b.status is not None and b.status.health.level == "ok",
            b.statusChanged,
            timeout=120,
            what="health ok after the first backup",
        )
        assert [o["status"] for o in await b.call("GET", "/v1/ops?plan=docs")] == ["success"]
        # The edit dialog does not offer it: the plan exists ("Back up now" is a button there).
        page.select_plan("docs")
        edit = page.open_edit_plan()
        assert edit is not None
        assert not edit.backup_now.isVisibleTo(edit)
        # A PATCH of what changed (EditPlan has no backup_now): nothing changed, nothing to send.
        assert edit.validate() == ({}, schema.EditPlan())
        edit.reject()

    qloop.run(body())


def test_server_refusal_is_shown_under_the_field(gui: GuiEnv, qloop: QLoop, qtbot: Any) -> None:
    """What only the node knows (here: a wrong password for an existing repo) comes back inline."""
    w = gui.window
    qtbot.addWidget(w)

    async def body() -> None:
        dlg = w.plans.open_add_repo()
        dlg.name.setText("again")
        dlg.uri.setText(str(gui.tmp / "repo"))
        dlg.password.setText("not-the-password")
        dlg.password2.setText("not-the-password")
        dlg.init.setChecked(False)
        qtbot.mouseClick(dlg.save_button, Qt.MouseButton.LeftButton)
        await dlg.tasks.idle()
        assert dlg.isVisible()
        errors = dlg.field_errors()
        assert "password" in errors, (errors, dlg.banner.text())
        assert [r["id"] for r in await gui.backend.call("GET", "/v1/repos")] == ["main"]
        dlg.reject()

    qloop.run(body())


def test_tray_menu_actions(gui: GuiEnv, qloop: QLoop, qtbot: Any) -> None:
    w = gui.window
    qtbot.addWidget(w)
    tray = gui.app.tray

    async def body() -> None:
        b = gui.backend
        await b.add_plan(
            schema.AddPlan(backup_now=False, id="alpha", repo="main", paths=[str(gui.src / "docs")])
        )
        await b.add_plan(
            schema.AddPlan(backup_now=False, id="beta", repo="main", paths=[str(gui.src / "docs")])
        )
        assert set(tray.backup_actions) == {"alpha", "beta"}
        texts = [a.text() for a in tray.menu.actions()]
        assert "Back up beta now" in texts and "Open Peerstash" in texts and "Quit" in texts
        assert tray.peers_menu.actions(), "the Peers submenu is never empty"

        started: list[OpRecord] = []
        b.opChanged.connect(lambda op: started.append(op))
        tray.backup_actions["beta"].trigger()
        await wait_for(
            lambda: [o for o in started if o.kind == "backup"], b.opChanged, what="backup op"
        )
        assert {o.plan for o in started if o.kind == "backup"} == {"beta"}
        await wait_for(
            lambda: any(o.plan == "beta" and o.status == "success" for o in started),
            b.opChanged,
            timeout=120,
            what="beta success",
        )

        # Pause, then resume, the scheduler.
        assert tray.pause_action.text() == "Pause scheduled backups"
        tray.pause_action.trigger()
        await wait_for(lambda: b.paused, b.statusChanged, what="paused")
        assert (await b.call("GET", "/v1/status"))["paused"] is True
        assert tray.pause_action.text() == "Resume scheduled backups"
        # alpha never succeeded, so the node's health (attention) outranks "paused" in the
        # icon; the tooltip says both.
        await wait_for(
            lambda: "Scheduled backups are paused." in tray.tooltip,
            tray.stateChanged,
            b.statusChanged,
        )
        assert tray.state == "warning"
        assert "• plan alpha has never succeeded" in tray.tooltip.splitlines()
        tray.pause_action.trigger()
        await wait_for(lambda: not b.paused, b.statusChanged, what="resumed")
        assert (await b.call("GET", "/v1/status"))["paused"] is False

        # Open shows the window; Quit asks the app to stop.
        w.hide()
        tray.open_action.trigger()
        assert w.isVisible()
        assert not gui.app.quit_requested.is_set()
        tray.quit_action.trigger()
        assert gui.app.quit_requested.is_set()

    qloop.run(body(), timeout=180)


def test_browse_snapshot_and_restore_a_file(gui: GuiEnv, qloop: QLoop, qtbot: Any) -> None:
    w = gui.window
    qtbot.addWidget(w)

    async def body() -> None:
        b = gui.backend
        await b.add_plan(
            schema.AddPlan(backup_now=False, id="docs", repo="main", paths=[str(gui.src / "docs")])
        )
        op, _ = await b.backup("docs")
        await wait_for(
            lambda: b.active.get((op.origin, op.id)) is None,
            b.opChanged,
            timeout=120,
            what="backup done",
        )
        page = w.snapshots
        w.show_page(page)
        page.select_repo("main")
        await page.tasks.idle()
        assert page.snapshots.rowCount() == 1, page.banner.text()
        page.snapshots.selectRow(0)
        # The tree opens at the backed-up folder (listed lazily), not at "/".
        target_file = gui.src / "docs" / "notes.txt"
        parts = target_file.parts
        await page.tasks.idle()
        assert page.find_item("/") is None
        assert page.find_item(str(gui.src / "docs")) is not None
        leaf = page.find_item(str(target_file))
        assert leaf is not None
        page.tree.setCurrentIndex(leaf.index())
        page.tree.selectionModel().select(
            leaf.index(),
            page.tree.selectionModel().SelectionFlag.ClearAndSelect
            | page.tree.selectionModel().SelectionFlag.Rows,
        )
        assert page.selected_path() == str(target_file)
        out = gui.tmp / "restored"
        out.mkdir()
        page.target.setText(str(out))
        assert page.restore_button.isEnabled()
        qtbot.mouseClick(page.restore_button, Qt.MouseButton.LeftButton)
        await wait_for(
            lambda: (
                page.restore_op is not None and page.restore_op.status not in ("pending", "running")
            ),
            b.opChanged,
            timeout=120,
            what="restore end",
        )
        assert page.restore_op.status == "success", page.restore_op.error
        restored = out / Path(*parts[1:])
        assert restored.read_text() == target_file.read_text()
        assert page.progress.value() == 1000

    qloop.run(body(), timeout=240)


def test_pair_and_make_tokens_on_the_peers_page(gui: GuiEnv, qloop: QLoop, qtbot: Any) -> None:
    """Pairing through the page with a second real node; skipped on nodes without pairing."""
    from peerstash.peer.cli import AdminClient
    from peerstash.peer.node import Node
    from tests.fixtures.gui import node_options

    w = gui.window
    qtbot.addWidget(w)
    page = w.peers

    async def body() -> None:
        w.show_page(w.operations)  # the list is live from here on
        await w.operations.model.tasks.idle()
        w.show_page(page)
        await page.tasks.idle()
        assert not page.content.isHidden()
        other = Node(gui.tmp / "bravo-data", node_options(instance_id="bravo"))
        await other.start()
        try:
            assert other.peer_url
            async with AdminClient(gui.tmp / "bravo-data") as client:
                made = await client.call(
                    "POST", "/v1/tokens", {"label": "guitest", "ttl": "1h", "grants": ["ops"]}
                )
            page.tabs.setCurrentIndex(1)  # "Pair a machine"
            page.token_in.setText(made["token"])
            page.url_in.setText(other.peer_url)
            qtbot.mouseClick(page.pair_button, Qt.MouseButton.LeftButton)
            await page.tasks.idle()
            assert page.banner.level == "ok", page.banner.text()
            page.tabs.setCurrentIndex(0)
            assert _plan_rows(page.hosts) == ["bravo"]
            assert page.hosts.item(0, 1).text() in ("connecting", "online")
            assert page.hosts.item(0, 2).text() == other.identity.key_id  # type: ignore[union-attr]
            # The tray's Peers submenu lists it.
            await gui.backend.refresh_peers()
            texts = [a.text() for a in gui.app.tray.peers_menu.actions()]
            assert any(t.startswith("bravo: ") for t in texts), texts

            # A token made here is shown once and listed.
            page.tabs.setCurrentIndex(1)
            page.token_label.setText("phone")
            qtbot.mouseClick(page.create_button, Qt.MouseButton.LeftButton)
            await page.tasks.idle()
            assert page.token_out.isVisible()
            assert page.token_out.text().endswith("#guitest")
            assert _plan_rows(page.tokens) == ["phone"]

            # bravo backs up; its operation syncs here (it granted us "ops") and shows up in the
            # operations list and in the overview's table of other machines.
            src = gui.tmp / "bravo-src"
            src.mkdir()
            (src / "f.txt").write_text("from bravo\n")
            async with AdminClient(gui.tmp / "bravo-data") as client:
                await client.call(
                    "POST",
                    "/v1/repos",
                    {
                        "id": "local",
                        "uri": str(gui.tmp / "bravo-repo"),
                        "password": {"source": "secret", "value": "bravo-password"},
                        "init": True,
                    },
                )
                await client.call(
                    "POST",
                    "/v1/plans",
                    {"id": "home", "repo": "local", "paths": [str(src)], "backup_now": False},
                )
                await client.call("POST", "/v1/plans/home/backup")
            b = gui.backend
            await wait_for(
                lambda: any(
                    o.origin == "bravo" and o.status == "success" for o in w.operations.model.ops()
                ),
                b.opChanged,
                timeout=90,
                what="bravo's backup synced",
            )
            assert w.operations.origin_filter.findData("bravo") > 0
            w.show_page(w.overview)
            await w.overview.tasks.idle()
            fleet = w.overview.fleet_table
            rows = [
                (fleet.item(r, 0).text(), fleet.item(r, 2).text(), fleet.item(r, 4).text())
                for r in range(fleet.rowCount())
            ]
            assert ("bravo", "home", "success") in rows, rows

            # Its log is not synced: the node fetches it from bravo when the operation is
            # selected, and it shows like a local one.
            theirs = next(
                o for o in w.operations.model.ops() if o.origin == "bravo" and o.kind == "backup"
            )
            w.show_page(w.operations)
            assert w.operations.select_op(theirs.id)
            await w.operations.tasks.idle()
            assert "backup of plan home (manual)" in w.operations.log.toPlainText()

            # Edit what we grant bravo: a bad scope is refused inline, a good one is listed.
            w.show_page(page)
            page.tabs.setCurrentIndex(0)
            page.hosts.selectRow(0)
            qtbot.mouseClick(page.host_grants_button, Qt.MouseButton.LeftButton)
            dlg = page.dialog
            assert dlg is not None and dlg.isVisible()
            assert dlg.boxes["ops"].isChecked() and dlg.scopes["ops"].text() == "*"
            assert not dlg.boxes["run"].isChecked() and not dlg.scopes["run"].isEnabled()
            dlg.boxes["run"].setChecked(True)
            dlg.scopes["run"].setText("nightly")
            qtbot.mouseClick(dlg.save_button, Qt.MouseButton.LeftButton)
            assert set(dlg.field_errors()) == {"grants"}, dlg.field_errors()
            assert not dlg.tasks.busy
            dlg.scopes["run"].setText("plan:nightly")
            dlg.scopes["ops"].setText("*, !repo:private")
            qtbot.mouseClick(dlg.save_button, Qt.MouseButton.LeftButton)
            await wait_for(lambda: not dlg.isVisible(), dlg.finished, what="grants saved")
            assert page.banner.level == "ok", page.banner.text()
            assert page.hosts.item(0, 3).text() == "ops (*,!repo:private), run (plan:nightly)"
            listed = {p["id"]: p for p in await b.call("GET", "/v1/peers")}
            assert listed["bravo"]["grants"] == ["ops:*,!repo:private", "run:plan:nightly"]
        finally:
            await other.stop()

    qloop.run(body())


def test_failures_notify_once_and_cancel_and_remove(gui: GuiEnv, qloop: QLoop, qtbot: Any) -> None:
    """A failed backup notifies (once, rate-limited), turns the tray red; a queued operation
    is cancelled from the Operations page; removing a plan asks first."""
    import shutil

    w = gui.window
    qtbot.addWidget(w)
    tray = gui.app.tray
    notes: list[tuple[str, str]] = []
    tray.notified.connect(lambda title, msg: notes.append((title, msg)))

    async def body() -> None:
        b = gui.backend
        # A repository whose password command waits for a gate file: while the gate is shut,
        # a backup into it stays running, so what is queued behind it does not race it.
        script, gate = gated_password(gui.tmp, PASSWORD)
        gate.touch()
        await b.call(
            "POST",
            "/v1/repos",
            {
                "id": "held",
                "uri": str(gui.tmp / "held-repo"),
                "password": {"source": "command", "ref": str(script)},
                "init": True,
            },
        )
        await b.refresh_config()
        gone = gui.tmp / "gone"
        gone.mkdir()
        (gone / "f").write_text("x")
        await b.add_plan(
            schema.AddPlan(backup_now=False, id="flaky", repo="held", paths=[str(gone)])
        )
        await b.add_plan(
            schema.AddPlan(backup_now=False, id="docs", repo="held", paths=[str(gui.src)])
        )
        shutil.rmtree(gone)

        failed: list[OpRecord] = []
        b.opChanged.connect(lambda op: op.status == "error" and failed.append(op))
        for expected in (1, 2):
            tray.backup_actions["flaky"].trigger()
            await wait_for(lambda n=expected: len(failed) >= n, b.opChanged, timeout=60)
        await wait_for(lambda: tray.state == "error", tray.stateChanged, b.statusChanged)
        failure_notes = [n for n in notes if "failed" in n[0]]
        assert len(failure_notes) == 1, notes  # the second failure is within the rate limit
        me = b.node_name or b.instance_id
        assert failure_notes[0][0] == f"{me}: the backup of flaky failed"
        assert failure_notes[0][1]  # restic's reason, in words

        # Two backups on one repository: the second waits its turn; cancel it from the list.
        ops = w.operations
        w.show_page(ops)
        await ops.model.tasks.idle()
        gate.unlink()
        first, _ = await b.backup("docs")
        # "Back up now" again on the same plan queues nothing: the node answers with that one.
        again, already = await b.backup("docs")
        assert again.id == first.id and already.startswith("plan docs is already")

        def status_of(op_id: str) -> str:
            row = ops.model.row_of(op_id)
            return "" if row is None else ops.model.op_at(row).status

        second, _ = await b.backup("flaky")
        await wait_for(lambda: ops.model.row_of(second.id) is not None, ops.model.rowsInserted)
        assert ops.select_op(second.id)
        assert ops.cancel_button.isEnabled()
        qtbot.mouseClick(ops.cancel_button, Qt.MouseButton.LeftButton)
        await wait_for(lambda: status_of(second.id) == "cancelled", ops.model.dataChanged)
        gate.touch()  # the running backup gets its password and finishes

        await wait_for(
            lambda: (
                status_of(second.id) not in ("", "pending", "running")
                and status_of(first.id) not in ("", "pending", "running")
            ),
            ops.model.dataChanged,
            timeout=60,
        )
        assert status_of(second.id) == "cancelled"
        assert status_of(first.id) == "success"

        # Removing a plan asks first; Cancel keeps it, the destructive button removes it.
        page = w.plans
        w.show_page(page)
        page.select_plan("flaky")
        qtbot.mouseClick(page.remove_plan_button, Qt.MouseButton.LeftButton)
        box = page.question
        assert box is not None and box.isVisible()
        box.reject()
        await page.tasks.idle()
        assert {p["id"] for p in await b.call("GET", "/v1/plans")} == {"flaky", "docs"}
        qtbot.mouseClick(page.remove_plan_button, Qt.MouseButton.LeftButton)
        box = page.question
        remove = next(btn for btn in box.buttons() if btn.text() == "Remove plan")
        qtbot.mouseClick(remove, Qt.MouseButton.LeftButton)
        await page.tasks.idle()
        assert {p["id"] for p in await b.call("GET", "/v1/plans")} == {"docs"}
        assert _plan_rows(page.plans) == ["docs"]

    qloop.run(body(), timeout=180)


def test_window_follows_the_node_going_away_and_coming_back(
    gui: GuiEnv, qloop: QLoop, qtbot: Any
) -> None:
    """Attached to a node that dies: the window says so, reconnects when it is back, reloads."""
    import asyncio

    w = gui.window
    qtbot.addWidget(w)
    b = gui.backend
    node = gui.proc
    assert node is not None
    resets: list[bool] = []
    b.opsReset.connect(lambda: resets.append(True))

    async def body() -> None:
        assert b.connected
        node.proc.kill()
        await asyncio.to_thread(node.proc.wait, 30)
        await wait_for(lambda: not b.connected, b.connectionChanged, what="disconnect seen")
        assert "not reachable" in w.connection.text()
        # Asking for something now fails in words, not with a traceback.
        w.show_page(w.plans)
        await w.plans.tasks.idle()
        assert w.plans.banner.level == "error"
        assert "no Peerstash node is running" in w.plans.banner.text()

        await asyncio.to_thread(node.start)
        await wait_for(lambda: b.connected, b.connectionChanged, timeout=60, what="reconnect")
        await wait_for(lambda: resets, b.opsReset, what="lists reloaded")
        assert "guitest" in w.connection.text()
        await b.add_plan(
            schema.AddPlan(backup_now=False, id="after", repo="main", paths=[str(gui.src / "docs")])
        )
        op, _ = await b.backup("after")
        await wait_for(lambda: (op.origin, op.id) not in b.active, b.opChanged, timeout=60)

    qloop.run(body(), timeout=150)


@pytest.mark.parametrize(("node_mode", "src_megabytes"), [("in_process", 1)])
def test_a_second_launch_brings_up_the_open_window(gui: GuiEnv, qloop: QLoop, qtbot: Any) -> None:
    """Launching ``peerstash`` again raises the window already open; no second window/node."""
    from peerstash.desktop.app import DesktopApp
    from tests.fixtures.gui import node_options

    w = gui.window
    qtbot.addWidget(w)

    async def body() -> None:
        w.hide()  # closed to the tray, as a person leaves it
        assert not w.isVisible()
        second = DesktopApp(gui.data_dir, node_options(instance_id="guitest"), show_tray=False)
        await second.run()  # returns at once: nothing of its own to run
        assert second.handed_over
        assert second.window is None and second.node is None
        await wait_for(w.isVisible, gui.backend.presentRequested, what="the first window up")
        # The first app still owns the only node, and it still answers.
        assert gui.app.node is not None
        assert (await gui.backend.call("GET", "/v1/status"))["instance_id"] == "guitest"

    qloop.run(body())


def test_a_launch_next_to_a_headless_node_opens_a_window(
    gui: GuiEnv, qloop: QLoop, qtbot: Any
) -> None:
    """Next to ``peerstash --no-gui`` (no window follows it) a launch attaches and shows one."""
    assert gui.proc is not None  # the default mode: attached to a real --no-gui process
    assert gui.app.handed_over is False
    assert gui.window is not None and gui.window.isVisible()
