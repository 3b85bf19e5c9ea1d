"""Operations: ``backup``, ``ops``, ``log``, ``events``, ``wait`` and ``cancel``.

Also :func:`wait_for`, which follows an operation to its end for every command given ``--wait``
(the snapshot commands use it too).

``backup`` and ``wait`` run on the quick client: :func:`wait_for` and :func:`started` read the
operation as the node's dict, since decoding it as an ``OpRecord`` would import msgspec (see
``format.py``). ``ops`` and ``events`` decode the operations they show.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from peerstash.core.text import printable
from peerstash.core.wording import backup_summary_line
from peerstash.peer.cli import EXIT_FAILED, EXIT_WARNING, AdminClient
from peerstash.peer.cli.format import (
    OP_HEADERS,
    decode,
    emit,
    finished_line,
    op_line,
    progress_bar,
    quote_segment,
    table,
)
from peerstash.peer.cli.parser import Parser, json_flag


async def wait_for(
    client: AdminClient,
    op: dict[str, Any],
    *,
    quiet: bool = False,
    flow: bool = False,
    as_json: bool = False,
) -> int:
    """Follow an operation (and with ``flow`` its follow-ups) to the end; return the exit code.

    Progress is drawn on a terminal; the exit code is the worst result among the operations.
    With ``as_json`` stdout gets only the finished operation as one JSON object (with the
    operations of its flow that followed it under ``followed_by``); problems still go to stderr.
    """
    quiet = quiet or as_json
    tty = sys.stderr.isatty() and not quiet
    drew_bar = False
    last_print = 0.0
    final: dict[str, dict[str, Any]] = {op["id"]: op}
    path = f"/v1/ops/{op['id']}/wait" + ("?flow=1" if flow else "")
    said: dict[str, str] = {}
    async for update in client.stream(path):
        final[update["id"]] = update
        detail = (
            (update.get("summary") or {}).get("detail") if update["status"] == "running" else None
        )
        if detail and not quiet and said.get(update["id"]) != detail:
            said[update["id"]] = str(detail)
            print(
                ("\n" if tty else "") + f"{update['kind']} {update['id']}: {detail}",
                file=sys.stderr,
            )
        if update["status"] == "running" and update.get("bytes_total"):
            if tty:
                drew_bar = True
                sys.stderr.write("\r" + progress_bar(update))
                sys.stderr.flush()
            elif not quiet and time.monotonic() - last_print > 10:
                last_print = time.monotonic()
                print(progress_bar(update), file=sys.stderr)
        elif tty and drew_bar and update["status"] == "success" and update.get("bytes_total"):
            # The node sets done = total on success: the bar ends at 100 %, not where the
            # last throttled update left it.
            sys.stderr.write("\r" + progress_bar(update))
            drew_bar = False
    if tty:
        sys.stderr.write("\n")
    code = 0
    # A snapshot was saved: a retention (forget) failing after it must not read as "no backup".
    saved = flow and any(
        done["kind"] == "backup" and done["status"] in ("success", "warning")
        for done in final.values()
    )
    for done in final.values():
        status = done["status"]
        what = f"{done['kind']} {done['id']}"
        if saved and done["kind"] == "forget" and status not in ("success", "warning"):
            print(
                f"warning: the backup's snapshot was saved, but its retention ({what}) "
                f"{status}: {done.get('error') or 'no details'}",
                file=sys.stderr,
            )
        elif status == "success":
            if not as_json:
                print(printable(finished_line(done)))
        elif status == "warning":
            print(
                printable(f"{what}: finished with a warning: {done.get('error')}"), file=sys.stderr
            )
            code = max(code, EXIT_WARNING) if code != EXIT_FAILED else code
            if backup_summary_line(done.get("summary")) and not as_json:
                print(printable(finished_line(done)))
        else:
            print(
                printable(f"{what}: {status}: {done.get('error') or 'no details'}"), file=sys.stderr
            )
            code = EXIT_FAILED
    if as_json:
        first = final[op["id"]]
        rest = [o for key, o in final.items() if key != op["id"]]
        print(json.dumps({**first, "followed_by": rest}, indent=2))
    return code


async def started(c: AdminClient, a: argparse.Namespace, op: dict[str, Any]) -> int:
    if a.wait:
        return await wait_for(c, op, quiet=getattr(a, "json", False))
    emit(
        a,
        op,
        f"{op['kind']} queued as operation {op['id']} (follow it with `peerstash ops --follow`)",
    )
    return 0


async def cmd_backup(c: AdminClient, a: argparse.Namespace) -> int:
    op = await c.call("POST", f"/v1/plans/{a.plan}/backup")
    if op.get("already"):
        # Not an error: the backup asked for is on its way. With --wait, follow that one.
        print(op["already"], file=sys.stderr if a.wait or a.json else sys.stdout)
        if not a.wait:
            if a.json:
                print(json.dumps(op, indent=2))
            return 0
    if a.wait:
        # The whole run: the backup and the retention that follows it.
        return await wait_for(c, op, flow=True, as_json=a.json)
    return await started(c, a, op)


async def cmd_ops(c: AdminClient, a: argparse.Namespace) -> int:
    from peerstash.core.records import ListedOpRecord, OpRecord

    if a.follow:
        async for op in c.stream("/v1/ops/follow"):
            changed = decode(op, OpRecord, "an operation")
            if a.json:
                print(json.dumps(op), flush=True)
            else:
                print(printable("  ".join(op_line(changed))), flush=True)
        return 0
    q = f"?limit={a.limit}"
    for key in ("origin", "plan", "repo", "status"):
        if getattr(a, key):
            q += f"&{key}={getattr(a, key)}"
    ops = await c.call("GET", "/v1/ops" + q)
    listed = decode(ops, list[ListedOpRecord], "a list of operations")
    emit(a, ops, table([op_line(op) for op in listed], OP_HEADERS) if listed else "no operations")
    return 0


async def cmd_log(c: AdminClient, a: argparse.Namespace) -> int:
    from peerstash.core.records import LogRecord  # not at the top: see this module's doc

    q = f"?origin={quote_segment(a.origin)}" if a.origin else ""
    res = await c.call("GET", f"/v1/ops/{a.op}/log{q}")
    emit(a, res, "\n".join(decode(res, LogRecord, "an operation's log").lines))
    return 0


async def cmd_wait(c: AdminClient, a: argparse.Namespace) -> int:
    if a.json:
        # Every state as it happens, one object per line, ending when the operation ends.
        last: dict[str, Any] = {}
        async for update in c.stream(f"/v1/ops/{a.op}/wait"):
            last = update
            print(json.dumps(update), flush=True)
        return (
            0
            if last.get("status") == "success"
            else (EXIT_WARNING if last.get("status") == "warning" else EXIT_FAILED)
        )
    op = await c.call("GET", f"/v1/ops/{a.op}")
    return await wait_for(c, op)


async def cmd_events(c: AdminClient, a: argparse.Namespace) -> int:
    from peerstash.core.records import OpRecord

    async for ev in c.stream("/v1/events"):
        if ev.get("type") == "ready" and not a.json:
            continue
        if a.json:
            print(json.dumps(ev), flush=True)
        elif ev["type"] == "link":
            why = f" ({ev['reason']})" if ev.get("reason") else ""
            print(printable(f"peer {ev['peer']}: {ev['state']}{why}"), flush=True)
        elif ev["type"] == "operation":
            op = decode(ev.get("op"), OpRecord, "an operation")
            print(printable("op  " + "  ".join(op_line(op))), flush=True)
        else:
            print(json.dumps(ev), flush=True)
    return 0


async def cmd_cancel(c: AdminClient, a: argparse.Namespace) -> int:
    res = await c.call("POST", f"/v1/ops/{a.op}/cancel")
    emit(a, res, f"cancelling {a.op}")
    return 0


#: This family's subcommands and their handlers (named in ``FAMILIES`` too).
COMMANDS = {
    "backup": cmd_backup,
    "ops": cmd_ops,
    "log": cmd_log,
    "events": cmd_events,
    "wait": cmd_wait,
    "cancel": cmd_cancel,
}


def add_parsers(sub: argparse._SubParsersAction[Parser]) -> None:
    """The subcommands ``backup``, ``ops``, ``log``, ``events``, ``wait`` and ``cancel``."""
    b = sub.add_parser("backup", help="back a plan up now")
    b.add_argument("plan")
    b.add_argument("--wait", action="store_true", help="show progress; exit non-zero on failure")
    json_flag(b)

    o = sub.add_parser("ops", help="operations, newest first")
    o.add_argument("--limit", type=int, default=50)
    o.add_argument("--follow", action="store_true", help="keep printing changes as they happen")
    o.add_argument("--origin")
    o.add_argument("--plan")
    o.add_argument("--repo")
    o.add_argument("--status")
    json_flag(o)

    lg = sub.add_parser(
        "log", help="the log of one operation (a peer's is fetched from that peer when asked)"
    )
    lg.add_argument("op")
    lg.add_argument("--origin", help="the instance that ran it, if two minted the same id")
    json_flag(lg)
    json_flag(
        sub.add_parser(
            "events", help="print the node's events as they happen (peers, operations, config)"
        )
    )
    wt = sub.add_parser("wait", help="follow one operation until it ends (exit code as --wait)")
    wt.add_argument("op")
    json_flag(wt)
    cn = sub.add_parser("cancel", help="cancel a queued or running operation")
    cn.add_argument("op")
    json_flag(cn)
