"""``peerstash status``: what this node is and how its plans are doing; ``--check`` for
monitoring (a Nagios plugin's line and exit code).

It runs on the quick client (``QUICK_COMMANDS`` in ``cli/__init__.py``) and is the command
people time: keep this module's imports light.
"""

from __future__ import annotations

import argparse

from peerstash.core import __version__
from peerstash.core.text import printable
from peerstash.peer.cli import AdminClient, CliError, not_read
from peerstash.peer.cli.format import emit, fleet_lines, health_lines, short_time, status_word
from peerstash.peer.cli.parser import Parser, json_flag

#: ``status --check``: Nagios plugin words and exit codes by health level.
CHECK_CODES: dict[str, tuple[str, int]] = {
    "ok": ("OK", 0),
    "attention": ("WARNING", 1),
    "failing": ("CRITICAL", 2),
}
CHECK_UNKNOWN = 3


async def _status_check(c: AdminClient) -> int:
    """One line and the Nagios exit code; a node that does not answer is UNKNOWN (3)."""
    try:
        health = (await c.call("GET", "/v1/status")).get("health")
    except CliError as exc:
        print(f"PEERSTASH UNKNOWN - {exc}")
        return CHECK_UNKNOWN
    if not isinstance(health, dict):
        print("PEERSTASH UNKNOWN - this node does not report health (an older version?)")
        return CHECK_UNKNOWN
    try:
        word, code = CHECK_CODES.get(health["level"], ("UNKNOWN", CHECK_UNKNOWN))
        detail = "; ".join(r["message"] for r in health["reasons"])
        line = f"PEERSTASH {word} - {health['summary']}" + (f": {detail}" if detail else "")
    except (KeyError, TypeError, AttributeError) as exc:
        # A monitoring system gets its one line and UNKNOWN, never a traceback.
        print(printable(f"PEERSTASH UNKNOWN - {not_read('status', exc)}"))
        return CHECK_UNKNOWN
    print(printable(line))
    return code


async def cmd_status(c: AdminClient, a: argparse.Namespace) -> int:
    if a.check:
        return await _status_check(c)
    st = await c.call("GET", "/v1/status")
    name = st.get("name") or st["instance_id"]
    shown = name if name == st["instance_id"] else f"{name} (id {st['instance_id']})"
    lines = [
        *health_lines(st["health"]),
        f"instance  {shown}  (Peerstash {st['version']}, pid {st['pid']})",
        f"data dir  {st['data_dir']}",
        f"schedules {'paused' if st['paused'] else 'active'}",
    ]
    if st["version"] != __version__:
        # The package was upgraded under a running node: it keeps the old code until restarted.
        lines.append(
            f"restart due: the node runs Peerstash {st['version']}, {__version__} is installed "
            "(systemctl restart the unit, or Quit the tray app and start it again)"
        )
    for p in st["plans"]:
        last = p["last"]
        res = (
            f"{status_word(last['status'])} {short_time(last['ended_at'] or last['created_at'])}"
            if last
            else "never run"
        )
        stale = "  STALE" if p["stale"] else ""
        lines.append(f"plan {p['id']}: last {res}; next {short_time(p['next_due_at'])}{stale}")
    for peer in st.get("peers") or []:
        lines.append(f"peer {peer.get('label') or peer['id']}: {peer['state']}")
        lines += [f"  {line}" for line in fleet_lines(peer["plans"])]
    for local_id, why in sorted((st.get("shared_skipped") or {}).items()):
        lines.append(f"shared repository {local_id} not taken: {why}")
    for local_id, what in sorted((st.get("shared_changes") or {}).items()):
        lines.append(f"shared repository {local_id} changed: {what}")
    emit(a, st, "\n".join(lines))
    return 0


#: This family's subcommands and their handlers (named in ``FAMILIES`` too).
COMMANDS = {"status": cmd_status}


def add_parsers(sub: argparse._SubParsersAction[Parser]) -> None:
    """The subcommand ``status`` with its arguments."""
    stp = sub.add_parser("status", help="what this node is and how its plans are doing")
    stp.add_argument(
        "--check",
        action="store_true",
        help="one line and exit 0/1/2/3 for ok/attention/failing/no node (a Nagios plugin)",
    )
    json_flag(stp)
