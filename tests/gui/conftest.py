"""GUI tests: offscreen Qt, a qasync loop per test, and a real node with a real restic repo.

Pattern (pytest-asyncio and qasync do not share a loop well): GUI tests are plain ``def`` tests.
Each gets a fresh ``qasync.QEventLoop`` on pytest-qt's ``QApplication`` and runs its body with
``qloop.run(coro)``, bounded by a timeout. The node runs in-process on that same loop (exactly
as in the tray app) or, for the attach test, as a real ``peerstash --no-gui`` process. Waiting
is done on Qt signals and conditions (:func:`wait_for`), never with fixed sleeps.
"""

from __future__ import annotations

import os

# Before any Qt import: no display is needed, and CI has none.
os.environ["QT_QPA_PLATFORM"] = "offscreen"
os.environ.setdefault("QT_API", "pyside6")
os.environ.pop("DISPLAY", None)
os.environ.pop("WAYLAND_DISPLAY", None)
# Never the developer's own session bus: a test's notifications go to a bus the test starts
# (tests/fixtures/dbus.py), or nowhere.
os.environ["DBUS_SESSION_BUS_ADDRESS"] = "unix:path=/nonexistent/peerstash-tests-no-bus"

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.gui import HAVE_QT, LOOPBACK, PASSWORD, GuiEnv, QLoop, make_tree, node_options
from tests.fixtures.processes import NodeProc

if HAVE_QT:

    @pytest.fixture(autouse=True)
    def _qt_refcount_guard(qapp: Any) -> None:
        """The PySide6 6.12 / Python 3.11 guard of desktop/platform/qtfix.py, as the app applies it."""
        from peerstash.desktop.platform import qtfix

        qtfix.apply()

    @pytest.fixture
    def qloop(qapp: Any) -> Iterator[QLoop]:
        from peerstash.desktop.platform.qloop import QEventLoop

        # The app's own loop: asyncio's running loop stays set while pytest-qt processes
        # events between test phases (see desktop/platform/qloop.py for what broke without it).
        loop = QEventLoop(qapp)
        asyncio.set_event_loop(loop)
        try:
            yield QLoop(loop)
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            asyncio.set_event_loop(None)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def src_megabytes() -> int:
    """Size of the random data in the source tree (bigger where progress must be seen)."""
    return 1


@pytest.fixture
def node_mode() -> str:
    """How the node runs for ``gui``: "attached" (a ``peerstash --no-gui`` process) or
    "in_process" (on the test's qasync loop, as the tray app does when none is running).

    Attached is the default because a stopping in-process node waits for the admin API's open
    follow stream to notice the closed client (up to its 15 s keep-alive), see
    test_in_process_node_lifecycle.
    """
    return "attached"


@pytest.fixture
def first_run() -> bool:
    """Whether the app opens the first-run assistant by itself (only its own tests want it)."""
    return False


@pytest.fixture
def with_repo() -> bool:
    """Whether ``gui`` adds the repository ``main`` (the first-run tests start with none)."""
    return True


@pytest.fixture
def node_restic() -> str | None:
    """The restic the ``gui`` node runs (None: restic from PATH). A module overrides this,
    e.g. parametrized with ``tests.fixtures.servers.resolve_restic``, where the view shows
    what a restic version reports."""
    return None


if HAVE_QT:

    @pytest.fixture
    def gui(
        qloop: QLoop,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        node_mode: str,
        src_megabytes: int,
        first_run: bool,
        with_repo: bool,
        node_restic: str | None,
    ) -> Iterator[GuiEnv]:
        from PySide6.QtWidgets import QApplication

        from peerstash.desktop.app import DesktopApp
        from peerstash.peer.cli import AdminClient

        # Settings > Start at login writes here, never into the real ~/.config.
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
        # As the app sets it (run_gui): a window closing or hiding never quits the
        # application (that would stop the test's loop in the middle of the app's cleanup).
        qapp = QApplication.instance()
        assert isinstance(qapp, QApplication)
        quit_on_last = qapp.quitOnLastWindowClosed()
        qapp.setQuitOnLastWindowClosed(False)
        data_dir = tmp_path / "data"
        src = make_tree(tmp_path / "src", src_megabytes)
        proc: NodeProc | None = None
        if node_mode == "attached":
            # Peer port on loopback, port 0 (nodes of versions with a peer port read this).
            proc = NodeProc(data_dir, "guitest", extra_env={"PEERSTASH_LISTEN": LOOPBACK}).start(
                *(("--restic", node_restic) if node_restic else ())
            )
        app = DesktopApp(
            data_dir,
            node_options(
                instance_id="guitest",
                progress_interval=0.05,
                catch_up_grace=3600,
                restic_path=node_restic,
            ),
            show_tray=False,
            autostart_command=["peerstash", "--data-dir", str(data_dir)],
            first_run_assistant=first_run,
        )

        async def add_repo() -> None:
            async with AdminClient(data_dir) as client:
                await client.call(
                    "POST",
                    "/v1/repos",
                    {
                        "id": "main",
                        "uri": str(tmp_path / "repo"),
                        "password": {"source": "secret", "value": PASSWORD},
                        "init": True,
                    },
                )
            await app.backend.refresh_config()

        try:
            qloop.run(app.start())
            assert app.in_process == (node_mode == "in_process")
            if with_repo:
                qloop.run(add_repo())
            yield GuiEnv(app, data_dir, src, tmp_path, proc)
        finally:
            qloop.run(app.stop())
            qapp.setQuitOnLastWindowClosed(quit_on_last)
            if proc is not None and proc.proc is not None:
                proc.proc.kill()
                proc.proc.wait(30)
