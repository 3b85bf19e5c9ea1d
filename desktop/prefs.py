"""Preferences of the desktop app itself (not of the node): a small JSON file.

Kept apart from the node's settings because they belong to this person's desktop session, not
to the node (which may be shared by a headless service and several windows): whether to show
desktop notifications, whether Quit warns that scheduled backups stop (``ask_before_quit``),
what closing the window means on a desktop without a tray (``close_without_tray``: ``ask``,
``background`` or ``quit``; see desktop/dialogs/closing.py), and the main window's size, place and last
page. ``$XDG_CONFIG_HOME/peerstash/desktop.json``, read and written
at call time so the location follows the environment (tests point it at a temporary folder).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from peerstash.desktop.platform.autostart import autostart_dir

DEFAULTS: dict[str, Any] = {
    "notifications": True,
    "ask_before_quit": True,
    "close_without_tray": "ask",
    #: The window's normal geometry ``[x, y, width, height]`` (None: a first start).
    "window": None,
    "maximized": False,
    #: The title of the page shown last.
    "page": None,
}


def prefs_path(config_home: Path | None = None) -> Path:
    return autostart_dir(config_home).parent / "peerstash" / "desktop.json"


def load(config_home: Path | None = None) -> dict[str, Any]:
    """The preferences, defaults filled in; a missing or broken file means defaults."""
    try:
        data = json.loads(prefs_path(config_home).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    return {**DEFAULTS, **{k: v for k, v in data.items() if k in DEFAULTS}}


def save(changes: dict[str, Any], config_home: Path | None = None) -> dict[str, Any]:
    prefs = {**load(config_home), **{k: v for k, v in changes.items() if k in DEFAULTS}}
    path = prefs_path(config_home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(prefs, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return prefs
