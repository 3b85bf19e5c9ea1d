"""The engine's service API: what a person (through the CLI, the tray or a peer) can ask for.

Every surface makes its changes through these methods, so validation, secrets handling, the
rules about operations and the events that tell views and peers live in one place. Plain reads
(lists of peers, tokens and operations) go to the store directly; the two writes the admin API
still makes itself are a node setting (checked against its table, ``peer/api/config.py``) and
removing a pairing token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import platformdirs

from peerstash.core import scheduler as sched
from peerstash.core.events import (
    ConfigChanged,
    EventBus,
    Notice,
    OperationsDeleted,
    PlanStale,
    SharesReceived,
    SnapshotsChanged,
    Woke,
)
from peerstash.core.models import Operation, OpKind, OpStatus, Plan, Repo
from peerstash.core.peer_rules import PeerRuleError, check_peer_repo, check_peer_uri
from peerstash.core.restic import (
    ErrorKind,
    ForgetResult,
    PasswordCommand,
    PasswordFile,
    PasswordValue,
    RepoAccess,
    Restic,
    ResticError,
    find_restic,
    progress_fps_for,
    same_snapshot_id,
)
from peerstash.core.restore_target import (
    PREVIEW_LIMIT,
    RestorePreview,
    SelectionError,
    check_selection,
    existing_at_target,
    in_selection,
    target_state,
)
from peerstash.core.retention import RetentionPolicy
from peerstash.core.runner import (
    DEFAULT_STALL_AFTER,
    STOPPED_MESSAGE,
    OpContext,
    Outcome,
    Runner,
)
from peerstash.core.secrets import SecretStore
from peerstash.core.sharing import (
    SharedRepoSpec,
    ShareResult,
    gone_reason_prefix,
    peer_removed_reason,
    received_repo_id,
)
from peerstash.core.store import NotFound, OpFilter, Store, StoreError, repo_record, utcnow
from peerstash.core.wording import backup_summary_line

log = logging.getLogger(__name__)

PASSWORD_SOURCES = ("secret", "file", "env", "command")
#: How long a repository's password command may take when the owner resolves it for sharing.
PASSWORD_COMMAND_TIMEOUT = 30.0
#: Setting that remembers, per owner, the shared repositories a person deleted here (so the
#: owner's next push does not bring them back; a fresh share after an unshare does).
DECLINED_SETTING = "declined_shares"
GC_EVERY = 24 * 3600.0
#: Default seconds restic 0.16+ waits for a lock another process holds (``--retry-lock``; the
#: node's ``restic_retry_lock`` setting, 0 = fail at once as restic 0.14 does).
DEFAULT_RETRY_LOCK = 60.0
# Failures after which restic may have left its lock behind, or that a lock caused.
_UNLOCK_AFTER = frozenset({ErrorKind.LOCKED, ErrorKind.INTERRUPTED})
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class EngineError(Exception):
    """A request refused or failed, worded for the person who made it.

    ``field`` names the request field the refusal is about (the admin API's field names:
    ``id``, ``uri``, ``password``, ``env``, ``options``, ``paths``, ``schedule``, ``target``...),
    so a form can mark that field without reading the sentence.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


#: Which repository field a restic failure while opening a repository is about.
_RESTIC_FIELDS = {
    ErrorKind.WRONG_PASSWORD: "password",
    ErrorKind.REPO_MISSING: "uri",
    ErrorKind.REPO_EXISTS: "uri",
    ErrorKind.BACKEND_UNREACHABLE: "uri",
    ErrorKind.WRONG_CREDENTIALS: "env",
}


def _opening_failed(exc: ResticError) -> EngineError:
    """restic could not open (or create) a repository with these settings: the sentence, and
    the field a person should look at."""
    return EngineError(exc.message, field=_RESTIC_FIELDS.get(exc.kind))


class BackupRunning(EngineError):
    """A backup of this plan is already queued or running: ``op`` is that one.

    Raised instead of queueing a second one, so "Back up now" pressed twice (or a schedule
    firing during a long run) does not stack backups that would only repeat each other.
    """

    def __init__(self, plan_id: str, op: Operation) -> None:
        word = "queued" if op.status == OpStatus.PENDING else "running"
        super().__init__(f"plan {plan_id} is already {word} (operation {op.op_id})")
        self.op = op


def check_name(kind: str, name: str) -> None:
    if not name or len(name) > 100 or not set(name) <= _NAME_OK or name[0] in "-.":
        raise EngineError(
            f"{kind} name {name!r} is not allowed: use letters, digits, '-', '_' and '.', "
            "not starting with '-' or '.'",
            field="id",
        )


@dataclass(frozen=True)
class PasswordSpec:
    """How a repository's password is found. ``value`` is only set for ``source="secret"``."""

    source: str
    ref: str = ""
    value: str | None = field(default=None, repr=False)


