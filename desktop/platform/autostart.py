"""Start at login: the XDG autostart entry (``~/.config/autostart/peerstash.desktop``).

Kept free of Qt so it can be tested and used anywhere: the Settings page only calls these three
functions. The entry points at the same ``peerstash`` the person is running now, with the same
data directory (when it is not the default one) and the same node options (``--listen``,
``--no-discovery``, ``--restic``...: :func:`node_args`), so logging in brings back exactly this
node, not a differently configured one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

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


def _has_password(url: str) -> bool:
    try:
        return bool(urlsplit(url).password)
    except ValueError:  # not parseable: treat it as secret
        return True


def node_args(args: argparse.Namespace) -> list[str]:
    """The node options of a ``peerstash`` command line, to start the same node again.

    From the parsed arguments (so ``PEERSTASH_LISTEN`` and ``PEERSTASH_DB_URL``, which the
    parser reads as defaults, are kept too, spelled as options). The data directory is passed
    apart (:func:`default_command`), already made absolute. A store URL that carries a password
    is left out: a command line is readable by every user of the machine (``ps``), and so is
    the autostart file; such a node gets its URL from ``PEERSTASH_DB_URL`` in the session.
    """
    out: list[str] = []
    if getattr(args, "listen", None):
        out += ["--listen", str(args.listen)]
    if getattr(args, "no_discovery", False):
        out.append("--no-discovery")
    for iface in getattr(args, "discovery_interface", None) or []:
        out += ["--discovery-interface", str(iface)]
    restic = getattr(args, "restic", None)
    if restic:
        # Relative to where it was started; the session starts elsewhere.
        out += ["--restic", os.path.abspath(restic) if os.sep in restic else str(restic)]
    db_url = getattr(args, "db_url", None)
    if db_url and not _has_password(str(db_url)):
        out += ["--db-url", str(db_url)]
    if getattr(args, "verbose", False):
        out.append("--verbose")
    return out


def default_command(
    data_dir: Path | None = None,
    default_data_dir: Path | None = None,
    options: Sequence[str] = (),
) -> list[str]:
    """The command line that starts this Peerstash again: the installed script if there is one.

    It starts in the tray without opening the window (``PEERSTASH_START_HIDDEN=1``): a window
    popping up at every login is noise. ``options`` are the node options it was started with
    (:func:`node_args`).
    """
    script = shutil.which("peerstash")
    cmd = ["env", "PEERSTASH_START_HIDDEN=1"]
    cmd += [script] if script else [sys.executable, "-m", "peerstash.desktop"]
    if data_dir is not None and data_dir != default_data_dir:
        cmd += ["--data-dir", str(data_dir.absolute())]
    cmd += list(options)
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
