"""Pairing: ``token`` (one-time pairing tokens) and ``peer`` (pair, grant, check, unpair)."""

from __future__ import annotations

import argparse
import sys

from peerstash.core.records import ListedPeerRecord, NewTokenRecord, PeerRecord, TokenRecord
from peerstash.core.text import printable
from peerstash.peer.api import schema
from peerstash.peer.cli import AdminClient, CliError
from peerstash.peer.cli.format import decode, emit, fleet_lines, short_time, table
from peerstash.peer.cli.parser import Parser, json_flag


async def cmd_token(c: AdminClient, a: argparse.Namespace) -> int:
    if a.token_cmd == "create":
        body = schema.CreateToken(
            label=a.label or "", ttl=a.ttl, max_uses=a.max_uses, grants=a.grant or []
        )
        res = await c.call("POST", "/v1/tokens", body)
        made = decode(res, NewTokenRecord, "a new pairing token")
        text = (
            f"{made.token}\n\nGive this token to the other machine (shown once) and run there\n"
            f"  peerstash peer add --url http://THIS-HOST:PORT\n"
            f"which asks for it (or pipe it in: peerstash peer add - --url ...).\n"
            f"It expires {short_time(made.expires_at)} and works {made.max_uses} time(s); "
            f"grants: {', '.join(made.grants) or 'none'}"
        )
        emit(a, res, text)
        return 0
    if a.token_cmd == "delete":
        res = await c.call("DELETE", f"/v1/tokens/{a.id}")
        emit(a, res, f"token {a.id} deleted")
        return 0
    rows = await c.call("GET", "/v1/tokens")
    lines = [
        [
            t.id,
            t.label or "-",
            f"{t.uses}/{t.max_uses}",
            short_time(t.expires_at),
            ", ".join(t.grants) or "-",
        ]
        for t in decode(rows, list[TokenRecord], "a list of pairing tokens")
    ]
    emit(
        a,
        rows,
        table(lines, ["ID", "LABEL", "USES", "EXPIRES", "GRANTS"]) if lines else "no tokens",
    )
    return 0


TOKEN_ON_COMMAND_LINE = (
    "peerstash: warning: a token on the command line is visible to other users of this machine "
    "(ps, /proc) until it is used; give it as `peerstash peer add -` (stdin) or leave it out "
    "to be asked for it"
)


def _read_token(a: argparse.Namespace) -> str:
    """The pairing token: from stdin (``-``), asked for on a terminal (no argument), or, with
    a warning, from the command line (where other local users can read it)."""
    if a.token == "-":
        token = sys.stdin.readline().strip()
    elif a.token is None:
        if not sys.stdin.isatty():
            raise CliError(
                "give the pairing token on stdin with `peerstash peer add -`, or run this on a "
                "terminal to be asked for it"
            )
        import getpass

        token = getpass.getpass("Pairing token: ").strip()
    else:
        print(TOKEN_ON_COMMAND_LINE, file=sys.stderr)
        token = a.token.strip()
    if not token:
        raise CliError("no pairing token was given")
    return token


