"""The ``peerstash`` entry point.

A subcommand talks to the running node; ``--no-gui`` runs the node headless; no arguments start
the tray app where there is a display. Qt is imported only in that last case, so servers never
need it.
"""

from __future__ import annotations

import os
import sys


def has_display() -> bool:
    """A display to draw on; ``QT_QPA_PLATFORM`` (e.g. ``offscreen``) counts as asking for one."""
    return bool(
        os.environ.get("DISPLAY")
        or os.environ.get("WAYLAND_DISPLAY")
        or os.environ.get("QT_QPA_PLATFORM")
    )


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv) == ["--version"]:
        # The one call that needs no parser at all; answered before the CLI is even imported
        # (the same line argparse's version action prints).
        from peerstash.core import __version__

        print(f"peerstash {__version__}")
        return 0
    from peerstash.peer import cli

    args = cli.parse_args(argv)
    if args.command:
        return cli.run_command(args)
    # The node (SQLAlchemy, Alembic, restic wrapper) is imported only when one is started, so
    # every CLI call stays quick.
    from peerstash.peer import daemon

    if args.no_gui:
        return daemon.run(args)
    if not has_display():
        print(
            "peerstash: no display found (neither DISPLAY nor WAYLAND_DISPLAY is set); "
            "running the node headless. Use `peerstash --no-gui` to say so explicitly.",
            file=sys.stderr,
        )
        return daemon.run(args)
    try:
        # Imported here, never at module level: servers (--no-gui, subcommands) need no Qt.
        os.environ.setdefault("QT_API", "pyside6")
        from peerstash.desktop.app import run_gui
    except ImportError as exc:
        print(
            f"peerstash: the tray app needs PySide6 and qasync ({exc}); running the node "
            "headless. Install them with `pip install 'peerstash[gui]'`.",
            file=sys.stderr,
        )
        return daemon.run(args)
    return run_gui(args)


if __name__ == "__main__":
    sys.exit(main())
