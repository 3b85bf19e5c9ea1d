"""A peer's configuration, read and changed over the link (grants ``config.read``/``config.write``).

Both grants are enforced here, on the node whose configuration it is: the caller's node only
forwards what a person asked for. Each request is checked against the exact repo and plan it
touches, so ``config.write:plan:docs`` lets a peer change plan *docs* and nothing else.

* **Reading never shows a secret.** Repositories are described by :func:`repo_public_dict`:
  the password's *kind* only (no value, no file path, variable name or command), the names of
  the extra environment variables (never their values), and the keys of the restic options
  (never their values, which can hold credentials or key paths). Out-of-scope repos and plans
  are simply absent, as if they did not exist.
* **Writing goes through the engine,** exactly like a local change: the same validation, the
  same ``ConfigChanged`` event, the same scheduler update. A refusal comes back in the engine's
  own words.
* **A new plan must target a repository in scope** (and its own id must not be excluded), so a
  peer allowed to write plans on one repository cannot back up into another.
* **Repositories are written within rules that keep programs out**
  (:mod:`peerstash.core.peer_rules`, the same rules as for shared repositories), checked here
  because a repository's settings can run things on this machine: its password
  source can be a command, restic ``-o`` options can name one (``sftp.command``,
  ``rclone.program``), an ``rclone:`` URI runs rclone, and environment variables such as
  ``RESTIC_PASSWORD_COMMAND``, ``LD_PRELOAD`` or ``SSH_ASKPASS`` change what runs. So a peer
  gives the password only as a value (never a file, variable or command), no ``-o`` options at
  all, environment names only from the allow-list of backend credentials, and a URI of a
  backend that runs no program of its choosing, in the form restic documents for it (an
  absolute local path, ``sftp:``, ``rest:``, ``s3:``, ``b2:``, ``azure:``, ``gs:``,
  ``swift:``). A repository set up here with a password file, variable or command, or
  with options, keeps them: a peer may not replace them, only change what the rules allow.
  The password travels only inside the encrypted link, as an argument of the call; it is never
  logged, echoed in a refusal, or sent back (answers use :func:`repo_public_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from peerstash.core import peer_rules as rules
from peerstash.core.engine import Engine, EngineError, PasswordSpec
from peerstash.core.models import Plan, Repo
from peerstash.core.records import PlanRecord, to_json
from peerstash.core.restic import redact_uri
from peerstash.core.store import NotFound, StoreError
from peerstash.peer.links import protocol as proto
from peerstash.peer.links.rpc import (
    CallContext,
    CallError,
    CallTimeout,
    PeerUnavailable,
    ReplyTooLarge,
    RpcService,
    arg,
)

READ = "config.read"
WRITE = "config.write"

#: The methods this module offers, by name (the caller's side uses the same names).
M_READ = "config.get"
M_PLAN_ADD = "config.plan.add"
M_PLAN_EDIT = "config.plan.edit"
M_PLAN_REMOVE = "config.plan.remove"
M_REPO_ADD = "config.repo.add"
M_REPO_EDIT = "config.repo.edit"
M_REPO_REMOVE = "config.repo.remove"

#: Plan fields a peer may set, with the type each must have on the wire.
PLAN_CHANGES: dict[str, type | tuple[type, ...]] = {
    "repo": str,
    "paths": list,
    "excludes": list,
    "schedule": str,
    "every": str,
    "retention": dict,
    "enabled": bool,
}

#: Repository fields a peer may send when it adds (``id`` aside) or edits one.
REPO_ADD_FIELDS = frozenset({"id", "uri", "password", "env", "options", "init"})
REPO_CHANGES = frozenset({"uri", "password", "env", "options"})


def _refuse(message: str) -> CallError:
    return CallError(proto.ErrorCode.FORBIDDEN, message)


def check_peer_uri(uri: str) -> None:
    """Refuse a repository URI a peer may not set (the rule is in core/peer_rules.py)."""
    try:
        rules.check_peer_uri(uri)
    except rules.PeerRuleError as exc:
        raise _refuse(exc.message) from None


def check_peer_env(env: Mapping[str, str]) -> None:
    """Refuse environment variables a peer may not set (names only are ever said)."""
    try:
        rules.check_peer_env(env)
    except rules.PeerRuleError as exc:
        raise _refuse(exc.message) from None


def peer_password(value: Any) -> PasswordSpec:
    """The password a peer sends: only ever the value itself."""
    if not isinstance(value, dict):
        raise CallError(proto.ErrorCode.BAD_REQUEST, "argument 'password' has the wrong type")
    try:
        rules.check_peer_password_source(value.get("source", "secret"), value.get("ref"))
    except rules.PeerRuleError as exc:
        raise _refuse(exc.message) from None
    secret = value.get("value")
    if not isinstance(secret, str) or not secret:
        raise CallError(proto.ErrorCode.BAD_REQUEST, "the password is missing or empty")
    return PasswordSpec(source="secret", value=secret)


def _no_options(args: Mapping[str, Any]) -> None:
    try:
        rules.check_no_options(args.get("options"))
    except rules.PeerRuleError as exc:
        raise _refuse(exc.message) from None


def _env_arg(args: Mapping[str, Any]) -> dict[str, str]:
    env = arg(args, "env", dict, default={})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise CallError(proto.ErrorCode.BAD_REQUEST, "argument 'env' must map names to strings")
    check_peer_env(env)
    return dict(env)


def repo_public_dict(repo: Repo) -> dict[str, Any]:
    """A repository as a peer may see it: how it is set up, never how it is unlocked."""
    return {
        "id": repo.id,
        "uri": redact_uri(repo.uri),
        "password_source": repo.password_source,
        "env_keys": list(repo.env_keys or []),
        "option_keys": [opt.partition("=")[0] for opt in repo.options or []],
        "guid": repo.guid,
        "origin": repo.origin,
    }


def _plan_in_scope(ctx: CallContext, grant: str, plan: Plan) -> bool:
    return ctx.grants.allows(grant, repo=plan.repo_id, plan=plan.id)


def _str_list(args: Mapping[str, Any], name: str) -> list[str]:
    value = arg(args, name, list, default=[])
    if not all(isinstance(v, str) for v in value):
        raise CallError(proto.ErrorCode.BAD_REQUEST, f"argument {name!r} must list strings")
    return list(value)


def _target_repo(ctx: CallContext, repo_id: str, plan_id: str) -> None:
    """Refuse unless a plan ``plan_id`` on ``repo_id`` is writable by the caller: the repo must
    be in scope itself, and neither id excluded."""
    ctx.require(WRITE, repo=repo_id)
    ctx.require(WRITE, repo=repo_id, plan=plan_id)


class RemoteConfig:
    """Answers config reads and writes from peers, on behalf of one engine."""

    def __init__(self, engine: Engine, rpc: RpcService) -> None:
        self.engine = engine
        self.rpc = rpc
        self._register()

    def _register(self) -> None:
        self.rpc.register(M_READ, self._read, grant=READ)
        self.rpc.register(M_PLAN_ADD, self._plan_add, grant=WRITE)
        self.rpc.register(M_PLAN_EDIT, self._plan_edit, grant=WRITE)
        self.rpc.register(M_PLAN_REMOVE, self._plan_remove, grant=WRITE)
        self.rpc.register(M_REPO_ADD, self._repo_add, grant=WRITE)
        self.rpc.register(M_REPO_EDIT, self._repo_edit, grant=WRITE)
        self.rpc.register(M_REPO_REMOVE, self._repo_remove, grant=WRITE)

    async def _read(self, ctx: CallContext, args: Mapping[str, Any]) -> dict[str, Any]:
        repos = [
            repo_public_dict(r)
            for r in await self.engine.list_repos()
            if ctx.grants.allows(READ, repo=r.id)
        ]
        plans = [
            to_json(PlanRecord.of(p))
            for p in await self.engine.list_plans()
            if _plan_in_scope(ctx, READ, p)
        ]
        return {"repos": repos, "plans": plans}

    async def _plan(self, ctx: CallContext, plan_id: str) -> Plan:
        """The plan the caller may write, else ``forbidden`` (or ``not_found`` when its scope
        would cover a plan of that name: whether it exists is not told to anyone else)."""
        try:
            plan = await self.engine.store.get_plan(plan_id)
        except NotFound:
            ctx.require(WRITE, plan=plan_id)
            raise
        if not _plan_in_scope(ctx, WRITE, plan):
            ctx.require(WRITE, plan=plan_id)  # names the plan, unless only its repo is out
            ctx.require(WRITE, plan=plan_id, repo=plan.repo_id)
        return plan

    async def _plan_add(self, ctx: CallContext, args: Mapping[str, Any]) -> dict[str, Any]:
        plan_id = arg(args, "id")
        repo_id = arg(args, "repo")
        _target_repo(ctx, repo_id, plan_id)
        backup_now = arg(args, "backup_now", bool, default=True)
        plan = await self.engine.add_plan(
            plan_id,
            repo_id=repo_id,
            paths=_str_list(args, "paths"),
            excludes=_str_list(args, "excludes"),
            cron=arg(args, "schedule", default=None),
            every=arg(args, "every", default=None),
            retention=arg(args, "retention", dict, default={}),
        )
        out = to_json(PlanRecord.of(plan))
        if backup_now:
            # The peer's user asked for a plan here: like a plan added locally, it is backed up
            # now rather than at its first slot. config.write already lets them choose a
            # schedule (say every few minutes), so this grants nothing more than that.
            try:
                op = await self.engine.backup(
                    plan.id, reason=f"first backup, asked by {ctx.peer_id}"
                )
                out["first_backup"] = {"id": op.op_id, "status": op.status}
            except EngineError as exc:
                out["first_backup"] = {"error": str(exc)}
        return out

    async def _plan_edit(self, ctx: CallContext, args: Mapping[str, Any]) -> dict[str, Any]:
        plan = await self._plan(ctx, arg(args, "id"))
        given = arg(args, "changes", dict)
        unknown = set(given) - set(PLAN_CHANGES)
        if unknown:
            raise CallError(
                proto.ErrorCode.BAD_REQUEST, f"cannot change {', '.join(sorted(unknown))} of a plan"
            )
        changes: dict[str, Any] = {}
        for name, kind in PLAN_CHANGES.items():
            if name in given:
                changes[name] = (
                    _str_list(given, name) if kind is list else arg(given, name, kind, default="")
                )
        if "repo" in changes and changes["repo"] != plan.repo_id:
            _target_repo(ctx, changes["repo"], plan.id)
        return to_json(PlanRecord.of(await self.engine.update_plan(plan.id, **changes)))

    async def _plan_remove(self, ctx: CallContext, args: Mapping[str, Any]) -> dict[str, Any]:
        plan = await self._plan(ctx, arg(args, "id"))
        await self.engine.delete_plan(plan.id)
        return {"deleted": plan.id}

    async def _repo(self, ctx: CallContext, repo_id: str) -> Repo:
        """The repository the caller may write (``forbidden`` before ``not_found``)."""
        ctx.require(WRITE, repo=repo_id)
        return await self.engine.store.get_repo(repo_id)

    async def _repo_add(self, ctx: CallContext, args: Mapping[str, Any]) -> dict[str, Any]:
        repo_id = arg(args, "id")
        ctx.require(WRITE, repo=repo_id)
        unknown = set(args) - REPO_ADD_FIELDS
        if unknown:
            raise CallError(
                proto.ErrorCode.BAD_REQUEST, f"unknown field {', '.join(sorted(unknown))}"
            )
        _no_options(args)
        uri = arg(args, "uri")
        check_peer_uri(uri)
        env = _env_arg(args)
        password = peer_password(arg(args, "password", dict))
        row, said = await self.engine.add_repo(
            repo_id, uri, password, env=env, init=arg(args, "init", bool, default=False)
        )
        return {"repo": repo_public_dict(row), "message": said}

    async def _repo_edit(self, ctx: CallContext, args: Mapping[str, Any]) -> dict[str, Any]:
        repo = await self._repo(ctx, arg(args, "id"))
        given = arg(args, "changes", dict)
        unknown = set(given) - REPO_CHANGES
        if unknown:
            raise CallError(
                proto.ErrorCode.BAD_REQUEST,
                f"cannot change {', '.join(sorted(unknown))} of a repository",
            )
        if "options" in given:
            _no_options({"options": True})
        uri = arg(given, "uri", default=None)
        if uri is not None:
            check_peer_uri(uri)
        env = None
        if "env" in given:
            kept = [k for k in repo.env_keys or [] if not rules.peer_may_set(k)]
            if kept:
                raise _refuse(
                    f"repository {repo.id!r} has environment variables set on this machine that "
                    f"a peer may not set ({', '.join(kept)}); change them here"
                )
            env = _env_arg(given)
        password = None
        if "password" in given:
            if repo.password_source != "secret":
                raise _refuse(
                    f"repository {repo.id!r} takes its password from a {repo.password_source} "
                    "set on this machine; only this machine can change how it is found"
                )
            password = peer_password(given["password"])
        if uri is None and env is None and password is None:
            raise CallError(proto.ErrorCode.BAD_REQUEST, "nothing to change")
        updated = await self.engine.update_repo(repo.id, uri=uri, password=password, env=env)
        return repo_public_dict(updated)

    async def _repo_remove(self, ctx: CallContext, args: Mapping[str, Any]) -> dict[str, Any]:
        repo = await self._repo(ctx, arg(args, "id"))
        try:
            await self.engine.delete_repo(repo.id)
        except NotFound:
            raise
        except StoreError as exc:  # still used by plans: the store says so, for people
            raise EngineError(str(exc)) from None
        return {"deleted": repo.id}


# -- the calling side ----------------------------------------------------------------------


async def _call(rpc: RpcService, peer_id: str, method: str, args: Mapping[str, Any]) -> Any:
    """Call ``method`` on ``peer_id``; a refusal keeps the peer's words, prefixed with its name
    (the message says "here" meaning the peer, and the person reading it is elsewhere)."""
    try:
        return await rpc.call(peer_id, method, args)
    except (PeerUnavailable, CallTimeout, ReplyTooLarge):
        raise  # these already name the peer and say what happened to the link
    except CallError as exc:
        raise CallError(exc.code, f"{peer_id}: {exc.message}") from None


async def read(rpc: RpcService, peer_id: str) -> dict[str, Any]:
    """``peer_id``'s repos and plans that it lets us read: ``{"repos": [...], "plans": [...]}``."""
    result = await _call(rpc, peer_id, M_READ, {})
    if not isinstance(result, dict):
        raise CallError(proto.ErrorCode.PROTOCOL, f"{peer_id} sent an unreadable configuration")
    return {"repos": list(result.get("repos") or []), "plans": list(result.get("plans") or [])}


