"""``peerstash repo``: this node's repositories, or with ``--on PEER`` a peer's."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from peerstash.core.records import RepoRecord
from peerstash.peer.api import schema
from peerstash.peer.cli import AdminClient, CliError
from peerstash.peer.cli.format import decode, emit, peer_path, quote_segment, table
from peerstash.peer.cli.parser import Parser, json_flag, on_flag, password_options


def _read_password(a: argparse.Namespace) -> schema.Password:
    if a.password_file:
        return schema.Password(source="file", ref=os.path.abspath(a.password_file))
    if a.password_env:
        return schema.Password(source="env", ref=a.password_env)
    if a.password_command:
        return schema.Password(source="command", ref=a.password_command)
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
    return schema.Password(source="secret", value=value)


def _repo_patch(a: argparse.Namespace, hint: str) -> schema.EditRepo:
    """The changes ``repo edit`` asks for (here or on a peer); at least one is required."""
    patch = schema.EditRepo()
    if a.uri:
        patch.uri = a.uri
    if a.password_stdin or a.password_file or a.password_env or a.password_command:
        patch.password = _read_password(a)
    if a.env is not None or a.env_file:
        patch.env = _env_of(a)
    if a.option is not None:
        patch.options = [o for o in a.option if o]
    if patch == schema.EditRepo():
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


async def cmd_repo(c: AdminClient, a: argparse.Namespace) -> int:
    """Repositories of this node, or with ``--on PEER`` of a peer: listed when it grants
    config.read, added, changed or removed when it grants config.write for them. The peer checks
    what a peer may set (a password given as a value only, no -o options, no RESTIC_ variables,
    no rclone:) and refuses the rest; ``share``, ``unshare`` and ``show`` are for this node's."""
    on: str | None = getattr(a, "on", None)
    base = peer_path(on) + "/repos" if on else "/v1/repos"
    suffix = f" on {on}" if on else ""
    if a.repo_cmd == "add":
        env = _env_of(a)
        body = schema.AddRepo(
            id=a.name,
            uri=a.uri,
            password=_read_password(a),
            env=env,
            options=a.option or [],
            init=a.init,
        )
        res = await c.call("POST", base, body)
        if on:  # not a record: what a peer shows of a repository (repo_public_dict)
            guid = (res["repo"].get("guid") or "")[:8]
        else:
            guid = (decode(res.get("repo"), RepoRecord, "a repository").guid or "")[:8]
        emit(a, res, f"repository {a.name}{suffix}: {res['message']} (id {guid})")
        return 0
    if a.repo_cmd == "edit":
        hint = "--password-stdin or --env" if on else "a password option, --env or --option"
        patch = _repo_patch(a, f"give --uri, {hint}")
        res = await c.call("PATCH", f"{base}/{quote_segment(a.name)}", patch)
        emit(a, res, f"repository {a.name}{suffix} changed; it opens with the new settings")
        return 0
    if a.repo_cmd == "remove":
        res = await c.call("DELETE", f"{base}/{quote_segment(a.name)}")
        emit(
            a, res, f"repository {a.name} removed from {on or 'Peerstash'} (its data is untouched)"
        )
        return 0
    if a.repo_cmd == "share":
        share = schema.ShareRepo(client_uri=a.client_uri)
        res = await c.call("POST", f"/v1/repos/{a.name}/share", share)
        shared = decode(res, RepoRecord, "a repository")
        via = f" at {shared.client_uri}" if shared.client_uri else ""
        emit(
            a,
            res,
            f"repository {a.name} is shared{via} with peers that grant this node repos.receive",
        )
        return 0
    if a.repo_cmd == "show":
        return await _repo_show(c, a)
    if a.repo_cmd == "unshare":
        res = await c.call("POST", f"/v1/repos/{a.name}/unshare")
        emit(a, res, f"repository {a.name} is no longer shared; peers remove it")
        return 0
    if on:
        # Not records: what a peer shows of its repositories (remote_config.repo_public_dict).
        repos = (await c.call("GET", peer_path(on) + "/config"))["repos"]
        rows = [[r["id"], r["uri"], r["password_source"], (r["guid"] or "")[:8]] for r in repos]
        empty = f"no repositories of {on} are visible here"
        emit(a, repos, table(rows, ["ID", "URI", "PASSWORD", "GUID"]) if rows else empty)
        return 0
    repos = await c.call("GET", "/v1/repos")
    listed = decode(repos, list[RepoRecord], "a list of repositories")
    if a.json:
        emit(a, repos, "")
        return 0
    rows = [
        [
            r.id,
            r.uri,
            r.password_source,
            (r.guid or "")[:8],
            r.origin or ("shared" if r.shared else "-"),
        ]
        for r in listed
    ]
    text = table(rows, ["ID", "URI", "PASSWORD", "GUID", "SHARING"]) if rows else "no repositories"
    st = await c.call("GET", "/v1/status")
    for local_id, why in sorted((st.get("shared_skipped") or {}).items()):
        text += f"\nnot taken: {local_id}: {why}"
    for local_id, what in sorted((st.get("shared_changes") or {}).items()):
        text += f"\nchanged by its owner: {local_id}: {what}"
    emit(a, repos, text)
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
    listed = decode(repos, list[RepoRecord], "a list of repositories")
    found = next((i for i, r in enumerate(listed) if r.id == a.name), None)
    if found is None:
        raise CliError(f"no repository named {a.name!r} (see `peerstash repo list`)")
    # ``raw`` is what --json prints (the node's words), ``repo`` what the text reads.
    raw, repo = repos[found], listed[found]
    ref = f" ({repo.password_ref})" if repo.password_ref else ""
    lines = [
        f"repository {repo.id}",
        f"  location:  {repo.uri}",
        f"  password:  {repo.password_source}{ref}",
        f"  restic id: {repo.guid or '-'}",
    ]
    if repo.env_keys:
        lines.append(f"  env:       {', '.join(repo.env_keys)} (values kept secret)")
    if repo.options:
        lines.append(f"  options:   {', '.join(repo.options)}")
    if repo.origin:
        lines.append(f"  shared by: {repo.origin} (read-only here)")
    lines.append(f"  open with: {restic_command(repo.uri, repo.options)}")
    if not (a.reveal_password or a.recovery_sheet):
        emit(a, raw, "\n".join(lines))
        return 0
    _confirm_reveal(a)
    res = await c.call("POST", f"/v1/repos/{quote_segment(a.name)}/reveal-password")
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
            name=repo.id,
            uri=repo.uri,
            password=password,
            env_keys=repo.env_keys,
            options=repo.options,
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
        emit(a, {**raw, "password": password}, "")
    else:
        print("\n".join(lines))
        print(f"  password value: {password}")
    return 0


#: This family's subcommands and their handlers (named in ``FAMILIES`` too).
COMMANDS = {"repo": cmd_repo}


def add_parsers(sub: argparse._SubParsersAction[Parser]) -> None:
    """The subcommand ``repo`` with its arguments."""
    repo = sub.add_parser("repo", help="manage repositories")
    rsub = repo.add_subparsers(dest="repo_cmd", required=True, parser_class=Parser)
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
