"""This node itself: ``rename``, ``discover`` (LAN), ``settings``, ``gc``, ``pause`` and
``resume``.
"""

from __future__ import annotations

import argparse
from typing import Any

from peerstash.peer.api import schema
from peerstash.peer.cli import AdminClient, CliError
from peerstash.peer.cli.format import emit, table
from peerstash.peer.cli.parser import Parser, json_flag


async def cmd_rename(c: AdminClient, a: argparse.Namespace) -> int:
    res = await c.call("POST", "/v1/rename", schema.Rename(name=None if a.reset else a.name))
    emit(
        a,
        res,
        f"this node is now called {res['name']} (its id stays {res['instance_id']}); "
        "its peers learn the new name now",
    )
    return 0


async def cmd_discover(c: AdminClient, a: argparse.Namespace) -> int:
    found = await c.call("GET", f"/v1/discovered?timeout={a.timeout}")
    rows = []
    for f in found:
        note = "paired" if f["paired"] else "-"
        if f["paired"] and not f["key_matches"]:
            note = "KEY MISMATCH: not the paired node"
        if f["duplicate_id"]:
            note += "; several keys use this id"
        if not f["compatible"]:
            note += f"; protocol v{f['version']} (incompatible)"
        rows.append([f["id"], f["key_id"], ", ".join(f["addresses"]) + f":{f['port']}", note])
    emit(
        a,
        found,
        table(rows, ["ID", "KEY ID", "ADDRESS", "NOTE"]) if rows else "nothing found on the LAN",
    )
    return 0


#: Settings read by health on each status (seconds; ``""`` puts the default back).
HEALTH_SETTINGS = ("peer_offline_after", "peer_stale_after")
#: Settings given as a whole number (``150_000`` reads as 150000); the node checks the range.
WHOLE_NUMBER_SETTINGS = (
    "peer_history_days",
    "peer_history_max_ops",
    "restic_retry_lock",
    "restic_stall_seconds",
)


def _seconds_value(key: str, text: str) -> int | None:
    """Seconds from ``"172800"`` or ``"2d"``/``"36h"``; empty for the default."""
    if not text:
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    total, number = 0, ""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    for ch in text.strip().lower():
        if ch.isdigit():
            number += ch
        elif ch in units and number:
            total, number = total + int(number) * units[ch], ""
        else:
            number = "x"
            break
    if number or total <= 0:
        raise CliError(f"{key}: give seconds or a duration such as 2d, 36h or 90m, not {text!r}")
    return total


async def cmd_settings(c: AdminClient, a: argparse.Namespace) -> int:
    if a.settings_cmd == "set":
        value: Any
        if a.key == "discovery":
            if a.value not in ("on", "off"):
                raise CliError("discovery is on or off")
            value = a.value == "on"
        elif a.key == "discovery_interfaces":
            value = [v for v in a.value.split(",") if v] or None
        elif a.key in WHOLE_NUMBER_SETTINGS:
            try:
                value = int(a.value.replace("_", "")) if a.value else None
            except ValueError:
                raise CliError(f"{a.key} is a whole number, not {a.value!r}") from None
        elif a.key in HEALTH_SETTINGS:
            value = _seconds_value(a.key, a.value)
        else:
            value = a.value or None
        res = await c.call("POST", "/v1/settings", schema.Setting(key=a.key, value=value))
        if a.key.startswith("peer_history_"):
            emit(a, res, f"{a.key} set; it applies as peers' operations arrive and at each gc")
        else:
            when = {"display_name": "now (peers too)"}.get(
                a.key, "now" if a.key in HEALTH_SETTINGS else "when the node next starts"
            )
            emit(a, res, f"{a.key} set; it takes effect {when}")
        return 0
    res = await c.call("GET", "/v1/settings")
    emit(a, res, "\n".join(f"{k}: {v}" for k, v in res.items()))
    return 0


async def cmd_gc(c: AdminClient, a: argparse.Namespace) -> int:
    res = await c.call("POST", "/v1/gc", schema.Gc(older_than_days=a.older_than_days))
    emit(a, res, f"removed {res['removed']} operations (the latest result of every plan is kept)")
    return 0


async def cmd_pause(c: AdminClient, a: argparse.Namespace) -> int:
    res = await c.call("POST", "/v1/schedules/pause", schema.Pause(paused=a.command == "pause"))
    emit(a, res, "schedules paused" if res["paused"] else "schedules resumed")
    return 0


#: This family's subcommands and their handlers (named in ``FAMILIES`` too).
COMMANDS = {
    "rename": cmd_rename,
    "discover": cmd_discover,
    "settings": cmd_settings,
    "gc": cmd_gc,
    "pause": cmd_pause,
    "resume": cmd_pause,
}


def add_parsers(sub: argparse._SubParsersAction[Parser]) -> None:
    """The subcommands ``rename``, ``discover``, ``settings``, ``gc``, ``pause``, ``resume``."""
    ren = sub.add_parser(
        "rename", help="change the name this node is shown under (here and on its peers)"
    )
    ren_what = ren.add_mutually_exclusive_group(required=True)
    ren_what.add_argument("name", nargs="?", help="the new name (1-63 printable characters)")
    ren_what.add_argument(
        "--reset",
        action="store_true",
        help="go by the default again (the instance id; the host name for a default id)",
    )
    json_flag(ren)

    disc = sub.add_parser("discover", help="list Peerstash nodes visible on the LAN")
    disc.add_argument(
        "--timeout", type=float, default=2.0, help="seconds to listen first (default 2)"
    )
    json_flag(disc)

    st = sub.add_parser("settings", help="show or change node settings")
    stsub = st.add_subparsers(dest="settings_cmd", parser_class=Parser)
    sts = stsub.add_parser("set", help="change a setting (effective at the next start)")
    sts.add_argument(
        "key",
        choices=[
            "display_name",
            "listen",
            "discovery",
            "discovery_interfaces",
            "restic_path",
            "peer_history_days",
            "peer_history_max_ops",
            "restic_retry_lock",
            "restic_stall_seconds",
            "peer_offline_after",
            "peer_stale_after",
        ],
    )
    sts.add_argument(
        "value",
        help="on/off for discovery; comma-separated list for interfaces; a whole number for "
        "peer_history_days, peer_history_max_ops, restic_retry_lock and restic_stall_seconds; "
        "a duration (2d, 36h, seconds) for peer_offline_after and peer_stale_after",
    )
    json_flag(sts)
    json_flag(st)

    gcp = sub.add_parser("gc", help="delete old operations now (the node also does it daily)")
    gcp.add_argument("--older-than-days", type=int, default=90, metavar="N")
    json_flag(gcp)

    json_flag(sub.add_parser("pause", help="pause scheduled backups"))
    json_flag(sub.add_parser("resume", help="resume scheduled backups"))
