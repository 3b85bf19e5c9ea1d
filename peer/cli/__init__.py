"""The ``peerstash`` command line: every subcommand asks the running node over its admin socket.

Output is for people unless ``--json`` is given, in which case it is exactly what the admin API
returned, so scripts and the docs agree. Errors are one line on stderr and a non-zero exit.

Here: the exit codes, the error type and :func:`run_command` (the admin client is
``peer/api/client.py``). The subcommands, each with its arguments, are in ``commands/``, one
module per family (see ``commands/__init__.py`` to add one); ``parser.py`` builds the parser
(lazily) and holds the options commands share; ``format.py`` the tables and lines they print.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from peerstash.core.text import printable

# The one admin client, shared with the tray (peer/api/client.py); the CLI's errors are its
# error type, so a command raises the same exception the client does.
from peerstash.peer.api.client import AdminClient as AdminClient
from peerstash.peer.api.client import AdminError as CliError
from peerstash.peer.cli import commands
from peerstash.peer.cli.parser import NotBuilt as NotBuilt
from peerstash.peer.cli.parser import build_parser as build_parser
from peerstash.peer.cli.parser import parse_args as parse_args
from peerstash.peer.paths import resolve_data_dir

# Every `peerstash` call imports this module, so it imports only what every command needs:
# aiohttp, asyncio, getpass and urllib are imported where they are used (`status` and
# `--version` need none of them; see docs/benchmarks.md, "CLI start-up", and
# tests/unit/test_cli_imports.py).

#: Exit codes: 0 ok, 1 failed, 2 usage, 3 finished with a warning (like restic's partial backup).
EXIT_FAILED = 1
EXIT_WARNING = 3

#: Commands of one request (and one stream to follow): they run on the quick client (no
#: aiohttp, no asyncio, see ``peer/api/quickclient.py``), so they start in a fraction of the time.
QUICK_COMMANDS = frozenset({"status", "backup", "wait"})


def run_command(args: argparse.Namespace) -> int:
    """Run one CLI subcommand against the node; return the exit code."""
    data_dir = resolve_data_dir(args.data_dir)
    handler = commands.handler(args.command)
    client_class: type[AdminClient]
    run: Callable[[Coroutine[Any, Any, int]], int]
    if args.command in QUICK_COMMANDS:
        from peerstash.peer.api.quickclient import QuickAdminClient, run_to_end

        client_class, run = QuickAdminClient, run_to_end
    else:
        import asyncio

        client_class, run = AdminClient, asyncio.run

    async def go() -> int:
        async with client_class(data_dir) as client:
            return await handler(client, args)

    try:
        return run(go())
    except CliError as exc:
        print(printable(f"peerstash: {exc}"), file=sys.stderr)
        return EXIT_FAILED
    except (KeyError, TypeError, AttributeError) as exc:
        if args.command not in QUICK_COMMANDS:
            raise
        # The quick commands read the node's answer as JSON, without the records' decode
        # (msgspec would cost them a third of their start): an answer without a field they
        # read, or with one of another type, is one line too, as ``decode`` would say it.
        print(printable(f"peerstash: {not_read(args.command, exc)}"), file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("peerstash: interrupted (the operation goes on in the node)", file=sys.stderr)
        return 130


def not_read(command: str, exc: BaseException) -> str:
    """Why a quick command could not read the node's answer, in a sentence (field names and
    types of ours, never a value the node sent)."""
    why = f"no field {exc}" if isinstance(exc, KeyError) else f"a field of another type ({exc})"
    return f"the node's answer is not what `peerstash {command}` reads: {why}"


def __getattr__(name: str) -> Any:
    """``COMMANDS``, every subcommand's handler by name, made when first asked for: it imports
    every command family, and a command line imports only the families it names."""
    if name == "COMMANDS":
        return commands.all_commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
