"""The CLI's command families (``peer/cli/commands/``) and the table that names them.

``peerstash`` imports only the families of the commands on its command line, found through
:data:`~peerstash.peer.cli.commands.FAMILIES`; these tests keep that table and the modules in
step, so a command added to a module but not to the table (or the reverse) fails here, by name,
rather than making the CLI slower or a command unknown.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from peerstash.peer import cli
from peerstash.peer.cli import commands
from peerstash.peer.cli.parser import Parser

COMMANDS_DIR = Path(commands.__file__).parent


def test_every_family_module_is_in_the_table() -> None:
    modules = sorted(p.stem for p in COMMANDS_DIR.glob("*.py") if p.stem != "__init__")
    assert sorted(commands.FAMILIES) == modules


@pytest.mark.parametrize("family", sorted(commands.FAMILIES))
def test_a_family_defines_and_handles_exactly_its_commands(family: str) -> None:
    (module,) = commands.families(commands.FAMILIES[family][:1])
    assert module.__name__ == f"peerstash.peer.cli.commands.{family}"
    named = list(commands.FAMILIES[family])
    assert sorted(module.COMMANDS) == sorted(named), (
        f"peer/cli/commands/{family}.py handles {sorted(module.COMMANDS)}; "
        f"FAMILIES in peer/cli/commands/__init__.py names {named}"
    )
    sub = argparse.ArgumentParser(prog="peerstash").add_subparsers(parser_class=Parser)
    module.add_parsers(sub)
    assert list(sub.choices) == named, "the table lists a family's commands in help order"


def test_help_lists_the_commands_in_the_tables_order() -> None:
    (sub,) = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    in_order = [c for names in commands.FAMILIES.values() for c in names]
    assert list(sub.choices) == in_order
    assert list(cli.COMMANDS) == in_order
    assert all(cli.COMMANDS[c] is commands.handler(c) for c in in_order)


#: Parses ARGV the way ``peerstash`` does, then reports which command families got imported.
PROBE = """
import json, sys
from peerstash.peer import cli
args = cli.parse_args(sys.argv[1:])
print(json.dumps({"command": args.command, "families": sorted(
    m.rsplit(".", 1)[1] for m in sys.modules if m.startswith("peerstash.peer.cli.commands.")
)}))
"""


@pytest.mark.parametrize(
    ("argv", "families"),
    [
        (["status", "--check"], ["status"]),
        (["repo", "add", "r", "--uri", "/srv/r", "--password-stdin", "--on", "p"], ["repos"]),
        (["remote", "run", "laptop", "daily", "--wait"], ["remote"]),
        (["service", "install", "--user", "--no-start"], ["service"]),
        (["plan", "add", "p", "--repo", "r", "--path", "/x", "--every", "6h"], ["plans"]),
        # A command's name as another's argument: that family is imported too, never misparsed.
        (["repo", "remove", "status"], ["repos", "status"]),
        (["remote", "run", "peer", "plan"], ["peers", "plans", "remote"]),
    ],
)
def test_a_command_line_imports_only_its_commands_families(
    argv: list[str], families: list[str]
) -> None:
    res = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got == {"command": argv[0], "families": families}


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", "add", "--help"],
        ["remote", "restore", "p", "r", "s"],  # --target missing
        ["repo", "bogus"],
        ["snapshots", "--help"],
        ["settings", "set", "nope", "1"],
        ["service", "install", "--user", "--system"],
        ["status", "repo"],
    ],
)
def test_errors_and_help_of_one_family_read_as_with_all_built(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as full:
        cli.build_parser().parse_args(argv)
    expected = capsys.readouterr()
    assert expected.out or expected.err
    with pytest.raises(SystemExit) as quick:
        cli.parse_args(argv)
    assert quick.value.code == full.value.code
    assert capsys.readouterr() == expected


def test_an_unknown_command_is_told_among_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """``peerstash bogus``: the partial parser cannot list the commands, so all are imported."""
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err
    assert all(f"'{c}'" in err for c in commands.FAMILY_OF)


@pytest.mark.parametrize("argv", [["--help"], ["bogus"], ["--system", "x", "--data-dir", "y"]])
def test_the_top_usage_and_help_build_no_subcommand_parser(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command's name and help come from its family's module, but no subcommand's parser
    is built for them (building all 54 costs more than starting Python): the parsers made are
    the top one of each try, the one with only the named families and the one with all."""
    made: list[str] = []
    init = argparse.ArgumentParser.__init__

    def counted(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self.prog)

    monkeypatch.setattr(argparse.ArgumentParser, "__init__", counted)
    with pytest.raises(SystemExit):
        cli.parse_args(argv)
    assert capsys.readouterr() != ("", "")
    assert made == ["peerstash", "peerstash"]
