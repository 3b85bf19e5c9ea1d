"""How the CLI shows things, for every command family in ``commands/``: aligned tables,
operation and remote request lines, the progress bar, and :func:`emit` (``--json`` or text).

A table cell and each line given to :func:`emit` is made :func:`~peerstash.core.text.printable`
(text from a peer cannot steer the terminal); a command printing anything else says so itself.

An answer that is a record (``core/records.py``: operations, repositories, plans, snapshots,
listing entries, peers) is decoded once with :func:`decode` where it arrives, and read by
attribute after; ``--json`` still prints what the node sent. Not on the quick path, though:
``status``, ``backup`` and ``wait`` (``QUICK_COMMANDS``) must not import msgspec (about 17 ms,
a third of the whole command, see tests/unit/test_cli_imports.py), so what they print
(:func:`progress_bar`, :func:`finished_line`, ``commands/ops.py``'s ``wait_for``) reads the
operation's dict. For the same reason this module imports the records only where they are
used (and for type checking); :func:`decode` is the admin client's (``peer/api/client.py``),
shared with the tray, and imports msgspec when first called.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from peerstash.core.text import printable, printable_lines
from peerstash.core.wording import backup_summary_line, human_bytes, human_duration
from peerstash.peer.api.client import decode

if TYPE_CHECKING:
    from peerstash.core.records import OpRecord, RemoteRequestRecord, SnapshotRecord


def short_time(iso: str | None) -> str:
    if not iso:
        return "-"
    from datetime import datetime

    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def table(rows: list[list[str]], headers: list[str]) -> str:
    """Aligned columns; each cell is made :func:`printable` (peer text cannot steer the
    terminal or break the layout with a newline)."""
    rows = [[printable(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def op_line(op: OpRecord) -> list[str]:
    """An operation's row under :data:`OP_HEADERS`; a :class:`ListedOpRecord` (``/v1/ops``)
    shows its origin by name, the others (the streams) by id."""
    from datetime import datetime

    duration = "-"
    if op.started_at and op.ended_at:
        d = datetime.fromisoformat(op.ended_at) - datetime.fromisoformat(op.started_at)
        duration = human_duration(d.total_seconds())
    detail = op.error or (op.snapshot_id or "")[:8]
    if op.status == "running" and op.bytes_total:
        detail = f"{100 * op.bytes_done / op.bytes_total:.0f}% ETA {human_duration(op.eta_seconds)}"
    running_detail = op.summary.get("detail") if op.status == "running" else None
    if running_detail:  # restic retrying, or silent: more telling than a percentage
        detail = str(running_detail)
    # getattr, not isinstance: the record classes are not imported at run time (see above).
    label: str | None = getattr(op, "origin_label", None)
    return [
        op.id,
        label or op.origin,
        op.kind,
        status_word(op.status),
        op.plan or "-",
        op.repo or "-",
        short_time(op.started_at or op.created_at),
        duration,
        detail,
    ]


def status_word(status: str) -> str:
    """An operation's status as people read it: ``pending`` is shown as ``queued``."""
    return "queued" if status == "pending" else status


OP_HEADERS = ["ID", "ORIGIN", "KIND", "STATUS", "PLAN", "REPO", "STARTED", "TOOK", "DETAIL"]


def progress_bar(op: dict[str, Any], width: int = 30) -> str:
    total = op.get("bytes_total") or 0
    done = op.get("bytes_done") or 0
    frac = min(1.0, done / total) if total else 0.0
    bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
    files = f"{op.get('files_done', 0)}/{op.get('files_total', 0)} files"
    eta = human_duration(op.get("eta_seconds"))
    return (
        f"[{bar}] {frac * 100:5.1f}%  {human_bytes(done)}/{human_bytes(total)}  {files}  ETA {eta}"
    )


def finished_line(op: dict[str, Any]) -> str:
    """How a finished operation reads: its result and, for a backup, what restic reported
    (the wording of :func:`peerstash.core.wording.backup_summary_line`, as the tray shows it)."""
    what = f"{op['kind']} {op['id']}: {status_word(op['status'])}"
    if op.get("snapshot_id"):
        what += f", snapshot {op['snapshot_id'][:8]}"
    said = backup_summary_line(op.get("summary"))
    return f"{what}: {said}" if said else what


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """``--json``: the data as JSON (its escaping keeps peer text inert); else ``text``, line
    by line made :func:`printable`."""
    print(json.dumps(data, indent=2) if getattr(args, "json", False) else printable_lines(text))


def fleet_lines(plans: list[dict[str, Any]]) -> list[str]:
    """A peer's last backup per plan, one line each (status, peer list)."""
    out = []
    for p in plans:
        when = short_time(p.get("ended_at") or p.get("started_at") or p.get("created_at"))
        snap = f", snapshot {p['snapshot_id'][:8]}" if p.get("snapshot_id") else ""
        why = f": {p['error']}" if p.get("error") else ""
        out.append(f"plan {p['plan']}: last backup {status_word(p['status'])} {when}{snap}{why}")
    return out or ["no backups shared with this node"]


def health_lines(health: dict[str, Any]) -> list[str]:
    """``health: attention — 2 things need a look`` and one line per reason."""
    return [f"health: {health['summary']}"] + [f"  - {r['message']}" for r in health["reasons"]]


def snapshot_table(snaps: list[SnapshotRecord]) -> str:
    rows = [
        [
            s.short_id,
            short_time(s.time),
            s.hostname,
            ",".join(s.tags),
            ", ".join(s.paths),
        ]
        for s in snaps
    ]
    return table(rows, ["ID", "TIME", "HOST", "TAGS", "PATHS"]) if rows else "no snapshots"


def ls_line(node: Any, *, as_json: bool) -> str:
    """One streamed entry of a listing (ours or a peer's): the node's JSON as it came, or its
    type's letter and path. An entry that is not an ``LsNodeRecord`` is refused (one line)."""
    from peerstash.core.records import LsNodeRecord

    entry = decode(node, LsNodeRecord, "an entry of a snapshot listing")
    return json.dumps(node) if as_json else printable(f"{(entry.type or '?')[0]} {entry.path}")


REMOTE_HEADERS = ["ID", "PEER", "KIND", "STATE", "CREATED", "WHAT", "DETAIL"]


def remote_line(req: RemoteRequestRecord) -> list[str]:
    args = req.args
    if req.kind == "run":
        what = f"plan {args.get('plan')}"
    else:
        what = f"{args.get('repo')}/{str(args.get('snapshot'))[:8]} -> {args.get('target')}"
    return [
        req.id,
        req.peer,
        req.kind,
        req.state,
        short_time(req.created_at),
        what,
        req.message,
    ]


def quote_segment(part: str) -> str:
    """One path segment of an admin URL (ids are plain, but say so explicitly)."""
    from urllib.parse import quote

    return quote(part, safe="")


def peer_path(peer: str) -> str:
    return f"/v1/peers/{quote_segment(peer)}"
