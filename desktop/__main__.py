"""The ``peerstash`` entry point.

A subcommand talks to the running node; ``--no-gui`` runs the node headless; no arguments start
the tray app where there is a display. Qt is imported only in that last case, so servers never
need it.
"""

from __future__ import annotations

import os
import sys


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def main(argv: list[str] | None = None) -> int:
    from peerstash.peer import cli, daemon

    args = cli.build_parser().parse_args(argv)
    if args.command:
        return cli.run_command(args)
    if args.no_gui:
        return daemon.run(args)
    if not has_display():
        print(
            "peerstash: no display found (neither DISPLAY nor WAYLAND_DISPLAY is set); "
            "running the node headless. Use `peerstash --no-gui` to say so explicitly.",
            file=sys.stderr,
        )
        return daemon.run(args)
    print(
        "peerstash: the tray app is not part of this version yet; running the node headless.",
        file=sys.stderr,
    )
    return daemon.run(args)


if __name__ == "__main__":
    sys.exit(main())