def restic_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where restic keeps its cache: never in the data dir (it is big, disposable, and a
    backup of the data dir should not carry it).

    Under systemd, the unit's ``CacheDirectory=`` (``$CACHE_DIRECTORY``, the first of a
    colon-separated list: /var/cache/peerstash/<instance>, the one place a hardened unit may
    write besides its state); else the user's cache, e.g. ~/.cache/peerstash/restic. restic
    keeps one folder per repository ID there, so nodes sharing it do not collide.
    """
    env = os.environ if environ is None else environ
    systemd = env.get("CACHE_DIRECTORY", "").split(":", 1)[0].strip()
    if systemd and os.path.isabs(systemd):
        return Path(systemd)
    return Path(platformdirs.user_cache_dir("peerstash", appauthor=False)) / "restic"


def read_only_target(target: str) -> str | None:
    """Why a restore into ``target`` cannot write there, or None: its nearest existing
    ancestor is on a read-only mount. Blocking (stat calls): run it in a thread.

    Under a hardened systemd unit (ProtectSystem=strict, ProtectHome=read-only) most of the
    file system is read-only for the node although root could write there; restic would fail
    file by file with EROFS, so say it once, before the operation, with the way out.
    """
    path = Path(target)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return None  # restic reports what is wrong with it
    if not read_only:
        return None
    if os.environ.get("INVOCATION_ID"):  # set by systemd for every unit it starts
        return (
            f"the service is not allowed to write to {target} (read-only for it); see "
            "docs/install.md#restore-under-systemd"
        )
    return f"cannot restore to {target}: {path} is on a read-only file system"


def _secret_name(repo_id: str, what: str) -> str:
    return f"repo/{repo_id}/{what}"


#: Secret names (under ``repo/<id>/``) of the passwords taken out of a repository's URI and
#: client URI: the repos table holds the URI with ``***`` in their place.
URI_SECRET = "uri-password"
CLIENT_URI_SECRET = "client-uri-password"
#: What stands for a sealed URI password in a stored URI (and in every URI shown to people).
URI_MASK = "***"
# scheme://user:password@ (as restic.redact_uri finds it): the password runs to the last "@"
# before a "/" or whitespace.
_URI_PASSWORD_RE = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^/@\s:]*:(?P<secret>[^/\s]*)@")


def split_uri_password(uri: str) -> tuple[str, str | None]:
    """``uri`` with the password of its ``scheme://user:password@`` replaced by ``***``, and
    that password: None when there is none, or when it is ``***`` already (a URI copied from a
    listing: the password sealed before is meant, unchanged)."""
    m = _URI_PASSWORD_RE.search(uri)
    if m is None or not m["secret"]:
        return uri, None
    masked = uri[: m.start("secret")] + URI_MASK + uri[m.end("secret") :]
    return masked, None if m["secret"] == URI_MASK else m["secret"]


def has_sealed_password(uri: str) -> bool:
    """Whether ``uri`` holds ``***`` where its password goes (one sealed apart)."""
    m = _URI_PASSWORD_RE.search(uri)
    return m is not None and m["secret"] == URI_MASK


def join_uri_password(uri: str, secret: str | None) -> str:
    """The URI restic gets: the sealed ``secret`` back in place of the ``***`` of ``uri``."""
    m = _URI_PASSWORD_RE.search(uri)
    if secret is None or m is None or m["secret"] != URI_MASK:
        return uri
    return uri[: m.start("secret")] + secret + uri[m.end("secret") :]


class Engine:
    def __init__(
        self,
        data_dir: Path,
        store: Store,
        secrets: SecretStore,
        bus: EventBus,
        *,
        instance_id: str,
        restic_path: str | None = None,
        max_parallel: int = 2,
        progress_interval: float = 1.0,
        catch_up_grace: float = 60.0,
        cancel_grace: float = 10.0,
        retry_lock: float | None = DEFAULT_RETRY_LOCK,
        stall_after: float = DEFAULT_STALL_AFTER,
    ) -> None:
        self.data_dir = data_dir
        self.store = store
        self.secrets = secrets
        self.bus = bus
        self.instance_id = instance_id
        self.restic_path = restic_path
        self.cancel_grace = cancel_grace
        self.retry_lock = retry_lock
        self.runner = Runner(
            store,
            bus,
            max_parallel=max_parallel,
            progress_interval=progress_interval,
            stall_after=stall_after,
        )
        self.scheduler = sched.Scheduler(
            _ScheduleAdapter(store),
            self._scheduled_backup,
            catch_up_grace=catch_up_grace,
            on_stale=self._on_stale,
            on_wake=lambda: self.bus.publish(Woke()),
        )
        self._restic: Restic | None = None
        self._gc_task: asyncio.Task[None] | None = None
        self.stale_plans: dict[str, datetime | None] = {}
        #: Repositories peers shared that we did not take, local id → why (GUID already
        #: here, name unusable). Recomputed on each owner's push; shown by status and
        #: ``repo list``.
        self.skipped_shares: dict[str, str] = {}
        #: Received repositories whose owner changed where they are or how they open, local
        #: id → what changed and when (no secret): the last change of each, for status and
        #: ``repo list`` (each change is also a Notice on the bus).
        self.share_changes: dict[str, str] = {}
        #: Repositories with a stale-lock removal queued after a failure (one at a time).
        self._unlock_queued: set[str] = set()
        #: Repositories whose storage went away mid-run: restic's lock may still be there, and
        #: is removed (stale locks only) before the next operation on them, once reachable.
        self._unlock_owed: set[str] = set()
        self._unlock_tasks: set[asyncio.Task[None]] = set()
        #: Per owner, the repositories it sent that our grant does not let it send (its last
        #: push). Shown by health: the owner and we disagree about what is shared.
        self.refused_shares: dict[str, list[str]] = {}
        #: Makes "is a backup of this plan unfinished?" and queueing one a single step.
        self._submit_lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, *, schedule: bool = True) -> None:
        """Seal credentials left in URIs, recover from a previous crash, then start the
        scheduler."""
        await self.seal_uri_passwords()
        interrupted = await self.store.interrupt_unfinished(STOPPED_MESSAGE)
        for repo_id in sorted({op.repo_id for op in interrupted if op.repo_id}):
            try:
                repo = await self.store.get_repo(repo_id)
            except NotFound:
                continue
            # Ours or shared with us alike: only stale locks go (see _unlocking_after_failure).
            await self._enqueue_unlock(repo, stale_only=True)
        if schedule:
            await self.scheduler.start()
            self._gc_task = asyncio.create_task(self._gc_daily(), name="operations-gc")

    async def seal_uri_passwords(self) -> list[str]:
        """Move passwords still written in repository URIs (rows from before they were sealed)
        into the secret store, leaving ``***`` in the row; returns the repository ids.

        At node start rather than in a migration: sealing needs the secret key, which only
        the node has. Idempotent: a sealed URI holds ``***``, which is never taken again.
        """
        done: list[str] = []
        for repo in await self.store.list_repos():
            fields: dict[str, Any] = {}
            for column, what in (("uri", URI_SECRET), ("client_uri", CLIENT_URI_SECRET)):
                value = getattr(repo, column)
                masked, secret = split_uri_password(value or "")
                if secret is not None:
                    await self.secrets.put(_secret_name(repo.id, what), secret)
                    fields[column] = masked
            if fields:
                await self.store.update_repo(repo.id, **fields)
                done.append(repo.id)
                log.info("sealed the password written in the URI of repository %s", repo.id)
        if done:
            await self.store.forget_freed_bytes()
        return done

    async def stop(self) -> None:
        if self._gc_task is not None:
            self._gc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gc_task
            self._gc_task = None
        await self.scheduler.stop()
        for task in list(self._unlock_tasks):
            task.cancel()
        await self.runner.close()

    async def _gc_daily(self) -> None:
        """Trim old operations once a day so the history never grows without bound."""
        while True:
            try:
                removed = await self.gc()
                if removed:
                    log.info("removed %d operations older than 90 days", removed)
            except Exception:  # a failed trim must not stop the node; try again tomorrow
                log.exception("trimming old operations failed")
            await asyncio.sleep(GC_EVERY)

    def restic(self) -> Restic:
        if self._restic is None:
            self._restic = Restic(
                find_restic(self.restic_path),
                cancel_grace=self.cancel_grace,
                retry_lock=self.retry_lock,
                progress_fps=progress_fps_for(self.runner.progress_interval),
            )
        return self._restic

    # -- repositories ------------------------------------------------------------------------

    async def access(self, repo: Repo, *, prefix: str | None = None) -> RepoAccess:
        """Everything restic needs to open ``repo``, secrets resolved at the last moment.

        ``prefix`` reads the secrets from another place (settings being tried out).
        """
        if repo.origin is not None:
            # A received repository opens only within the rules for what a peer may set, even
            # if its row predates them or came here by another path: never a peer's program.
            try:
                check_peer_repo(
                    uri=repo.uri,
                    env=dict.fromkeys(repo.env_keys, ""),
                    options=list(repo.options),
                    password_source=repo.password_source,
                    password_ref=repo.password_ref,
                )
            except PeerRuleError as exc:
                raise EngineError(
                    f"repository {repo.id!r} shared by {repo.origin} is not opened: {exc}"
                ) from None
        base = prefix if prefix is not None else f"repo/{repo.id}/"
        # The URI's password is sealed apart (see split_uri_password) and goes back in only
        # here: restic gets the URI in its environment (RESTIC_REPOSITORY), never argv.
        uri = join_uri_password(repo.uri, await self.secrets.get(base + URI_SECRET))
        password: PasswordValue | PasswordFile | PasswordCommand
        if repo.password_source == "secret":
            value = await self.secrets.get(base + "password")
            if value is None:
                raise EngineError(f"the password of repository {repo.id!r} is missing")
            password = PasswordValue(value)
        elif repo.password_source == "file":
            password = PasswordFile(repo.password_ref)
        elif repo.password_source == "env":
            env_value = os.environ.get(repo.password_ref)
            if env_value is None:
                raise EngineError(
                    f"repository {repo.id!r} takes its password from ${repo.password_ref}, "
                    "which is not set in the node's environment"
                )
            password = PasswordValue(env_value)
        else:
            password = PasswordCommand(repo.password_ref)
        env: dict[str, str] = {}
        for key in repo.env_keys:
            val = await self.secrets.get(f"{base}env/{key}")
            if val is not None:
                env[key] = val
        return RepoAccess(
            uri=uri,
            password=password,
            env=env,
            options=tuple(repo.options),
            cache_dir=str(restic_cache_dir()),
            name=repo.id,
        )

    async def add_repo(
        self,
        repo_id: str,
        uri: str,
        password: PasswordSpec,
        *,
        env: Mapping[str, str] | None = None,
        options: Sequence[str] = (),
        init: bool = False,
    ) -> tuple[Repo, str]:
        """Add a repository, creating it (``init``) or checking we can open it.

        Returns the row and a sentence saying what happened. Nothing is stored when the
        repository cannot be opened, so a typo'd password never lingers.
        """
        check_name("repository", repo_id)
        if password.source not in PASSWORD_SOURCES:
            raise EngineError(f"unknown password source {password.source!r}", field="password")
        if password.source == "secret" and not password.value:
            raise EngineError("an empty password is not allowed", field="password")
        if password.source != "secret" and not password.ref:
            raise EngineError(f"--password-{password.source} needs a value", field="password")
        for opt in options:
            if "=" not in opt:
                raise EngineError(f"option {opt!r} must look like KEY=VALUE", field="options")
        try:
            await self.store.get_repo(repo_id)
        except NotFound:
            pass
        else:
            raise EngineError(f"a repository named {repo_id!r} already exists", field="id")
        env = dict(env or {})
        uri, uri_secret = split_uri_password(uri)
        row = repo_record(
            repo_id,
            uri,
            password.source,
            password.ref,
            env_keys=sorted(env),
            options=options,
        )
        # Secrets first (the access object reads them), removed again if anything fails.
        if password.source == "secret":
            assert password.value is not None
            await self.secrets.put(_secret_name(repo_id, "password"), password.value)
        for key, value in env.items():
            await self.secrets.put(_secret_name(repo_id, f"env/{key}"), value)
        if uri_secret is not None:
            await self.secrets.put(_secret_name(repo_id, URI_SECRET), uri_secret)
        try:
            access = await self.access(row)
            restic = self.restic()
            said = "connected to the existing repository"
            if init:
                try:
                    await restic.init(access)
                    said = "created a new repository"
                except ResticError as exc:
                    if exc.kind != ErrorKind.REPO_EXISTS:
                        raise
                    said = "the repository already existed; connected to it"
            try:
                row.guid = await restic.guid(access)
            except ResticError as exc:
                if exc.kind == ErrorKind.REPO_MISSING and not init:
                    raise EngineError(
                        f"there is no restic repository at {uri_for_people(uri)}; "
                        "add --init to create one",
                        field="uri",
                    ) from None
                raise
            await self.store.add_repo(row)
        except (ResticError, EngineError, StoreError) as exc:
            await self.secrets.delete_prefix(f"repo/{repo_id}/")
            if isinstance(exc, ResticError):
                raise _opening_failed(exc) from None
            raise
        self.bus.publish(ConfigChanged(what="repo", id=repo_id))
        return row, said

    async def update_repo(
        self,
        repo_id: str,
        *,
        uri: str | None = None,
        password: PasswordSpec | None = None,
        env: Mapping[str, str] | None = None,
        options: Sequence[str] | None = None,
    ) -> Repo:
        """Change how a repository is reached; it must still open, and be the same repository.

        The new settings are tried (restic opens the repository and we compare its id) before
        anything is stored, so a typo never replaces a working configuration.
        """
        repo = await self.store.get_repo(repo_id)
        if repo.origin is not None:
            raise EngineError(
                f"repository {repo_id!r} is shared by {repo.origin} and read-only here"
            )
        if password is not None:
            if password.source not in PASSWORD_SOURCES:
                raise EngineError(f"unknown password source {password.source!r}", field="password")
            if password.source == "secret" and not password.value:
                raise EngineError("an empty password is not allowed", field="password")
            if password.source != "secret" and not password.ref:
                raise EngineError(f"--password-{password.source} needs a value", field="password")
        for opt in options or ():
            if "=" not in opt:
                raise EngineError(f"option {opt!r} must look like KEY=VALUE", field="options")
        uri_secret: str | None = None
        if uri:
            uri, uri_secret = split_uri_password(uri)
        if uri_secret is None and has_sealed_password(uri or repo.uri):
            # ``***`` in the URI: the password sealed before, unchanged
            uri_secret = await self.secrets.get(_secret_name(repo_id, URI_SECRET))
        client_secret = await self.secrets.get(_secret_name(repo_id, CLIENT_URI_SECRET))
        trial = repo_record(
            repo.id,
            uri or repo.uri,
            password.source if password else repo.password_source,
            (password.ref if password else repo.password_ref) or "",
            env_keys=sorted(env) if env is not None else repo.env_keys,
            options=options if options is not None else repo.options,
        )
        staged = f"staging/{repo_id}/"  # never a repo's own prefix (those start "repo/")
        if password is not None and password.source == "secret":
            assert password.value is not None
            await self.secrets.put(staged + "password", password.value)
        elif password is None and repo.password_source == "secret":
            old = await self.secrets.get(_secret_name(repo_id, "password"))
            await self.secrets.put(staged + "password", old or "")
        for key in trial.env_keys:
            value = (
                env[key]
                if env is not None
                else await self.secrets.get(_secret_name(repo_id, f"env/{key}"))
            )
            await self.secrets.put(f"{staged}env/{key}", value or "")
        if uri_secret is not None:
            await self.secrets.put(staged + URI_SECRET, uri_secret)
        try:
            trial_access = await self.access(trial, prefix=staged)
            guid = await self.restic().guid(trial_access)
        except ResticError as exc:
            await self.secrets.delete_prefix(staged)
            raise _opening_failed(exc) from None
        except EngineError:
            await self.secrets.delete_prefix(staged)
            raise
        if repo.guid and guid != repo.guid:
            await self.secrets.delete_prefix(staged)
            raise EngineError(
                f"that is another repository (id {guid[:8]}, not {repo.guid[:8]}); add it as a "
                "new repository instead",
                field="uri",
            )
        # Commit: move the staged secrets into place, then the row.
        await self.secrets.delete_prefix(f"repo/{repo_id}/")
        if trial.password_source == "secret":
            value = await self.secrets.get(staged + "password")
            await self.secrets.put(_secret_name(repo_id, "password"), value or "")
        for key in trial.env_keys:
            value = await self.secrets.get(f"{staged}env/{key}")
            await self.secrets.put(_secret_name(repo_id, f"env/{key}"), value or "")
        if uri_secret is not None:
            await self.secrets.put(_secret_name(repo_id, URI_SECRET), uri_secret)
        if client_secret is not None:
            await self.secrets.put(_secret_name(repo_id, CLIENT_URI_SECRET), client_secret)
        await self.secrets.delete_prefix(staged)
        updated = await self.store.update_repo(
            repo_id,
            uri=trial.uri,
            password_source=trial.password_source,
            password_ref=trial.password_ref,
            env_keys=list(trial.env_keys),
            options=list(trial.options),
            guid=guid,
        )
        self.bus.publish(ConfigChanged(what="repo", id=repo_id))
        return updated

    async def list_repos(self) -> list[Repo]:
        return await self.store.list_repos()

    async def repo_password(self, repo_id: str) -> dict[str, str | None]:
        """How to get repository ``repo_id``'s password back, for its owner's recovery sheet.

        For a password Peerstash stores (``secret``) this is the password itself; for the other
        sources only where it comes from (the file, variable or command is never read or run
        here: the owner has it there already). A repository shared with us by a peer is its
        owner's to give, not ours. The caller must never log the answer.
        """
        repo = await self.store.get_repo(repo_id)
        if repo.origin is not None:
            raise EngineError(
                f"repository {repo_id!r} is shared by {repo.origin}; its password is its "
                "owner's to give (ask on that machine)"
            )
        source, ref = repo.password_source, repo.password_ref or ""
        if source == "secret":
            value = await self.secrets.get(_secret_name(repo_id, "password"))
            if value is None:
                raise EngineError(f"the password of repository {repo_id!r} is missing")
            return {
                "source": source,
                "password": value,
                "ref": None,
                "where": "stored by Peerstash",
            }
        where = {
            "file": f"it is read from the file {ref}",
            "env": f"it is read from the environment variable {ref} of the node",
            "command": f"it is printed by the command: {ref}",
        }.get(source, f"it comes from {source} {ref}")
        return {"source": source, "password": None, "ref": ref, "where": where}

    async def delete_repo(self, repo_id: str) -> None:
        """Forget a repository (its data stays). A received one may be deleted too: it is
        remembered as declined, so its owner's next push does not bring it back."""
        repo = await self.store.get_repo(repo_id)
        await self.store.delete_repo(repo_id)
        await self.secrets.delete_prefix(f"repo/{repo_id}/")
        if repo.origin is not None:
            name = repo_id.removesuffix(received_repo_id("", repo.origin))
            declined = dict(await self.store.get_setting(DECLINED_SETTING, {}) or {})
            names = set(declined.get(repo.origin, [])) | {name}
            declined[repo.origin] = sorted(names)
            await self.store.set_setting(DECLINED_SETTING, declined)
        self.bus.publish(ConfigChanged(what="repo", id=repo_id))

    # -- sharing: the owner's side -----------------------------------------------------------

    async def share_repo(self, repo_id: str, *, client_uri: str | None = None) -> Repo:
        """Offer one of our repositories to the peers that grant us ``repos.receive``.

        ``client_uri`` is the address receivers use (our local path is useless to them);
        None keeps the one set before, "" clears it. The GUID is learned now if unknown and
        the password must resolve, so a share that receivers could not open fails here.
        """
        repo = await self.store.get_repo(repo_id)
        if repo.origin is not None:
            raise EngineError(
                f"repository {repo_id!r} is shared by {repo.origin}; only its owner can share it"
            )
        fields: dict[str, Any] = {"shared": True}
        client_secret: str | None = None
        if client_uri is not None:
            if client_uri and client_uri != client_uri.strip():
                raise EngineError(
                    "the client URI has leading or trailing spaces", field="client_uri"
                )
            client_uri, client_secret = split_uri_password(client_uri)
            fields["client_uri"] = client_uri or None
        sent_uri = (client_uri if client_uri is not None else repo.client_uri) or repo.uri
        try:
            # Receivers check every rule again; saying it here spares a share they refuse.
            check_peer_repo(
                uri=sent_uri, env=dict.fromkeys(repo.env_keys, ""), options=repo.options
            )
        except PeerRuleError as exc:
            hint = ""
            if not client_uri:
                try:
                    check_peer_uri(sent_uri)
                except PeerRuleError:
                    hint = "; give --client-uri with the address they use"
            raise EngineError(
                f"receivers would refuse repository {repo_id!r} as shared: {exc}{hint}"
            ) from None
        await self._password_value(repo)
        if not repo.guid:
            fields["guid"] = await self._learn_guid(repo)
        if client_secret is not None:
            await self.secrets.put(_secret_name(repo_id, CLIENT_URI_SECRET), client_secret)
        elif client_uri is not None and not has_sealed_password(client_uri):
            await self.secrets.delete_prefix(_secret_name(repo_id, CLIENT_URI_SECRET))
        updated = await self.store.update_repo(repo_id, **fields)
        self.bus.publish(ConfigChanged(what="repo", id=repo_id))
        return updated

    async def unshare_repo(self, repo_id: str) -> Repo:
        """Stop sharing a repository: receivers remove it and disable their plans on it."""
        repo = await self.store.get_repo(repo_id)
        if repo.origin is not None:
            raise EngineError(
                f"repository {repo_id!r} is shared by {repo.origin}; only its owner can unshare "
                "it (remove it here with `repo remove`)"
            )
        updated = await self.store.update_repo(repo_id, shared=False)
        self.bus.publish(ConfigChanged(what="repo", id=repo_id))
        return updated

    async def _learn_guid(self, repo: Repo) -> str:
        """Ask restic for the repository's GUID (``cat config``) and remember it."""
        try:
            guid = await self.restic().guid(await self.access(repo))
        except ResticError as exc:
            raise EngineError(exc.message) from None
        await self.store.update_repo(repo.id, guid=guid)
        return guid

    async def _password_value(self, repo: Repo) -> str:
        """The password itself, whatever its source, as restic would read it.

        Only for sharing: receivers get the value, never our file path, variable or command
        (which mean nothing on their machine). Errors never contain the value.
        """
        source, ref = repo.password_source, repo.password_ref
        if source == "secret":
            value = await self.secrets.get(_secret_name(repo.id, "password"))
        elif source == "env":
            value = os.environ.get(ref)
        elif source == "file":
            try:
                raw = await asyncio.to_thread(Path(ref).read_text, encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise EngineError(
                    f"cannot read the password file of repository {repo.id!r}: "
                    f"{getattr(exc, 'strerror', None) or type(exc).__name__}"
                ) from None
            value = raw.strip()  # as restic does (Go's strings.TrimSpace)
        else:
            value = await self._run_password_command(repo)
        if not value:
            raise EngineError(f"the password of repository {repo.id!r} is missing or empty")
        return value

    async def _run_password_command(self, repo: Repo) -> str:
        try:
            argv = shlex.split(repo.password_ref)
        except ValueError:
            argv = []
        if not argv:
            raise EngineError(f"the password command of repository {repo.id!r} is not valid")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            raise EngineError(
                f"the password command of repository {repo.id!r} cannot run: {exc.strerror}"
            ) from None
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), PASSWORD_COMMAND_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise EngineError(
                f"the password command of repository {repo.id!r} took over "
                f"{PASSWORD_COMMAND_TIMEOUT:g}s"
            ) from None
        if proc.returncode != 0:
            raise EngineError(
                f"the password command of repository {repo.id!r} failed (exit {proc.returncode})"
            )
        return out.decode("utf-8", "replace").strip()

    async def shared_repo_specs(self) -> list[SharedRepoSpec]:
        """Everything receivers need for each repository we share, secrets resolved.

        All or nothing: one repository whose password cannot be resolved right now raises
        EngineError, and the caller sends nothing rather than a set without it (which its
        receivers would take as an unshare).
        """
        out: list[SharedRepoSpec] = []
        for repo in await self.store.list_repos():
            if not repo.shared or repo.origin is not None:
                continue
            guid = repo.guid or await self._learn_guid(repo)
            password = await self._password_value(repo)
            env: dict[str, str] = {}
            for key in repo.env_keys:
                val = await self.secrets.get(_secret_name(repo.id, f"env/{key}"))
                if val is not None:
                    env[key] = val
            out.append(
                SharedRepoSpec(
                    name=repo.id,
                    uri=await self._uri_to_share(repo),
                    guid=guid,
                    password=password,
                    env=env,
                    options=tuple(repo.options),
                )
            )
        return out

    async def _uri_to_share(self, repo: Repo) -> str:
        """The URI receivers use, with its sealed password back in (it travels, like the
        repository password, only to peers whose grant covers the repository)."""
        if repo.client_uri:
            secret = await self.secrets.get(_secret_name(repo.id, CLIENT_URI_SECRET))
            return join_uri_password(repo.client_uri, secret)
        return join_uri_password(
            repo.uri, await self.secrets.get(_secret_name(repo.id, URI_SECRET))
        )

    # -- sharing: the receiver's side --------------------------------------------------------

    async def receive_shared(
        self, origin: str, specs: Sequence[SharedRepoSpec], allow: Callable[[str], bool]
    ) -> ShareResult:
        """Apply ``origin``'s full set of shared repositories here.

        ``allow(name)`` is *our* grant to ``origin`` (``repos.receive`` for that repository):
        what it refuses is not stored at all. A repository whose GUID we already hold under
        another id (our own, or from another owner) is skipped with a warning; one of
        ``origin``'s we hold that is not in the set was unshared: it is removed and the plans
        on it are disabled with the reason. Applying the same set again changes nothing.
        """
        check_name("instance", origin)
        result = ShareResult(origin=origin, offered=len(specs))
        repos = await self.store.list_repos()
        held = {r.id: r for r in repos if r.origin == origin}
        declined_all = dict(await self.store.get_setting(DECLINED_SETTING, {}) or {})
        declined = set(declined_all.get(origin, []))
        keep: set[str] = set()
        names: set[str] = set()
        for spec in specs:
            if spec.name in names:
                continue
            names.add(spec.name)
            if not allow(spec.name):
                result.refused.append(spec.name)
                continue
            try:
                check_name("repository", spec.name)
            except EngineError as exc:
                result.skipped[received_repo_id(spec.name, origin)[:200]] = str(exc)
                continue
            local_id = received_repo_id(spec.name, origin)
            if len(local_id) > 100:
                result.skipped[local_id] = "the name and the owner's id are over 100 characters"
                continue
            if spec.name in declined:
                log.info(
                    "%s shares repository %s, which was removed here; not taken", origin, spec.name
                )
                continue
            old = held.get(local_id)
            try:
                check_peer_repo(uri=spec.uri, env=spec.env, options=spec.options)
            except PeerRuleError as exc:
                # Nothing of it is stored. A change to one taken before is refused whole: the
                # version accepted then stays as it was (and opens only within the rules).
                why = f"{origin} sent settings a peer may not set here: {exc}"
                if old is not None:
                    why += "; the change is refused and the version accepted before is kept"
                    keep.add(local_id)
                result.skipped[local_id] = why
                continue
            if old is None:
                twin = next((r for r in repos if r.guid == spec.guid), None)
                if twin is not None:
                    whose = "our own" if twin.origin is None else f"shared by {twin.origin}"
                    result.skipped[local_id] = (
                        f"repository {twin.id} ({whose}) is the same restic repository "
                        f"(id {spec.guid[:8]})"
                    )
                    continue
                await self._put_received(local_id, origin, spec, None)
                result.added.append(local_id)
            else:
                changes = await self._received_changes(local_id, old, spec)
                if await self._put_received(local_id, origin, spec, old):
                    result.updated.append(local_id)
                    self._announce_share_changes(origin, local_id, changes)
            keep.add(local_id)
        refused = set(result.refused)
        for rid in sorted(set(held) - keep):
            name = rid.removesuffix(received_repo_id("", origin))
            if name in refused:
                reason = f"repository {rid} from {origin} is no longer allowed here (repos.receive)"
            else:
                reason = f"repository {rid} was unshared by {origin}"
            try:
                disabled = await self.store.remove_unshared_repo(rid, reason)
            except NotFound:
                continue
            await self.secrets.delete_prefix(f"repo/{rid}/")
            result.removed.append(rid)
            result.disabled_plans += disabled
            log.warning(
                "%s%s", reason, f"; disabled plan(s) {', '.join(disabled)}" if disabled else ""
            )
        for rid in result.added:
            # Back after an unshare (or its owner's removal): the plans that its going away
            # disabled run again; a plan disabled for any other reason stays disabled.
            result.enabled_plans += await self.store.reenable_plans(rid, gone_reason_prefix(rid))
        if declined & names != declined:
            # What the owner no longer shares is no longer declined: a new share is a new offer.
            declined_all[origin] = sorted(declined & names)
            await self.store.set_setting(DECLINED_SETTING, declined_all)
        self._report_shares(result)
        for rid in (*result.added, *result.updated, *result.removed):
            self.bus.publish(ConfigChanged(what="repo", id=rid))
        for plan_id in (*result.disabled_plans, *result.enabled_plans):
            self.bus.publish(ConfigChanged(what="plan", id=plan_id))
        if result.enabled_plans:
            log.info(
                "repositories shared again by %s: re-enabled plan(s) %s",
                origin,
                ", ".join(result.enabled_plans),
            )
        if result.disabled_plans or result.enabled_plans:
            self.scheduler.reschedule()
        self.bus.publish(SharesReceived(origin=origin, result=result))
        return result

    async def forget_peer(self, origin: str) -> ShareResult:
        """``origin`` was unpaired: remove every repository it shared here, with its password
        and environment in the secret store, and disable the plans on them with the reason.

        What was remembered about its shares (declined names, skipped repositories) goes too.
        If the peer is paired again and shares the same repositories, those plans come back.
        """
        result = ShareResult(origin=origin)
        for repo in await self.store.list_repos():
            if repo.origin != origin:
                continue
            try:
                disabled = await self.store.remove_unshared_repo(
                    repo.id, peer_removed_reason(repo.id, origin)
                )
            except NotFound:
                continue
            result.removed.append(repo.id)
            result.disabled_plans += disabled
        # Every secret of a repository of its, also one whose row never made it (a share
        # that was being applied when the peer was removed): ``repo/NAME@ORIGIN/...``.
        suffix = received_repo_id("", origin)
        rids = {n.split("/")[1] for n in await self.store.secret_names("repo/")}
        for rid in sorted({*result.removed, *(r for r in rids if r.endswith(suffix))}):
            await self.secrets.delete_prefix(f"repo/{rid}/")
        self.skipped_shares = {
            k: v for k, v in self.skipped_shares.items() if not k.endswith(suffix)
        }
        declined = dict(await self.store.get_setting(DECLINED_SETTING, {}) or {})
        if declined.pop(origin, None) is not None:
            await self.store.set_setting(DECLINED_SETTING, declined)
        if result.removed:
            log.warning(
                "peer %s was removed: removed its repositories %s%s",
                origin,
                ", ".join(result.removed),
                f" and disabled plan(s) {', '.join(result.disabled_plans)}"
                if result.disabled_plans
                else "",
            )
        for rid in result.removed:
            self.bus.publish(ConfigChanged(what="repo", id=rid))
        for plan_id in result.disabled_plans:
            self.bus.publish(ConfigChanged(what="plan", id=plan_id))
        if result.disabled_plans:
            self.scheduler.reschedule()
        return result

    def _report_shares(self, result: ShareResult) -> None:
        """Log and announce (Notice) what was not taken; remember skips for status."""
        suffix = received_repo_id("", result.origin)
        before = self.skipped_shares
        self.skipped_shares = {
            k: v for k, v in self.skipped_shares.items() if not k.endswith(suffix)
        } | result.skipped
        for local_id, why in result.skipped.items():
            if before.get(local_id) == why:
                continue  # said already: every reconnect re-sends the set
            message = f"shared repository {local_id} not taken: {why}"
            log.warning(message)
            self.bus.publish(Notice(level="warning", message=message))
        if result.refused:
            self.refused_shares[result.origin] = list(result.refused)
        else:
            self.refused_shares.pop(result.origin, None)
        if result.refused:
            message = (
                f"refused repositories {', '.join(result.refused)} from {result.origin}: "
                "this node does not grant it repos.receive for them"
            )
            log.warning(message)
            self.bus.publish(Notice(level="warning", message=message))

    async def _received_changes(self, local_id: str, old: Repo, spec: SharedRepoSpec) -> list[str]:
        """What an owner changed in a repository taken before, in words without secrets:
        where it is, which repository it is, how it is unlocked."""
        base = f"repo/{local_id}/"
        said: list[str] = []
        uri, uri_secret = split_uri_password(spec.uri)
        if old.uri != uri:
            said.append(
                f"the location of {local_id} from {uri_for_people(old.uri)} to "
                f"{uri_for_people(uri)}"
            )
        elif await self.secrets.get(base + URI_SECRET) != uri_secret:
            said.append(f"the password in the location of {local_id}")
        if old.guid != spec.guid:
            said.append(f"{local_id} to another restic repository (id {spec.guid[:8]})")
        if await self.secrets.get(base + "password") != spec.password:
            said.append(f"the password of {local_id}")
        old_env = {k: await self.secrets.get(f"{base}env/{k}") for k in old.env_keys}
        names = sorted(k for k in set(old_env) | set(spec.env) if old_env.get(k) != spec.env.get(k))
        if names:
            said.append(f"the credentials of {local_id} ({', '.join(names)})")
        return said

    def _announce_share_changes(self, origin: str, local_id: str, changes: list[str]) -> None:
        """Tell the person (Notice, log, status) that an owner moved or re-keyed a repository
        this node uses: a peer redirecting our backups should never go unseen."""
        if not changes:
            return
        message = f"peer {origin} changed " + "; ".join(changes)
        log.warning(message)
        self.share_changes[local_id] = f"{utcnow().isoformat(timespec='seconds')} {message}"
        self.bus.publish(Notice(level="warning", message=message))

    async def _put_received(
        self, local_id: str, origin: str, spec: SharedRepoSpec, old: Repo | None
    ) -> bool:
        """Store (or bring up to date) one received repository; False when already equal."""
        base = f"repo/{local_id}/"
        env_keys = sorted(spec.env)
        uri, uri_secret = split_uri_password(spec.uri)  # its password is sealed like the rest
        if old is not None:
            same_row = (
                old.uri == uri
                and await self.secrets.get(base + URI_SECRET) == uri_secret
                and old.guid == spec.guid
                and list(old.options) == list(spec.options)
                and list(old.env_keys) == env_keys
                and old.password_source == "secret"
            )
            if same_row and await self.secrets.get(base + "password") == spec.password:
                stored = {k: await self.secrets.get(f"{base}env/{k}") for k in env_keys}
                if stored == dict(spec.env):
                    return False
        await self.secrets.delete_prefix(base)
        await self.secrets.put(base + "password", spec.password)
        for key, value in spec.env.items():
            await self.secrets.put(f"{base}env/{key}", value)
        if uri_secret is not None:
            await self.secrets.put(base + URI_SECRET, uri_secret)
        if old is None:
            row = repo_record(local_id, uri, "secret", "", env_keys, spec.options)
            row.guid = spec.guid
            row.origin = origin
            await self.store.add_repo(row)
        else:
            await self.store.update_repo(
                local_id,
                uri=uri,
                guid=spec.guid,
                options=list(spec.options),
                env_keys=env_keys,
                password_source="secret",
                password_ref="",
            )
        return True

    def owner_changed_snapshots(self, origin: str, name: str, reason: str) -> str | None:
        """The owner of shared repository ``name`` forgot or pruned: tell our views.

        Returns the local id, or None when we do not hold that repository. Nothing is cached
        here (``snapshots`` asks restic each time), so this only publishes the event.
        """
        local_id = received_repo_id(name, origin)
        self.bus.publish(SnapshotsChanged(repo_id=local_id, reason=reason, origin=origin))
        return local_id

    # -- plans -------------------------------------------------------------------------------

    async def add_plan(
        self,
        plan_id: str,
        *,
        repo_id: str,
        paths: Sequence[str],
        excludes: Sequence[str] = (),
        cron: str | None = None,
        every: str | None = None,
        retention: Mapping[str, Any] | None = None,
    ) -> Plan:
        check_name("plan", plan_id)
        fields = await self._plan_fields(plan_id, repo_id, paths, excludes, cron, every, retention)
        plan = Plan(id=plan_id, enabled=True, **fields)
        await self.store.add_plan(plan)
        self.bus.publish(ConfigChanged(what="plan", id=plan_id))
        self.scheduler.reschedule()
        return plan

    async def update_plan(self, plan_id: str, **changes: Any) -> Plan:
        """Change a plan; fields not given keep their value. Validated exactly like a new one.

        ``changes`` may hold ``repo``, ``paths``, ``excludes``, ``schedule`` (cron), ``every``
        (``schedule`` and ``every`` replace each other; give ``""`` for a manual-only plan),
        ``retention`` and ``enabled``.
        """
        allowed = {"repo", "paths", "excludes", "schedule", "every", "retention", "enabled"}
        unknown = set(changes) - allowed
        if unknown:
            raise EngineError(f"cannot change {', '.join(sorted(unknown))} of a plan")
        plan = await self.store.get_plan(plan_id)
        if changes == {"enabled": False}:
            # Switching a plan off needs no validation, and works even when its repository
            # is gone (unshared, or its owner removed): a person's "keep it off" is recorded
            # (no reason), so the repository's return does not switch it on again.
            updated = await self.store.update_plan(plan_id, enabled=False, disabled_reason=None)
            self.bus.publish(ConfigChanged(what="plan", id=plan_id))
            self.scheduler.reschedule()
            return updated
        cron, every = plan.schedule_cron, None
        if plan.schedule_interval:
            cron, every = None, f"{plan.schedule_interval}s"
        if "schedule" in changes or "every" in changes:
            cron, every = changes.get("schedule") or None, changes.get("every") or None
        fields = await self._plan_fields(
            plan_id,
            changes.get("repo", plan.repo_id),
            changes.get("paths", plan.paths),
            changes.get("excludes", plan.excludes),
            cron,
            every,
            changes.get("retention", plan.retention),
        )
        if "enabled" in changes:
            if not isinstance(changes["enabled"], bool):
                raise EngineError("enabled is true or false", field="enabled")
            fields["enabled"] = changes["enabled"]
            # A person's choice either way: the reason a rule disabled it is gone, so a
            # returning shared repository never re-enables a plan a person disabled.
            fields["disabled_reason"] = None
        if fields["schedule_cron"] == plan.schedule_cron and (
            fields["schedule_interval"] == plan.schedule_interval
        ):
            fields.pop("next_due_at")  # same schedule: keep the due time the scheduler set
        updated = await self.store.update_plan(plan_id, **fields)
        self.bus.publish(ConfigChanged(what="plan", id=plan_id))
        self.scheduler.reschedule()
        return updated

    async def _plan_fields(
        self,
        plan_id: str,
        repo_id: str,
        paths: Sequence[str],
        excludes: Sequence[str],
        cron: str | None,
        every: str | None,
        retention: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """Validate a plan's settings; the row fields they make, or EngineError."""
        if not paths:
            raise EngineError("a plan needs at least one --path", field="paths")
        for p in paths:
            if not PurePosixPath(p).is_absolute():
                raise EngineError(f"path {p!r} must be absolute", field="paths")
        if cron and every:
            raise EngineError("give either --schedule or --every, not both", field="schedule")
        interval = None
        try:
            if cron:
                sched.validate_cron(cron)
            if every:
                interval = sched.parse_every(every)
        except (TypeError, ValueError) as exc:
            raise EngineError(str(exc), field="schedule") from None
        try:
            policy = RetentionPolicy.from_dict(dict(retention or {}))
        except (TypeError, ValueError) as exc:
            raise EngineError(str(exc), field="retention") from None
        try:
            repo = await self.store.get_repo(repo_id)
        except NotFound as exc:  # the plan's settings name it: a refusal of that field
            raise EngineError(str(exc), field="repo") from None
        schedule = sched.PlanSchedule(
            plan_id=plan_id,
            cron=cron or None,
            interval_seconds=interval,
            enabled=True,
            next_due_at=None,
            last_success_at=None,
            created_at=utcnow(),
        )
        return {
            "repo_id": repo.id,
            "paths": [str(PurePosixPath(p)) for p in paths],
            "excludes": list(excludes),
            "schedule_cron": cron or None,
            "schedule_interval": interval,
            "retention": policy.to_dict(),
            "next_due_at": sched.next_after(schedule, utcnow()),
        }

    async def list_plans(self) -> list[Plan]:
        return await self.store.list_plans()

    async def delete_plan(self, plan_id: str) -> None:
        await self.store.get_plan(plan_id)
        await self.store.delete_plan(plan_id)
        self.bus.publish(ConfigChanged(what="plan", id=plan_id))
        self.scheduler.reschedule()

    # -- operations --------------------------------------------------------------------------

    async def _submit(
        self,
        repo: Repo,
        kind: OpKind,
        job: Any,
        *,
        plan_id: str | None = None,
        flow_id: str | None = None,
    ) -> Operation:
        if repo.id in self._unlock_owed and kind is not OpKind.UNLOCK:
            # Before taking the lock: the unlock is submitted through here too.
            self._unlock_owed.discard(repo.id)
            await self._enqueue_unlock(repo, stale_only=True)  # first in the repo's queue
        async with self._submit_lock:
            if kind == OpKind.BACKUP and plan_id is not None:
                unfinished = await self.unfinished_backup(plan_id)
                if unfinished is not None:
                    raise BackupRunning(plan_id, unfinished)
            # Running at once when its queue is free: one write at the start, not two. Not for
            # a peer's request (``flow_id``): the peer says "accepted" on our answer, then
            # follows the synced operation; created running, the synced row could overtake the
            # answer and the request would skip "accepted".
            at_once = flow_id is None and self.runner.claim_start(repo.id)
            start: dict[str, Any] = (
                {"status": OpStatus.RUNNING, "started_at": utcnow()} if at_once else {}
            )
            try:
                op = await self.store.create_operation(
                    kind, plan_id=plan_id, repo_id=repo.id, flow_id=flow_id, **start
                )
            except BaseException:
                self.runner.release_claim(repo.id)
                raise
            await self.runner.submit(repo.id, op, self._unlocking_after_failure(repo, kind, job))
        return op

    async def unfinished_backup(self, plan_id: str) -> Operation | None:
        """This node's queued or running backup of ``plan_id``, if there is one.

        Only the newest backup of the plan can be unfinished: :meth:`_submit` creates none
        while one is, and a node's start ends those its last run left. So one query, not one
        per status (this runs before every backup).
        """
        ops = await self.store.list_operations(
            OpFilter(origin=self.instance_id, plan_id=plan_id, kind=OpKind.BACKUP), limit=1
        )
        if ops and OpStatus(ops[0].status) in (OpStatus.RUNNING, OpStatus.PENDING):
            return ops[0]
        return None

    def _unlocking_after_failure(self, repo: Repo, kind: OpKind, job: Any) -> Any:
        """``job``, queueing a stale-lock removal on ``repo`` when it fails in a way that can
        leave restic's lock behind (an interruption, a kill, a cancel) or that a lock caused.
        When the storage could not be reached, the removal would fail the same way now: it
        is queued ahead of the next operation on ``repo`` instead.

        Otherwise one dead run's lock blocks every later forget, prune and check until someone
        runs ``peerstash unlock``. Only *stale* locks go (restic removes a lock only when its
        process is gone or it is old), so a live run elsewhere keeps its lock.
        """
        if kind is OpKind.UNLOCK:
            return job
        # Also on a repository shared with us: the lock a dead run of ours left there blocks
        # our own retention and the owner's prune and check. Stale locks only: a live run of
        # the owner or of another machine keeps its lock (prune and check stay the owner's).

        async def guarded(ctx: OpContext) -> Outcome:
            try:
                result: Outcome = await job(ctx)
                return result
            except ResticError as exc:
                if exc.kind in _UNLOCK_AFTER:
                    ctx.log("restic may have left a stale lock behind; queueing `unlock`")
                    self._unlock_soon(repo)
                elif exc.kind is ErrorKind.BACKEND_UNREACHABLE:
                    # An unlock now would fail the same way: it goes first next time.
                    ctx.log(
                        "restic may have left its lock on the storage it lost; stale locks "
                        "will be removed before the next operation on this repository"
                    )
                    self._unlock_owed.add(repo.id)
                raise
            except asyncio.CancelledError:
                self._unlock_soon(repo)
                raise

        return guarded

    def _unlock_soon(self, repo: Repo) -> None:
        """Queue one stale-lock removal on ``repo`` (not another while one is waiting)."""
        if repo.id in self._unlock_queued or self.runner.closing:
            return  # when the node stops, ``start`` removes stale locks on the next run
        self._unlock_queued.add(repo.id)

        async def enqueue() -> None:
            try:
                await self._enqueue_unlock(repo, stale_only=True)
            except Exception:
                self._unlock_queued.discard(repo.id)
                log.warning("could not queue unlock of %s after a failure", repo.id)

        task = asyncio.get_running_loop().create_task(enqueue(), name=f"unlock:{repo.id}")
        self._unlock_tasks.add(task)
        task.add_done_callback(self._unlock_tasks.discard)

    async def wait(self, pk: int) -> Operation:
        """Wait for an operation to end (by its events, not by polling) and return it."""
        with self.bus.subscribe("operation") as sub:
            op = await self.store.get_operation(pk)
            while not OpStatus(op.status).finished:
                event = await sub.get()
                changed = getattr(event, "op", None)
                if changed is not None and changed.pk == pk:
                    op = changed
            return op

    async def backup(
        self, plan_id: str, *, reason: str = "manual", flow_id: str | None = None
    ) -> Operation:
        """Queue a backup of ``plan_id`` (and its retention afterwards). Returns its operation:
        ``running`` when the repository's queue was free (and no ``flow_id`` was given), else
        ``pending``.

        Raises :class:`BackupRunning` (with that op) when one is already queued or running.

        ``flow_id`` names the flow from outside (a peer's request id), so the request can be
        recognised later: on a repeated delivery here, and in the synced operation there.
        """
        plan = await self.store.get_plan(plan_id)
        if not plan.enabled:
            raise EngineError(
                f"plan {plan_id!r} is disabled: {plan.disabled_reason or 'no reason given'}"
            )
        repo = await self.store.get_repo(plan.repo_id)

        async def job(ctx: OpContext) -> Outcome:
            access = await self.access(repo)
            ctx.log(f"backup of plan {plan.id} ({reason}) to {uri_for_people(repo.uri)}")

            result = await self.restic().backup(
                access,
                plan.paths,
                excludes=plan.excludes,
                tags=(f"plan:{plan.id}", f"host:{self.instance_id}"),
                host=self.instance_id,
                on_progress=progress_reporter(ctx),
                on_log=ctx.log,
            )
            summary = result.summary_dict()
            if result.total_files_processed or result.total_bytes_processed:
                # restic's own totals are the truth at the end (the last progress line may have
                # been throttled away or sent before the scan finished).
                ctx.progress(
                    bytes_done=result.total_bytes_processed,
                    bytes_total=result.total_bytes_processed,
                    files_done=result.total_files_processed,
                    files_total=result.total_files_processed,
                )
            said = backup_summary_line(summary)
            if said:  # the same words as `backup --wait` and the operations page
                ctx.log(f"snapshot {(result.snapshot_id or '?')[:8]} saved: {said}")
            if not RetentionPolicy.from_dict(plan.retention).is_empty():
                # Retention follows a backup that made a snapshot, in the same flow; the repo's
                # queue runs it right after this job. It touches only this instance's snapshots
                # of this plan, so it runs on a shared repository too (without prune).
                await self.forget(repo.id, plan_id=plan.id, flow_id=ctx.op.flow_id)
            if result.partial:
                return Outcome(
                    status=OpStatus.WARNING,
                    snapshot_id=result.snapshot_id,
                    summary=summary,
                    error=(
                        "some files could not be read; the snapshot has everything else: "
                        + "; ".join(result.warnings[:5])
                    ),
                )
            return Outcome(snapshot_id=result.snapshot_id, summary=summary)

        return await self._submit(repo, OpKind.BACKUP, job, plan_id=plan.id, flow_id=flow_id)

    def own_snapshots(self, plan_id: str) -> tuple[str, tuple[str, str]]:
        """The host and the tags that mark the snapshots this instance made for ``plan_id``.

        :meth:`backup` writes them (``--host <instance id>``, tags ``plan:<id>`` and
        ``host:<instance id>``) and retention selects by all three, so a plan's policy never
        reaches another machine's plan of the same name in a shared repository, nor a snapshot
        made by hand without both tags.
        """
        return self.instance_id, (f"plan:{plan_id}", f"host:{self.instance_id}")

    async def _retention_plans(self, repo: Repo, plan_id: str | None) -> list[Plan]:
        """The plans whose policy ``forget`` applies on ``repo`` (one, or all of them there)."""
        if plan_id:
            plan = await self.store.get_plan(plan_id)
            if plan.repo_id != repo.id:
                raise EngineError(
                    f"plan {plan_id!r} backs up to repository {plan.repo_id!r}, not {repo.id!r}"
                )
            plans = [plan]
        else:
            plans = [p for p in await self.store.list_plans() if p.repo_id == repo.id]
        with_policy = [p for p in plans if not RetentionPolicy.from_dict(p.retention).is_empty()]
        if not with_policy and plan_id:
            raise EngineError(f"plan {plan_id!r} has no retention policy; add --keep-* to it")
        if not with_policy:
            raise EngineError(
                f"no plan on repository {repo.id!r} has a retention policy; add --keep-* to a plan"
            )
        return with_policy

    async def forget(
        self,
        repo_id: str,
        *,
        plan_id: str | None = None,
        flow_id: str | None = None,
        expect: Sequence[str] | None = None,
    ) -> Operation:
        """Apply retention: one plan's policy, or each plan's policy on this repository.

        Only snapshots this instance made for the plan are candidates (:meth:`own_snapshots`),
        so this is allowed on a repository shared to us too: there we trim our own backups and
        leave ``prune`` (which needs the whole repository) to the owner. Forget never prunes.

        ``expect``: the snapshot ids a person was shown (by :meth:`forget_preview`) and agreed
        to remove. The job first runs the dry run again, in the repository's queue (no backup
        of ours runs meanwhile), and removes nothing when the policy would now remove a
        snapshot that is not among them: what is removed is never more than what was shown.
        """
        repo = await self.store.get_repo(repo_id)
        with_policy = await self._retention_plans(repo, plan_id)

        async def job(ctx: OpContext) -> Outcome:
            access = await self.access(repo)
            removed: list[str] = []
            kept: list[str] = []
            if expect is not None:
                unseen: list[str] = []
                for plan in with_policy:
                    host, tags = self.own_snapshots(plan.id)
                    dry = await self.restic().forget(
                        access,
                        RetentionPolicy.from_dict(plan.retention),
                        tags=tags,
                        host=host,
                        dry_run=True,
                    )
                    unseen += [
                        sid
                        for sid in dry.removed
                        if not any(same_snapshot_id(sid, e) for e in expect)
                    ]
                if unseen:
                    ctx.log(f"retention would now also remove {', '.join(unseen)}")
                    return Outcome(
                        status=OpStatus.ERROR,
                        error=(
                            f"nothing was removed: retention would now also remove "
                            f"{len(unseen)} snapshot(s) that were not in the list confirmed "
                            f"({', '.join(u[:8] for u in unseen)}); look at the list again"
                        ),
                    )
            for plan in with_policy:
                policy = RetentionPolicy.from_dict(plan.retention)
                host, tags = self.own_snapshots(plan.id)
                ctx.log(
                    f"forget for plan {plan.id} (snapshots of host {host} tagged "
                    f"{' and '.join(tags)}): {' '.join(policy.to_args())}"
                )
                res = await self.restic().forget(
                    access, policy, tags=tags, host=host, prune=False, on_log=ctx.log
                )
                removed += res.removed
                kept += res.kept
            self.bus.publish(SnapshotsChanged(repo_id=repo.id, reason="forget"))
            return Outcome(summary={"removed": removed, "kept": kept})

        return await self._submit(repo, OpKind.FORGET, job, plan_id=plan_id, flow_id=flow_id)

    async def forget_preview(
        self, repo_id: str, *, plan_id: str | None = None
    ) -> list[tuple[Plan, ForgetResult]]:
        """What :meth:`forget` would remove and keep, per plan, without changing anything.

        A direct answer, not an operation: restic runs ``forget --dry-run`` without taking
        the repository's lock, so a preview neither waits for nor blocks a running backup.
        """
        repo = await self.store.get_repo(repo_id)
        with_policy = await self._retention_plans(repo, plan_id)
        access = await self.access(repo)
        previews: list[tuple[Plan, ForgetResult]] = []
        for plan in with_policy:
            host, tags = self.own_snapshots(plan.id)
            try:
                res = await self.restic().forget(
                    access,
                    RetentionPolicy.from_dict(plan.retention),
                    tags=tags,
                    host=host,
                    dry_run=True,
                )
            except ResticError as exc:
                raise EngineError(exc.message) from None
            previews.append((plan, res))
        return previews

    def _refuse_maintenance_on_foreign(self, repo: Repo, what: str) -> None:
        if repo.origin is not None:
            raise EngineError(
                f"repository {repo.id!r} is shared by {repo.origin}; {what} is done by its owner"
            )

    async def prune(self, repo_id: str) -> Operation:
        repo = await self.store.get_repo(repo_id)
        self._refuse_maintenance_on_foreign(repo, "prune")

        async def job(ctx: OpContext) -> Outcome:
            await self.restic().prune(await self.access(repo), on_log=ctx.log)
            self.bus.publish(SnapshotsChanged(repo_id=repo.id, reason="prune"))
            return Outcome()

        return await self._submit(repo, OpKind.PRUNE, job)

    async def check(self, repo_id: str) -> Operation:
        repo = await self.store.get_repo(repo_id)
        self._refuse_maintenance_on_foreign(repo, "check")

        async def job(ctx: OpContext) -> Outcome:
            await self.restic().check(await self.access(repo), on_log=ctx.log)
            return Outcome()

        return await self._submit(repo, OpKind.CHECK, job)

    async def unlock(self, repo_id: str, *, remove_all: bool = False) -> Operation:
        repo = await self.store.get_repo(repo_id)
        return await self._enqueue_unlock(repo, stale_only=not remove_all)

    async def _enqueue_unlock(self, repo: Repo, *, stale_only: bool) -> Operation:
        async def job(ctx: OpContext) -> Outcome:
            self._unlock_queued.discard(repo.id)
            ctx.log("removing stale locks" if stale_only else "removing all locks")
            try:
                await self.restic().unlock(await self.access(repo), remove_all=not stale_only)
            except ResticError as exc:
                if exc.kind is ErrorKind.BACKEND_UNREACHABLE:
                    self._unlock_owed.add(repo.id)  # try again before the next operation
                raise
            return Outcome()

        return await self._submit(repo, OpKind.UNLOCK, job)

    async def restore(
        self,
        repo_id: str,
        snapshot_id: str,
        target: str,
        *,
        include: Sequence[str] = (),
        flow_id: str | None = None,
    ) -> Operation:
        """Queue a restore of ``snapshot_id`` into the absolute path ``target`` (``flow_id``
        as for :meth:`backup`)."""
        if not PurePosixPath(target).is_absolute():
            raise EngineError(f"restore target {target!r} must be an absolute path", field="target")
        repo = await self.store.get_repo(repo_id)
        problem = await asyncio.to_thread(read_only_target, target)
        if problem:
            raise EngineError(problem, field="target")

        async def job(ctx: OpContext) -> Outcome:
            ctx.log(f"restore {snapshot_id} to {target}")
            res = await self.restic().restore(
                await self.access(repo),
                snapshot_id,
                target,
                include=include,
                on_progress=progress_reporter(ctx),
                on_log=ctx.log,
            )
            return Outcome(snapshot_id=snapshot_id, summary=res.summary_dict())

        return await self._submit(repo, OpKind.RESTORE, job, flow_id=flow_id)

    async def restore_preview(
        self,
        repo_id: str,
        snapshot_id: str,
        target: str,
        *,
        include: Sequence[str] = (),
        limit: int = PREVIEW_LIMIT,
    ) -> RestorePreview:
        """What :meth:`restore` with the same arguments would overwrite; changes nothing.

        The selection must be absolute paths of the snapshot (no ``..``, nothing outside what
        it backed up): anything else is refused before a file is looked at. The snapshot is
        listed once (``ls``, streamed) and each file's place below ``target`` is checked on the
        file system, off the event loop.
        """
        if not PurePosixPath(target).is_absolute() or "\0" in target:
            raise EngineError(f"restore target {target!r} must be an absolute path")
        target = str(PurePosixPath(target))  # no trailing slash, no doubled ones
        repo = await self.store.get_repo(repo_id)
        access = await self.access(repo)
        try:
            snaps = await self.restic().snapshots(access)
        except ResticError as exc:
            raise EngineError(exc.message) from None
        snap = next(
            (s for s in snaps if snapshot_id and (s.id.startswith(snapshot_id))),
            None,
        )
        if snap is None:
            raise EngineError(f"no snapshot {snapshot_id!r} in repository {repo_id!r}")
        try:
            selection = check_selection(list(include), snap.paths)
        except SelectionError as exc:
            raise EngineError(str(exc)) from None
        files = 0
        count = 0
        named: list[str] = []
        batch: list[str] = []

        async def check(paths: list[str]) -> None:
            nonlocal count
            found, which = await asyncio.to_thread(
                existing_at_target, target, paths, limit - len(named)
            )
            count += found
            named.extend(which)

        try:
            async with contextlib.aclosing(self.restic().ls(access, snap.id)) as nodes:
                async for node in nodes:
                    if node.type == "dir" or not in_selection(node.path, selection):
                        continue  # a folder that exists is merged into, not overwritten
                    files += 1
                    batch.append(node.path)
                    if len(batch) >= 500:
                        await check(batch)
                        batch = []
        except ResticError as exc:
            raise EngineError(exc.message) from None
        if batch:
            await check(batch)
        exists, empty = await asyncio.to_thread(target_state, target)
        return RestorePreview(
            snapshot_id=snap.id,
            target=target,
            selection=tuple(selection),
            files=files,
            overwrite_count=count,
            overwrite=tuple(named),
            target_exists=exists,
            target_empty=empty,
        )

    async def snapshots(self, repo_id: str) -> list[Any]:
        repo = await self.store.get_repo(repo_id)
        try:
            return await self.restic().snapshots(await self.access(repo))
        except ResticError as exc:
            raise EngineError(exc.message) from None

    async def ls(
        self, repo_id: str, snapshot_id: str, path: str | None = None
    ) -> AsyncIterator[Any]:
        repo = await self.store.get_repo(repo_id)
        access = await self.access(repo)
        try:
            async for node in self.restic().ls(access, snapshot_id, path):
                yield node
        except ResticError as exc:
            raise EngineError(exc.message) from None

    async def cancel(self, op_id: str) -> bool:
        op = await self.store.find_operation(op_id, origin=self.instance_id)
        if OpStatus(op.status).finished:
            raise EngineError(f"operation {op_id} already ended ({op.status})")
        return await self.runner.cancel(op.pk)

    async def list_operations(
        self, flt: OpFilter | None = None, limit: int = 100
    ) -> list[Operation]:
        return await self.store.list_operations(flt, limit)

    async def gc(self, *, older_than: timedelta = timedelta(days=90), keep_min: int = 1000) -> int:
        """Trim old operations; returns how many. Announces what went (OperationsDeleted), so
        peers holding copies drop them now rather than at their next connect."""
        gone = await self.store.trim_operations(older_than=older_than, keep_min=keep_min)
        await self.store.trim_requests(older_than=older_than)
        if gone:
            self.bus.publish(OperationsDeleted(origin=self.instance_id, ops=tuple(gone)))
        return len(gone) + await self.gc_peer_history()

    async def delete_history(self, origin: str) -> int:
        """Delete all of another instance's history held here (a person removing what a
        replaced peer left, ``peer remove ID~key-…``); how many operations went. Announced
        like a trim (OperationsDeleted), so views drop the rows now."""
        gone = await self.store.delete_origin(origin)
        if gone:
            self.bus.publish(OperationsDeleted(origin=origin, ops=tuple(gone)))
        return len(gone)

    async def gc_peer_history(self) -> int:
        """Bound the copy of each peer's history held here (settings ``peer_history_days``
        and ``peer_history_max_ops``, see :meth:`Store.trim_peer_ops`); how many went."""
        days, most = await self.store.peer_history_limits()
        total = 0
        for origin in await self.store.peer_origins():
            gone = await self.store.trim_peer_ops(
                origin, older_than=timedelta(days=days), max_ops=most
            )
            if gone:
                total += len(gone)
                log.info("kept %d days / %d operations of %s's history", days, most, origin)
                self.bus.publish(OperationsDeleted(origin=origin, ops=tuple(gone)))
        return total

    # -- scheduler glue ----------------------------------------------------------------------

    async def _scheduled_backup(self, plan_id: str, reason: str) -> None:
        try:
            await self.backup(plan_id, reason=reason)
        except (EngineError, StoreError) as exc:
            log.warning("scheduled backup of %s not started: %s", plan_id, exc)

    def _on_stale(self, plan_id: str, last_success: datetime | None) -> None:
        self.stale_plans[plan_id] = last_success
        self.bus.publish(PlanStale(plan_id=plan_id, last_success_at=last_success))


class _ScheduleAdapter:
    """Presents the store to the scheduler as its ScheduleStore."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def list_schedules(self) -> list[sched.PlanSchedule]:
        last = await self._store.last_success_by_plan()
        return [
            sched.PlanSchedule(
                plan_id=p.id,
                cron=p.schedule_cron,
                interval_seconds=p.schedule_interval,
                enabled=p.enabled,
                next_due_at=p.next_due_at,
                last_success_at=last.get(p.id),
                created_at=p.created_at,
            )
            for p in await self._store.list_plans()
        ]

    async def set_next_due(self, plan_id: str, when: datetime | None) -> None:
        await self._store.set_next_due(plan_id, when)


def progress_reporter(ctx: OpContext) -> Callable[[Any], None]:
    """Turn restic's backup or restore progress into the operation's progress fields."""

    def report(p: Any) -> None:
        ctx.progress(
            bytes_done=p.bytes_done,
            bytes_total=p.bytes_total,
            files_done=p.files_done,
            files_total=p.files_total,
            eta_seconds=None if p.seconds_remaining is None else int(p.seconds_remaining),
        )

    return report


def uri_for_people(uri: str) -> str:
    """A repository URI safe to show: credentials in it are masked."""
    from peerstash.core.restic import redact_uri

    return redact_uri(uri)


__all__ = ["Engine", "EngineError", "PasswordSpec", "check_name", "utcnow"]
