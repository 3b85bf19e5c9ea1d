"""The ``peerstash`` command line: every subcommand asks the running node over its admin socket.

Output is for people unless ``--json`` is given, in which case it is exactly what the admin API
returned, so scripts and the docs agree. Errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn

from peerstash.core import __version__
from peerstash.core.text import printable, printable_lines
from peerstash.core.wording import backup_summary_line, human_bytes, human_duration
from peerstash.peer.paths import resolve_data_dir

# Every `peerstash` call imports this module, so it imports only what every command needs:
# aiohttp, asyncio, getpass and urllib are imported where they are used (`status` and
# `--version` need none of them; see docs/benchmarks.md, "CLI start-up", and
# tests/unit/test_cli_imports.py).

#: Exit codes: 0 ok, 1 failed, 2 usage, 3 finished with a warning (like restic's partial backup).
EXIT_FAILED = 1
EXIT_WARNING = 3


# The one admin client, shared with the tray (peer/api/client.py); the CLI's errors are its
# error type, so a command raises the same exception the client does.
from peerstash.peer.api.client import AdminClient  # noqa: E402
from peerstash.peer.api.client import AdminError as CliError  # noqa: E402

# -- formatting -----------------------------------------------------------------------------


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


def op_line(op: dict[str, Any]) -> list[str]:
    from datetime import datetime

    duration = "-"
    if op.get("started_at") and op.get("ended_at"):
        d = datetime.fromisoformat(op["ended_at"]) - datetime.fromisoformat(op["started_at"])
        duration = human_duration(d.total_seconds())
    detail = op.get("error") or (op.get("snapshot_id") or "")[:8]
    if op["status"] == "running" and op.get("bytes_total"):
        detail = f"{100 * op['bytes_done'] / op['bytes_total']:.0f}% ETA {human_duration(op.get('eta_seconds'))}"
    running_detail = (op.get("summary") or {}).get("detail") if op["status"] == "running" else None
    if running_detail:  # restic retrying, or silent: more telling than a percentage
        detail = str(running_detail)
    return [
        op["id"],
        op.get("origin_label") or op["origin"],
        op["kind"],
        status_word(op["status"]),
        op.get("plan") or "-",
        op.get("repo") or "-",
        short_time(op.get("started_at") or op.get("created_at")),
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


# -- commands -------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
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


#: ``status --check``: Nagios plugin words and exit codes by health level.
CHECK_CODES: dict[str, tuple[str, int]] = {
    "ok": ("OK", 0),
    "attention": ("WARNING", 1),
    "failing": ("CRITICAL", 2),
}
CHECK_UNKNOWN = 3


def health_lines(health: dict[str, Any]) -> list[str]:
    """``health: attention — 2 things need a look`` and one line per reason."""
    return [f"health: {health['summary']}"] + [f"  - {r['message']}" for r in health["reasons"]]


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
    word, code = CHECK_CODES.get(health["level"], ("UNKNOWN", CHECK_UNKNOWN))
    detail = "; ".join(r["message"] for r in health["reasons"])
    print(f"PEERSTASH {word} - {health['summary']}" + (f": {detail}" if detail else ""))
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
    _emit(a, st, "\n".join(lines))
    return 0


def _read_password(a: argparse.Namespace) -> dict[str, Any]:
    if a.password_file:
        return {"source": "file", "ref": os.path.abspath(a.password_file)}
    if a.password_env:
        return {"source": "env", "ref": a.password_env}
    if a.password_command:
        return {"source": "command", "ref": a.password_command}
    if a.password_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        import getpass

        value = getpass.getpass("Repository password: ")
        if a.init and getpass.getpass("Repeat the password: ") != value:
            raise CliError("the passwords did not match")
    else:
        raise CliError(
            "give the password with --password-stdin, --password-file, --password-env or "
            "--password-command"
        )
    if not value:
        raise CliError("the password is empty")
    return {"source": "secret", "value": value}


def _repo_patch(a: argparse.Namespace, hint: str) -> dict[str, Any]:
    """The changes ``repo edit`` asks for (here or on a peer); at least one is required."""
    patch: dict[str, Any] = {}
    if a.uri:
        patch["uri"] = a.uri
    if a.password_stdin or a.password_file or a.password_env or a.password_command:
        patch["password"] = _read_password(a)
    if a.env is not None or a.env_file:
        patch["env"] = _env_of(a)
    if a.option is not None:
        patch["options"] = [o for o in a.option if o]
    if not patch:
        raise CliError(f"nothing to change: {hint}")
    return patch


ENV_ON_COMMAND_LINE = (
    "peerstash: warning: --env values on the command line are visible to other users of this "
    "machine (ps, /proc); put KEY=VALUE lines in a private file and give --env-file FILE"
)


def _env_of(a: argparse.Namespace) -> dict[str, str]:
    """``--env-file`` lines, then ``--env`` pairs (which win); values given as arguments are
    visible to other local users, so they earn a warning."""
    env: dict[str, str] = {}
    if a.env_file:
        try:
            text = Path(a.env_file).read_text()
        except OSError as exc:
            raise CliError(f"--env-file {a.env_file}: {exc.strerror or exc}") from None
        lines = [ln.strip() for ln in text.splitlines()]
        env.update(_env_pairs([ln for ln in lines if ln and not ln.startswith("#")]))
    if any(item.partition("=")[2] for item in a.env or []):
        print(ENV_ON_COMMAND_LINE, file=sys.stderr)
    env.update(_env_pairs(a.env or []))
    return env


def _env_pairs(items: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    return env


def _peer_path(peer: str) -> str:
    return f"/v1/peers/{_q(peer)}"


async def cmd_repo(c: AdminClient, a: argparse.Namespace) -> int:
    if getattr(a, "on", None):
        return await _repo_on(c, a, a.on)
    if a.repo_cmd == "add":
        env = _env_of(a)
        body = {
            "id": a.name,
            "uri": a.uri,
            "password": _read_password(a),
            "env": env,
            "options": a.option or [],
            "init": a.init,
        }
        res = await c.call("POST", "/v1/repos", body)
        _emit(a, res, f"repository {a.name}: {res['message']} (id {res['repo']['guid'][:8]})")
        return 0
    if a.repo_cmd == "edit":
        patch = _repo_patch(a, "give --uri, a password option, --env or --option")
        res = await c.call("PATCH", f"/v1/repos/{a.name}", patch)
        _emit(a, res, f"repository {a.name} changed; it opens with the new settings")
        return 0
    if a.repo_cmd == "remove":
        res = await c.call("DELETE", f"/v1/repos/{a.name}")
        _emit(a, res, f"repository {a.name} removed from Peerstash (its data is untouched)")
        return 0
    if a.repo_cmd == "share":
        body = {} if a.client_uri is None else {"client_uri": a.client_uri}
        res = await c.call("POST", f"/v1/repos/{a.name}/share", body)
        via = f" at {res['client_uri']}" if res.get("client_uri") else ""
        _emit(
            a,
            res,
            f"repository {a.name} is shared{via} with peers that grant this node repos.receive",
        )
        return 0
    if a.repo_cmd == "show":
        return await _repo_show(c, a)
    if a.repo_cmd == "unshare":
        res = await c.call("POST", f"/v1/repos/{a.name}/unshare")
        _emit(a, res, f"repository {a.name} is no longer shared; peers remove it")
        return 0
    repos = await c.call("GET", "/v1/repos")
    if a.json:
        _emit(a, repos, "")
        return 0
    rows = [
        [
            r["id"],
            r["uri"],
            r["password_source"],
            (r["guid"] or "")[:8],
            r["origin"] or ("shared" if r["shared"] else "-"),
        ]
        for r in repos
    ]
    text = table(rows, ["ID", "URI", "PASSWORD", "GUID", "SHARING"]) if rows else "no repositories"
    st = await c.call("GET", "/v1/status")
    for local_id, why in sorted((st.get("shared_skipped") or {}).items()):
        text += f"\nnot taken: {local_id}: {why}"
    for local_id, what in sorted((st.get("shared_changes") or {}).items()):
        text += f"\nchanged by its owner: {local_id}: {what}"
    _emit(a, repos, text)
    return 0


def _confirm_reveal(a: argparse.Namespace) -> None:
    """Reveal a password only when asked twice: ``--yes``, or the name typed on a terminal.

    Without a terminal (a script, a pipe) nothing can be typed, so ``--yes`` is required: a
    password never lands in a log file because a command was pasted into a cron job.
    """
    if a.yes:
        return
    if not sys.stdin.isatty():
        raise CliError(
            "refusing to print a password without a terminal to confirm on; add --yes if you "
            "mean it (the password is written to stdout)"
        )
    # The question on stderr: stdout may be a file the password goes to.
    print(f"Type the repository name ({a.name}) to show its password: ", end="", file=sys.stderr)
    sys.stderr.flush()
    typed = sys.stdin.readline().strip()
    if typed != a.name:
        raise CliError("not confirmed; the password is not shown")


async def _repo_show(c: AdminClient, a: argparse.Namespace) -> int:
    """One repository's settings (credentials masked); its password only on explicit request."""
    from peerstash.core.recovery import recovery_sheet, restic_command, write_private

    repos = await c.call("GET", "/v1/repos")
    repo = next((r for r in repos if r["id"] == a.name), None)
    if repo is None:
        raise CliError(f"no repository named {a.name!r} (see `peerstash repo list`)")
    source = repo["password_source"]
    ref = f" ({repo['password_ref']})" if repo.get("password_ref") else ""
    lines = [
        f"repository {repo['id']}",
        f"  location:  {repo['uri']}",
        f"  password:  {source}{ref}",
        f"  restic id: {repo.get('guid') or '-'}",
    ]
    if repo.get("env_keys"):
        lines.append(f"  env:       {', '.join(repo['env_keys'])} (values kept secret)")
    if repo.get("options"):
        lines.append(f"  options:   {', '.join(repo['options'])}")
    if repo.get("origin"):
        lines.append(f"  shared by: {repo['origin']} (read-only here)")
    lines.append(f"  open with: {restic_command(repo['uri'], repo.get('options') or [])}")
    if not (a.reveal_password or a.recovery_sheet):
        _emit(a, repo, "\n".join(lines))
        return 0
    _confirm_reveal(a)
    res = await c.call("POST", f"/v1/repos/{_q(a.name)}/reveal-password")
    password = res.get("password")
    if password is None:
        raise CliError(
            f"Peerstash does not store the password of {a.name}: {res.get('where')}; "
            "keep that safe instead"
        )
    if a.recovery_sheet:
        path = Path(a.recovery_sheet)
        st = await c.call("GET", "/v1/status")
        text = recovery_sheet(
            name=repo["id"],
            uri=repo["uri"],
            password=password,
            env_keys=repo.get("env_keys") or [],
            options=repo.get("options") or [],
            machine=str(st.get("name") or st.get("instance_id") or ""),
        )
        import asyncio

        try:
            await asyncio.to_thread(write_private, path, text)
        except OSError as exc:
            raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
        print(f"recovery sheet written to {path} (mode 0600: only you can read it)")
        if not a.reveal_password:
            return 0
    if a.json:
        _emit(a, {**repo, "password": password}, "")
    else:
        print("\n".join(lines))
        print(f"  password value: {password}")
    return 0


