"""Running one restic process: finding the binary, spawning it, reading its pipes, ending it.

The child gets its own session (a Ctrl-C meant for the node must not reach restic behind our
back) and, on Linux, ``PR_SET_PDEATHSIG=SIGINT``, so a SIGKILLed node does not leave restic
running as an orphan (set by util-linux's ``setpriv``, which then execs restic in the same
process, so that Python can spawn it with vfork instead of forking the whole node; see
:func:`_death_signal_prefix`). We make its pipes ourselves (see :class:`_Child` for why) and
read them in chunks, handing each line to the run's :class:`_Session`, which redacts and logs
it and collects stderr for classification. Stopping is SIGINT (restic 0.14 removes its lock
on SIGINT only), then SIGKILL after a grace period; the process is always reaped and the
readers always finished before a ``CancelledError`` propagates.
:class:`~peerstash.core.restic.client.Restic` drives all of this; the rest of Peerstash uses
only :func:`find_restic` and ``LogCallback``.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import inspect
import logging
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

from peerstash.core.restic.access import Redactor, RepoAccess
from peerstash.core.restic.errors import (
    _CREDENTIALS_RE,
    _NO_SUCH_SNAPSHOT_RE,
    CREDENTIAL_RETRIES_BEFORE_GIVING_UP,
    ErrorKind,
    ResticError,
    classify_failure,
    parse_retry_line,
)
from peerstash.core.restic.parse import _READ_CHUNK, StderrCollector, _decode, iter_lines

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

T = TypeVar("T")

# After restic exited, a pipe still open after this long is held by a grandchild (an ssh
# process, a password command's agent); we stop reading it rather than hang.
_PIPE_GRACE = 2.0


# --------------------------------------------------------------------------------------------
# Finding the binary


def find_restic(configured: str | None) -> str:
    """The restic executable: the configured path first, then ``restic`` on ``PATH``.

    A configured path that does not exist falls back to ``PATH`` with a logged warning (a
    package upgrade may have moved the binary); nothing found at all is NOT_INSTALLED.
    """
    if configured:
        path = os.path.expanduser(configured)
        if os.sep in path or (os.altsep and os.altsep in path):
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return os.path.abspath(path)
        else:
            found = shutil.which(path)
            if found:
                return found
        log.warning("configured restic %r is not an executable file; looking on PATH", configured)
    found = shutil.which("restic")
    if found:
        return found
    where = f"at {configured!r} nor " if configured else ""
    raise ResticError(
        ErrorKind.NOT_INSTALLED,
        f"restic was not found {where}on PATH: install restic (e.g. `apt install restic`) or "
        "set the path to the restic program in the settings",
    )


# --------------------------------------------------------------------------------------------
# Process plumbing

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


# Looked up once in the parent: the child, between fork and exec, should do as little as
# possible.
_PRCTL = _load_prctl()


def _child_setup(parent_pid: int) -> None:
    """Runs in the child before exec: SIGINT restic when we die, so it unlocks and exits.

    The death signal fires when the *thread* that forked exits; asyncio forks from the loop's
    thread, which lives as long as the node. If we already died between fork and prctl, the
    signal will never come, so the child exits at once instead of running unsupervised.
    """
    if _PRCTL is None:
        return
    _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGINT), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


#: util-linux's ``setpriv``, looked for in the system's own directories only: it runs with
#: restic's environment (its password included), so it is not taken from ``PATH``.
_SETPRIV_PATHS = ("/usr/bin/setpriv", "/bin/setpriv")
#: ``[setpriv, "--pdeathsig", "INT", "--"]`` once one was seen to work, ``[]`` when none does
#: (restic is then started with :func:`_child_setup`); ``None`` until the first spawn asks.
_setpriv_prefix: list[str] | None = None


async def _death_signal_prefix() -> list[str]:
    """What goes before restic's argv so that it gets SIGINT when the node dies.

    ``PR_SET_PDEATHSIG`` must be set in the child. Done in Python (``preexec_fn``), it makes
    ``subprocess`` fork the whole node (page tables of 90+ MB) and run Python code in the
    child instead of using vfork: measured in a 108 MB process on the loaded 2-core machine,
    12-22 ms of wall time and 4.5 ms of the node's CPU per spawn, against 1.6-3 ms and 0.6 ms.
    ``setpriv --pdeathsig INT -- restic ...`` sets it in the child and execs restic in the same
    process (the death signal survives exec), so restic's pid, process group and pipes are
    as before. Tried once per process (``setpriv`` before util-linux 2.33 has no
    ``--pdeathsig``); where it does not work the ``preexec_fn`` stays.

    One difference: :func:`_child_setup` exits if the node died between fork and ``prctl``;
    ``setpriv`` cannot tell, so a node killed in that window (the time setpriv takes to
    start, about a millisecond) leaves that one restic to run to its end unsupervised.
    """
    global _setpriv_prefix
    if _setpriv_prefix is None:
        prefix: list[str] = []
        if _PRCTL is not None:
            for path in _SETPRIV_PATHS:
                if not os.access(path, os.X_OK):
                    continue
                candidate = [path, "--pdeathsig", "INT", "--"]
                try:
                    probe = await asyncio.create_subprocess_exec(
                        *candidate,
                        path,
                        "--version",
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.DEVNULL,
                    )
                    try:
                        # A local program, but still a wait: one that hangs means "does not work".
                        async with asyncio.timeout(5):
                            works = await probe.wait() == 0
                    except TimeoutError:
                        probe.kill()
                        await probe.wait()
                        works = False
                except OSError:
                    works = False
                if works:
                    prefix = candidate
                break
        _setpriv_prefix = prefix
    return _setpriv_prefix


def _check_executable(program: str) -> None:
    """Raise what exec would for a missing or non-executable ``program``.

    Started through ``setpriv``, restic's own exec failure would be setpriv's exit code 127
    and a message of its own, not the ``FileNotFoundError``/``PermissionError`` that the
    caller turns into NOT_INSTALLED with a hint.
    """
    path = program if os.sep in program else shutil.which(program)
    if path is None or not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)


LogCallback: TypeAlias = Callable[[str], Awaitable[None] | None]


async def _call(callback: Callable[[T], Awaitable[None] | None] | None, value: T) -> None:
    """Run a sync or async callback; a failing callback is logged, never kills the run."""
    if callback is None:
        return
    try:
        result = callback(value)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("restic output callback failed")


class _Pump:
    """Reads one pipe of the child line by line and hands the lines to a handler."""

    def __init__(self, stream: asyncio.StreamReader, handler: Callable[[str], Awaitable[None]]):
        self.stream = stream
        self.handler = handler
        self.discard = False  # set while stopping: keep the pipe drained, ignore content
        self.reading_since: float | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        lines = iter_lines(self.stream)
        while True:
            self.reading_since = loop.time()
            try:
                raw = await anext(lines)
            except StopAsyncIteration:
                return
            finally:
                self.reading_since = None
            if not self.discard:
                await self.handler(_decode(raw))


class _Session:
    """The per-run state shared by a method and the stderr pump: redaction, logging, errors."""

    def __init__(self, repo: RepoAccess | None, command: str, on_log: LogCallback | None) -> None:
        self.redact = Redactor(repo.secrets() if repo is not None else ())
        self.command = command
        self.repo_name = repo.display_name if repo is not None else "restic"
        self.on_log = on_log
        self.stderr = StderrCollector(self.redact)
        #: Set when the run cannot succeed although restic keeps trying (it retries refused
        #: credentials for ~15 minutes from 0.17 on): the wrapper stops it and reports why.
        self.give_up = asyncio.Event()
        self._credential_retries = 0

    async def log(self, line: str) -> None:
        """Log an already redacted line."""
        await _call(self.on_log, line)

    async def on_stderr(self, line: str) -> None:
        retry = parse_retry_line(line)
        if retry is not None and _CREDENTIALS_RE.search(retry[1]):
            self._credential_retries += 1
            if self._credential_retries >= CREDENTIAL_RETRIES_BEFORE_GIVING_UP:
                self.give_up.set()
        shown = self.stderr.feed(line)
        if shown is not None:
            await self.log(shown)

    def snapshot_missing(self, snapshot_id: str, exit_code: int) -> ResticError | None:
        """The error for an unknown snapshot id, if that is what restic said.

        0.14: ``Ignoring "deadbeef", no matching ID found`` (``ls`` then exits 0); 0.17+:
        ``no matching ID found for prefix "deadbeef"``. One sentence for both.
        """
        if not _NO_SUCH_SNAPSHOT_RE.search(self.stderr.raw_text()):
            return None
        return ResticError(
            ErrorKind.INVALID_ARGS,
            f"snapshot {snapshot_id} was not found in {self.repo_name}",
            exit_code=exit_code,
            stderr_tail=tuple(self.stderr.tail),
        )

    def error(self, exit_code: int | None) -> ResticError:
        if exit_code == 1 and self.stderr.exit_error_code not in (None, 1):
            exit_code = self.stderr.exit_error_code
        return classify_failure(
            exit_code,
            self.stderr.raw_text(),
            command=self.command,
            repo_name=self.repo_name,
            redact=self.redact,
            stderr_tail=tuple(self.stderr.tail),
        )


async def _wait_through_cancellation(awaitable: Awaitable[Any]) -> bool:
    """Await to completion even if our task is cancelled meanwhile; True if it was."""
    future = asyncio.ensure_future(awaitable)
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.done():
                break
            cancelled = True
        except Exception:
            break
    if future.done() and not future.cancelled():
        future.exception()  # mark retrieved: the caller decides whether it matters
    return cancelled


async def _finish_unless_given_up(child: _Child, session: _Session) -> bool:
    """Wait for restic to end; False (restic still running) if the session gave up first."""
    finish = asyncio.ensure_future(child.finish())
    give_up = asyncio.ensure_future(session.give_up.wait())
    try:
        await asyncio.wait({finish, give_up}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        give_up.cancel()
        if not finish.done():
            finish.cancel()
            if await _wait_through_cancellation(finish):
                raise asyncio.CancelledError
    if finish.cancelled():
        return False
    finish.result()  # a reader's error
    return True


_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
# Room for restic to write its goodbye (and a few seconds of status lines) after we died.
_PIPE_SIZE = 1024 * 1024


def _make_pipe() -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    if _F_SETPIPE_SZ is not None:
        try:
            fcntl.fcntl(write_fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size: the default 64 KiB still works
    return read_fd, write_fd


async def _open_reader(fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    """A StreamReader over the read end ``fd``, which it takes ownership of (even on error)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_READ_CHUNK)
    pipe = os.fdopen(fd, "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    except BaseException:
        pipe.close()
        raise
    return reader, transport


class _Child:
    """One running restic: the process, the readers of its two pipes, and how to end it.

    We make the stdout/stderr pipes ourselves instead of asyncio's ``PIPE`` for two reasons:

    * With PR_SET_PDEATHSIG, restic gets SIGINT when we die - but by then the kernel has
      already closed our read ends, so restic's first words ("signal interrupt received,
      cleaning up") would hit a broken pipe and Go would kill it with SIGPIPE before it removes
      its lock. (Go ignores an inherited SIG_IGN for SIGPIPE.) So where PDEATHSIG exists, the
      child also inherits the read ends of its own pipes: they never break, and a 1 MiB buffer
      leaves it room to finish. Elsewhere we don't, so an orphan dies rather than blocks.
    * ``Process.wait()`` then means "restic exited", not "and every holder of its pipes closed
      them", which matters when a grandchild (ssh, a password agent) keeps a pipe open.
    """

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        pumps: list[_Pump],
        transports: list[asyncio.BaseTransport],
    ) -> None:
        self.proc = proc
        self.pumps = pumps
        self.transports = transports
        self.tasks = [asyncio.create_task(pump.run()) for pump in pumps]
        self.waiter: asyncio.Future[int] = asyncio.ensure_future(proc.wait())

    @classmethod
    async def spawn(
        cls,
        argv: Sequence[str],
        env: Mapping[str, str],
        on_stdout: Callable[[str], Awaitable[None]],
        on_stderr: Callable[[str], Awaitable[None]],
    ) -> _Child:
        prefix = await _death_signal_prefix()
        preexec = None
        if prefix:
            _check_executable(argv[0])
        elif _PRCTL is not None:
            preexec = functools.partial(_child_setup, os.getpid())
        out_r, out_w = _make_pipe()
        err_r, err_w = _make_pipe()
        keep_readable = (out_r, err_r) if _PRCTL is not None else ()
        try:
            proc = await asyncio.create_subprocess_exec(
                *prefix,
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                env=dict(env),
                pass_fds=keep_readable,
                # Own session: a Ctrl-C or SIGHUP meant for the node must not reach restic
                # behind our back; we decide when restic is interrupted.
                start_new_session=True,
                preexec_fn=preexec,
            )
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        transports: list[asyncio.BaseTransport] = []
        readers: list[asyncio.StreamReader] = []
        try:
            for fd in (out_r, err_r):
                reader, transport = await _open_reader(fd)
                readers.append(reader)
                transports.append(transport)
        except BaseException:
            for transport in transports:
                transport.close()
            for fd in (out_r, err_r)[len(transports) + 1 :]:  # the failed one closed its own
                os.close(fd)
            proc.kill()
            await _wait_through_cancellation(proc.wait())
            raise
        pumps = [_Pump(readers[0], on_stdout), _Pump(readers[1], on_stderr)]
        return cls(proc, pumps, transports)

    def _close_transports(self) -> None:
        for transport in self.transports:
            transport.close()  # the reader sees EOF

    async def finish(self) -> None:
        """Wait until restic exited and both readers reached EOF; re-raise a reader's error.

        Once restic has exited, a pipe on which nothing arrives for ``_PIPE_GRACE`` seconds is
        held open by a grandchild: we close our end rather than wait for it forever.
        """
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = [self.waiter, *self.tasks]
        try:
            while True:
                for task in self.tasks:
                    if task.done() and not task.cancelled():
                        exc = task.exception()
                        if exc is not None:
                            raise exc
                pending = {f for f in futures if not f.done()}
                if not pending:
                    return
                # A timeout only to notice stuck pipes; normal runs end by EOF and exit.
                await asyncio.wait(pending, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                if self.proc.returncode is None:
                    continue
                now = loop.time()
                open_pumps = [
                    p for p, t in zip(self.pumps, self.tasks, strict=True) if not t.done()
                ]
                if open_pumps and all(
                    p.reading_since is not None and now - p.reading_since > _PIPE_GRACE
                    for p in open_pumps
                ):
                    self._close_transports()
        finally:
            if all(f.done() for f in futures):
                self._close_transports()

    async def stop(self, grace: float) -> None:
        """SIGINT, wait ``grace`` seconds, SIGKILL; always reap and finish the readers.

        SIGINT, not SIGTERM: restic 0.14 removes its lock on SIGINT only. If our task is
        cancelled again meanwhile we still finish (killing at once), then re-raise
        ``CancelledError``.
        """
        proc = self.proc
        for pump in self.pumps:
            pump.discard = True  # keep draining so restic never blocks writing while exiting
        cancelled_again = False
        if proc.returncode is None:
            try:
                proc.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(asyncio.shield(self.waiter), grace)
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                cancelled_again = True
            except Exception:
                pass
            if proc.returncode is None:
                log.warning("restic (pid %d) still running after SIGINT; killing it", proc.pid)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # restic leads its own process group
                except (ProcessLookupError, PermissionError):
                    try:
                        proc.kill()
                    except ProcessLookupError:
                        pass
        # Reap restic and end both readers, even if cancelled again while doing so.
        if await _wait_through_cancellation(self.finish()):
            cancelled_again = True
        for task in self.tasks:
            if not task.done():
                task.cancel()
        if await _wait_through_cancellation(asyncio.gather(*self.tasks, return_exceptions=True)):
            cancelled_again = True
        self._close_transports()
        if cancelled_again:
            raise asyncio.CancelledError
