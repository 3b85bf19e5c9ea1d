"""Parts of the desktop that need no node: autostart entry, formatting, tray state, the
operations model's merge rules, the "restart due" words after an upgrade, and the promise that
headless Peerstash never imports Qt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from peerstash.core.records import ListedOpRecord, OpRecord, PlanRecord, to_json
from peerstash.desktop import fmt
from peerstash.desktop.platform import autostart
from peerstash.peer.api import schema
from tests.fixtures.records import (
    health_record,
    listed_op_record,
    listed_peer_record,
    op_record,
    peer_record,
    plan_status_record,
    repo_record,
    status_record,
)
from tests.fixtures.standin import answering, serve_admin, tray_backend


def test_headless_entry_point_never_imports_qt() -> None:
    code = (
        "import sys, peerstash.desktop.__main__ as m\n"
        "m.build = m.main  # the module and its helpers are importable\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('PySide6', 'qasync', 'shiboken6'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_no_gui_help_does_not_import_qt() -> None:
    code = (
        "import sys\n"
        "from peerstash.desktop.__main__ import main\n"
        "try:\n"
        "    main(['--no-gui', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'PySide6' not in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_autostart_entry_roundtrip(tmp_path: Path) -> None:
    cmd = ["env", "PEERSTASH_START_HIDDEN=1", "/usr/bin/peerstash", "--data-dir", "/home/a b/$x"]
    assert not autostart.is_enabled(tmp_path)
    path = autostart.enable(cmd, tmp_path)
    assert path == tmp_path / "autostart" / "peerstash.desktop"
    text = path.read_text()
    assert text.startswith("[Desktop Entry]\n")
    assert (
        'Exec=env PEERSTASH_START_HIDDEN=1 /usr/bin/peerstash --data-dir "/home/a b/\\$x"\n' in text
    )
    assert "Type=Application\n" in text and "Icon=peerstash\n" in text
    assert autostart.is_enabled(tmp_path)
    assert autostart.disable(tmp_path) is True
    assert not path.exists()
    assert autostart.disable(tmp_path) is False


def test_autostart_uses_xdg_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert autostart.autostart_path() == tmp_path / "autostart" / "peerstash.desktop"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")
    assert autostart.autostart_path() == Path.home() / ".config" / "autostart" / "peerstash.desktop"


def test_exec_quoting() -> None:
    assert autostart.quote_exec_arg("plain") == "plain"
    assert autostart.quote_exec_arg("100%") == "100%%"
    assert autostart.quote_exec_arg('a "b"') == '"a \\"b\\""'
    assert autostart.quote_exec_arg("back\\slash") == '"back\\\\slash"'


def test_op_detail_words() -> None:
    base = msgspec.convert(_op(1), OpRecord)
    rec = msgspec.structs.replace
    running = rec(base, status="running", bytes_done=50, bytes_total=200, eta_seconds=90)
    assert fmt.op_progress(running) == 0.25
    assert fmt.op_detail(running) == "25% of 200 B · ETA 1m30s"
    assert fmt.op_progress(rec(running, status="success")) is None
    assert (
        fmt.op_detail(rec(base, status="error", error="wrong password\nmore")) == "wrong password"
    )
    summary = {
        "files_new": 3,
        "files_changed": 1,
        "files_unmodified": 120,
        "data_added": 2048,
        "total_duration": 65.2,
    }
    ok = rec(base, status="success", snapshot_id="abcdef0123456789", summary=summary)
    assert fmt.op_detail(ok) == (
        "snapshot abcdef01 · 3 new, 1 changed, 120 unmodified files · 2.0 KiB added · took 1m05s"
    )
    # A summary that is not a backup's (a forget's ids, an older node's partial one): the id.
    assert fmt.op_detail(rec(ok, summary={"data_added": 2048})) == "snapshot abcdef01"
    plan = PlanRecord(
        id="p", repo="r", paths=["/x"], excludes=[], schedule=None, every_seconds=3600,
        retention={}, enabled=True, disabled_reason=None, next_due_at=None,
    )  # fmt: skip
    assert fmt.schedule_text(plan) == "every 1h00m"
    assert (
        fmt.schedule_text(rec(plan, every_seconds=None, schedule="0 3 * * *")) == "cron 0 3 * * *"
    )
    retrying = rec(running, summary={"detail": "retrying: unexpected HTTP response (500)"})
    assert fmt.op_detail(retrying) == "retrying: unexpected HTTP response (500)"
    # The detail is about the run: once it ended, the outcome is what is shown.
    assert fmt.op_detail(rec(retrying, status="error", error="gone")) == "gone"


# -- Qt parts ---------------------------------------------------------------------------------

needs_qt = pytest.mark.skipif(
    not all(__import__("importlib").util.find_spec(m) for m in ("PySide6", "pytestqt", "qasync")),
    reason="PySide6, qasync and pytest-qt are needed",
)


@needs_qt
def test_tray_state_priorities() -> None:
    from peerstash.desktop.tray import RateLimiter, compute_state, tooltip_text

    last = op_record(status="success", ended_at="2026-01-01T00:00:00+00:00")
    plans = [plan_status_record(id="a", last=last)]
    ok = health_record("ok")
    attention = health_record("attention", ["plan b has never succeeded"])
    failing = health_record("failing", ["plan c: last backup failed"])
    # The tray shows the node's verdict; it does not judge the plans itself.
    assert compute_state(status_record(plans=plans, health=ok), {}) == "ok"
    assert compute_state(status_record(plans=plans, health=attention), {}) == "warning"
    assert compute_state(status_record(plans=plans, health=failing), {}) == "error"
    assert compute_state(status_record(health=ok, paused=True), {}) == "paused"
    assert compute_state(status_record(health=failing, paused=True), {}) == "error"
    assert compute_state(status_record(plans=plans), {}, peers_attention=True) == "attention"
    # Until the node answered: not green.
    assert compute_state(None, {}) == "warning"
    op = msgspec.convert(_op(1), OpRecord)
    running = {("x", "1"): msgspec.structs.replace(op, status="running")}
    assert compute_state(status_record(health=failing), running) == "running"
    pending = {("x", "1"): msgspec.structs.replace(op, status="pending")}
    assert compute_state(status_record(health=ok), pending) == "ok"
    tip = tooltip_text(status_record(plans=plans, health=ok), "ok")
    assert tip.splitlines()[0] == "Peerstash — all backups are fine"
    assert tip.splitlines()[1] == "Health: ok"
    assert tip.splitlines()[2].startswith("a: success ")
    tip = tooltip_text(status_record(health=attention), "warning")
    assert tip.splitlines() == [
        "Peerstash — something needs a look",
        "Health: attention — 1 thing needs a look",
        "• plan b has never succeeded",
    ]
    many = health_record("attention", ["plan b has never succeeded"] * 7)
    tip = tooltip_text(status_record(health=many), "warning")
    assert tip.splitlines()[-1] == "• … and 2 more (see the overview)"
    tip = tooltip_text(None, "warning")
    assert tip.splitlines()[1] == "Health: not known yet (no answer from the node)"

    now = [0.0]
    lim = RateLimiter(per_key=100, spacing=5, clock=lambda: now[0])
    assert lim.allow("x")
    assert not lim.allow("y")  # too soon after any message
    now[0] = 6
    assert lim.allow("y")
    assert not lim.allow("x") and not lim.allow("y")
    now[0] = 120
    assert lim.allow("x")


class _FakeBackend:
    """Stands in for Backend where only ``call`` (the model's paging) and ``machine_name``
    (what a row an event adds is labelled) are used."""

    def __init__(self, ops: list[dict[str, Any]], honour_before: bool) -> None:
        self.ops = ops  # newest first
        self.honour_before = honour_before
        self.calls: list[str] = []

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        from urllib.parse import parse_qs, urlsplit

        self.calls.append(path)
        qs = {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}
        rows = self.ops
        if self.honour_before and "before" in qs:
            rows = [o for o in rows if o["pk"] < int(qs["before"])]
        return rows[: int(qs.get("limit", 100))]

    def machine_name(self, origin: str | None) -> str:
        return origin or "this machine"


def _op(pk: int, status: str = "success", plan: str = "p", modno: int = 1) -> dict[str, Any]:
    """An operation as ``/v1/ops`` lists it (``core/records.ListedOpRecord``)."""
    return to_json(_listed(pk, status, plan, modno))


def _listed(pk: int, status: str, plan: str, modno: int) -> ListedOpRecord:
    return listed_op_record(
        id=f"op{pk}", pk=pk, modno=modno, flow_id=f"flow{pk}", status=status, plan=plan
    )


def _rec(pk: int, status: str = "success", plan: str = "p", modno: int = 1) -> OpRecord:
    """The same operation as it arrives on the event stream, decoded."""
    return op_record(
        id=f"op{pk}", pk=pk, modno=modno, flow_id=f"flow{pk}", status=status, plan=plan
    )


@needs_qt
@pytest.mark.parametrize("honour_before", [True, False])
def test_ops_model_pages_and_merges(qapp: Any, honour_before: bool) -> None:
    import asyncio

    from peerstash.desktop import opsmodel
    from peerstash.desktop.opsmodel import OpFilter, OpsModel

    ops = [_op(pk) for pk in range(1200, 0, -1)]
    fake = _FakeBackend(ops, honour_before)
    model = OpsModel()
    model.backend = fake  # type: ignore[assignment]

    async def go() -> None:
        await model.load()
        assert model.rowCount() == opsmodel.PAGE
        assert model.canFetchMore()
        while model.canFetchMore():
            model.fetchMore()
            await model.tasks.idle()
        if not honour_before:
            # A node too old for ``before`` resends the newest rows: the list ends calmly
            # (and is still right) instead of asking forever.
            assert [o.pk for o in model.ops()] == list(range(1200, 1200 - opsmodel.PAGE, -1))
            assert len(fake.calls) == 2
            return
        assert [o.pk for o in model.ops()] == list(range(1200, 0, -1))
        # Live changes: a new op goes on top, an update replaces in place, a stale one is ignored.
        model.apply(_rec(1201, "running", modno=5))
        assert model.op_at(0).pk == 1201
        model.apply(_rec(1201, "success", modno=6))
        model.apply(_rec(1201, "running", modno=5))  # late, older state
        assert model.op_at(0).status == "success"
        assert model.rowCount() == 1201
        # Filtering: a row that stops matching leaves, one that does not match never enters.
        model.filter = OpFilter(status="success")
        model.apply(_rec(1202, "running", modno=7))
        assert model.op_at(0).pk == 1201
        model.apply(_rec(1201, "error", modno=8))
        assert model.op_at(0).pk == 1200

    asyncio.run(go())


@needs_qt
def test_shared_repository_cannot_be_edited(qapp: Any) -> None:
    """A repository another node shares is read-only here: Edit is off and says why."""
    from peerstash.desktop.backend import Backend
    from peerstash.desktop.dialogs.forms import EditRepoDialog
    from peerstash.desktop.pages.plans import PlansPage

    backend = Backend(object(), in_process=False)  # type: ignore[arg-type]
    backend.repos = [
        repo_record(id="nas", uri="rest:http://nas/", origin="bravo", read_only=True),
        repo_record(id="own", uri="/srv/restic"),
    ]
    page = PlansPage(backend)
    assert not page.edit_repo_button.isEnabled()
    page.select_repo("nas")
    assert not page.edit_repo_button.isEnabled()
    tip = page.edit_repo_button.toolTip()
    assert "bravo" in tip and "read-only" in tip
    assert page.open_edit_repo() is None
    page.select_repo("own")
    assert page.edit_repo_button.isEnabled()
    dlg = page.open_edit_repo()
    assert isinstance(dlg, EditRepoDialog)
    # Nothing touched: nothing to send (a stored password is kept, never shown).
    assert dlg.password.text() == ""
    assert dlg.validate() == ({}, schema.EditRepo())  # nothing changed
    dlg.uri.setText("/srv/restic2")
    dlg.options.setPlainText("bad option")
    errors, body = dlg.validate()
    assert set(errors) == {"options"} and body.uri == "/srv/restic2"
    dlg.reject()


@needs_qt
def test_grants_dialog_reads_and_writes_entries(qapp: Any) -> None:
    from peerstash.desktop.backend import Backend
    from peerstash.desktop.dialogs.forms import EditGrantsDialog, split_grants

    assert split_grants(["ops:*", "run:plan:a,!repo:b", "ops"]) == {
        "ops": "*",
        "run": "plan:a, !repo:b",
    }
    backend = Backend(object(), in_process=False)  # type: ignore[arg-type]
    dlg = EditGrantsDialog(backend, peer_record(id="bravo", grants=["run:plan:a,!repo:b"]))
    assert dlg.boxes["run"].isChecked() and not dlg.boxes["ops"].isChecked()
    assert dlg.validate() == ({}, schema.Grants(grants=["run:plan:a,!repo:b"]))
    dlg.boxes["run"].setChecked(False)
    assert dlg.validate() == ({}, schema.Grants(grants=[]))  # nothing at all is a valid answer
    dlg.boxes["ops"].setChecked(True)
    dlg.scopes["ops"].setText("!*")
    errors, _ = dlg.validate()
    assert set(errors) == {"grants"}
    dlg.reject()


@needs_qt
def test_restart_words_name_the_process_that_runs_old_code(qapp: Any) -> None:
    """Tray and node come from one package: they differ only after an upgrade, and then the
    overview says which one still runs the old code (docs/architecture.md, "Version skew")."""
    from peerstash.desktop.pages.overview import restart_words

    same = status_record(version="0.2.0", installed_version="0.2.0")
    assert restart_words(same, ours="0.2.0") == ""
    # Upgraded under the running node (the tray's own node, or one started by hand).
    upgraded = status_record(version="0.1.0", installed_version="0.2.0")
    assert restart_words(upgraded, ours="0.1.0") == (
        "Restart due: this node runs Peerstash 0.1.0, but 0.2.0 is installed. Quit Peerstash "
        "and start it again (or restart its service) to use the new version."
    )
    # The node's service was restarted by the upgrade; this window still runs the old code.
    assert restart_words(same, ours="0.1.0") == (
        "Restart due: this window is Peerstash 0.1.0, but the node runs 0.2.0. Quit Peerstash "
        "and start it again."
    )


@needs_qt
def test_refcount_guard_keeps_long_sessions_alive(qapp: Any) -> None:
    """Tens of thousands of void Qt calls (minutes of a real session) must not abort Python."""
    import sys

    from PySide6.QtCore import QObject

    from peerstash.desktop.platform import qtfix

    needed = qtfix.leaks_none() if not qtfix._applied else True
    qtfix.apply()
    obj = QObject()
    for _ in range(50_000):
        obj.setObjectName("x")
    assert sys.getrefcount(None) > 0
    if sys.version_info >= (3, 12):
        assert not needed


@needs_qt
def test_ops_model_deep_history(qapp: Any) -> None:
    """Every row is reachable: each older page asks ``before=<oldest pk>``, a page at a time."""
    import asyncio
    from urllib.parse import parse_qs, urlsplit

    from peerstash.desktop.opsmodel import PAGE, OpsModel

    fake = _FakeBackend([_op(pk) for pk in range(20_000, 0, -1)], honour_before=True)
    model = OpsModel()
    model.backend = fake  # type: ignore[assignment]

    async def go() -> None:
        await model.load()
        while model.canFetchMore():
            model.fetchMore()
            await model.tasks.idle()

    asyncio.run(go())
    assert model.rowCount() == 20_000
    assert [o.pk for o in model.ops()] == list(range(20_000, 0, -1))
    assert len(fake.calls) == 20_000 // PAGE + 1  # the last page is full: one empty answer
    for n, path in enumerate(fake.calls[1:], start=1):
        qs = {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}
        assert qs == {"limit": str(PAGE), "before": str(20_000 - n * PAGE + 1)}


@needs_qt
def test_ops_view_loads_older_rows_when_scrolled_to_the_end(qapp: Any) -> None:
    """The table asks the model for more when the user scrolls to its end, and only then."""
    import asyncio

    from PySide6.QtWidgets import QTableView

    from peerstash.desktop.opsmodel import PAGE, OpsModel

    fake = _FakeBackend([_op(pk) for pk in range(3 * PAGE, 0, -1)], honour_before=True)
    model = OpsModel()
    model.backend = fake  # type: ignore[assignment]
    view = QTableView()
    view.setModel(model)
    view.resize(600, 300)
    view.show()

    async def go() -> None:
        await model.load()
        qapp.processEvents()  # lay the view out (no Qt loop runs under asyncio.run)
        assert model.rowCount() == PAGE and len(fake.calls) == 1
        bar = view.verticalScrollBar()
        assert bar.maximum() > 0
        bar.setValue(bar.maximum() // 2)  # halfway: nothing more is asked
        await model.tasks.idle()
        assert model.rowCount() == PAGE and len(fake.calls) == 1
        for pages in (2, 3):
            bar.setValue(bar.maximum())  # the end: the next older page comes in
            await model.tasks.idle()
            qapp.processEvents()
            assert model.rowCount() == pages * PAGE
            assert f"before={(3 - pages + 1) * PAGE + 1}" in fake.calls[-1]

    asyncio.run(go())
    assert [o.pk for o in model.ops()] == list(range(3 * PAGE, 0, -1))
    view.close()


@needs_qt
def test_trimmed_operations_reload_the_lists(qapp: Any) -> None:
    """The node says operations were deleted (gc here or on a peer): views reload, and only
    then; other events do not reset the lists."""
    from peerstash.desktop.backend import Backend

    backend = Backend(object(), in_process=False)  # type: ignore[arg-type]
    resets: list[bool] = []
    backend.opsReset.connect(lambda: resets.append(True))
    backend._on_event({"type": "notice", "level": "info", "message": "hello"})
    assert resets == []
    backend._on_event({"type": "ops_deleted", "origin": "bravo", "count": 4})
    assert resets == [True]


@needs_qt
def test_peer_text_is_shown_inert_in_the_operations_view(qapp: Any) -> None:
    """A peer's plan name, origin and error reach the view with controls written as \\uXXXX."""
    import asyncio

    from PySide6.QtCore import Qt

    from peerstash.desktop.opsmodel import OpsModel

    hostile = {
        **_op(1, "error", plan="p\x1b[31m"),
        "origin": "evil\u202eexe",
        "error": "boom\x1b[2J\rok\u2066",
    }
    model = OpsModel()
    model.backend = _FakeBackend([hostile], True)  # type: ignore[assignment]

    async def go() -> None:
        await model.load()

    asyncio.run(go())
    shown = [
        str(model.data(model.index(0, col), Qt.ItemDataRole.DisplayRole) or "")
        for col in range(model.columnCount())
    ]
    tips = [
        str(model.data(model.index(0, col), Qt.ItemDataRole.ToolTipRole) or "")
        for col in range(model.columnCount())
    ]
    text = "|".join(shown + tips)
    assert not any(c in text for c in "\x1b\r\u202e\u2066")
    assert "p\\u001b[31m" in text and "evil\\u202eexe" in text and "boom\\u001b[2J" in text
    assert model.op_at(0).error == hostile["error"]  # the data itself is untouched


@needs_qt
def test_event_lines_that_are_not_the_nodes_events_change_nothing(
    qapp: Any, tmp_path: Path
) -> None:
    """``/v1/events`` from a real server on the admin socket: lines that do not decode as
    ``schema.ServerEvent`` (a field missing or of the wrong type, a kind unknown) are skipped,
    so no half-formed operation reaches the views; the good lines around them still count."""
    import asyncio
    import json

    from aiohttp import web

    from peerstash.core.records import OpRecord, to_json
    from peerstash.desktop.backend import Backend
    from peerstash.peer.api.client import AdminClient

    op = OpRecord(
        id="op-1", pk=1, origin="alpha", modno=1, flow_id="f", kind="backup", status="running",
        plan="docs", repo="main", created_at=None, started_at=None, ended_at=None, bytes_done=0,
        bytes_total=0, files_done=0, files_total=0, eta_seconds=None, summary={},
        snapshot_id=None, error=None,
    )  # fmt: skip
    hostile = [
        {"type": "operation", "op": {"id": "op-2", "status": "running"}},  # fields missing
        {"type": "operation", "op": "op-3"},
        {"type": "operation", "op": {**to_json(op), "id": "op-4", "pk": "four"}},
        {"type": "notice", "level": "info", "message": ["not", "text"]},
        {"type": "link", "peer": 7, "state": "online", "reason": None},
        {"type": "snapshots", "repo": "main"},  # no reason, no origin
        {"type": "format_disk"},
        {"op": to_json(op)},  # no type at all
    ]
    good = [
        {"type": "operation", "op": to_json(op)},
        {"type": "notice", "level": "info", "message": "hello"},
    ]
    release = asyncio.Event()

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for line in [{"type": "ready"}, *hostile, *good]:
            await resp.write(json.dumps(line).encode() + b"\n")
        await release.wait()
        return resp

    async def go() -> tuple[list[Any], list[Any], list[Any], set[Any]]:
        app = web.Application()
        app.router.add_get("/v1/events", events)
        runner = await serve_admin(tmp_path, app)
        changed: list[Any] = []
        notices: list[Any] = []
        snaps: list[Any] = []
        try:
            async with AdminClient(tmp_path) as client:
                backend = Backend(client, in_process=False)
                backend.opChanged.connect(changed.append)
                backend.notice.connect(lambda level, text: notices.append((level, text)))
                backend.snapshotsChanged.connect(snaps.append)
                done = asyncio.Event()
                backend.notice.connect(lambda *_: done.set())  # the last good line
                opened = asyncio.get_running_loop().create_future()
                backend.tasks.spawn(backend._follow(opened), name="test:follow")
                await asyncio.wait_for(done.wait(), 30)
                active = set(backend.active)
                await backend.close()
        finally:
            release.set()
            await runner.cleanup()
        return changed, notices, snaps, active

    changed, notices, snaps, active = asyncio.run(go())
    assert changed == [op]
    assert notices == [("info", "hello")]
    assert snaps == []
    assert active == {("alpha", "op-1")}


@needs_qt
def test_answers_whose_records_are_malformed_are_skipped_and_the_views_keep_theirs(
    qapp: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real server on the admin socket answers well once, then with records that are not
    (a field of the wrong type, an id missing): each such answer is decoded where it arrives,
    logged (or said in one line on the page) and skipped. Nothing raises, the backend keeps
    its records, and the Plans page and the operations list keep showing what they showed."""
    import asyncio
    import logging

    from peerstash.core.records import to_json
    from peerstash.desktop.api import ApiError
    from peerstash.desktop.opsmodel import OpsModel
    from peerstash.desktop.pages.plans import PlansPage
    from peerstash.desktop.pages.snapshots import SnapshotsPage

    plan = PlanRecord(
        id="docs", repo="main", paths=["/x"], excludes=[], schedule=None, every_seconds=3600,
        retention={}, enabled=True, disabled_reason=None, next_due_at=None,
    )  # fmt: skip
    repo = repo_record(id="main")
    peer = listed_peer_record(id="bravo", label="bravo")
    status = status_record(plans=[plan_status_record(id="docs", repo="main")])
    running = _op(7, "running")
    good: dict[str, Any] = {
        "/v1/status": to_json(status),
        "/v1/plans": [to_json(plan)],
        "/v1/repos": [to_json(repo)],
        "/v1/peers": [to_json(peer)],
        "/v1/ops": [running],
        "/v1/repos/main/snapshots": [],
    }
    bad: dict[str, Any] = {
        **good,
        "/v1/plans": [{**to_json(plan), "paths": "/not/a/list"}],
        "/v1/repos": [{k: v for k, v in to_json(repo).items() if k != "id"}],
        "/v1/status": {**to_json(status), "health": {"level": "ok"}},
        "/v1/peers": [{**to_json(peer), "state": 3}],
        "/v1/ops": [{k: v for k, v in running.items() if k != "id"}],
        "/v1/repos/main/snapshots": [{"id": 42, "short_id": "x"}],
    }
    answers = dict(good)

    async def go() -> None:
        async with tray_backend(tmp_path, answering(answers)) as backend:
            page = PlansPage(backend)
            model = OpsModel(backend)
            failed: list[str] = []
            model.loadFailed.connect(failed.append)
            await model.load()
            assert backend.plans == [plan] and backend.repos == [repo]
            assert backend.peer_list == [peer] and list(backend.active) == [("me", "op7")]
            assert backend.status == status
            assert page.plans.item(0, 0).text() == "docs" and model.rowCount() == 1

            answers.update(bad)
            with caplog.at_level(logging.INFO, logger="peerstash.desktop"):
                await backend.refresh_all()
                await model.load()
            said = caplog.text
            assert "kept the plans and repositories as they were" in said
            assert "could not read the peers" in said and "is not a list of peers" in said
            assert "kept the operations in flight as they were" in said
            assert (
                "kept the node's status as it was: the node's answer is not the node's "
                "status: Object missing required field `summary` - at `$.health`"
            ) in said
            # The backend holds the records it had; the window shows what it showed.
            assert backend.plans == [plan] and backend.repos == [repo]
            assert backend.peer_list == [peer] and list(backend.active) == [("me", "op7")]
            assert backend.status == status and backend.connected
            assert page.plans.rowCount() == 1 and page.plans.item(0, 0).text() == "docs"
            assert page.repos.rowCount() == 1 and page.repos.item(0, 0).text() == "main"
            assert model.rowCount() == 1 and model.op_at(0).id == "op7"
            assert failed == [
                "the node's answer is not a list of operations: "
                "Object missing required field `id` - at `$[0]`"
            ]
            # A page asking for itself gets one line (its banner shows it), no traceback.
            snaps = SnapshotsPage(backend)
            with pytest.raises(ApiError, match="is not a list of snapshots: Expected `str`"):
                await snaps.load_snapshots("main")
            await model.close()

    asyncio.run(go())


@needs_qt
def test_peers_page_shows_the_lan_and_tokens_as_records_and_announced_words_inert(
    qapp: Any, tmp_path: Path
) -> None:
    """The machines the LAN announces are anyone's words: the Peers page lists them from the
    node's records with their pairing state, shows an id with control characters inert, and
    "Use this address" fills in the selected one's. Tokens list from their records; an answer
    that is not a list of tokens is one line on the page's banner."""
    import asyncio

    from peerstash.core.records import DiscoveredRecord, TokenRecord
    from peerstash.desktop.pages.peers import PeersPage

    def found(ident: str, **changes: Any) -> dict[str, Any]:
        base = DiscoveredRecord(
            id=ident, key_id="abcd-efgh", version=1, compatible=True,
            addresses=["192.0.2.7"], port=7700, paired=False, key_matches=None,
            duplicate_id=False,
        )  # fmt: skip
        return {**to_json(base), **changes}

    token = TokenRecord(
        id="t1", label="phone", grants=["ops"], max_uses=1, uses=0,
        expires_at="2026-12-06T10:00:00+00:00", created_at="2026-12-06T09:00:00+00:00",
    )  # fmt: skip
    answers: dict[str, Any] = {
        "/v1/status": to_json(status_record()),
        "/v1/plans": [],
        "/v1/repos": [],
        "/v1/peers": [],
        "/v1/ops": [],
        "/v1/tokens": [to_json(token)],
        "/v1/discovered": [
            found("desk"),
            found("evil\x1b[2J\u202e", paired=True, key_matches=False),
            found("old", compatible=False, version=0),
        ],
    }

    async def go() -> None:
        async with tray_backend(tmp_path, answering(answers)) as backend:
            page = PeersPage(backend)
            await page.refresh()
            t = page.discovered
            rows = [[t.item(r, c).text() for c in range(4)] for r in range(t.rowCount())]
            assert rows == [
                ["desk", "abcd-efgh", "http://192.0.2.7:7700", "no"],
                ["evil\\u001b[2J\\u202e", "abcd-efgh", "http://192.0.2.7:7700",
                 "KEY DIFFERS: not trusted"],
                ["old", "abcd-efgh", "http://192.0.2.7:7700", "no (incompatible version)"],
            ]  # fmt: skip
            assert page.tokens.item(0, 0).text() == "phone"
            assert page.tokens.item(0, 2).text() == "0 of 1"
            t.selectRow(0)
            page._use_found()
            assert page.url_in.text() == "http://192.0.2.7:7700"

            answers["/v1/tokens"] = [{**to_json(token), "uses": "none"}]
            await page.refresh()
            said = page.banner.text()
            assert said.startswith("Could not read the tokens: the node's answer is not a list")
            assert page.tokens.item(0, 0).text() == "phone"  # kept what it showed

    asyncio.run(go())


@needs_qt
def test_an_operation_replaced_by_an_event_keeps_its_machine_name(
    qapp: Any, tmp_path: Path
) -> None:
    """Events carry an operation without the name of its machine (``/v1/ops`` rows have it):
    a row an event replaces keeps the name, a row an event adds takes the tray's name for that
    machine, and the Operations page's detail title still names the machine, not its id."""
    import asyncio

    from peerstash.core.records import ListedOpRecord
    from peerstash.desktop.pages.operations import OperationsPage

    theirs = listed_op_record("Bravo's laptop", id="op1", pk=1, origin="bravo", status="running")
    answers: dict[str, Any] = {
        "/v1/status": to_json(status_record(instance_id="me", name="desk")),
        "/v1/plans": [],
        "/v1/repos": [],
        "/v1/peers": [to_json(listed_peer_record(id="bravo", label="Bravo's laptop"))],
        "/v1/ops": [to_json(theirs)],
    }

    def origins(model: Any) -> list[tuple[str, str]]:
        rows = [model.op_at(r) for r in range(model.rowCount())]
        assert all(isinstance(op, ListedOpRecord) for op in rows)
        return [(op.id, op.origin_label) for op in rows]

    async def go() -> None:
        async with tray_backend(tmp_path, answering(answers)) as backend:
            page = OperationsPage(backend)
            await page.model.load()
            page.view.selectRow(0)
            assert "Bravo's laptop" in page.detail_title.text()
            # The same operation, one step on, as the event stream decodes it.
            backend.opChanged.emit(
                op_record(id="op1", pk=1, origin="bravo", status="success", modno=2)
            )
            backend.opChanged.emit(op_record(id="op2", pk=2, origin="bravo"))
            backend.opChanged.emit(op_record(id="op3", pk=3, origin="me"))
            assert origins(page.model) == [
                ("op3", "desk"),
                ("op2", "Bravo's laptop"),
                ("op1", "Bravo's laptop"),
            ]
            title = page.detail_title.text()
            assert title == "backup p · success · Bravo's laptop · operation op1"
            await page.model.close()

    asyncio.run(go())


@needs_qt
def test_a_restore_preview_that_is_not_one_restores_nothing(qapp: Any, tmp_path: Path) -> None:
    """The tray restores without asking only when the node's preview says nothing would be
    overwritten. A preview without its counts (another version, a broken or hostile listener)
    must not read as "nothing": the page says the answer is not a preview, and no restore is
    sent. A real preview of a new folder restores at once, as before."""
    import asyncio

    from aiohttp import web

    from peerstash.core.records import RestorePreviewRecord
    from peerstash.desktop.api import ApiError
    from peerstash.desktop.pages.snapshots import SnapshotsPage

    target = str(tmp_path / "restored")
    good = RestorePreviewRecord(
        snapshot_id="abc", target=target, selection=[], files=3, overwrite_count=0,
        overwrite=[], target_exists=False, target_empty=True, truncated=False,
    )  # fmt: skip
    preview: dict[str, Any] = {"files": 3, "overwrite": []}  # no overwrite_count
    restores: list[Any] = []

    async def answer_preview(request: web.Request) -> web.Response:
        return web.json_response(preview)

    async def restore(request: web.Request) -> web.Response:
        restores.append(await request.json())
        return web.json_response(to_json(op_record(kind="restore", status="pending")), status=202)

    app = answering({"/v1/status": to_json(status_record()), "/v1/plans": [], "/v1/repos": []})
    app.router.add_post("/v1/repos/main/restore/preview", answer_preview)
    app.router.add_post("/v1/repos/main/restore", restore)

    async def go() -> None:
        async with tray_backend(tmp_path, app, read=False) as backend:
            page = SnapshotsPage(backend)
            with pytest.raises(ApiError, match="is not what the restore would overwrite"):
                await page._check_and_restore("main", "abc", target, [], False)
            assert restores == [] and page.confirm_dialog is None
            preview.clear()
            preview.update(to_json(good))
            await page._check_and_restore("main", "abc", target, [], False)
            assert [r["target"] for r in restores] == [target]

    asyncio.run(go())