async def _repo_on(c: AdminClient, a: argparse.Namespace, peer: str) -> int:
    """Repositories of a peer: listed when it grants config.read, added, changed or removed when
    it grants config.write for them. The peer checks what a peer may set (a password given as
    a value only, no -o options, no RESTIC_ variables, no rclone:) and refuses the rest."""
    base = _peer_path(peer) + "/repos"
    if a.repo_cmd == "add":
        body = {
            "id": a.name,
            "uri": a.uri,
            "password": _read_password(a),
            "env": _env_of(a),
            "options": a.option or [],
            "init": a.init,
        }
        res = await c.call("POST", base, body)
        guid = (res["repo"].get("guid") or "")[:8]
        _emit(a, res, f"repository {a.name} on {peer}: {res['message']} (id {guid})")
        return 0
    if a.repo_cmd == "edit":
        patch = _repo_patch(a, "give --uri, --password-stdin or --env")
        res = await c.call("PATCH", f"{base}/{_q(a.name)}", patch)
        _emit(a, res, f"repository {a.name} on {peer} changed; it opens with the new settings")
        return 0
    if a.repo_cmd == "remove":
        res = await c.call("DELETE", f"{base}/{_q(a.name)}")
        _emit(a, res, f"repository {a.name} removed from {peer} (its data is untouched)")
        return 0
    repos = (await c.call("GET", _peer_path(peer) + "/config"))["repos"]
    rows = [[r["id"], r["uri"], r["password_source"], (r["guid"] or "")[:8]] for r in repos]
    empty = f"no repositories of {peer} are visible here"
    _emit(a, repos, table(rows, ["ID", "URI", "PASSWORD", "GUID"]) if rows else empty)
    return 0


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
    base = _peer_path(on) + "/plans" if on else "/v1/plans"

    def where(path: str) -> str:
        return path if on else os.path.abspath(path)

    suffix = f" on {on}" if on else ""
    if a.plan_cmd == "add":
        body = {
            "id": a.name,
            "repo": a.repo,
            "paths": [where(p) for p in a.path],
            "excludes": a.exclude or [],
            "schedule": a.schedule,
            "every": a.every,
            "retention": _retention(a),
            "backup_now": not a.no_backup_now,
        }
        res = await c.call("POST", base, body)
        first = res.get("first_backup")
        if first is None:
            now = ""
        elif first.get("error"):
            now = f"; first backup not started: {first['error']}"
        else:
            now = f"; first backup queued as operation {first['id']}"
        _emit(
            a,
            res,
            f"plan {a.name} added{suffix} (next run {short_time(res['next_due_at'])}){now}",
        )
        return 0
    if a.plan_cmd == "edit":
        changes: dict[str, Any] = {}
        if a.repo:
            changes["repo"] = a.repo
        if a.path:
            changes["paths"] = [where(p) for p in a.path]
        if a.exclude is not None:
            changes["excludes"] = [e for e in a.exclude if e]
        if a.schedule is not None:
            changes["schedule"] = a.schedule
        if a.every is not None:
            changes["every"] = a.every
        if a.manual:
            changes["schedule"] = ""
        retention = _retention(a)
        if retention or a.no_retention:
            changes["retention"] = retention
        if a.enable or a.disable:
            changes["enabled"] = bool(a.enable)
        if not changes:
            raise CliError("nothing to change: give the options to change (see plan edit --help)")
        res = await c.call("PATCH", f"{base}/{a.name}", changes)
        _emit(a, res, f"plan {a.name} changed{suffix} (next run {short_time(res['next_due_at'])})")
        return 0
    if a.plan_cmd in ("remove", "delete"):
        res = await c.call("DELETE", f"{base}/{a.name}")
        _emit(a, res, f"plan {a.name} removed{suffix}")
        return 0
    if on:
        plans = (await c.call("GET", _peer_path(on) + "/config"))["plans"]
    else:
        plans = await c.call("GET", "/v1/plans")
    rows = []
    for p in plans:
        when = p["schedule"] or (
            f"every {human_duration(p['every_seconds'])}" if p["every_seconds"] else "manual"
        )
        rows.append(
            [p["id"], p["repo"], when, ", ".join(p["paths"]), "yes" if p["enabled"] else "no"]
        )
    _emit(
        a,
        plans,
        table(rows, ["ID", "REPO", "SCHEDULE", "PATHS", "ENABLED"])
        if rows
        else (f"no plans of {on} are visible here" if on else "no plans"),
    )
    return 0


