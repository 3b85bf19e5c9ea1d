"""Notifications: routed to the desktop's notification service over a real session bus, the
tray balloon as fallback; named by machine; rate-limited except for a new kind of failure.
Quitting and closing the window without a tray: what is asked, and when."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest

from peerstash.core.records import OpRecord
from peerstash.peer.api import schema
from tests.fixtures.dbus import NOTIFY_SIGNATURE, NotificationServer, session_bus
from tests.fixtures.gui import HAVE_QT, GuiEnv, QLoop, wait_for
from tests.fixtures.records import listed_peer_record, op_record

pytestmark = pytest.mark.skipif(not HAVE_QT, reason="needs PySide6, qasync and pytest-qt")


def test_routing_dbus_when_served_else_the_balloon(qloop: QLoop, tmp_path: Path) -> None:
    """With a notification service on the session bus it gets the notification (spec
    signature, app name, urgency, timeout) and the balloon does not; without the service, or
    without any bus, the balloon shows it; with neither, nothing claims to have shown it."""
    from peerstash.desktop.platform.notify import EXPIRE_MS, Notifier

    balloons: list[tuple[str, str, bool]] = []

    def balloon(summary: str, body: str, critical: bool) -> bool:
        balloons.append((summary, body, critical))
        return True

    with session_bus() as address:
        notifier = Notifier(balloon, bus=address)
        server = NotificationServer(address).start()
        try:
            route = qloop.run(
                notifier.deliver("laptop: the backup of docs failed", "why", critical=True)
            )
            assert route == "dbus"
            (got,) = server.wait_for(1)
            assert got.signature == NOTIFY_SIGNATURE
            app, replaces, icon, summary, body, actions, hints, expire = got.args
            assert (app, replaces, summary, body) == (
                "Peerstash",
                0,
                "laptop: the backup of docs failed",
                "why",
            )
            assert icon == "dialog-error" and actions == []
            assert hints["urgency"] == ("y", 2) and expire == EXPIRE_MS
            assert balloons == []
        finally:
            server.stop()

        # The bus is there, the service is gone: the balloon.
        route = qloop.run(notifier.deliver("s", "b"))
        assert route == "balloon" and balloons == [("s", "b", False)]
        assert "ServiceUnknown" in notifier.last_dbus_error, notifier.last_dbus_error

    # No bus at all.
    gone = Notifier(balloon, bus=f"unix:path={tmp_path / 'no-bus'}")
    assert qloop.run(gone.deliver("s2", "b2")) == "balloon"
    assert balloons[-1] == ("s2", "b2", False)
    # No bus and no tray icon: nowhere, and it says so.
    nowhere = Notifier(lambda *_: False, bus=f"unix:path={tmp_path / 'no-bus'}")
    assert qloop.run(nowhere.deliver("s3", "b3")) == "none"


def test_rate_limit_lets_a_new_kind_through() -> None:
    from peerstash.desktop.tray import RateLimiter

    now = [0.0]
    lim = RateLimiter(per_key=900, spacing=10, clock=lambda: now[0])
    assert lim.allow("failed:me:docs:source_missing", new_kind=True)
    now[0] = 1
    # The same failure again: quiet. Anything else that is not a failure: spaced.
    assert not lim.allow("failed:me:docs:source_missing", new_kind=True)
    assert not lim.allow("stale:docs")
    # Another plan, another machine, another error class: said at once.
    assert lim.allow("failed:me:photos:source_missing", new_kind=True)
    assert lim.allow("failed:laptop:docs:source_missing", new_kind=True)
    assert lim.allow("failed:me:docs:wrong_password", new_kind=True)
    # The burst allowance (4 within the spacing) is a ceiling, then kinds wait their turn.
    assert lim.allow("failed:me:music:locked", new_kind=True)
    assert not lim.allow("failed:me:films:locked", new_kind=True)
    now[0] = 12
    assert lim.allow("failed:me:films:locked", new_kind=True)
    now[0] = 950
    assert lim.allow("failed:me:docs:source_missing", new_kind=True)  # the window is over


@pytest.mark.parametrize(("node_mode", "src_megabytes"), [("in_process", 1)])
def test_failures_name_the_machine_and_reach_the_bus(gui: GuiEnv, qloop: QLoop, qtbot: Any) -> None:
    """Real failed backups of two plans reach the notification service named by this machine;
    the same failure repeating is said once, another plan's failure at once; a peer's failure
    is named by the peer; another error class on the same plan is a new kind."""
    tray = gui.app.tray
    b = gui.backend
    with session_bus() as address:
        server = NotificationServer(address).start()
        tray.notifier.bus = address
        routes: list[str] = []
        tray.notifier.delivered.connect(lambda route, *_: routes.append(route))
        try:

            async def body() -> None:
                me = b.node_name or b.instance_id
                gone = gui.tmp / "gone"
                gone.mkdir()
                for plan in ("docs", "photos"):
                    await b.add_plan(
                        schema.AddPlan(backup_now=False, id=plan, repo="main", paths=[str(gone)])
                    )
                shutil.rmtree(gone)
                failed: list[OpRecord] = []
                b.opChanged.connect(lambda op: op.status == "error" and failed.append(op))
                for n, plan in enumerate(("docs", "docs", "photos"), start=1):
                    tray.backup(plan)
                    await wait_for(lambda n=n: len(failed) >= n, b.opChanged, timeout=60)
                got = await asyncio.to_thread(server.wait_for, 2)
                assert [r.summary for r in got] == [
                    f"{me}: the backup of docs failed",
                    f"{me}: the backup of photos failed",
                ]
                assert all(r.body for r in got)  # restic's reason, in words
                kinds = {op.summary.get("error_kind") for op in failed}
                assert kinds == {"source_missing"}, kinds

                # A peer's failure (as its op arrives by sync) names the peer; another class
                # of error on our own plan is a new kind too.
                peer_op = msgspec.structs.replace(failed[0], id="peer-op", origin="bravo-id")
                b.peer_list = [listed_peer_record(id="bravo-id", name="bravo")]
                tray._op_changed(peer_op)
                wrong = msgspec.structs.replace(
                    failed[0],
                    id="op-2",
                    summary={"error_kind": "wrong_password"},
                    error="wrong password",
                )
                tray._op_changed(wrong)
                got = await asyncio.to_thread(server.wait_for, 4)
                assert [r.summary for r in got[2:]] == [
                    "bravo: the backup of docs failed",
                    f"{me}: the backup of docs failed",
                ]
                assert got[3].body == "wrong password"
                await tray.notifier.tasks.idle()
                assert routes == ["dbus"] * 4
                assert len(server.received) == 4  # the repeated docs failure stayed quiet

            qloop.run(body(), timeout=120)
        finally:
            server.stop()


@pytest.mark.parametrize("node_mode", ["in_process"])
def test_quit_warns_when_the_node_is_in_process(
    gui: GuiEnv, qloop: QLoop, qtbot: Any, tmp_path: Path
) -> None:
    """Quit from the tray asks first (backups stop); Cancel keeps running; Quit with
    "don't ask again" quits and is remembered."""
    from PySide6.QtWidgets import QMessageBox

    from peerstash.desktop import prefs

    app = gui.app
    app.tray.quit_action.trigger()
    box = app.question
    assert isinstance(box, QMessageBox) and box.isVisible()
    assert "Scheduled backups stop while Peerstash is closed" in box.informativeText()
    assert not app.quit_requested.is_set()
    box.button(QMessageBox.StandardButton.Cancel).click()
    assert not app.quit_requested.is_set()

    app.tray.quit_action.trigger()
    box = app.question
    assert box is not None and box.isVisible()
    box.checkBox().setChecked(True)
    box.findChild(type(box.button(QMessageBox.StandardButton.Cancel)), "quit").click()
    assert app.quit_requested.is_set()
    assert prefs.load()["ask_before_quit"] is False
    app.quit_requested.clear()
    app.tray.quit_action.trigger()  # remembered: no question this time
    assert app.quit_requested.is_set()


def test_quit_does_not_warn_when_the_node_runs_on_its_own(gui: GuiEnv, qtbot: Any) -> None:
    """Attached to a ``peerstash --no-gui`` node: backups go on, Quit just quits; closing the
    window without a tray quits the window too, without a question."""
    app = gui.app
    assert not app.in_process
    app.tray.quit_action.trigger()
    assert app.quit_requested.is_set() and app.question is None
    app.quit_requested.clear()
    app.window.show()
    app.window.close()
    assert app.quit_requested.is_set() and app.question is None


@pytest.mark.parametrize("node_mode", ["in_process"])
def test_closing_without_a_tray_asks_and_keeps_backing_up(
    gui: GuiEnv, qloop: QLoop, qtbot: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No tray (stock GNOME): closing the window asks; "keep running" hides the window and
    the node goes on (it still answers, the schedule is not paused); the answer can be
    remembered; "start at login" writes the autostart entry."""
    from PySide6.QtWidgets import QMessageBox, QPushButton

    from peerstash.desktop import prefs
    from peerstash.desktop.platform import autostart

    app = gui.app
    w = app.window
    assert app.tray.icon is None and not w.has_tray
    w.show()
    w.close()
    box = app.question
    assert isinstance(box, QMessageBox) and box.isVisible()
    assert w.isVisible()  # nothing happened yet
    assert "Keep running in the background" in box.informativeText()
    # Cancel: the window stays, nothing stops.
    box.button(QMessageBox.StandardButton.Cancel).click()
    assert w.isVisible() and not app.quit_requested.is_set()

    w.close()
    box = app.question
    assert box is not None and box.isVisible()
    box.checkBox().setChecked(True)
    box.findChild(QPushButton, "backgroundAndLogin").click()
    assert not w.isVisible() and not app.quit_requested.is_set()
    assert prefs.load()["close_without_tray"] == "background"
    assert autostart.is_enabled()
    assert "--data-dir" in autostart.autostart_path().read_text()

    async def still_running() -> None:
        status = await gui.backend.call("GET", "/v1/status")
        assert status["paused"] is False and app.node is not None

    qloop.run(still_running())
    # Remembered: the next close hides at once, without a question.
    app.question = None
    w.show()
    w.close()
    assert not w.isVisible() and app.question is None and not app.quit_requested.is_set()

    # "Quit" from the question quits (it already said that backups stop).
    prefs.save({"close_without_tray": "ask"})
    w.show()
    w.close()
    box = app.question
    assert box is not None
    box.findChild(QPushButton, "quit").click()
    assert app.quit_requested.is_set()


