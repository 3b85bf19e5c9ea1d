"""``peerstash plan``: backup plans of this node, or with ``--on PEER`` of a peer."""

from __future__ import annotations

import argparse
import os
from typing import Any

from peerstash.core.records import PlanRecord
from peerstash.core.wording import human_duration
from peerstash.peer.api import schema
from peerstash.peer.cli import AdminClient, CliError
from peerstash.peer.cli.format import decode, emit, peer_path, short_time, table
from peerstash.peer.cli.parser import Parser, json_flag, on_flag, retention_options

RETENTION_KEYS = (
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
    "keep_within",
)


def _retention(a: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(a, k) for k in RETENTION_KEYS if getattr(a, k, None) is not None}


async def cmd_plan(c: AdminClient, a: argparse.Namespace) -> int:
    """Plans of this node, or with ``--on PEER`` of a peer (config.read / config.write there).

    A peer's paths are its own: they are sent as given, not made absolute here.
    """
    on: str | None = getattr(a, "on", None)
    base = peer_path(on) + "/plans" if on else "/v1/plans"

    def where(path: str) -> str:
        return path if on else os.path.abspath(path)

    suffix = f" on {on}" if on else ""
    if a.plan_cmd == "add":
        body = schema.AddPlan(
            id=a.name,
            repo=a.repo,
            paths=[where(p) for p in a.path],
            excludes=a.exclude or [],
            schedule=a.schedule,
            every=a.every,
            retention=_retention(a),
            backup_now=not a.no_backup_now,
        )
        res = await c.call("POST", base, body)
        added = decode(res, PlanRecord, "a plan")
        # Besides the plan, its first backup: not a record (a peer sends only its id and
        # status, see services/remote_config.py), or why it did not start.
        first = res.get("first_backup")
        if first is None:
            now = ""
        elif first.get("error"):
            now = f"; first backup not started: {first['error']}"
        else:
            now = f"; first backup queued as operation {first['id']}"
        emit(
            a,
            res,
            f"plan {a.name} added{suffix} (next run {short_time(added.next_due_at)}){now}",
        )
        return 0
    if a.plan_cmd == "edit":
        changes = schema.EditPlan()
        if a.repo:
            changes.repo = a.repo
        if a.path:
            changes.paths = [where(p) for p in a.path]
        if a.exclude is not None:
            changes.excludes = [e for e in a.exclude if e]
        if a.schedule is not None:
            changes.schedule = a.schedule
        if a.every is not None:
            changes.every = a.every
        if a.manual:
            changes.schedule = ""
        retention = _retention(a)
        if retention or a.no_retention:
            changes.retention = retention
        if a.enable or a.disable:
            changes.enabled = bool(a.enable)
        if changes == schema.EditPlan():
            raise CliError("nothing to change: give the options to change (see plan edit --help)")
        res = await c.call("PATCH", f"{base}/{a.name}", changes)
        changed = decode(res, PlanRecord, "a plan")
        emit(a, res, f"plan {a.name} changed{suffix} (next run {short_time(changed.next_due_at)})")
        return 0
    if a.plan_cmd in ("remove", "delete"):
        res = await c.call("DELETE", f"{base}/{a.name}")
        emit(a, res, f"plan {a.name} removed{suffix}")
        return 0
    if on:
        plans = (await c.call("GET", peer_path(on) + "/config"))["plans"]
    else:
        plans = await c.call("GET", "/v1/plans")
    rows = []
    for p in decode(plans, list[PlanRecord], "a list of plans"):
        when = p.schedule or (
            f"every {human_duration(p.every_seconds)}" if p.every_seconds else "manual"
        )
        rows.append([p.id, p.repo, when, ", ".join(p.paths), "yes" if p.enabled else "no"])
    emit(
        a,
        plans,
        table(rows, ["ID", "REPO", "SCHEDULE", "PATHS", "ENABLED"])
        if rows
        else (f"no plans of {on} are visible here" if on else "no plans"),
    )
    return 0


#: This family's subcommands and their handlers (named in ``FAMILIES`` too).
COMMANDS = {"plan": cmd_plan}


def add_parsers(sub: argparse._SubParsersAction[Parser]) -> None:
    """The subcommand ``plan`` with its arguments."""
    plan = sub.add_parser("plan", help="manage backup plans")
    psub = plan.add_subparsers(dest="plan_cmd", required=True, parser_class=Parser)
    pa = psub.add_parser("add", help="add a backup plan")
    pa.add_argument("name")
    pa.add_argument("--repo", required=True)
    pa.add_argument("--path", action="append", required=True, help="what to back up (repeatable)")
    pa.add_argument("--exclude", action="append", metavar="PATTERN")
    when = pa.add_mutually_exclusive_group()
    when.add_argument("--schedule", metavar="CRON", help='cron expression, e.g. "0 3 * * *"')
    when.add_argument("--every", metavar="INTERVAL", help="interval, e.g. 6h, 30m, 1d")
    retention_options(pa)
    pa.add_argument(
        "--no-backup-now",
        action="store_true",
        help="do not start the first backup now (it runs at the first scheduled time)",
    )
    on_flag(pa, "it must grant config.write; paths are the peer's, give them absolute")
    json_flag(pa)
    pe = psub.add_parser("edit", help="change a plan (only the options given)")
    pe.add_argument("name")
    pe.add_argument("--repo")
    pe.add_argument("--path", action="append", help="replaces the paths (repeatable)")
    pe.add_argument(
        "--exclude",
        action="append",
        metavar="PATTERN",
        help="replaces the excludes (repeatable; --exclude '' for none)",
    )
    pwhen = pe.add_mutually_exclusive_group()
    pwhen.add_argument("--schedule", metavar="CRON")
    pwhen.add_argument("--every", metavar="INTERVAL")
    pwhen.add_argument("--manual", action="store_true", help="no schedule: run only when asked")
    retention_options(pe)
    pe.add_argument("--no-retention", action="store_true", help="remove the retention policy")
    onoff = pe.add_mutually_exclusive_group()
    onoff.add_argument("--enable", action="store_true")
    onoff.add_argument("--disable", action="store_true")
    on_flag(pe, "it must grant config.write")
    json_flag(pe)
    pl = psub.add_parser("list", help="list plans")
    on_flag(pl, "it must grant config.read")
    json_flag(pl)
    pr = psub.add_parser("remove", aliases=["delete"], help="remove a plan (its snapshots stay)")
    pr.add_argument("name")
    on_flag(pr, "it must grant config.write")
    json_flag(pr)