async def _started(c: AdminClient, a: argparse.Namespace, op: dict[str, Any]) -> int:
    if a.wait:
        return await wait_for(c, op, quiet=getattr(a, "json", False))
    _emit(
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
    return await _started(c, a, op)


async def cmd_ops(c: AdminClient, a: argparse.Namespace) -> int:
    if a.follow:
        async for op in c.stream("/v1/ops/follow"):
            if a.json:
                print(json.dumps(op), flush=True)
            else:
                print(printable("  ".join(op_line(op))), flush=True)
        return 0
    q = f"?limit={a.limit}"
    for key in ("origin", "plan", "repo", "status"):
        if getattr(a, key):
            q += f"&{key}={getattr(a, key)}"
    ops = await c.call("GET", "/v1/ops" + q)
    _emit(a, ops, table([op_line(op) for op in ops], OP_HEADERS) if ops else "no operations")
    return 0


async def cmd_log(c: AdminClient, a: argparse.Namespace) -> int:
    q = f"?origin={_q(a.origin)}" if a.origin else ""
    res = await c.call("GET", f"/v1/ops/{a.op}/log{q}")
    _emit(a, res, "\n".join(res["lines"]))
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
    async for ev in c.stream("/v1/events"):
        if ev.get("type") == "ready" and not a.json:
            continue
        if a.json:
            print(json.dumps(ev), flush=True)
        elif ev["type"] == "link":
            why = f" ({ev['reason']})" if ev.get("reason") else ""
            print(printable(f"peer {ev['peer']}: {ev['state']}{why}"), flush=True)
        elif ev["type"] == "operation":
            print(printable("op  " + "  ".join(op_line(ev["op"]))), flush=True)
        else:
            print(json.dumps(ev), flush=True)
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
    _emit(
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
        res = await c.call("POST", "/v1/settings", {"key": a.key, "value": value})
        if a.key.startswith("peer_history_"):
            _emit(a, res, f"{a.key} set; it applies as peers' operations arrive and at each gc")
        else:
            when = {"display_name": "now (peers too)"}.get(
                a.key, "now" if a.key in HEALTH_SETTINGS else "when the node next starts"
            )
            _emit(a, res, f"{a.key} set; it takes effect {when}")
        return 0
    res = await c.call("GET", "/v1/settings")
    _emit(a, res, "\n".join(f"{k}: {v}" for k, v in res.items()))
    return 0


async def cmd_gc(c: AdminClient, a: argparse.Namespace) -> int:
    res = await c.call("POST", "/v1/gc", {"older_than_days": a.older_than_days})
    _emit(a, res, f"removed {res['removed']} operations (the latest result of every plan is kept)")
    return 0


async def cmd_cancel(c: AdminClient, a: argparse.Namespace) -> int:
    res = await c.call("POST", f"/v1/ops/{a.op}/cancel")
    _emit(a, res, f"cancelling {a.op}")
    return 0


async def cmd_snapshots(c: AdminClient, a: argparse.Namespace) -> int:
    snaps = await c.call("GET", f"/v1/repos/{a.repo}/snapshots")
    rows = [
        [
            s["short_id"],
            short_time(s["time"]),
            s["hostname"],
            ",".join(s.get("tags") or []),
            ", ".join(s["paths"]),
        ]
        for s in snaps
    ]
    _emit(
        a, snaps, table(rows, ["ID", "TIME", "HOST", "TAGS", "PATHS"]) if rows else "no snapshots"
    )
    return 0


async def cmd_ls(c: AdminClient, a: argparse.Namespace) -> int:
    q = f"?path={a.path}" if a.path else ""
    async for node in c.stream(f"/v1/repos/{a.repo}/snapshots/{a.snapshot}/ls{q}"):
        print(
            json.dumps(node)
            if a.json
            else printable(f"{node.get('type', '?')[0]} {node.get('path')}"),
            flush=True,
        )
    return 0


async def cmd_restore(c: AdminClient, a: argparse.Namespace) -> int:
    target = os.path.abspath(a.target)  # noqa: ASYNC240 - getcwd only
    body = {"snapshot": a.snapshot, "target": target, "include": a.include or []}
    return await _started(c, a, await c.call("POST", f"/v1/repos/{a.repo}/restore", body))


async def cmd_forget(c: AdminClient, a: argparse.Namespace) -> int:
    """Apply retention, or (``--dry-run``) list what it would remove and keep, changing nothing."""
    body: dict[str, Any] = {}
    if a.plan:
        body["plan"] = a.plan
    if not a.dry_run:
        return await _started(c, a, await c.call("POST", f"/v1/repos/{_q(a.repo)}/forget", body))
    if a.wait:
        raise CliError("--wait has nothing to wait for with --dry-run")
    res = await c.call("POST", f"/v1/repos/{_q(a.repo)}/forget", {**body, "dry_run": True})

    def rows(snaps: list[dict[str, Any]]) -> list[list[str]]:
        return [
            [
                s["short_id"],
                short_time(s["time"]),
                s["hostname"],
                s["plan"],
                ", ".join(s["paths"]),
            ]
            for s in snaps
        ]

    headers = ["ID", "TIME", "HOST", "PLAN", "PATHS"]
    parts = [
        "dry run: nothing was removed. Only this node's snapshots of each plan are considered "
        f"(host {', '.join(sorted({p['host'] for p in res['plans']}))})."
    ]
    remove, keep = rows(res["remove"]), rows(res["keep"])
    parts.append(
        f"would remove {len(remove)}:\n{table(remove, headers)}" if remove else "would remove none"
    )
    parts.append(f"would keep {len(keep)}:\n{table(keep, headers)}" if keep else "would keep none")
    _emit(a, res, "\n\n".join(parts))
    return 0


async def cmd_maintenance(c: AdminClient, a: argparse.Namespace) -> int:
    body = {"all": bool(getattr(a, "all", False))}
    op = await c.call("POST", f"/v1/repos/{a.repo}/{a.command}", body)
    if a.command == "unlock":
        return await wait_for(c, op, quiet=a.json)
    return await _started(c, a, op)


def _q(part: str) -> str:
    """One path segment of an admin URL (ids are plain, but say so explicitly)."""
    from urllib.parse import quote

    return quote(part, safe="")


def _snapshot_table(snaps: list[dict[str, Any]]) -> str:
    rows = [
        [
            s["short_id"],
            short_time(s["time"]),
            s["hostname"],
            ",".join(s.get("tags") or []),
            ", ".join(s["paths"]),
        ]
        for s in snaps
    ]
    return table(rows, ["ID", "TIME", "HOST", "TAGS", "PATHS"]) if rows else "no snapshots"


REMOTE_HEADERS = ["ID", "PEER", "KIND", "STATE", "CREATED", "WHAT", "DETAIL"]


def remote_line(req: dict[str, Any]) -> list[str]:
    args = req.get("args") or {}
    if req["kind"] == "run":
        what = f"plan {args.get('plan')}"
    else:
        what = f"{args.get('repo')}/{str(args.get('snapshot'))[:8]} -> {args.get('target')}"
    return [
        req["id"],
        req["peer"],
        req["kind"],
        req["state"],
        short_time(req.get("created_at")),
        what,
        req["message"],
    ]


def _remote_exit(req: dict[str, Any]) -> int:
    if req["state"] in ("failed", "timed out"):
        return EXIT_FAILED
    if req["state"] == "done" and req.get("warning"):
        return EXIT_WARNING
    return 0


async def wait_remote(client: AdminClient, req: dict[str, Any], *, as_json: bool) -> int:
    """Follow a remote request to its end (or until it can no longer be followed).

    Says each new state on stderr, draws the peer's progress on a terminal, and returns the
    exit code: 0 done (or accepted but not followable, which is said), 3 done with a warning,
    1 failed or timed out.
    """
    tty = sys.stderr.isatty() and not as_json
    last = req
    said = req["state"]
    drew = False
    if not as_json:
        print(printable(f"{req['state']}: {req['message']}"), file=sys.stderr, flush=True)
    async for update in client.stream(f"/v1/remote/requests/{_q(req['id'])}/wait"):
        last = update
        if as_json:
            print(json.dumps(update), flush=True)
            continue
        op = update.get("op") or {}
        if tty and op.get("status") == "running" and op.get("bytes_total"):
            sys.stderr.write("\r" + progress_bar(op))
            sys.stderr.flush()
            drew = True
        if update["state"] != said and update["state"] not in ("done", "failed", "timed out"):
            said = update["state"]
            if drew:
                sys.stderr.write("\n")
                drew = False
            print(printable(f"{update['state']}: {update['message']}"), file=sys.stderr, flush=True)
    if drew:
        sys.stderr.write("\n")
    if not as_json:
        if last["state"] in ("failed", "timed out"):
            print(printable(f"{last['state']}: {last['message']}"), file=sys.stderr)
        else:
            print(printable(last["message"]))
    return _remote_exit(last)


async def _remote_started(c: AdminClient, a: argparse.Namespace, req: dict[str, Any]) -> int:
    if a.wait and not req["final"]:
        return await wait_remote(c, req, as_json=a.json)
    if a.json:
        print(json.dumps(req, indent=2))
    elif req["state"] in ("failed", "timed out"):
        print(printable(f"peerstash: {req['message']}"), file=sys.stderr)
    else:
        print(printable(f"request {req['id']} ({req['kind']} on {req['peer']}): {req['message']}"))
    return _remote_exit(req)


async def cmd_remote(c: AdminClient, a: argparse.Namespace) -> int:
    if a.remote_cmd == "run":
        req = await c.call("POST", "/v1/remote/run", {"peer": a.peer, "plan": a.plan})
        return await _remote_started(c, a, req)
    if a.remote_cmd == "restore":
        # The target is a path on the peer: sent as given (a relative one is refused).
        body = {
            "peer": a.peer,
            "repo": a.repo,
            "snapshot": a.snapshot,
            "target": a.target,
            "include": a.include or [],
        }
        return await _remote_started(c, a, await c.call("POST", "/v1/remote/restore", body))
    if a.remote_cmd == "snapshots":
        snaps = await c.call("GET", f"/v1/peers/{_q(a.peer)}/repos/{_q(a.repo)}/snapshots")
        _emit(a, snaps, _snapshot_table(snaps))
        return 0
    if a.remote_cmd == "ls":
        from urllib.parse import quote

        q = f"?path={quote(a.path, safe='/')}" if a.path else ""
        path = f"/v1/peers/{_q(a.peer)}/repos/{_q(a.repo)}/snapshots/{_q(a.snapshot)}/ls{q}"
        async for node in c.stream(path):
            if "error" in node:
                raise CliError(f"the listing stopped: {node['error']}")
            print(
                json.dumps(node)
                if a.json
                else printable(f"{node.get('type', '?')[0]} {node.get('path')}"),
                flush=True,
            )
        return 0
    reqs = await c.call("GET", f"/v1/remote/requests?limit={a.limit}")
    _emit(
        a,
        reqs,
        table([remote_line(r) for r in reqs], REMOTE_HEADERS) if reqs else "no remote requests",
    )
    return 0


async def cmd_pause(c: AdminClient, a: argparse.Namespace) -> int:
    res = await c.call("POST", "/v1/schedules/pause", {"paused": a.command == "pause"})
    _emit(a, res, "schedules paused" if res["paused"] else "schedules resumed")
    return 0


async def cmd_token(c: AdminClient, a: argparse.Namespace) -> int:
    if a.token_cmd == "create":
        body = {
            "label": a.label or "",
            "ttl": a.ttl,
            "max_uses": a.max_uses,
            "grants": a.grant or [],
        }
        res = await c.call("POST", "/v1/tokens", body)
        text = (
            f"{res['token']}\n\nGive this token to the other machine (shown once) and run there\n"
            f"  peerstash peer add --url http://THIS-HOST:PORT\n"
            f"which asks for it (or pipe it in: peerstash peer add - --url ...).\n"
            f"It expires {short_time(res['expires_at'])} and works {res['max_uses']} time(s); "
            f"grants: {', '.join(res['grants']) or 'none'}"
        )
        _emit(a, res, text)
        return 0
    if a.token_cmd == "delete":
        res = await c.call("DELETE", f"/v1/tokens/{a.id}")
        _emit(a, res, f"token {a.id} deleted")
        return 0
    rows = await c.call("GET", "/v1/tokens")
    lines = [
        [
            t["id"],
            t["label"] or "-",
            f"{t['uses']}/{t['max_uses']}",
            short_time(t["expires_at"]),
            ", ".join(t["grants"]) or "-",
        ]
        for t in rows
    ]
    _emit(
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
        body = {"token": token, "url": a.url, "grants": a.grant or [], "replace": a.replace}
        res = await c.call("POST", "/v1/peers", body)
        who = res["id"] if res.get("name") in (None, res["id"]) else f"{res['name']} ({res['id']})"
        _emit(a, res, f"paired with {printable(who)}, key {res['key_id']}; connecting")
        return 0
    if a.peer_cmd == "grant":
        res = await c.call("PATCH", f"/v1/peers/{a.id}", {"grants": a.grant or []})
        shown = ", ".join(res["grants"]) or "nothing"
        _emit(a, res, f"{a.id} may now: {shown} (its link restarts to apply it)")
        return 0
    if a.peer_cmd == "remove":
        keep = "?keep_history=1" if a.keep_history else ""
        res = await c.call("DELETE", f"/v1/peers/{a.id}{keep}")
        if res.get("history_only"):
            _emit(a, res, f"history kept under {a.id} deleted ({res['operations']} operations)")
            return 0
        _emit(
            a,
            res,
            f"peer {a.id} removed and told so; its link is closed, its shared repositories "
            "and their passwords are gone, plans on them disabled, requests to it ended"
            + ("; its operation history is kept" if a.keep_history else ", its history deleted"),
        )
        return 0
    if a.peer_cmd == "check":
        res = await c.call("POST", f"/v1/peers/{a.id}/check")
        _emit(a, res, f"{a.id}: {res['state']}; {res['message']}")
        return 0
    peers = await c.call("GET", "/v1/peers")
    rows = [
        [
            p.get("name") or p["id"],
            p["id"],
            p["key_id"],
            "dials us" if p["role"] == "authorized_client" else "we dial",
            p["state"]
            + (f" ({p['state_reason']})" if p["state_reason"] and p["state"] != "online" else ""),
            short_time(p["last_seen"]),
            ", ".join(p["grants"]) or "-",
        ]
        for p in peers
    ]
    text = table(rows, ["NAME", "ID", "KEY ID", "ROLE", "STATE", "LAST SEEN", "WE GRANT"])
    for p in peers:
        head = p.get("label") or p["id"]
        text += f"\n\n{head}:\n" + "\n".join(f"  {ln}" for ln in fleet_lines(p["plans"]))
    _emit(a, peers, text if rows else "no peers")
    return 0


async def cmd_rename(c: AdminClient, a: argparse.Namespace) -> int:
    res = await c.call("POST", "/v1/rename", {"name": None if a.reset else a.name})
    _emit(
        a,
        res,
        f"this node is now called {res['name']} (its id stays {res['instance_id']}); "
        "its peers learn the new name now",
    )
    return 0


async def cmd_service(c: AdminClient, a: argparse.Namespace) -> int:
    """Needs no running node: ``c`` is never called (run_command connects on the first call)."""
    import asyncio

    from peerstash.peer import systemd

    user = a.scope != "system" if a.scope else os.geteuid() != 0
    try:
        if a.service_cmd == "install":
            if not user and os.geteuid() != 0:
                raise CliError(
                    "a system service needs root: sudo peerstash service install --system"
                )
            if a.data_dir:
                data_dir = resolve_data_dir(a.data_dir)
            else:
                data_dir = systemd.default_data_dir(user, a.name)
            rep = await asyncio.to_thread(
                systemd.install,
                user,
                data_dir,
                systemd.default_command(),
                name=a.name,
                start=not a.no_start,
            )
        elif a.service_cmd == "uninstall":
            rep = await asyncio.to_thread(systemd.uninstall, user, name=a.name)
        else:
            rep = await asyncio.to_thread(systemd.status, user, name=a.name)
    except (systemd.ServiceError, OSError) as exc:
        raise CliError(str(exc)) from None
    lines = list(rep.messages)
    if a.service_cmd == "status" and rep.systemd:
        lines.append(f"{rep.unit}: {rep.enabled}, {rep.active}")
    if rep.todo:
        lines.append("to finish, run:" if not rep.systemd else "next:")
        lines += [f"  {cmd}" for cmd in rep.todo]
    _emit(a, rep.to_dict(), "\n".join(lines))
    return 0 if a.service_cmd != "status" or rep.installed else EXIT_FAILED


COMMANDS = {
    "status": cmd_status,
    "repo": cmd_repo,
    "plan": cmd_plan,
    "backup": cmd_backup,
    "ops": cmd_ops,
    "log": cmd_log,
    "cancel": cmd_cancel,
    "wait": cmd_wait,
    "events": cmd_events,
    "gc": cmd_gc,
    "discover": cmd_discover,
    "settings": cmd_settings,
    "snapshots": cmd_snapshots,
    "ls": cmd_ls,
    "restore": cmd_restore,
    "forget": cmd_forget,
    "prune": cmd_maintenance,
    "check": cmd_maintenance,
    "unlock": cmd_maintenance,
    "pause": cmd_pause,
    "resume": cmd_pause,
    "token": cmd_token,
    "peer": cmd_peer,
    "remote": cmd_remote,
    "rename": cmd_rename,
    "service": cmd_service,
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"peerstash: {message}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, rest = super().parse_known_args(args, namespace)
        system = getattr(ns, "system_node", None)
        if system is not None:
            # --system NAME: the system service's layout (peerstash@NAME, `service install
            # --system --name NAME`), i.e. --data-dir /var/lib/peerstash/NAME.
            from peerstash.peer import systemd

            if getattr(ns, "data_dir", None):
                self.error("--system NAME and --data-dir name two nodes: give one of them")
            try:
                ns.data_dir = str(systemd.system_data_dir(system))
            except systemd.ServiceError as exc:
                self.error(f"--system: {exc}")
        return ns, rest


def password_options(sp: argparse.ArgumentParser) -> None:
    """The four ways to give a repository password (repo add, repo edit)."""
    pw = sp.add_mutually_exclusive_group()
    pw.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    pw.add_argument(
        "--password-file", help="file holding the password (read by the node at run time)"
    )
    pw.add_argument("--password-env", help="environment variable of the node holding the password")
    pw.add_argument("--password-command", help="command printing the password")


def retention_options(sp: argparse.ArgumentParser) -> None:
    """--keep-* (plan add, plan edit)."""
    for unit in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        sp.add_argument(f"--keep-{unit}", type=int, metavar="N")
    sp.add_argument("--keep-within", metavar="DURATION", help="e.g. 30d")


class _NotBuilt(Exception):
    """A subcommand parser left out by :func:`build_parser` was asked to parse."""


class _Unbuilt:
    """Stands in for the parser of a subcommand this call does not run: it takes the building
    calls of :func:`build_parser` and does nothing (building all 60 parsers costs more than
    starting Python: each looks up its translations and the terminal's width), and refuses
    everything else. Its name and help are registered all the same, so usage, ``--help`` and
    "invalid choice" read exactly as with every parser built."""

    _BUILDING = frozenset(
        {
            "add_argument",
            "add_argument_group",
            "add_mutually_exclusive_group",
            "add_parser",
            "add_subparsers",
            "set_defaults",
        }
    )

    def __getattr__(self, name: str) -> Any:
        if name in self._BUILDING:
            return self._take
        raise _NotBuilt(name)

    def _take(self, *args: object, **kwargs: object) -> _Unbuilt:
        return self


def _parser_class(build: frozenset[str] | None) -> type[_Parser]:
    """The subcommand parser class: with ``build``, only those subcommands get a real parser."""
    if build is None:
        return _Parser
    names = build

    class _Some(_Parser):
        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            # add_parser names the parser "peerstash NAME" (no subcommand sets its own prog).
            name = str(kwargs.get("prog", "")).rsplit(" ", 1)[-1]
            return super().__new__(cls) if name in names else _Unbuilt()

    return _Some


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``build_parser().parse_args(argv)``, building only the parsers of the subcommands named
    in ``argv`` (the one that runs is always among them: argparse matches subcommand names
    exactly). Should anything else be asked of a parser left out, everything is built and
    ``argv`` parsed again, so the result is always the full parser's."""
    words = sys.argv[1:] if argv is None else list(argv)
    try:
        return build_parser(frozenset(w for w in words if w in COMMANDS)).parse_args(words)
    except _NotBuilt:
        return build_parser().parse_args(words)


def build_parser(build: frozenset[str] | None = None) -> argparse.ArgumentParser:
    """The whole ``peerstash`` parser; with ``build``, the parsers of other subcommands are
    left out (see :func:`parse_args`)."""
    p = _Parser(prog="peerstash", description="Backups for every machine you own.")
    p.add_argument("--version", action="version", version=f"peerstash {__version__}")
    p.add_argument("--data-dir", help="the node's data directory (or $PEERSTASH_DATA_DIR)")
    p.add_argument(
        "--system",
        dest="system_node",
        metavar="NAME",
        help="the system service's node NAME (peerstash@NAME; default instance: main): "
        "short for --data-dir /var/lib/peerstash/NAME",
    )
    p.add_argument("--no-gui", action="store_true", help="run the node headless in the foreground")
    p.add_argument(
        "--instance-id",
        help="this instance's fixed id, at first start only (default: HOSTNAME-XXXX, with the "
        "start of its key id); see `peerstash rename` for the name people see",
    )
    p.add_argument(
        "--db-url",
        default=os.environ.get("PEERSTASH_DB_URL"),
        help="SQLAlchemy URL of the store (default: SQLite in the data dir)",
    )
    p.add_argument("--restic", help="path of the restic binary (default: from PATH)")
    p.add_argument(
        "--listen",
        default=os.environ.get("PEERSTASH_LISTEN"),
        metavar="HOST:PORT",
        help="peer port (default: the listen setting, else 0.0.0.0:9797; port 0 picks one)",
    )
    p.add_argument(
        "--no-discovery", action="store_true", help="do not announce or look for peers on the LAN"
    )
    p.add_argument(
        "--discovery-interface",
        action="append",
        metavar="ADDR_OR_IFACE",
        help="limit LAN discovery to this interface or address (repeatable)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log more (node only)")
    sub = p.add_subparsers(dest="command", parser_class=_parser_class(build))

    def json_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--json", action="store_true", help="print JSON")

    def on_flag(sp: argparse.ArgumentParser, what: str) -> None:
        sp.add_argument("--on", metavar="PEER", help=f"on a paired peer instead: {what}")

    stp = sub.add_parser("status", help="what this node is and how its plans are doing")
    stp.add_argument(
        "--check",
        action="store_true",
        help="one line and exit 0/1/2/3 for ok/attention/failing/no node (a Nagios plugin)",
    )
    json_flag(stp)

    repo = sub.add_parser("repo", help="manage repositories")
    rsub = repo.add_subparsers(dest="repo_cmd", required=True, parser_class=_Parser)
    ra = rsub.add_parser("add", help="add (or --init create) a restic repository")
    ra.add_argument("name")
    ra.add_argument(
        "--uri", required=True, help="restic repository, e.g. /srv/backup or sftp:host:/path"
    )
    password_options(ra)
    ra.add_argument(
        "--env", action="append", metavar="K=V", help="extra environment for restic (kept secret)"
    )
    ra.add_argument(
        "--env-file", metavar="FILE", help="KEY=VALUE lines (not on the command line, unlike --env)"
    )
    ra.add_argument(
        "--option", action="append", metavar="K=V", help="restic -o option, e.g. sftp.command=..."
    )
    ra.add_argument(
        "--init", action="store_true", help="create the repository if it does not exist"
    )
    on_flag(ra, "it must grant config.write (password by --password-stdin only)")
    json_flag(ra)
    re_ = rsub.add_parser("edit", help="change how a repository is reached (it must still open)")
    re_.add_argument("name")
    re_.add_argument("--uri")
    password_options(re_)
    re_.add_argument("--env", action="append", metavar="K=V", help="replaces the extra environment")
    re_.add_argument("--env-file", metavar="FILE", help="KEY=VALUE lines, with --env replace it")
    re_.add_argument("--option", action="append", metavar="K=V", help="replaces the -o options")
    re_.set_defaults(init=False)
    on_flag(re_, "it must grant config.write for the repository")
    json_flag(re_)
    rl = rsub.add_parser("list", help="list repositories")
    on_flag(rl, "it must grant config.read")
    json_flag(rl)
    rr = rsub.add_parser("remove", help="forget a repository (its data stays where it is)")
    rr.add_argument("name")
    on_flag(rr, "it must grant config.write for the repository")
    json_flag(rr)
    rsh = rsub.add_parser(
        "show", help="one repository's settings; --reveal-password prints its password"
    )
    rsh.add_argument("name")
    rsh.add_argument(
        "--reveal-password",
        action="store_true",
        help="also print the password (asks to type the name on a terminal; else needs --yes)",
    )
    rsh.add_argument(
        "--recovery-sheet",
        metavar="FILE",
        help="write a recovery sheet (location, password, restic command) to FILE, mode 0600",
    )
    rsh.add_argument(
        "--yes", action="store_true", help="reveal without asking (for scripts; no terminal)"
    )
    json_flag(rsh)
    rs = rsub.add_parser(
        "share", help="share a repository with peers that grant this node repos.receive"
    )
    rs.add_argument("name")
    rs.add_argument(
        "--client-uri",
        metavar="URI",
        help="the URI peers use to reach it (default: its own URI); '' clears it",
    )
    json_flag(rs)
    ru = rsub.add_parser("unshare", help="stop sharing a repository (peers remove it)")
    ru.add_argument("name")
    json_flag(ru)

    plan = sub.add_parser("plan", help="manage backup plans")
    psub = plan.add_subparsers(dest="plan_cmd", required=True, parser_class=_Parser)
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

    tok = sub.add_parser(
        "token", help="pairing tokens that let another instance pair with this one"
    )
    tsub = tok.add_subparsers(dest="token_cmd", required=True, parser_class=_Parser)
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
    pesub = peer.add_subparsers(dest="peer_cmd", required=True, parser_class=_Parser)
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

    rem = sub.add_parser(
        "remote", help="run, browse and restore on a peer (it must give this node 'run')"
    )
    remsub = rem.add_subparsers(dest="remote_cmd", required=True, parser_class=_Parser)
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
    stsub = st.add_subparsers(dest="settings_cmd", parser_class=_Parser)
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

    svc = sub.add_parser("service", help="run this node as a systemd service (--no-gui)")
    svsub = svc.add_subparsers(dest="service_cmd", required=True, parser_class=_Parser)
    for name, text in (
        ("install", "write and enable a systemd unit for this data dir"),
        ("uninstall", "stop, disable and remove the unit"),
        ("status", "is the unit installed, enabled, running?"),
    ):
        sv = svsub.add_parser(name, help=text)
        scope = sv.add_mutually_exclusive_group()
        scope.add_argument(
            "--user",
            dest="scope",
            action="store_const",
            const="user",
            help="a systemd --user unit (default unless root)",
        )
        scope.add_argument(
            "--system",
            dest="scope",
            action="store_const",
            const="system",
            help="a system unit in /etc/systemd/system (default for root)",
        )
        sv.add_argument("--name", help="unit peerstash-NAME.service, for a second node")
        if name == "install":
            sv.add_argument("--no-start", action="store_true", help="enable, but do not start now")
        json_flag(sv)
    return p


#: Commands of one request (and one stream to follow): they run on the quick client (no
#: aiohttp, no asyncio, see ``peer/api/quickclient.py``), so they start in a fraction of the time.
QUICK_COMMANDS = frozenset({"status", "backup", "wait"})


def run_command(args: argparse.Namespace) -> int:
    """Run one CLI subcommand against the node; return the exit code."""
    data_dir = resolve_data_dir(args.data_dir)
    handler = COMMANDS[args.command]
    client_class: type[AdminClient]
    run: Callable[[Coroutine[Any, Any, int]], int]
    if args.command in QUICK_COMMANDS:
        from peerstash.peer.api.quickclient import QuickAdminClient, run_to_end

        client_class, run = QuickAdminClient, run_to_end
    else:
        import asyncio

        client_class, run = AdminClient, asyncio.run

    async def go() -> int:
        async with client_class(data_dir) as client:
            return await handler(client, args)

    try:
        return run(go())
    except CliError as exc:
        print(printable(f"peerstash: {exc}"), file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("peerstash: interrupted (the operation goes on in the node)", file=sys.stderr)
        return 130