def test_a_hostile_peer_cannot_flood_or_forge_notifications(gui: GuiEnv, qtbot: Any) -> None:
    """A peer's synced operations choose their plan names, error classes and error texts. Forty
    failures with invented plans and classes in one burst give at most the first plus the
    burst allowance; escape sequences, bidi overrides and newlines arrive inert; an invented
    error class counts as a plain error, not as a kind of its own."""
    from peerstash.desktop.tray import RateLimiter

    tray = gui.app.tray
    b = gui.backend
    now = [1000.0]
    tray.limiter = RateLimiter(clock=lambda: now[0])
    notes: list[tuple[str, str]] = []
    tray.notified.connect(lambda title, msg: notes.append((title, msg)))
    b.peer_list = [listed_peer_record(label="evil\x1b[2J\u202eexe.txt", id="evil", name="evil")]

    def fail(op_id: str, plan: str, error_kind: str) -> None:
        tray._op_changed(
            op_record(
                id=op_id,
                origin="evil",
                kind="backup",
                status="error",
                plan=plan,
                summary={"error_kind": error_kind},
                error="line one\nFAKE: all backups are fine\x1b]0;title\x07",
            )
        )

    for i in range(40):
        fail(f"op{i}", f"plan{i}", f"class{i}")
    assert len(notes) == 1 + tray.limiter.burst, notes
    title, body = notes[0]
    assert title == "evil\\u001b[2J\\u202eexe.txt: the backup of plan0 failed"
    assert "\x1b" not in body and "\x07" not in body and "\\u001b" in body

    # Past the spacing, within plan0's window: an invented class is no new kind (quiet), a
    # real one is.
    now[0] += 11
    fail("op-made-up", "plan0", "another-made-up")
    assert len(notes) == 1 + tray.limiter.burst
    fail("op-real", "plan0", "wrong_password")
    assert len(notes) == 2 + tray.limiter.burst
    assert notes[-1][0].endswith(": the backup of plan0 failed")
