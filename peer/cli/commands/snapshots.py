"""Snapshots and maintenance: ``snapshots``, ``ls``, ``restore``, ``forget``, ``prune``,
``check`` and ``unlock``.
"""

from __future__ import annotations

import argparse
import os

import msgspec

from peerstash.core.records import ForgetPreviewRecord, PlannedSnapshotRecord, SnapshotRecord
from peerstash.peer.api import schema
from peerstash.peer.cli import AdminClient, CliError
from peerstash.peer.cli.commands.ops import started, wait_for
from peerstash.peer.cli.format import (
    decode,
    emit,
    ls_line,
    quote_segment,
    short_time,
    snapshot_table,
    table,
)
from peerstash.peer.cli.parser import Parser, json_flag


async def cmd_snapshots(c: AdminClient, a: argparse.Namespace) -> int:
    snaps = await c.call("GET", f"/v1/repos/{a.repo}/snapshots")
    emit(a, snaps, snapshot_table(decode(snaps, list[SnapshotRecord], "a list of snapshots")))
    return 0


async def cmd_ls(c: AdminClient, a: argparse.Namespace) -> int:
    q = f"?path={a.path}" if a.path else ""
    async for node in c.stream(f"/v1/repos/{a.repo}/snapshots/{a.snapshot}/ls{q}"):
        print(ls_line(node, as_json=a.json), flush=True)
    return 0


async def cmd_restore(c: AdminClient, a: argparse.Namespace) -> int:
    target = os.path.abspath(a.target)  # noqa: ASYNC240 - getcwd only
    body = schema.Restore(snapshot=a.snapshot, target=target, include=a.include or [])
    return await started(c, a, await c.call("POST", f"/v1/repos/{a.repo}/restore", body))


async def cmd_forget(c: AdminClient, a: argparse.Namespace) -> int:
    """Apply retention, or (``--dry-run``) list what it would remove and keep, changing nothing."""
    body = schema.Forget(plan=a.plan or None)
    if not a.dry_run:
        return await started(
            c, a, await c.call("POST", f"/v1/repos/{quote_segment(a.repo)}/forget", body)
        )
    if a.wait:
        raise CliError("--wait has nothing to wait for with --dry-run")
    res = await c.call(
        "POST",
        f"/v1/repos/{quote_segment(a.repo)}/forget",
        msgspec.structs.replace(body, dry_run=True),
    )

    preview = decode(res, ForgetPreviewRecord, "a retention preview")

    def rows(listed: list[PlannedSnapshotRecord]) -> list[list[str]]:
        return [
            [
                s.short_id,
                short_time(s.time),
                s.hostname,
                s.plan,
                ", ".join(s.paths),
            ]
            for s in listed
        ]

    headers = ["ID", "TIME", "HOST", "PLAN", "PATHS"]
    parts = [
        "dry run: nothing was removed. Only this node's snapshots of each plan are considered "
        f"(host {', '.join(sorted({p.host for p in preview.plans}))})."
    ]
    remove, keep = rows(preview.remove), rows(preview.keep)
    parts.append(
        f"would remove {len(remove)}:\n{table(remove, headers)}" if remove else "would remove none"
    )
    parts.append(f"would keep {len(keep)}:\n{table(keep, headers)}" if keep else "would keep none")
    emit(a, res, "\n\n".join(parts))
    return 0


async def cmd_maintenance(c: AdminClient, a: argparse.Namespace) -> int:
    body = schema.Maintenance(all=bool(getattr(a, "all", False)))
    op = await c.call("POST", f"/v1/repos/{a.repo}/{a.command}", body)
    if a.command == "unlock":
        return await wait_for(c, op, quiet=a.json)
    return await started(c, a, op)


#: This family's subcommands and their handlers (named in ``FAMILIES`` too).
COMMANDS = {
    "snapshots": cmd_snapshots,
    "ls": cmd_ls,
    "restore": cmd_restore,
    "forget": cmd_forget,
    "prune": cmd_maintenance,
    "check": cmd_maintenance,
    "unlock": cmd_maintenance,
}


def add_parsers(sub: argparse._SubParsersAction[Parser]) -> None:
    """The subcommands ``snapshots``, ``ls``, ``restore`` and the maintenance ones, with their
    arguments."""
    s = sub.add_parser("snapshots", help="list a repository's snapshots")
    s.add_argument("repo")
    json_flag(s)

    ls = sub.add_parser("ls", help="list files in a snapshot")
    ls.add_argument("repo")
    ls.add_argument("snapshot")
    ls.add_argument("path", nargs="?")
    json_flag(ls)

    r = sub.add_parser("restore", help="restore a snapshot into a folder")
    r.add_argument("repo")
    r.add_argument("snapshot")
    r.add_argument("--target", required=True)
    r.add_argument("--include", action="append", metavar="PATH")
    r.add_argument("--wait", action="store_true")
    json_flag(r)

    for name, text in (
        ("forget", "apply the plans' retention policies to this node's snapshots"),
        ("prune", "remove unreferenced data"),
        ("check", "verify the repository"),
        ("unlock", "remove stale locks"),
    ):
        m = sub.add_parser(name, help=text)
        m.add_argument("repo")
        if name == "forget":
            m.add_argument("--plan", help="only this plan's policy (default: every plan on REPO)")
            m.add_argument(
                "--dry-run",
                action="store_true",
                help="list what would be removed and kept; change nothing",
            )
        if name == "unlock":
            m.add_argument(
                "--all", action="store_true", help="remove every lock, not only stale ones"
            )
        else:
            m.add_argument("--wait", action="store_true")
        json_flag(m)
