"""Start at login: the XDG autostart entry (``~/.config/autostart/peerstash.desktop``).

Kept free of Qt so it can be tested and used anywhere: the Settings page only calls these three
functions. The entry points at the same ``peerstash`` the person is running now (and the same
data directory when it is not the default one), so logging in brings back exactly this node.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

ENTRY_NAME = "peerstash.desktop"


def autostart_dir(config_home: Path | None = None) -> Path:
    """``$XDG_CONFIG_HOME/autostart`` (default ``~/.config/autostart``)."""
    if config_home is None:
        raw = os.environ.get("XDG_CONFIG_HOME", "").strip()
        # The spec says a relative value is invalid and must be ignored.
        config_home = Path(raw) if raw and os.path.isabs(raw) else Path.home() / ".config"
    return config_home / "autostart"


def autostart_path(config_home: Path | None = None) -> Path:
    return autostart_dir(config_home) / ENTRY_NAME


def default_command(
    data_dir: Path | None = None, default_data_dir: Path | None = None
) -> list[str]:
    """The command line that starts this Peerstash again: the installed script if there is one.

    It starts in the tray without opening the window (``PEERSTASH_START_HIDDEN=1``): a window
    popping up at every login is noise.
    """
    script = shutil.which("peerstash")
    cmd = ["env", "PEERSTASH_START_HIDDEN=1"]
    cmd += [script] if script else [sys.executable, "-m", "peerstash.desktop"]
    if data_dir is not None and data_dir != default_data_dir:
        cmd += ["--data-dir", str(data_dir)]
    return cmd


def quote_exec_arg(arg: str) -> str:
    """Quote one argument for a desktop entry's ``Exec`` key (XDG Desktop Entry spec).

    Arguments with reserved characters are double-quoted, and inside quotes ``"``, `` ` ``,
    ``$`` and ``\\`` are backslash-escaped; a literal ``%`` is written ``%%`` (field codes).
    """
    arg = arg.replace("%", "%%")
    reserved = set(" \t\n\"'\\><~|&;$*?#()`")
    if arg and not (set(arg) & reserved):
        return arg
    escaped = "".join("\\" + c if c in '"`$\\' else c for c in arg)
    return f'"{escaped}"'


def desktop_entry(command: Sequence[str]) -> str:
    """The text of the autostart entry for ``command``."""
    exec_line = " ".join(quote_exec_arg(a) for a in command)
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Name=Peerstash\n"
        "GenericName=Backup manager\n"
        "Comment=Backups for every machine you own\n"
        f"Exec={exec_line}\n"
        "Icon=peerstash\n"
        "Terminal=false\n"
        "Categories=Utility;Archiving;\n"
        "X-GNOME-Autostart-enabled=true\n"
        "X-GNOME-Autostart-Delay=10\n"
    )


def is_enabled(config_home: Path | None = None) -> bool:
    return autostart_path(config_home).is_file()


def enable(command: Sequence[str], config_home: Path | None = None) -> Path:
    """Write the entry (atomically: a half-written file would break the session's autostart)."""
    path = autostart_path(config_home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(desktop_entry(command), encoding="utf-8")
    os.replace(tmp, path)
    return path


def disable(config_home: Path | None = None) -> bool:
    """Remove the entry; False when there was none."""
    try:
        autostart_path(config_home).unlink()
    except FileNotFoundError:
        return False
    return True