async def add_plan(rpc: RpcService, peer_id: str, fields: Mapping[str, Any]) -> Any:
    return await _call(rpc, peer_id, M_PLAN_ADD, fields)


async def edit_plan(rpc: RpcService, peer_id: str, plan_id: str, changes: Mapping[str, Any]) -> Any:
    return await _call(rpc, peer_id, M_PLAN_EDIT, {"id": plan_id, "changes": dict(changes)})


async def remove_plan(rpc: RpcService, peer_id: str, plan_id: str) -> Any:
    return await _call(rpc, peer_id, M_PLAN_REMOVE, {"id": plan_id})


async def add_repo(rpc: RpcService, peer_id: str, fields: Mapping[str, Any]) -> Any:
    """Ask ``peer_id`` to add a repository; ``fields`` as for a local one (the password, if
    any, travels only inside the link and the peer checks every rule)."""
    return await _call(rpc, peer_id, M_REPO_ADD, fields)


async def edit_repo(rpc: RpcService, peer_id: str, repo_id: str, changes: Mapping[str, Any]) -> Any:
    return await _call(rpc, peer_id, M_REPO_EDIT, {"id": repo_id, "changes": dict(changes)})


async def remove_repo(rpc: RpcService, peer_id: str, repo_id: str) -> Any:
    return await _call(rpc, peer_id, M_REPO_REMOVE, {"id": repo_id})


__all__ = [
    "RemoteConfig",
    "check_peer_env",
    "check_peer_uri",
    "peer_password",
    "repo_public_dict",
]
