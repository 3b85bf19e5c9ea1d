"""Icons: the SVGs in ``resources/icons`` when they can be found, painted stand-ins otherwise.

The SVGs live at the top of the source tree (``resources/``), beside the package in a checkout
or an editable install. A wheel built from today's ``pyproject.toml`` does not carry them, so
every icon has a painted fallback of the same colour: the tray never shows an empty square.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap

from peerstash.core.ops import OpStatus

STATE_COLORS = {
    "ok": "#2e9d58",
    "running": "#2f7ed8",
    "warning": "#d99a1e",
    "error": "#d64541",
    "paused": "#858b94",
    "attention": "#8e5bd8",
}

#: Colours of operation statuses in lists (a dot before the word).
STATUS_COLORS: dict[str, str] = {
    OpStatus.PENDING: "#8aa1b8",
    OpStatus.RUNNING: "#2f7ed8",
    OpStatus.SUCCESS: "#2e9d58",
    OpStatus.WARNING: "#d99a1e",
    OpStatus.ERROR: "#d64541",
    OpStatus.CANCELLED: "#9aa0a6",
    OpStatus.INTERRUPTED: "#c8642a",
}


def resource_dir() -> Path | None:
    """Where ``resources/`` is: ``$PEERSTASH_RESOURCES``, else beside the source tree."""
    env = os.environ.get("PEERSTASH_RESOURCES")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [here.parents[1] / "resources", Path("/usr/share/peerstash")]
    for c in candidates:
        if (c / "icons").is_dir():
            return c
    return None


@functools.cache
def _svg(name: str) -> QIcon | None:
    base = resource_dir()
    if base is None:
        return None
    path = base / "icons" / f"{name}.svg"
    if not path.is_file():
        return None
    icon = QIcon(str(path))
    return None if icon.isNull() else icon


def dot_pixmap(color: str, size: int = 12) -> QPixmap:
    pm = QPixmap(size, size)
    pm.fill(Qt.GlobalColor.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QColor(color))
    p.drawEllipse(QRectF(1, 1, size - 2, size - 2))
    p.end()
    return pm


@functools.cache
def state_icon(state: str) -> QIcon:
    """The tray icon of ``state`` (a key of :data:`STATE_COLORS`)."""
    icon = _svg(f"tray-{state}")
    if icon is not None:
        return icon
    fallback = QIcon()
    for size in (16, 22, 32, 64):
        fallback.addPixmap(dot_pixmap(STATE_COLORS.get(state, "#858b94"), size))
    return fallback


@functools.cache
def app_icon() -> QIcon:
    return _svg("peerstash") or state_icon("ok")


@functools.cache
def status_icon(status: str) -> QIcon:
    """A small coloured dot for an operation status in tables."""
    return QIcon(dot_pixmap(STATUS_COLORS.get(status, "#9aa0a6"), 12))
