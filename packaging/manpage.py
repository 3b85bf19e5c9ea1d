"""Write peerstash(1) from the CLI's own argparse parser (``peerstash.peer.cli.build_parser``).

    python3 packaging/manpage.py --version 0.1.0 --date 2026-12-05 > peerstash.1

One source of truth: every option and every subcommand (``repo add``, ``plan edit``, …) the
parser knows is in the page, with its help text, so the page cannot fall behind the CLI.
packaging/build runs it with the bundle's own libraries on ``PYTHONPATH`` (the code that ships)
and a fixed environment, so the page is the same bytes on every build of one commit (the date
comes from SOURCE_DATE_EPOCH, and defaults read from the environment are cleared first).
"""

from __future__ import annotations

import argparse
import os
import sys

#: Variables whose value build_parser() would read as a default: cleared for a stable page.
ENV_DEFAULTS = ("PEERSTASH_DB_URL", "PEERSTASH_LISTEN", "PEERSTASH_DATA_DIR")

DESCRIPTION = (
    "Peerstash drives restic for each machine's backups and links your machines to each "
    "other: one encrypted sync link per pair shares operation history, shared repositories, "
    "configuration and remote commands. Without a command, it starts the tray app (or, with "
    "--no-gui, the node headless in the foreground). With a command, it talks to the running "
    "node of the data directory through its admin socket."
)

ENVIRONMENT = [
    ("PEERSTASH_DATA_DIR", "the node's data directory when --data-dir is not given"),
    ("PEERSTASH_DB_URL", "SQLAlchemy URL of the store (default: SQLite in the data directory)"),
    ("PEERSTASH_LISTEN", "peer port HOST:PORT when --listen is not given"),
]

FILES = [
    ("~/.local/share/peerstash", "a user's node: its store, keys and history"),
    ("/var/lib/peerstash/NAME", "the system node NAME (peerstash@NAME.service, --system NAME)"),
    ("/etc/peerstash/NAME.env", "environment of the system node NAME (repository passwords)"),
    ("/usr/lib/systemd/system/peerstash@.service", "the packaged systemd unit"),
]


def esc(text: str) -> str:
    """roff-escape running text: backslashes, hyphens (so options copy-paste), line starts."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = [("\\&" + ln if ln.startswith((".", "'")) else ln) for ln in text.split("\n")]
    return "\n".join(lines)


def option_label(action: argparse.Action) -> str:
    """``\\fB\\-\\-repo\\fR \\fINAME\\fR`` for an option, ``\\fINAME\\fR`` for a positional."""
    if not action.option_strings:
        return f"\\fI{esc(action.metavar or action.dest)}\\fR"  # type: ignore[arg-type]
    flags = ", ".join(f"\\fB{esc(o)}\\fR" for o in action.option_strings)
    if action.nargs == 0:
        return flags
    metavar = action.metavar or action.dest.upper()
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    return f"{flags} \\fI{esc(str(metavar))}\\fR"


def usage(parser: argparse.ArgumentParser) -> str:
    text = parser.format_usage().strip()
    return " ".join(text.removeprefix("usage:").split())


def subcommands(
    parser: argparse.ArgumentParser,
) -> list[tuple[str, list[str], str, argparse.ArgumentParser]]:
    """(name, aliases, help, parser) of each subcommand, in the order the parser declares them."""
    out: list[tuple[str, list[str], str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            first: dict[int, int] = {}
            for name, sub in action.choices.items():
                if id(sub) in first:  # an alias of a command already listed
                    out[first[id(sub)]][1].append(name)
                    continue
                first[id(sub)] = len(out)
                out.append((name, [], helps.get(name, sub.description or ""), sub))
    return out


def options(parser: argparse.ArgumentParser) -> list[str]:
    """``.TP`` entries for every argument but -h and the subcommand selector."""
    fmt = parser._get_formatter()
    lines = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        help_text = fmt._expand_help(action) if action.help else ""
        lines += [".TP", option_label(action), esc(help_text) or "\\&"]
    return lines


def section(
    parser: argparse.ArgumentParser, path: list[str], out: list[str], aliases: list[str]
) -> None:
    """A ``.SS`` per leaf command (and per group with its own options), depth first."""
    subs = subcommands(parser)
    own = options(parser)
    if path and (own or not subs):
        # \\: lets man break a long {choice,choice,...} list after a comma.
        synopsis = esc(usage(parser)).replace(",", ",\\:")
        out += [f'.SS "{esc(" ".join(path))}"', f"\\fB{synopsis}\\fR"]
        if aliases:
            also = ", ".join(f"\\fB{esc(' '.join([*path[:-1], a]))}\\fR" for a in aliases)
            out += [".br", f"Also: {also}"]
        if parser.description:
            out += [".PP", esc(parser.description)]
        out += own
    for name, names, help_text, sub in subs:
        if not sub.description and help_text:
            sub.description = help_text
        section(sub, [*path, name], out, names)


def render(version: str, date: str) -> str:
    for name in ENV_DEFAULTS:
        os.environ.pop(name, None)
    os.environ["COLUMNS"] = "1000"  # usage lines unwrapped: man wraps them
    from peerstash.peer.cli import build_parser

    parser = build_parser()
    out = [
        f'.TH PEERSTASH 1 "{date}" "Peerstash {esc(version)}" "User Commands"',
        ".ad l",  # ragged right: long usage lines cannot be justified (groff would warn)
        ".SH NAME",
        "peerstash \\- backups for every machine you own, restic underneath",
        ".SH SYNOPSIS",
        ".B peerstash",
        "[\\fIOPTIONS\\fR]",
        ".br",
        ".B peerstash",
        "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]",
        ".SH DESCRIPTION",
        esc(DESCRIPTION),
        ".SH OPTIONS",
        *options(parser),
        ".SH COMMANDS",
        "Each command accepts \\fB\\-h\\fR for its own help.",
    ]
    section(parser, [], out, [])
    out.append(".SH ENVIRONMENT")
    for name, text in ENVIRONMENT:
        out += [".TP", f"\\fB{name}\\fR", esc(text)]
    out.append(".SH FILES")
    for name, text in FILES:
        out += [".TP", f"\\fI{esc(name)}\\fR", esc(text)]
    out += [
        ".SH SEE ALSO",
        "\\fBrestic\\fR(1), \\fBsystemctl\\fR(1),",
        "/usr/share/doc/peerstash/install.md, https://peerstash.org/",
    ]
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--version", required=True, help="Peerstash version for the header")
    p.add_argument("--date", required=True, help="YYYY-MM-DD for the header")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
    args = p.parse_args()
    page = render(args.version, args.date)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(page)
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
