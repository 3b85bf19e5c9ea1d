"""The ``Restic`` class: one method per restic command the runner and the engine use.

Each method builds its arguments (checking what restic would misread: tags with commas,
snapshot references, empty patterns), runs restic through
:mod:`peerstash.core.restic.process`, and turns what it printed into the records of
:mod:`peerstash.core.restic.parse`, raising a classified ``ResticError`` on failure. The
version-dependent choices (``restore --json`` and ``--retry-lock`` from 0.16 on) are made here,
from the version restic reports once per instance.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from typing import Any

from peerstash.core.restic.access import RepoAccess, _base_env, build_env
from peerstash.core.restic.errors import ErrorKind, ResticError
from peerstash.core.restic.parse import (
    _NOT_JSON,
    BackupOutputParser,
    BackupProgress,
    BackupResult,
    ForgetResult,
    LsNode,
    RestoreOutputParser,
    RestoreProgress,
    RestoreResult,
    Snapshot,
    _count,
    _json_doc_or_not,
    parse_cat_config,
    parse_forget,
    parse_ls_line,
    parse_snapshots,
    parse_version,
)
from peerstash.core.restic.process import (
    LogCallback,
    _call,
    _Child,
    _finish_unless_given_up,
    _Session,
    _wait_through_cancellation,
)
from peerstash.core.retention import RetentionPolicy

#: restic versions from which ``restore --json`` prints progress.
RESTORE_JSON_SINCE = (0, 16, 0)
#: restic versions that have the global ``--retry-lock`` flag.
RETRY_LOCK_SINCE = (0, 16, 0)
#: Status lines a second that restic prints during a backup or a restore (0.16+) by default.
#: With ``--json`` restic prints up to 60 a second whatever its output is (30-60 measured on
#: 0.14 and 0.18), and each line wakes the node's event loop, which costs 0.2-0.3 ms of CPU
#: per line here (a sleeping loop wakes with cold caches; the parsing itself is 20 us): half
#: of the node's CPU during a 1,500-file first backup (49 ms with the default, 26 ms at 4 a
#: second; docs/benchmarks.md, "Backup overhead"). The node writes and publishes progress at
#: most once a second (``Runner.progress_interval``), so all but the last line of each second
#: were thrown away anyway: at 4 a second the tray's bar and ``backup --wait`` show the same.
#: restic 0.14 prints its first line as it starts; 0.18 one interval after it starts, so its
#: first progress comes at most a quarter of a second later than at 60 a second.
DEFAULT_PROGRESS_FPS = 4
#: restic's own ceiling for ``RESTIC_PROGRESS_FPS``.
MAX_PROGRESS_FPS = 60


def progress_fps_for(interval: float) -> int:
    """restic's status lines a second for a node that writes progress every ``interval`` s.

    At least one line per write (a node with a short interval, as the GUI tests use, still
    gets fresh figures each time), never fewer than :data:`DEFAULT_PROGRESS_FPS`, never more
    than restic allows.
    """
    wanted = math.ceil(1 / interval) if interval > 0 else MAX_PROGRESS_FPS
    return max(DEFAULT_PROGRESS_FPS, min(MAX_PROGRESS_FPS, wanted))


# Commands that take no repository lock: --retry-lock means nothing to them.
_NO_LOCK_COMMANDS = frozenset({"init", "unlock", "version"})
_LS_QUEUE_SIZE = 512
_SNAPSHOT_REF_RE = re.compile(r"^(?:latest|[0-9a-fA-F]{4,64})$")
_HEX_ID_RE = re.compile(r"^[0-9a-f]{8,64}$")


# --------------------------------------------------------------------------------------------
# Output handlers and arguments


def _json_docs_handler(session: _Session, docs: list[Any]) -> Callable[[str], Awaitable[None]]:
    """Streaming form of :func:`split_json_output`: documents collected, text logged."""

    async def handle(line: str) -> None:
        text = line.strip()
        if not text:
            return
        value = _json_doc_or_not(text)
        if value is _NOT_JSON:
            await session.log(session.redact(text))
        else:
            docs.append(value)

    return handle


def _text_handler(session: _Session) -> Callable[[str], Awaitable[None]]:
    async def handle(line: str) -> None:
        text = line.strip()
        if text:
            await session.log(session.redact(text))

    return handle


def _check_tags(tags: Iterable[str]) -> list[str]:
    result = []
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip():
            raise ResticError(
                ErrorKind.INVALID_ARGS, f"invalid tag {tag!r}: tags must not be empty"
            )
        if "," in tag:
            # restic splits --tag values on commas: "a,b" would become two tags.
            raise ResticError(
                ErrorKind.INVALID_ARGS, f"invalid tag {tag!r}: tags cannot contain ','"
            )
        result.append(tag)
    return result


def forget_args(
    policy: RetentionPolicy,
    *,
    tags: Sequence[str] = (),
    host: str | None = None,
    group_by: str | None = None,
    prune: bool = False,
    dry_run: bool = False,
) -> list[str]:
    """The ``restic forget`` arguments for ``policy`` on the snapshots of ``host`` that carry
    *all* of ``tags``; an empty policy is refused (it would keep nothing in particular).

    ``host`` becomes ``--host`` and the tags one ``--tag a,b`` (restic reads the comma as AND;
    separate ``--tag`` flags would be OR and widen the selection). Both filters together are
    how a plan's retention stays on the snapshots this instance made for it: a repository may
    hold other machines' plans of the same name and snapshots made by hand.

    ``group_by`` (``None`` = choose): without tags we use restic's own default,
    ``host,paths``, so each machine and each backup set keeps its own history - grouping
    by tags alone would let one host's snapshots count against another's in a shared
    repository. With tags (a plan's ``plan:<id>`` and ``host:<instance>``) we use
    ``host,tags``: the tag filter already selects the plan, and grouping by tags rather
    than paths means editing a plan's paths does not strand its older snapshots in a group
    of their own that the policy would then keep forever. Pass ``""`` to disable grouping.

    ``dry_run`` adds ``--dry-run`` and the global ``--no-lock``: restic 0.14 then reports
    what it would remove without touching the repository or waiting for its lock, so a
    preview never queues behind (or blocks) a running backup. It cannot go with ``prune``.
    """
    if policy.is_empty():
        raise ResticError(
            ErrorKind.INVALID_ARGS,
            "refusing to run forget with an empty retention policy: with no keep rule "
            "restic has nothing telling it which snapshots to keep. Set at least one rule "
            "(e.g. keep last 10)",
        )
    if dry_run and prune:
        raise ResticError(ErrorKind.INVALID_ARGS, "a dry run of forget cannot also prune")
    checked = _check_tags(_seq(tags))
    args = ["forget", "--json", *policy.to_args()]
    if host is not None:
        if not host.strip() or host.startswith("-"):
            raise ResticError(ErrorKind.INVALID_ARGS, f"invalid host {host!r} for forget")
        args += ["--host", host]
    if checked:
        args += ["--tag", ",".join(checked)]
    if group_by is None:
        group_by = "host,tags" if checked else "host,paths"
    args += ["--group-by", group_by]
    if prune:
        args.append("--prune")
    if dry_run:
        args += ["--dry-run", "--no-lock"]
    return args


def _seq(value: str | os.PathLike[str] | Sequence[Any]) -> list[Any]:
    """A list from a sequence argument; a lone string is one item, not its characters."""
    if isinstance(value, str | os.PathLike):
        return [value]
    return list(value)


def _absolute(path: str | os.PathLike[str]) -> str:
    """An absolute, normalised path: restic stores relative backup paths oddly."""
    return os.path.abspath(os.fspath(path))


def _check_snapshot_ref(snapshot_id: str) -> None:
    if not isinstance(snapshot_id, str) or not _SNAPSHOT_REF_RE.match(snapshot_id):
        raise ResticError(
            ErrorKind.INVALID_ARGS,
            f"invalid snapshot id {snapshot_id!r}: expected 'latest' or a hex snapshot id",
        )


# --------------------------------------------------------------------------------------------
# The wrapper


class Restic:
    """Runs restic commands for the runner. One instance can serve many concurrent runs.

    Every method raises :class:`ResticError` on failure and propagates ``CancelledError``
    after stopping restic cleanly (SIGINT, then SIGKILL after ``cancel_grace`` seconds).
    """

    def __init__(
        self,
        binary: str,
        *,
        cancel_grace: float = 10.0,
        retry_lock: float | None = None,
        progress_fps: int = DEFAULT_PROGRESS_FPS,
    ) -> None:
        self.binary = binary
        self.cancel_grace = cancel_grace
        #: ``RESTIC_PROGRESS_FPS`` for backup and restore (see :data:`DEFAULT_PROGRESS_FPS`).
        self.progress_fps = progress_fps
        #: Seconds restic (0.16+) waits for a lock another process holds before it fails
        #: (``--retry-lock``); ``None`` or 0: fail at once, as restic 0.14 always does.
        self.retry_lock = retry_lock
        self._version: tuple[int, int, int] | None = None
        self._active: dict[int, tuple[str, ...]] = {}
        self._idle_waiters: list[asyncio.Future[None]] = []

    @property
    def active_pids(self) -> frozenset[int]:
        """PIDs of restic processes this instance is running now (to recognise our locks)."""
        return frozenset(self._active)

    async def wait_idle(self) -> None:
        """Wait until no restic process started by this instance is running (or reaped).

        For shutdown: after cancelling the runner's tasks, await this before the loop ends so
        every restic got its SIGINT, removed its lock and was reaped.
        """
        while self._active:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
            await waiter

    def _forget_process(self, pid: int) -> None:
        self._active.pop(pid, None)
        if not self._active:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # -- process handling ------------------------------------------------------------------

    def _argv(self, repo: RepoAccess | None, args: Sequence[str]) -> list[str]:
        argv = [self.binary]
        if repo is not None:
            for option in repo.options:
                argv += ["-o", option]
            if repo.cache_dir:
                argv += ["--cache-dir", repo.cache_dir]
        argv.extend(args)
        return argv

    async def _with_retry_lock(self, repo: RepoAccess | None, args: Sequence[str]) -> list[str]:
        """``args`` with ``--retry-lock`` in front where restic (0.16+) has it and it helps.

        A brief lock by another process (a peer's ``check``, a scheduled ``forget``) is then
        waited for instead of failing the run. Never for ``unlock``/``init``, which take no
        lock, nor when the version cannot be read (restic will then say what is wrong).
        """
        if (
            repo is None
            or not self.retry_lock
            or self.retry_lock <= 0
            or not args
            or args[0] in _NO_LOCK_COMMANDS
        ):
            return list(args)
        try:
            version = await self.version()
        except ResticError:
            return list(args)
        if version < RETRY_LOCK_SINCE:
            return list(args)
        return ["--retry-lock", f"{max(1, round(self.retry_lock))}s", *args]

    async def _execute(
        self,
        repo: RepoAccess | None,
        args: Sequence[str],
        session: _Session,
        on_stdout: Callable[[str], Awaitable[None]],
        *,
        progress: bool = False,
    ) -> int:
        """Run restic to completion and return its exit code (negative: killed by signal).

        ``progress``: the command prints ``--json`` progress that we read (backup, restore), so
        restic is told how often to print it (``progress_fps``).
        """
        argv = self._argv(repo, await self._with_retry_lock(repo, args))
        if repo is None:
            env = _base_env()
        else:
            env = build_env(repo, progress_fps=self.progress_fps if progress else None)
        try:
            child = await _Child.spawn(argv, env, on_stdout, session.on_stderr)
        except FileNotFoundError:
            raise ResticError(
                ErrorKind.NOT_INSTALLED,
                f"restic was not found at {self.binary}: install restic or set its path in the "
                "settings",
            ) from None
        except PermissionError:
            raise ResticError(
                ErrorKind.NOT_INSTALLED,
                f"{self.binary} cannot be executed (permission denied): check the restic path",
            ) from None
        pid = child.proc.pid
        self._active[pid] = tuple(argv)
        gave_up = False
        try:
            try:
                gave_up = not await _finish_unless_given_up(child, session)
            except BaseException:
                await child.stop(self.cancel_grace)
                raise
            if gave_up:
                await child.stop(self.cancel_grace)
        finally:
            self._forget_process(pid)
        if gave_up:
            # Classified from what restic said before we stopped it, not from its exit code
            # (which only says that we interrupted it).
            raise session.error(None)
        assert child.proc.returncode is not None
        return child.proc.returncode

    async def _run(
        self,
        repo: RepoAccess | None,
        command: str,
        args: Sequence[str],
        *,
        on_log: LogCallback | None = None,
        on_stdout: Callable[[_Session], Callable[[str], Awaitable[None]]] = _text_handler,
        ok_codes: Iterable[int] = (0,),
    ) -> tuple[int, _Session]:
        session = _Session(repo, command, on_log)
        code = await self._execute(repo, args, session, on_stdout(session))
        if code not in set(ok_codes):
            raise session.error(code)
        return code, session

    async def _json_doc(
        self, repo: RepoAccess, command: str, args: Sequence[str], on_log: LogCallback | None
    ) -> Any:
        docs: list[Any] = []
        await self._run(
            repo, command, args, on_log=on_log, on_stdout=lambda s: _json_docs_handler(s, docs)
        )
        return docs[0] if docs else None

    # -- commands --------------------------------------------------------------------------

    async def version(self) -> tuple[int, int, int]:
        """restic's version, e.g. ``(0, 14, 0)``; asked once per instance."""
        if self._version is None:
            lines: list[str] = []

            def collect(session: _Session) -> Callable[[str], Awaitable[None]]:
                async def handle(line: str) -> None:
                    lines.append(line)

                return handle

            await self._run(None, "version", ["version"], on_stdout=collect)
            self._version = parse_version("\n".join(lines))
        return self._version

    async def init(self, repo: RepoAccess, *, on_log: LogCallback | None = None) -> None:
        """Create a new repository at ``repo.uri`` (REPO_EXISTS if there already is one)."""
        await self._run(repo, "init", ["init"], on_log=on_log)

    async def cat_config(self, repo: RepoAccess) -> dict[str, Any]:
        """The repository config; its ``id`` is the repository's GUID."""
        lines: list[str] = []

        def collect(session: _Session) -> Callable[[str], Awaitable[None]]:
            async def handle(line: str) -> None:
                lines.append(line)

            return handle

        await self._run(repo, "cat config", ["cat", "config"], on_stdout=collect)
        return parse_cat_config("\n".join(lines))

    async def guid(self, repo: RepoAccess) -> str:
        """The repository's GUID (the id in ``restic cat config``), stable across URIs."""
        config = await self.cat_config(repo)
        guid = config.get("id")
        if not isinstance(guid, str) or not _HEX_ID_RE.match(guid):
            raise ResticError(ErrorKind.UNKNOWN, "the repository config has no valid id")
        return guid

    async def backup(
        self,
        repo: RepoAccess,
        paths: Sequence[str | os.PathLike[str]],
        *,
        excludes: Sequence[str] = (),
        tags: Sequence[str] = (),
        host: str | None = None,
        on_progress: Callable[[BackupProgress], Awaitable[None] | None] | None = None,
        on_log: LogCallback | None = None,
    ) -> BackupResult:
        """Back up ``paths`` (made absolute: restic stores relative paths oddly).

        Exit code 3 (some source data unreadable) is not an error: the snapshot exists, and the
        result says ``partial=True`` with the warnings.
        """
        path_list = _seq(paths)
        if not path_list:
            raise ResticError(ErrorKind.INVALID_ARGS, "nothing to back up: no paths given")
        absolute = [_absolute(path) for path in path_list]
        args = ["backup", "--json"]
        for pattern in _seq(excludes):
            if not pattern:
                raise ResticError(ErrorKind.INVALID_ARGS, "an exclude pattern is empty")
            args += ["--exclude", pattern]
        for tag in _check_tags(_seq(tags)):
            args += ["--tag", tag]
        if host:
            args += ["--host", host]
        args += ["--", *absolute]

        session = _Session(repo, "backup", on_log)
        parser = BackupOutputParser(session.redact)

        async def handle(line: str) -> None:
            item = parser.feed_stdout(line)
            if isinstance(item, BackupProgress):
                await _call(on_progress, item)
            elif isinstance(item, str):
                await session.log(item)

        code = await self._execute(repo, args, session, handle, progress=True)
        if code not in (0, 3):
            raise session.error(code)
        stderr = session.stderr
        return BackupResult.from_summary(
            parser.summary,
            partial=code == 3 or stderr.skipped_paths > 0,
            warnings=stderr.warnings,
            warning_count=stderr.warning_count,
            exit_code=code,
        )

    async def snapshots(self, repo: RepoAccess, *, tags: Sequence[str] = ()) -> list[Snapshot]:
        """All snapshots, or those carrying *all* of ``tags``."""
        args = ["snapshots", "--json"]
        checked = _check_tags(_seq(tags))
        if checked:
            args += ["--tag", ",".join(checked)]  # one --tag a,b = a AND b
        doc = await self._json_doc(repo, "snapshots", args, None)
        return [] if doc is None else parse_snapshots(doc)

    async def forget(
        self,
        repo: RepoAccess,
        policy: RetentionPolicy,
        *,
        tags: Sequence[str] = (),
        host: str | None = None,
        group_by: str | None = None,
        prune: bool = False,
        dry_run: bool = False,
        on_log: LogCallback | None = None,
    ) -> ForgetResult:
        """Apply ``policy`` to the snapshots of ``host`` carrying all of ``tags``; refuse an
        empty policy. ``dry_run`` only reports what would go (see :func:`forget_args`)."""
        args = forget_args(
            policy, tags=tags, host=host, group_by=group_by, prune=prune, dry_run=dry_run
        )
        doc = await self._json_doc(repo, "forget", args, on_log)
        return parse_forget(doc, pruned=prune)

    async def prune(self, repo: RepoAccess, *, on_log: LogCallback | None = None) -> None:
        """Remove data no snapshot references any more (text output goes to ``on_log``)."""
        await self._run(repo, "prune", ["prune"], on_log=on_log)

    async def check(
        self,
        repo: RepoAccess,
        *,
        read_data_subset: str | None = None,
        on_log: LogCallback | None = None,
    ) -> None:
        """Verify the repository's structure (and some data, e.g. ``"1/10"`` or ``"5%"``)."""
        args = ["check"]
        if read_data_subset:
            args += ["--read-data-subset", read_data_subset]
        await self._run(repo, "check", args, on_log=on_log)

    async def restore(
        self,
        repo: RepoAccess,
        snapshot_id: str,
        target: str | os.PathLike[str],
        *,
        include: Sequence[str] = (),
        on_progress: Callable[[RestoreProgress], Awaitable[None] | None] | None = None,
        on_log: LogCallback | None = None,
    ) -> RestoreResult:
        """Restore a snapshot (or the ``include`` paths of it) under ``target``.

        restic recreates the snapshot's absolute paths below ``target``. Progress is only
        available from restic 0.16 (``restore --json``); before that ``on_progress`` is never
        called and the result's counts are ``None``.
        """
        _check_snapshot_ref(snapshot_id)
        target_path = _absolute(target)
        with_json = await self.version() >= RESTORE_JSON_SINCE
        args = ["restore"]
        if with_json:
            args.append("--json")
        args += ["--target", target_path]
        for pattern in _seq(include):
            if not pattern:
                raise ResticError(ErrorKind.INVALID_ARGS, "an include pattern is empty")
            args += ["--include", pattern]
        args += ["--", snapshot_id]

        session = _Session(repo, "restore", on_log)
        parser = RestoreOutputParser(session.redact)

        async def handle(line: str) -> None:
            item = parser.feed_stdout(line) if with_json else (session.redact(line.strip()) or None)
            if isinstance(item, RestoreProgress):
                await _call(on_progress, item)
            elif isinstance(item, str):
                await session.log(item)

        # Without --json (before 0.16) restic prints no progress to a pipe; the rate would
        # turn text progress on.
        code = await self._execute(repo, args, session, handle, progress=with_json)
        if code != 0:
            raise session.snapshot_missing(snapshot_id, code) or session.error(code)
        summary = parser.summary
        warnings = tuple(session.stderr.warnings)
        if summary is None:
            return RestoreResult(snapshot_id, target_path, warnings=warnings)
        return RestoreResult(
            snapshot_id,
            target_path,
            files_restored=_count(summary, "files_restored"),
            files_skipped=_count(summary, "files_skipped"),
            files_total=_count(summary, "total_files"),
            bytes_restored=_count(summary, "bytes_restored"),
            bytes_total=_count(summary, "total_bytes"),
            warnings=warnings,
        )

    async def ls(
        self, repo: RepoAccess, snapshot_id: str, path: str | None = None
    ) -> AsyncGenerator[LsNode, None]:
        """Stream the nodes of a snapshot (below ``path``) as restic prints them.

        Nodes are yielded while restic is still listing, with a bounded queue in between, so a
        directory of millions of entries costs constant memory and the first entries show at
        once. With ``path``, restic 0.14 lists that directory itself and its direct children.

        Stopping early is fine, but close the iterator (``contextlib.aclosing``) so restic is
        stopped right away rather than when the generator is garbage collected.
        """
        _check_snapshot_ref(snapshot_id)
        args = ["ls", "--json", "--", snapshot_id]
        if path:
            args.append(path)
        session = _Session(repo, "ls", None)
        queue: asyncio.Queue[LsNode] = asyncio.Queue(maxsize=_LS_QUEUE_SIZE)
        stopping = False
        snapshot_seen = False

        async def handle(line: str) -> None:
            nonlocal snapshot_seen
            if stopping:
                return
            item = parse_ls_line(line)
            if isinstance(item, LsNode):
                await queue.put(item)
            elif isinstance(item, Snapshot):
                snapshot_seen = True

        task = asyncio.create_task(self._execute(repo, args, session, handle))
        # A consumer task cancelled mid-iteration leaves this generator suspended until it is
        # garbage collected; tie restic's lifetime to that task so it is stopped right away.
        consumer = asyncio.current_task()

        def consumer_done(_: asyncio.Task[Any]) -> None:
            if not task.done():
                task.cancel()

        if consumer is not None:
            consumer.add_done_callback(consumer_done)
        getter: asyncio.Task[LsNode] | None = None
        try:
            while True:
                if not queue.empty():  # fast path: no task per node while restic is ahead
                    yield queue.get_nowait()
                    continue
                if task.done():
                    break
                getter = asyncio.create_task(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    node = getter.result()
                    getter = None
                    yield node
                    continue
                getter.cancel()
                getter = None
                break
            while not queue.empty():
                yield queue.get_nowait()
            code = task.result()
            if code != 0:
                raise session.snapshot_missing(snapshot_id, code) or session.error(code)
            if not snapshot_seen:
                # restic 0.14 prints "Ignoring ..." and exits 0 for an unknown snapshot.
                missing = session.snapshot_missing(snapshot_id, code)
                if missing is not None:
                    raise missing
        finally:
            if consumer is not None:
                consumer.remove_done_callback(consumer_done)
            if getter is not None:
                getter.cancel()
            if not task.done():
                stopping = True
                while not queue.empty():  # unblock a reader waiting on a full queue
                    queue.get_nowait()
                task.cancel()
                again = await _wait_through_cancellation(task)
                if again:
                    raise asyncio.CancelledError

    async def unlock(self, repo: RepoAccess, *, remove_all: bool = False) -> None:
        """Remove stale locks (``remove_all``: every lock, even live ones - use with care)."""
        args = ["unlock"]
        if remove_all:
            args.append("--remove-all")
        await self._run(repo, "unlock", args)
