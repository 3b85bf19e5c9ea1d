"""``peerstash remote``: run, browse and restore on a peer (it must give this node ``run``).

Also :func:`wait_remote`, which follows such a request to its end.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from peerstash.core.records import FollowedRemoteRecord, RemoteRequestRecord, SnapshotRecord
from peerstash.core.text import printable
from peerstash.peer.api import schema
from peerstash.peer.cli import EXIT_FAILED, EXIT_WARNING, AdminClient, CliError
from peerstash.peer.cli.format import (
    REMOTE_HEADERS,
    decode,
    emit,
    ls_line,
    progress_bar,
    quote_segment,
    remote_line,
    snapshot_table,
    table,
)
from peerstash.peer.cli.parser import Parser, json_flag


def _remote_exit(req: RemoteRequestRecord) -> int:
    if req.state in ("failed", "timed out"):
        return EXIT_FAILED
    if req.state == "done" and req.warning:
        return EXIT_WARNING
    return 0


async def wait_remote(client: AdminClient, req: RemoteRequestRecord, *, as_json: bool) -> int:
    """Follow a remote request to its end (or until it can no longer be followed).

    Says each new state on stderr, draws the peer's progress on a terminal, and returns the
    exit code: 0 done (or accepted but not followable, which is said), 3 done with a warning,
    1 failed or timed out.
    """
    tty = sys.stderr.isatty() and not as_json
    last = req
    said = req.state
    drew = False
    if not as_json:
        print(printable(f"{req.state}: {req.message}"), file=sys.stderr, flush=True)
    async for line in client.stream(f"/v1/remote/requests/{quote_segment(req.id)}/wait"):
        update = last = decode(line, FollowedRemoteRecord, "a remote request")
        if as_json:
            print(json.dumps(line), flush=True)
            continue
        op = update.op
        if tty and op is not None and op.status == "running" and op.bytes_total:
            # The bar is drawn from the operation's JSON (the quick commands have no records).
            sys.stderr.write("\r" + progress_bar(line["op"]))
            sys.stderr.flush()
            drew = True
        if update.state != said and update.state not in ("done", "failed", "timed out"):
            said = update.state
            if drew:
                sys.stderr.write("\n")
                drew = False
            print(printable(f"{update.state}: {update.message}"), file=sys.stderr, flush=True)
    if drew:
        sys.stderr.write("\n")
    if not as_json:
        if last.state in ("failed", "timed out"):
            print(printable(f"{last.state}: {last.message}"), file=sys.stderr)
        else:
            print(printable(last.message))
    return _remote_exit(last)


async def _remote_started(c: AdminClient, a: argparse.Namespace, answer: Any) -> int:
    req = decode(answer, RemoteRequestRecord, "a remote request")
    if a.wait and not req.final:
        return await wait_remote(c, req, as_json=a.json)
    if a.json:
        print(json.dumps(answer, indent=2))
    elif req.state in ("failed", "timed out"):
        print(printable(f"peerstash: {req.message}"), file=sys.stderr)
    else:
        print(printable(f"request {req.id} ({req.kind} on {req.peer}): {req.message}"))
    return _remote_exit(req)


async def cmd_remote(c: AdminClient, a: argparse.Namespace) -> int:
    if a.remote_cmd == "run":
        req = await c.call("POST", "/v1/remote/run", schema.RemoteRun(peer=a.peer, plan=a.plan))
        return await _remote_started(c, a, req)
    if a.remote_cmd == "restore":
        # The target is a path on the peer: sent as given (a relative one is refused).
        body = schema.RemoteRestore(
            peer=a.peer,
            repo=a.repo,
            snapshot=a.snapshot,
            target=a.target,
            include=a.include or [],
        )
        return await _remote_started(c, a, await c.call("POST", "/v1/remote/restore", body))
    if a.remote_cmd == "snapshots":
        snaps = await c.call(
            "GET", f"/v1/peers/{quote_segment(a.peer)}/repos/{quote_segment(a.repo)}/snapshots"
        )
        shown = decode(snaps, list[SnapshotRecord], "a list of snapshots")
        emit(a, snaps, snapshot_table(shown))
        return 0
    if a.remote_cmd == "ls":
        from urllib.parse import quote

        q = f"?path={quote(a.path, safe='/')}" if a.path else ""
        path = f"/v1/peers/{quote_segment(a.peer)}/repos/{quote_segment(a.repo)}/snapshots/{quote_segment(a.snapshot)}/ls{q}"
        async for node in c.stream(path):
            if "error" in node:
                raise CliError(f"the listing stopped: {node['error']}")
            print(ls_line(node, as_json=a.json), flush=True)
        return 0
    reqs = await c.call("GET", f"/v1/remote/requests?limit={a.limit}")
    listed = decode(reqs, list[RemoteRequestRecord], "a list of remote requests")
    emit(
        a,
        reqs,
        table([remote_line(r) for r in listed], REMOTE_HEADERS) if listed else "no remote requests",
    )
    return 0


#: This family's subcommands and their handlers (named in ``FAMILIES`` too).
COMMANDS = {"remote": cmd_remote}


def add_parsers(sub: argparse._SubParsersAction[Parser]) -> None:
    """The subcommand ``remote`` with its arguments."""
    rem = sub.add_parser(
        "remote", help="run, browse and restore on a peer (it must give this node 'run')"
    )
    remsub = rem.add_subparsers(dest="remote_cmd", required=True, parser_class=Parser)
    rmr = remsub.add_parser("run", help="back up a plan of PEER now (queued until PEER is online)")
    rmr.add_argument("peer")
    rmr.add_argument("plan")
    rmr.add_argument(
        "--wait", action="store_true", help="follow it to the end; exit non-zero on failure"
    )
    json_flag(rmr)
    rms = remsub.add_parser("snapshots", help="list the snapshots of a repository of PEER")
    rms.add_argument("peer")
    rms.add_argument("repo")
    json_flag(rms)
    rml = remsub.add_parser("ls", help="list files in a snapshot of PEER (printed as they arrive)")
    rml.add_argument("peer")
    rml.add_argument("repo")
    rml.add_argument("snapshot")
    rml.add_argument("path", nargs="?")
    json_flag(rml)
    rmt = remsub.add_parser(
        "restore", help="restore a snapshot ON PEER into a folder of PEER (queued until online)"
    )
    rmt.add_argument("peer")
    rmt.add_argument("repo")
    rmt.add_argument("snapshot")
    rmt.add_argument("--target", required=True, help="absolute path on PEER")
    rmt.add_argument("--include", action="append", metavar="PATH")
    rmt.add_argument(
        "--wait", action="store_true", help="follow it to the end; exit non-zero on failure"
    )
    json_flag(rmt)
    rmls = remsub.add_parser("list", help="the requests this node made, newest first")
    rmls.add_argument("--limit", type=int, default=50)
    json_flag(rmls)
