"""Safe destructive actions and truthful results in the tray app, against a real node and real
restic: restore into a fresh folder or, after showing what would be overwritten, over the
original; retention that lists what it removes first; prune that asks; snapshot columns; the
summary of a finished backup."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("qasync")

import os
import re
import subprocess
from pathlib import Path
from typing import Any

from PySide6.QtCore import QUrl

from peerstash.core.records import OpRecord
from peerstash.core.wording import backup_summary_line, human_bytes
from peerstash.peer.api import schema
from tests.fixtures.gui import PASSWORD, GuiEnv, QLoop, wait_for
from tests.fixtures.servers import resolve_restic


async def backup_and_wait(gui: GuiEnv, plan: str) -> dict[str, Any]:
    """Back ``plan`` up through the backend and wait for the whole flow (retention too)."""
    b = gui.backend
    op, _ = await b.backup(plan)

    def flow_done() -> bool:
        return not any(o.flow_id == op.flow_id for o in b.active.values()) and (
            b.active.get((op.origin, op.id)) is None
        )

    await wait_for(flow_done, b.opChanged, timeout=120, what=f"backup of {plan}")
    done = await b.call("GET", f"/v1/ops/{op.id}")
    assert done["status"] == "success", done.get("error")
    return dict(done)


async def add_docs_plan(gui: GuiEnv, **extra: Any) -> None:
    await gui.backend.add_plan(
        schema.AddPlan(
            backup_now=False,
            id="docs",
            repo="main",
            paths=[str(gui.src / "docs")],
            **extra,
        )
    )


async def show_snapshots(gui: GuiEnv) -> Any:
    page = gui.window.snapshots
    gui.window.show_page(page)
    page.select_repo("main")
    await page.tasks.idle()
    return page


# -- snapshot columns, the browser's start, the backup summary ------------------------------


@pytest.fixture(params=["system", "0.18"])
def node_restic(request: pytest.FixtureRequest) -> str:
    return resolve_restic(request.param)


def test_snapshot_columns_browser_start_and_backup_summary(
    gui: GuiEnv, qloop: QLoop, qtbot: Any, node_restic: str
) -> None:
    w = gui.window
    qtbot.addWidget(w)
    modern = "0.18" in node_restic

    async def body() -> None:
        await add_docs_plan(gui)
        op = await backup_and_wait(gui, "docs")
        said = backup_summary_line(op["summary"])
        assert said and said.startswith("1 new, 0 changed, 0 unmodified files · ")
        assert op["bytes_done"] == op["bytes_total"] > 0  # the bar ends full

        # The operations page shows what restic reported, and so does the log.
        ops = w.operations
        w.show_page(ops)
        await ops.model.tasks.idle()
        row = ops.model.row_of(op["id"])
        assert row is not None
        detail = ops.model.index(row, 7).data()
        assert detail == f"snapshot {op['snapshot_id'][:8]} · {said}"
        assert ops.select_op(op["id"])
        await ops.tasks.idle()
        assert f"snapshot {op['snapshot_id'][:8]} saved: {said}" in ops.log.toPlainText()

        page = await show_snapshots(gui)
        assert page.snapshots.rowCount() == 1, page.banner.text()
        headers = [
            page.snapshots.horizontalHeaderItem(c).text()
            for c in range(page.snapshots.columnCount())
        ]
        assert headers == ["Date", "ID", "Plan", "Host", "Size", "Files", "Folders", "Other tags"]
        cells = [page.snapshots.item(0, c).text() for c in range(len(headers))]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", cells[0]), cells
        assert cells[1] == op["snapshot_id"][:8]
        assert (cells[2], cells[3]) == ("docs", "guitest")  # not "plan:docs, host:guitest"
        assert cells[6] == str(gui.src / "docs") and cells[7] == ""
        snaps = await gui.backend.call("GET", "/v1/repos/main/snapshots")
        if modern:  # restic 0.17+ stores the size and file count in the snapshot
            total = snaps[0]["summary"]["total_bytes_processed"]
            assert (cells[4], cells[5]) == (human_bytes(total), "1")
        else:
            assert snaps[0]["summary"] is None
            assert (cells[4], cells[5]) == ("", "")

        # The browser opens at the backed-up folder, already listed.
        page.snapshots.selectRow(0)
        await page.tasks.idle()
        roots = [page.tree_model.item(r, 0) for r in range(page.tree_model.rowCount())]
        assert [r.text() for r in roots] == [str(gui.src / "docs")]
        assert page.find_item(str(gui.src / "docs" / "notes.txt")) is not None

    qloop.run(body(), timeout=240)


def test_choosing_another_snapshot_while_the_tree_loads_shows_no_error(
    gui: GuiEnv, qloop: QLoop, qtbot: Any
) -> None:
    """Clicking from one snapshot to the next before the first one's files are listed: the
    first listing stops (its folder item is gone with the cleared tree) and no "Something went
    wrong" appears; the tree shows the second snapshot's files."""

    async def body() -> None:
        await add_docs_plan(gui)
        await backup_and_wait(gui, "docs")
        (gui.src / "docs" / "later.txt").write_text("only in the newer snapshot\n")
        await backup_and_wait(gui, "docs")
        page = await show_snapshots(gui)
        assert page.snapshots.rowCount() == 2, page.banner.text()
        page.snapshots.selectRow(1)  # the older one: its listing is spawned, not yet run
        page.snapshots.clearSelection()
        page.snapshots.selectRow(0)
        await page.tasks.idle()
        assert page.banner.text() == "", page.banner.text()
        assert page.find_item(str(gui.src / "docs" / "later.txt")) is not None

    qloop.run(body(), timeout=240)


