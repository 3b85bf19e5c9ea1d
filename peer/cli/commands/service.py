"""``peerstash service``: run this node as a systemd service; it needs no running node."""

from __future__ import annotations

import argparse
import os

from peerstash.peer.cli import EXIT_FAILED, AdminClient, CliError
from peerstash.peer.cli.format import emit
from peerstash.peer.cli.parser import Parser, json_flag
from peerstash.peer.paths import resolve_data_dir


async def cmd_service(c: AdminClient, a: argparse.Namespace) -> int:
    """Needs no running node: ``c`` is never called (run_command connects on the first call)."""
    import asyncio

    from peerstash.peer import systemd

    user = a.scope != "system" if a.scope else os.geteuid() != 0
    try:
        if a.service_cmd == "install":
            if not user and os.geteuid() != 0:
                raise CliError(
                    "a system service needs root: sudo peerstash service install --system"
                )
            if a.data_dir:
                data_dir = resolve_data_dir(a.data_dir)
            else:
                data_dir = systemd.default_data_dir(user, a.name)
            rep = await asyncio.to_thread(
                systemd.install,
                user,
                data_dir,
                systemd.default_command(),
                name=a.name,
                start=not a.no_start,
            )
        elif a.service_cmd == "uninstall":
            rep = await asyncio.to_thread(systemd.uninstall, user, name=a.name)
        else:
            rep = await asyncio.to_thread(systemd.status, user, name=a.name)
    except (systemd.ServiceError, OSError) as exc:
        raise CliError(str(exc)) from None
    lines = list(rep.messages)
    if a.service_cmd == "status" and rep.systemd:
        lines.append(f"{rep.unit}: {rep.enabled}, {rep.active}")
    if rep.todo:
        lines.append("to finish, run:" if not rep.systemd else "next:")
        lines += [f"  {cmd}" for cmd in rep.todo]
    emit(a, rep.to_dict(), "\n".join(lines))
    return 0 if a.service_cmd != "status" or rep.installed else EXIT_FAILED


#: This family's subcommands and their handlers (named in ``FAMILIES`` too).
COMMANDS = {"service": cmd_service}


def add_parsers(sub: argparse._SubParsersAction[Parser]) -> None:
    """The subcommand ``service`` with its arguments."""
    svc = sub.add_parser("service", help="run this node as a systemd service (--no-gui)")
    svsub = svc.add_subparsers(dest="service_cmd", required=True, parser_class=Parser)
    for name, text in (
        ("install", "write and enable a systemd unit for this data dir"),
        ("uninstall", "stop, disable and remove the unit"),
        ("status", "is the unit installed, enabled, running?"),
    ):
        sv = svsub.add_parser(name, help=text)
        scope = sv.add_mutually_exclusive_group()
        scope.add_argument(
            "--user",
            dest="scope",
            action="store_const",
            const="user",
            help="a systemd --user unit (default unless root)",
        )
        scope.add_argument(
            "--system",
            dest="scope",
            action="store_const",
            const="system",
            help="a system unit in /etc/systemd/system (default for root)",
        )
        sv.add_argument("--name", help="unit peerstash-NAME.service, for a second node")
        if name == "install":
            sv.add_argument("--no-start", action="store_true", help="enable, but do not start now")
        json_flag(sv)