async def cmd_peer(c: AdminClient, a: argparse.Namespace) -> int:
    if a.peer_cmd == "add":
        token = _read_token(a)
        body = schema.AddPeer(token=token, url=a.url, grants=a.grant or [], replace=a.replace)
        res = await c.call("POST", "/v1/peers", body)
        peer = decode(res, PeerRecord, "a peer")
        who = peer.id if peer.name == peer.id else f"{peer.name} ({peer.id})"
        emit(a, res, f"paired with {printable(who)}, key {peer.key_id}; connecting")
        return 0
    if a.peer_cmd == "grant":
        res = await c.call("PATCH", f"/v1/peers/{a.id}", schema.Grants(grants=a.grant or []))
        shown = ", ".join(decode(res, PeerRecord, "a peer").grants) or "nothing"
        emit(a, res, f"{a.id} may now: {shown} (its link restarts to apply it)")
        return 0
    if a.peer_cmd == "remove":
        keep = "?keep_history=1" if a.keep_history else ""
        res = await c.call("DELETE", f"/v1/peers/{a.id}{keep}")
        if res.get("history_only"):
            emit(a, res, f"history kept under {a.id} deleted ({res['operations']} operations)")
            return 0
        emit(
            a,
            res,
            f"peer {a.id} removed and told so; its link is closed, its shared repositories "
            "and their passwords are gone, plans on them disabled, requests to it ended"
            + ("; its operation history is kept" if a.keep_history else ", its history deleted"),
        )
        return 0
    if a.peer_cmd == "check":
        res = await c.call("POST", f"/v1/peers/{a.id}/check")
        checked = decode(res, PeerRecord, "a peer")
        emit(a, res, f"{a.id}: {checked.state}; {res['message']}")
        return 0
    peers = await c.call("GET", "/v1/peers")
    listed = decode(peers, list[ListedPeerRecord], "a list of peers")
    rows = [
        [
            p.name or p.id,
            p.id,
            p.key_id,
            "dials us" if p.role == "authorized_client" else "we dial",
            p.state + (f" ({p.state_reason})" if p.state_reason and p.state != "online" else ""),
            short_time(p.last_seen),
            ", ".join(p.grants) or "-",
        ]
        for p in listed
    ]
    text = table(rows, ["NAME", "ID", "KEY ID", "ROLE", "STATE", "LAST SEEN", "WE GRANT"])
    # How this node names each peer and its last backups. fleet_lines reads them as the JSON
    # (checked by the decode above): ``status``, a quick command, has no msgspec to decode.
    for p, raw in zip(listed, peers, strict=True):
        lines = fleet_lines(raw["plans"])
        text += f"\n\n{p.label}:\n" + "\n".join(f"  {ln}" for ln in lines)
    emit(a, peers, text if rows else "no peers")
    return 0


#: This family's subcommands and their handlers (named in ``FAMILIES`` too).
COMMANDS = {"token": cmd_token, "peer": cmd_peer}


def add_parsers(sub: argparse._SubParsersAction[Parser]) -> None:
    """The subcommands ``token`` and ``peer`` with their arguments."""
    tok = sub.add_parser(
        "token", help="pairing tokens that let another instance pair with this one"
    )
    tsub = tok.add_subparsers(dest="token_cmd", required=True, parser_class=Parser)
    tc = tsub.add_parser("create", help="make a one-time pairing token (shown once)")
    tc.add_argument("--label", help="what it is for, shown in token list")
    tc.add_argument("--ttl", default="1h", help="how long it is valid (default 1h, at most 30d)")
    tc.add_argument("--max-uses", type=int, default=1, help="how many peers may use it (default 1)")
    tc.add_argument(
        "--grant",
        action="append",
        metavar="GRANT[:SCOPE]",
        help="what the new peer may do here: ops, config.read, config.write, repos.receive, run (scopes *, repo:ID, plan:ID, !repo:ID, !plan:ID)",
    )
    json_flag(tc)
    json_flag(tsub.add_parser("list", help="live tokens (never their secrets)"))
    td = tsub.add_parser("delete", help="revoke a token before it is used")
    td.add_argument("id")
    json_flag(td)

    peer = sub.add_parser("peer", help="paired instances")
    pesub = peer.add_subparsers(dest="peer_cmd", required=True, parser_class=Parser)
    pea = pesub.add_parser("add", help="pair with the instance that made TOKEN")
    pea.add_argument(
        "token",
        nargs="?",
        help="'-' reads it from stdin; left out, it is asked for (on the command line, other "
        "local users can see it)",
    )
    pea.add_argument(
        "--url", help="its peer address, e.g. http://host:9797 (default: find it on the LAN)"
    )
    pea.add_argument(
        "--grant", action="append", metavar="GRANT[:SCOPE]", help="what it may do here"
    )
    pea.add_argument(
        "--replace",
        action="store_true",
        help="the token's instance is paired here with another key (it was reinstalled): "
        "pin the new key; the old key's history is kept",
    )
    json_flag(pea)
    peg = pesub.add_parser("grant", help="replace what a peer may do here")
    peg.add_argument("id")
    peg.add_argument(
        "--grant",
        action="append",
        metavar="GRANT[:SCOPE]",
        help="the new grants (repeatable); none at all revokes every grant",
    )
    json_flag(peg)
    json_flag(pesub.add_parser("list", help="known hosts and authorized clients with their state"))
    pec = pesub.add_parser("check", help="reconnect to a peer now")
    pec.add_argument("id")
    json_flag(pec)
    per = pesub.add_parser(
        "remove", help="unpair: revoke the peer, close its link, forget what came from it"
    )
    per.add_argument("id")
    per.add_argument(
        "--keep-history",
        action="store_true",
        help="keep the copy of its operation history here (deleted by default)",
    )
    json_flag(per)
