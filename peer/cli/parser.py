"""The ``peerstash`` parser, built lazily: only the subcommands named on the command line get
a real parser (see :func:`parse_args`). The top options are here, and the options several
subcommands share; each family in ``commands/`` adds its own subcommands with its
``add_parsers``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from peerstash.core import __version__


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"peerstash: {message}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, rest = super().parse_known_args(args, namespace)
        system = getattr(ns, "system_node", None)
        if system is not None:
            # --system NAME: the system service's layout (peerstash@NAME, `service install
            # --system --name NAME`), i.e. --data-dir /var/lib/peerstash/NAME.
            from peerstash.peer import systemd

            if getattr(ns, "data_dir", None):
                self.error("--system NAME and --data-dir name two nodes: give one of them")
            try:
                ns.data_dir = str(systemd.system_data_dir(system))
            except systemd.ServiceError as exc:
                self.error(f"--system: {exc}")
        return ns, rest


def password_options(sp: argparse.ArgumentParser) -> None:
    """The four ways to give a repository password (repo add, repo edit)."""
    pw = sp.add_mutually_exclusive_group()
    pw.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    pw.add_argument(
        "--password-file", help="file holding the password (read by the node at run time)"
    )
    pw.add_argument("--password-env", help="environment variable of the node holding the password")
    pw.add_argument("--password-command", help="command printing the password")


def retention_options(sp: argparse.ArgumentParser) -> None:
    """--keep-* (plan add, plan edit)."""
    for unit in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        sp.add_argument(f"--keep-{unit}", type=int, metavar="N")
    sp.add_argument("--keep-within", metavar="DURATION", help="e.g. 30d")


def json_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--json", action="store_true", help="print JSON")


def on_flag(sp: argparse.ArgumentParser, what: str) -> None:
    sp.add_argument("--on", metavar="PEER", help=f"on a paired peer instead: {what}")


class NotBuilt(Exception):
    """A subcommand parser left out by :func:`build_parser` was asked to parse."""


class _Unbuilt:
    """Stands in for the parser of a subcommand this call does not run: it takes the building
    calls of :func:`build_parser` and does nothing (building all 60 parsers costs more than
    starting Python: each looks up its translations and the terminal's width), and refuses
    everything else. Its name and help are registered all the same, so usage, ``--help`` and
    "invalid choice" read exactly as with every parser built."""

    _BUILDING = frozenset(
        {
            "add_argument",
            "add_argument_group",
            "add_mutually_exclusive_group",
            "add_parser",
            "add_subparsers",
            "set_defaults",
        }
    )

    def __getattr__(self, name: str) -> Any:
        if name in self._BUILDING:
            return self._take
        raise NotBuilt(name)

    def _take(self, *args: object, **kwargs: object) -> _Unbuilt:
        return self


class _Partial(Parser):
    """The top parser when only some families are imported: the subcommands of the others are
    not even registered, so it cannot show usage, help or an "invalid choice" that lists every
    command; asked to, it has :func:`parse_args` import them all and parse again."""

    def format_usage(self) -> str:
        raise NotBuilt("format_usage")

    def format_help(self) -> str:
        raise NotBuilt("format_help")


def _parser_class(build: frozenset[str] | None) -> type[Parser]:
    """The subcommand parser class: with ``build``, only those subcommands get a real parser."""
    if build is None:
        return Parser
    names = build

    class _Some(Parser):
        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            # add_parser names the parser "peerstash NAME" (no subcommand sets its own prog).
            name = str(kwargs.get("prog", "")).rsplit(" ", 1)[-1]
            return super().__new__(cls) if name in names else _Unbuilt()

    return _Some


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``build_parser().parse_args(argv)``, building only the parsers of the subcommands named
    in ``argv`` (the one that runs is always among them: argparse matches subcommand names
    exactly), and importing only their families. Should the top parser be asked for usage, help
    or an error, every family is imported (their commands' names and help), still building
    only those parsers; should anything else be asked of a parser left out, everything is
    built. Either way ``argv`` is parsed again, so the result is always the full parser's."""
    from peerstash.peer.cli.commands import FAMILY_OF

    words = sys.argv[1:] if argv is None else list(argv)
    named = frozenset(w for w in words if w in FAMILY_OF)
    try:
        return build_parser(named, only_their_families=True).parse_args(words)
    except NotBuilt:
        pass
    try:
        return build_parser(named).parse_args(words)
    except NotBuilt:
        return build_parser().parse_args(words)


def build_parser(
    build: frozenset[str] | None = None, *, only_their_families: bool = False
) -> argparse.ArgumentParser:
    """The whole ``peerstash`` parser; with ``build``, the parsers of other subcommands are
    left out (see :func:`parse_args`), and with ``only_their_families`` so are the families
    none of ``build`` belongs to (then the top parser cannot show usage, help or errors)."""
    from peerstash.peer.cli.commands import families

    partial = build is not None and only_their_families
    p = (_Partial if partial else Parser)(
        prog="peerstash", description="Backups for every machine you own."
    )
    p.add_argument("--version", action="version", version=f"peerstash {__version__}")
    p.add_argument("--data-dir", help="the node's data directory (or $PEERSTASH_DATA_DIR)")
    p.add_argument(
        "--system",
        dest="system_node",
        metavar="NAME",
        help="the system service's node NAME (peerstash@NAME; default instance: main): "
        "short for --data-dir /var/lib/peerstash/NAME",
    )
    p.add_argument("--no-gui", action="store_true", help="run the node headless in the foreground")
    p.add_argument(
        "--instance-id",
        help="this instance's fixed id, at first start only (default: HOSTNAME-XXXX, with the "
        "start of its key id); see `peerstash rename` for the name people see",
    )
    p.add_argument(
        "--db-url",
        default=os.environ.get("PEERSTASH_DB_URL"),
        help="SQLAlchemy URL of the store (default: SQLite in the data dir)",
    )
    p.add_argument("--restic", help="path of the restic binary (default: from PATH)")
    p.add_argument(
        "--listen",
        default=os.environ.get("PEERSTASH_LISTEN"),
        metavar="HOST:PORT",
        help="peer port (default: the listen setting, else 0.0.0.0:9797; port 0 picks one)",
    )
    p.add_argument(
        "--no-discovery", action="store_true", help="do not announce or look for peers on the LAN"
    )
    p.add_argument(
        "--discovery-interface",
        action="append",
        metavar="ADDR_OR_IFACE",
        help="limit LAN discovery to this interface or address (repeatable)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log more (node only)")
    sub = p.add_subparsers(dest="command", parser_class=_parser_class(build))
    for family in families(build if partial else None):
        family.add_parsers(sub)
    return p
