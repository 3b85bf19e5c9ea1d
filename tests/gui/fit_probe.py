"""Run in a child process by test_layout.py: the main window on a 1366x768 screen.

The scale factor (``QT_SCALE_FACTOR``) is read once when Qt starts, so each scale needs its own
process. The offscreen platform is given a 1366x768 screen (``configfile``). Prints one JSON
line with the sizes the test checks, in device pixels.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path


def main() -> None:
    from PySide6.QtWidgets import QApplication

    from peerstash.desktop.backend import Backend
    from peerstash.desktop.opsmodel import COL_DETAIL
    from peerstash.desktop.platform import qtfix
    from peerstash.desktop.window import MainWindow
    from peerstash.peer.api.client import AdminClient

    app = QApplication([sys.argv[0]])
    qtfix.apply()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CONFIG_HOME"] = str(Path(tmp) / "config")
        backend = Backend(AdminClient(Path(tmp) / "data"), in_process=False)
        w = MainWindow(backend, autostart_command=["peerstash"])
        w.restore_state({})  # a first start: nothing remembered
        w.show()
        app.processEvents()
        scale = w.devicePixelRatio()
        area = w.screen().availableGeometry()
        out: dict[str, object] = {"scale": scale}
        out["screen"] = [round(area.width() * scale), round(area.height() * scale)]
        hint = w.minimumSizeHint()
        mins = w.minimumSize()
        out["min"] = [
            round(max(hint.width(), mins.width()) * scale),
            round(max(hint.height(), mins.height()) * scale),
        ]
        g = w.frameGeometry()
        out["window"] = [round(v * scale) for v in (g.x(), g.y(), g.width(), g.height())]
        pages = {}
        for i, page in enumerate(w.pages):
            w.sidebar.setCurrentRow(i)
            app.processEvents()
            ph = page.minimumSizeHint()
            pages[page.title] = [round(ph.width() * scale), round(ph.height() * scale)]
        out["pages"] = pages
        w.show_page(w.operations)
        app.processEvents()
        view = w.operations.view
        hh = view.horizontalHeader()
        left = hh.sectionViewportPosition(COL_DETAIL)
        out["detail"] = [left, hh.sectionSize(COL_DETAIL), view.viewport().width()]
        print(json.dumps(out), flush=True)
        w.close()


if __name__ == "__main__":
    main()