# -- restore ---------------------------------------------------------------------------------


def select_path(page: Any, path: str) -> None:
    node = page.find_item(path)
    assert node is not None, f"{path} is not listed"
    sm = page.tree.selectionModel()
    sm.select(node.index(), sm.SelectionFlag.ClearAndSelect | sm.SelectionFlag.Rows)
    assert page.selected_path() == path


def test_restore_goes_to_a_new_folder_and_asks_before_overwriting(
    gui: GuiEnv, qloop: QLoop, qtbot: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = gui.window
    qtbot.addWidget(w)
    home = gui.tmp / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    opened: list[QUrl] = []
    monkeypatch.setattr("peerstash.desktop.pages.snapshots.QDesktopServices.openUrl", opened.append)
    docs = gui.src / "docs"
    notes = docs / "notes.txt"
    original = notes.read_text()

    async def restored(page: Any, before: str | None) -> OpRecord:
        await wait_for(
            lambda: (
                page.restore_op is not None
                and page.restore_op.id != before
                and page.restore_op.status not in ("pending", "running")
            ),
            gui.backend.opChanged,
            timeout=120,
            what="restore end",
        )
        op: OpRecord = page.restore_op
        assert op.status == "success", op.error
        return op

    async def restores() -> list[dict[str, Any]]:
        return [o for o in await gui.backend.call("GET", "/v1/ops") if o["kind"] == "restore"]

    async def body() -> None:
        await add_docs_plan(gui)
        op = await backup_and_wait(gui, "docs")
        page = await show_snapshots(gui)
        page.snapshots.selectRow(0)
        await page.tasks.idle()
        # The default: a new folder in ~/Restored named after the plan and the snapshot date.
        default = page.target.text()
        assert re.fullmatch(
            re.escape(str(home / "Restored" / "docs-")) + r"\d{4}-\d{2}-\d{2}_\d{6}", default
        ), default
        assert page.to_new.isChecked() and not Path(default).exists()  # noqa: ASYNC240 - a test
        select_path(page, str(docs))
        page.restore_button.click()
        first = await restored(page, None)
        assert page.confirm_dialog is None  # nothing to overwrite in a new folder: no question
        where = Path(default) / str(docs).lstrip("/")
        assert (where / "notes.txt").read_text() == original
        # Where the files went, and a way to open it.
        assert page.restore_status.text() == f"Restore finished: the files are in {where}."
        assert page.open_button.isVisible()
        page.open_button.click()
        assert opened == [QUrl.fromLocalFile(str(where))]

        # The default never lands on a folder that holds something: the next one is "-2".
        page.snapshots.clearSelection()
        page.snapshots.selectRow(0)
        await page.tasks.idle()
        assert page.target.text() == default + "-2"

        # Over the original location: the file that would be overwritten is shown, and asked.
        notes.write_text("changed since the backup\n")
        (docs / "extra.txt").write_text("not in the snapshot\n")
        select_path(page, str(docs))
        page.to_original.setChecked(True)
        page.restore_button.click()
        await page.tasks.idle()  # the node's preview answered
        dlg = page.confirm_dialog
        assert dlg is not None and dlg.isVisible()
        assert dlg.rows() == [[str(notes)]]
        assert f"Restoring {docs} to where it came from overwrites 1 of its 1 file" in (
            dlg.text.text()
        )
        assert dlg.yes_button.text() == "Overwrite 1 file"
        dlg.cancel_button.click()
        assert page.restore_status.text() == "Restore cancelled: nothing was changed."
        assert notes.read_text() == "changed since the backup\n"
        assert len(await restores()) == 1  # no restore was queued
        # Asked again, and this time confirmed: the snapshot's version is back.
        page.restore_button.click()
        await page.tasks.idle()
        dlg = page.confirm_dialog
        assert dlg is not None and dlg.isVisible() and dlg.rows() == [[str(notes)]]
        dlg.yes_button.click()
        second = await restored(page, first.id)
        assert notes.read_text() == original
        assert (docs / "extra.txt").read_text() == "not in the snapshot\n"  # left alone
        assert page.restore_status.text() == f"Restore finished: the files are in {docs}."
        assert second.snapshot_id == op["snapshot_id"] or str(second.snapshot_id).startswith(
            op["snapshot_id"][:8]
        )

    qloop.run(body(), timeout=300)


# -- retention and prune ---------------------------------------------------------------------


def bare_backup(gui: GuiEnv, restic: str, *args: str) -> None:
    """``restic backup`` by hand, outside Peerstash (another machine, same plan tag)."""
    res = subprocess.run(
        [restic, "-r", str(gui.tmp / "repo"), "backup", "-q", *args, str(gui.src / "docs")],
        env={**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(gui.tmp / "rc")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr


def test_retention_lists_what_it_removes_and_prune_asks(
    gui: GuiEnv, qloop: QLoop, qtbot: Any, node_restic: str
) -> None:
    w = gui.window
    qtbot.addWidget(w)
    b = gui.backend

    async def snapshot_ids() -> set[str]:
        return {s["id"] for s in await b.call("GET", "/v1/repos/main/snapshots")}

    async def kinds() -> list[str]:
        return [o["kind"] for o in await b.call("GET", "/v1/ops")]

    async def body() -> None:
        await add_docs_plan(gui)  # no retention yet: every backup stays
        ours = [(await backup_and_wait(gui, "docs"))["snapshot_id"] for _ in range(3)]
        bare_backup(gui, node_restic, "--host", "other", "--tag", "plan:docs")
        await b.edit_plan("docs", schema.EditPlan(retention={"keep_last": 1}))
        before = await snapshot_ids()
        assert len(before) == 4
        other = {
            s["id"]
            for s in await b.call("GET", "/v1/repos/main/snapshots")
            if s["hostname"] == "other"
        }
        dry = await b.call("POST", "/v1/repos/main/forget", {"dry_run": True})
        named = {s["short_id"] for s in dry["remove"]}
        assert len(named) == 2 and all(ours[-1][:8] != n for n in named)

        page = w.plans
        w.show_page(page)
        page.select_repo("main")
        page.maint_buttons["forget"].click()
        await page.tasks.idle()
        dlg = page.confirm_dialog
        assert dlg is not None and dlg.isVisible()
        assert {row[1] for row in dlg.rows()} == named  # exactly what the dry run names
        assert all(row[2:4] == ["docs", "guitest"] for row in dlg.rows())
        assert dlg.yes_button.text() == "Remove 2 snapshots"
        assert "removes 2 snapshots and keeps 1" in dlg.text.text()
        dlg.cancel_button.click()
        await page.tasks.idle()
        assert await snapshot_ids() == before  # Cancel removed nothing
        assert "forget" not in await kinds()

        page.maint_buttons["forget"].click()
        await page.tasks.idle()
        dlg = page.confirm_dialog
        assert dlg is not None and dlg.isVisible()
        dlg.yes_button.click()
        await page.tasks.idle()
        await wait_for(
            lambda: not any(o.kind == "forget" for o in b.active.values()),
            b.opChanged,
            timeout=120,
            what="forget end",
        )
        after = await snapshot_ids()
        gone = before - after
        assert {g[:8] for g in gone} == named  # OK removed exactly them
        assert other <= after  # another machine's snapshot with our plan's tag stays
        assert len(after) == 2

        # Prune asks, says it is slow and cannot be undone; Cancel queues nothing.
        page.maint_buttons["prune"].click()
        box = page.question
        assert box is not None and box.isVisible()
        assert "long time" in box.text() and "cannot be undone" in box.text()
        box.button(box.StandardButton.Cancel).click()
        await page.tasks.idle()
        assert "prune" not in await kinds()
        page.maint_buttons["prune"].click()
        box = page.question
        assert box is not None
        prune_now = next(bt for bt in box.buttons() if bt.text() == "Prune now")
        prune_now.click()
        await page.tasks.idle()
        await wait_for(
            lambda: not any(o.kind == "prune" for o in b.active.values()),
            b.opChanged,
            timeout=120,
            what="prune end",
        )
        pruned = [o for o in await b.call("GET", "/v1/ops") if o["kind"] == "prune"]
        assert [o["status"] for o in pruned] == ["success"]
        assert await snapshot_ids() == after

    qloop.run(body(), timeout=300)
