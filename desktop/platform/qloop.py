"""The asyncio loop of the tray app: qasync's, with asyncio's "running loop" kept set.

qasync runs asyncio callbacks from Qt's event loop. It marks itself as asyncio's running loop
only inside ``run_forever``, yet Qt can run those callbacks at other moments too: qasync's own
``run_until_complete`` processes pending Qt events once more *after* ``run_forever`` returned,
and pytest-qt processes events between the phases of a test. A callback run there that calls
``asyncio.get_running_loop()`` (``create_task``, ``wait_for``; SQLAlchemy's session close does)
fails with "no running event loop", and the task it belonged to dies. With the node running in
the same process, that was an admin stream handler dying right after its first line, leaving a
window that received nothing (a CI failure of the tray test, about one run in twenty).

This loop stays asyncio's running loop from its first run until it is closed, which is what
the app needs anyway (Qt's event loop *is* its asyncio loop for its whole life).
"""

from __future__ import annotations

import asyncio
from typing import Any

import qasync


class QEventLoop(qasync.QEventLoop):
    def run_forever(self) -> Any:
        try:
            return super().run_forever()
        finally:
            # qasync has just cleared it; Qt may still run our callbacks (see above).
            asyncio.events._set_running_loop(self)

    def close(self) -> None:
        if asyncio.events._get_running_loop() is self:
            asyncio.events._set_running_loop(None)
        super().close()


def run(main: Any, app: Any) -> Any:
    """``asyncio.run(main)`` on a :class:`QEventLoop` for ``app`` (the QApplication)."""
    with asyncio.Runner(loop_factory=lambda: QEventLoop(app)) as runner:
        return runner.run(main)
