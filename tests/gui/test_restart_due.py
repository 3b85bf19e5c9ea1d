"""After a package upgrade the tray says which process still runs the old code.

The tray and the node come from one package (docs/architecture.md, "Version skew"), so they
differ only between an upgrade and the restart of whatever was running. Here the upgrade is
real as far as the node can tell: a newer ``peerstash-*.dist-info`` appears, while the node
runs, in a folder ahead of the installed one on the node process's ``sys.path``. The node's
status then reports it, and the overview shows "restart due" from that status.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("qasync")

from tests.fixtures.gui import GuiEnv, QLoop


@pytest.fixture
def upgrade_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder first on the node process's ``sys.path`` (set up before ``gui`` starts it)."""
    where = tmp_path / "upgrade"
    where.mkdir()
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(where), os.environ.get("PYTHONPATH")) if p)
    )
    return where


def test_the_overview_says_a_restart_is_due_after_an_upgrade(
    upgrade_dir: Path, gui: GuiEnv, qloop: QLoop, qtbot: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peerstash.core import __version__
    from peerstash.desktop.pages import overview

    w = gui.window
    qtbot.addWidget(w)
    ov = w.overview
    b = gui.backend

    async def body() -> None:
        w.show_page(ov)
        status = await b.call("GET", "/v1/status")
        assert status["version"] == status["installed_version"] == __version__
        await b.refresh_status()
        assert ov.restart_due.isHidden()

        # The package is upgraded under the running node.
        info = upgrade_dir / "peerstash-99.0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: peerstash\nVersion: 99.0.0\n\n"
        )
        status = await b.call("GET", "/v1/status")
        assert (status["version"], status["installed_version"]) == (__version__, "99.0.0")
        await b.refresh_status()
        assert not ov.restart_due.isHidden()
        assert ov.restart_due.text().startswith(
            f"Restart due: this node runs Peerstash {__version__}, but 99.0.0 is installed."
        )

        # The node was restarted on the new code, this window was not: it says so instead.
        (info / "METADATA").unlink()
        info.rmdir()
        monkeypatch.setattr(overview, "__version__", "0.0.1")
        await b.refresh_status()
        assert ov.restart_due.text() == (
            f"Restart due: this window is Peerstash 0.0.1, but the node runs {__version__}. "
            "Quit Peerstash and start it again."
        )
        monkeypatch.undo()
        await b.refresh_status()
        assert ov.restart_due.isHidden()

    qloop.run(body())
