"""The ``peerstash`` subcommands, one module per family of commands.

Each family module holds its handlers (``cmd_*``: a coroutine given the admin client and the
parsed arguments, returning the exit code), its ``COMMANDS`` (subcommand name to handler) and
``add_parsers(sub)``, which defines its subcommands and their arguments. A new command goes in
its family's module; a new top-level one (``peerstash NAME``, not ``peerstash repo NAME``) is
also named in :data:`FAMILIES` below, and a new family is a new module and an entry there.

Why the names are listed here as well: every ``peerstash`` call parses its command line, and
only the families of the commands named on it are imported (the others cost import time, see
docs/benchmarks.md, "CLI start-up"). For the same reason a family imports nothing heavy at
module level: aiohttp, asyncio, getpass and urllib are imported where they are used.
tests/unit/test_cli_families.py checks that this table and the modules agree.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine, Iterable
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peerstash.peer.cli import AdminClient

    Handler = Callable[[AdminClient, argparse.Namespace], Coroutine[Any, Any, int]]

#: Each family (a module of this package) and its subcommands, in the order
#: ``peerstash --help`` lists them.
FAMILIES: dict[str, tuple[str, ...]] = {
    "status": ("status",),
    "repos": ("repo",),
    "plans": ("plan",),
    "ops": ("backup", "ops", "log", "events", "wait", "cancel"),
    "snapshots": ("snapshots", "ls", "restore", "forget", "prune", "check", "unlock"),
    "peers": ("token", "peer"),
    "remote": ("remote",),
    "settings": ("rename", "discover", "settings", "gc", "pause", "resume"),
    "service": ("service",),
}

#: Every subcommand's name, to its family's.
FAMILY_OF: dict[str, str] = {
    command: family for family, commands in FAMILIES.items() for command in commands
}


def families(commands: Iterable[str] | None = None) -> list[ModuleType]:
    """The family modules (imported now) of ``commands``, or of every command, in help order."""
    wanted = set(FAMILIES) if commands is None else {FAMILY_OF[c] for c in commands}
    return [import_module(f"{__name__}.{name}") for name in FAMILIES if name in wanted]


def handler(command: str) -> Handler:
    """The handler of one subcommand; only its family is imported."""
    (family,) = families([command])
    found: Handler = family.COMMANDS[command]
    return found


def all_commands() -> dict[str, Handler]:
    """Every subcommand's handler by name (imports every family)."""
    return {name: h for family in families() for name, h in family.COMMANDS.items()}
