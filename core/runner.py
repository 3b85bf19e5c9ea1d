"""Runs operations: one serial queue per repository, repositories in parallel up to a limit.

restic takes a lock on a repository for most commands, so two jobs on one repository would only
fight; different repositories are independent, so they run side by side (up to
``max_parallel``, because each restic process wants its share of CPU and memory). The runner
owns every status transition of a local operation, so an operation can never be left
``running`` by a job that forgot to finish it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from peerstash.core.events import EventBus, OperationChanged
from peerstash.core.models import Operation, OpStatus
from peerstash.core.restic import ResticError, parse_retry_line
from peerstash.core.store import Store, utcnow

log = logging.getLogger(__name__)

#: Said on operations that were running when the node stopped or died.
STOPPED_MESSAGE = "Peerstash stopped while this operation was running; it did not finish."


@dataclass
class Outcome:
    """What a job reports when it ends without raising."""

    status: OpStatus = OpStatus.SUCCESS
    snapshot_id: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


#: How often a running operation's pending log lines are written (and its silence checked):
#: ``peerstash log`` shows what restic said within about this long.
LOG_FLUSH_INTERVAL = 1.0
#: Default seconds without a word (a log line or progress) from a running job before its
#: operation says it is stalled (the node's ``restic_stall_seconds`` setting).
DEFAULT_STALL_AFTER = 120.0
#: A "retrying: ..." detail is dropped when restic has not retried for this long.
RETRY_DETAIL_TTL = 60.0
RETRYING = "retrying:"
_RETRY_SUCCEEDED_RE = re.compile(r"\boperation successful after \d+ retr")


class OpContext:
    """Handed to a job: report progress and log lines without thinking about the store.

    While the job runs, the operation's ``summary`` carries ``{"detail": "..."}`` when there
    is something a person should know that progress does not say: restic retrying a failing
    backend ("retrying: <restic's reason>") or saying nothing for ``stall_after`` seconds. The
    job's own summary replaces it when the job ends.
    """

    def __init__(self, runner: Runner, op: Operation) -> None:
        self._runner = runner
        self.op = op
        self._last_flush = 0.0
        self._pending: dict[str, Any] = {}
        #: Every progress field as last reported, flushed or not (see :meth:`final_progress`).
        self._reported: dict[str, Any] = {}
        self._log: list[str] = []
        self.last_activity = time.monotonic()
        self.detail: str | None = None
        self._detail_dirty = False
        self._stalled = False
        self.ticker: asyncio.Future[None] | None = None
        self._last_moved: dict[str, Any] = {}
        self._last_retry = 0.0
        self._shown_work = False

    def progress(self, **fields: Any) -> None:
        """Record progress; written (and published) at most every ``progress_interval``.

        The first report that anything was done is written at once as well: restic's first
        status lines come while it still scans (nothing done), and without this a backup that
        takes about a second would show "running, nothing done" until it ended.
        """
        self._pending.update(fields)
        self._reported.update(fields)
        # restic repeats its status line every second even while an upload hangs: only a
        # change of what was done counts as a sign of life (the ETA alone moves anyway).
        moved = {k: v for k, v in fields.items() if k != "eta_seconds"}
        if moved != self._last_moved:
            self._last_moved = moved
            self._active()
        first_work = not self._shown_work and any(
            fields.get(k) for k in ("bytes_done", "files_done")
        )
        self._shown_work = self._shown_work or first_work
        now = time.monotonic()
        if first_work or now - self._last_flush >= self._runner.progress_interval:
            self._last_flush = now
            self._runner._spawn(self.flush())

    def log(self, line: str) -> None:
        """Keep a log line; written within ``LOG_FLUSH_INTERVAL`` (or at once after 200).

        A backend retry notice from restic becomes the operation's detail, so a run that
        restic keeps retrying in silence (for up to 15 minutes from 0.17 on) says why.
        """
        self._log.append(line)
        self._active()
        retry = parse_retry_line(line)
        if retry is not None:
            self._last_retry = time.monotonic()
            self.set_detail(f"{RETRYING} {retry[1]}")
        elif _RETRY_SUCCEEDED_RE.search(line) and (self.detail or "").startswith(RETRYING):
            self.set_detail(None)  # 0.17+: "Save(<data/...>) operation successful after 1 retries"
        if len(self._log) >= 200:
            self._runner._spawn(self.flush())

    def set_detail(self, detail: str | None) -> None:
        """Say (or stop saying) what the running operation is going through; sent on a tick."""
        if detail != self.detail:
            self.detail = detail
            self._detail_dirty = True

    def _active(self) -> None:
        self.last_activity = time.monotonic()
        if self._stalled:
            self._stalled = False
            self.set_detail(None)

    def check_stall(self, now: float) -> None:
        """Note once that the job has been silent for ``stall_after`` seconds; forget an old
        retry (restic 0.14 never says that a retry worked)."""
        if (self.detail or "").startswith(RETRYING) and now - self._last_retry > RETRY_DETAIL_TTL:
            self.set_detail(None)
        stall_after = self._runner.stall_after
        if self._stalled or stall_after <= 0 or now - self.last_activity < stall_after:
            return
        self._stalled = True
        silent = int(now - self.last_activity)
        message = (
            f"stalled: no output or progress from restic for {silent} s; it may be waiting for "
            "the storage (it keeps retrying), or it may be stuck"
        )
        self._log.append(f"warning: {message}")
        self.set_detail(message)

    def pending(self) -> bool:
        return bool(self._log or self._detail_dirty)

    def final_progress(self, success: bool) -> dict[str, Any]:
        """The progress fields an ending operation keeps: the last ones reported and, on
        success, done = total, so a bar drawn from them ends at 100 % rather than at the last
        throttled update.

        All of them, not only those no flush has taken: a flush started by the job's last
        report may hold them while its write waits, and finds the operation over when it runs
        (it then writes nothing), so the end must carry them itself.
        """
        fields = {k: v for k, v in self._reported.items() if k != "eta_seconds"}
        self._pending = {}
        if success:
            for done, total in (("bytes_done", "bytes_total"), ("files_done", "files_total")):
                whole = fields.get(total, getattr(self.op, total, None))
                if isinstance(whole, int) and whole > 0:
                    fields[done] = whole
        return fields

    def take_log(self) -> list[str]:
        """The log lines not yet written, handed over (to the operation's final write)."""
        lines, self._log = self._log, []
        self._detail_dirty = False  # the final write sets the summary
        return lines

    async def flush(self) -> None:
        lines, self._log = self._log, []
        fields, self._pending = self._pending, {}
        if self._detail_dirty:
            self._detail_dirty = False
            fields["summary"] = {"detail": self.detail} if self.detail else {}
        if lines:
            await self._runner.store.append_log(self.op.pk, lines)
        if fields and self._runner.is_running(self.op.pk):
            self.op = await self._runner.store.update_operation(self.op.pk, **fields)
            self._runner.bus.publish(OperationChanged(op=self.op))


Job = Callable[[OpContext], Awaitable[Outcome]]


@dataclass
class _Queued:
    op: Operation
    job: Job
    done: asyncio.Future[Operation]
    #: Set by :meth:`Runner.cancel` while it waits in the queue.
    cancelled: bool = False


class Runner:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        *,
        max_parallel: int = 2,
        progress_interval: float = 1.0,
        stall_after: float = DEFAULT_STALL_AFTER,
        log_flush_interval: float = LOG_FLUSH_INTERVAL,
    ) -> None:
        self.store = store
        self.bus = bus
        self.progress_interval = progress_interval
        #: Seconds of silence before a running operation says it is stalled (0: never).
        self.stall_after = stall_after
        self.log_flush_interval = log_flush_interval
        self._max_parallel = max_parallel
        self._slots = asyncio.Semaphore(max_parallel)
        self._queues: dict[str, asyncio.Queue[_Queued]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._running: dict[int, asyncio.Task[Outcome]] = {}
        self._queued: dict[int, _Queued] = {}
        self._cancel_requested: set[int] = set()
        #: Queue keys whose worker is running a job now.
        self._active_keys: set[str] = set()
        #: Queue keys promised an immediate start by :meth:`claim_start`, until their submit.
        self._claimed: set[str] = set()
        self._helpers: set[asyncio.Task[Any]] = set()
        self._closing = False

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    @property
    def closing(self) -> bool:
        """True once :meth:`close` began: nothing new may be submitted."""
        return self._closing

    def is_running(self, pk: int) -> bool:
        return pk in self._running

    def busy(self) -> bool:
        return bool(self._running or self._queued)

    async def _set(self, op: Operation, **fields: Any) -> Operation:
        op = await self.store.update_operation(op.pk, **fields)
        self.bus.publish(OperationChanged(op=op))
        return op

    def claim_start(self, queue_key: str) -> bool:
        """Promise the next :meth:`submit` on ``queue_key`` an immediate start, if it can have one.

        True when nothing is queued or running on ``queue_key`` and a slot is free that no
        queued job or other claim may take first. The caller then creates its operation as
        ``running`` (with ``started_at``) and submits it: one store write and one event at the
        start instead of two (``pending``, then ``running``). A claim not followed by
        :meth:`submit` must be given back with :meth:`release_claim`.
        """
        if self._closing or queue_key in self._claimed or queue_key in self._active_keys:
            return False
        queue = self._queues.get(queue_key)
        if queue is not None and not queue.empty():
            return False
        # Every held slot belongs to a running job or to a queued one about to start.
        if len(self._running) + len(self._queued) + len(self._claimed) >= self._max_parallel:
            return False
        self._claimed.add(queue_key)
        return True

    def release_claim(self, queue_key: str) -> None:
        """Give back a :meth:`claim_start` whose operation was not submitted after all."""
        self._claimed.discard(queue_key)

    async def submit(self, queue_key: str, op: Operation, job: Job) -> asyncio.Future[Operation]:
        """Queue ``job`` for the (already created) operation ``op``.

        ``op`` is ``pending``, or ``running`` after a :meth:`claim_start` on ``queue_key``
        (the runner then does not write that status again). Returns a future that resolves
        to the finished operation row.
        """
        self._claimed.discard(queue_key)
        if self._closing:
            raise RuntimeError("the runner is shutting down")
        self.bus.publish(OperationChanged(op=op))
        done: asyncio.Future[Operation] = asyncio.get_running_loop().create_future()
        item = _Queued(op, job, done)
        self._queued[op.pk] = item
        queue = self._queues.get(queue_key)
        if queue is None:
            queue = self._queues[queue_key] = asyncio.Queue()
            self._workers[queue_key] = asyncio.create_task(
                self._worker(queue_key, queue), name=f"runner:{queue_key}"
            )
        queue.put_nowait(item)
        return done

    async def cancel(self, pk: int) -> bool:
        """Cancel a queued or running operation. Returns False if it is not ours to cancel."""
        if pk in self._running:
            self._cancel_requested.add(pk)
            self._running[pk].cancel()
            return True
        item = self._queued.pop(pk, None)
        if item is not None:
            # Cancelled now, not when its turn comes: a queued backup behind a long one would
            # otherwise show "pending" for as long as that one runs. The worker skips it.
            item.cancelled = True
            op = await self._set(item.op, status=OpStatus.CANCELLED, ended_at=utcnow())
            if not item.done.done():
                item.done.set_result(op)
            return True
        return False

    async def _worker(self, key: str, queue: asyncio.Queue[_Queued]) -> None:
        while True:
            item = await queue.get()
            self._active_keys.add(key)
            try:
                await self._run_one(item)
            except Exception:  # pragma: no cover - _run_one handles everything it can
                log.exception("runner: unexpected failure")
                if not item.done.done():
                    item.done.set_exception(RuntimeError("operation failed unexpectedly"))
            finally:
                self._active_keys.discard(key)
                queue.task_done()

    async def _run_one(self, item: _Queued) -> None:
        op = item.op
        if item.cancelled:
            return  # cancel() already marked it and answered its waiters
        async with self._slots:
            ctx = OpContext(self, op)
            if op.status != OpStatus.RUNNING:  # else created running (claim_start), published
                op = await self._set(op, status=OpStatus.RUNNING, started_at=utcnow())
            ctx.op = op
            task = asyncio.ensure_future(item.job(ctx))
            self._running[op.pk] = task
            self._queued.pop(op.pk, None)
            ctx.ticker = asyncio.ensure_future(self._tick(ctx, task))
            final: dict[str, Any]
            try:
                outcome = await asyncio.shield(task)
                final = {
                    "status": outcome.status,
                    "snapshot_id": outcome.snapshot_id,
                    "summary": outcome.summary,
                    "error": outcome.error,
                }
            except asyncio.CancelledError:
                # Either a person cancelled this operation, or the node is stopping (in which case
                # our own worker task was cancelled and the job must be stopped too).
                if not task.done():
                    task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                if op.pk in self._cancel_requested:
                    final = {"status": OpStatus.CANCELLED, "error": "cancelled by request"}
                else:
                    final = {"status": OpStatus.INTERRUPTED, "error": STOPPED_MESSAGE}
                if self._closing:
                    await self._finish(ctx, item, final)
                    raise
            except ResticError as exc:
                # The class of the failure goes with it (the tray tells a new kind of failure
                # from the same one repeating without reading the English message).
                final = {
                    "status": OpStatus.ERROR,
                    "error": exc.message,
                    "summary": {"error_kind": exc.kind.value},
                }
            except Exception as exc:
                log.exception("operation %s failed", op.op_id)
                final = {
                    "status": OpStatus.ERROR,
                    "error": f"unexpected error: {exc}",
                    "summary": {"error_kind": "unexpected"},
                }
            await self._finish(ctx, item, final)

    async def _tick(self, ctx: OpContext, task: asyncio.Future[Outcome]) -> None:
        """While ``task`` runs: write its log lines and detail every ``log_flush_interval``,
        and notice when it has gone silent. One DB write per tick at most, none when idle."""
        while not task.done():
            await asyncio.wait({task}, timeout=self.log_flush_interval)
            if task.done():
                return
            ctx.check_stall(time.monotonic())
            if ctx.pending():
                try:
                    await ctx.flush()
                except Exception:  # a failed write must not end the operation; retry next tick
                    log.exception("writing the log of operation %s failed", ctx.op.op_id)

    async def _finish(self, ctx: OpContext, item: _Queued, final: dict[str, Any]) -> None:
        pk = ctx.op.pk
        if ctx.detail is not None and "summary" not in final:
            final = {**final, "summary": {}}  # "retrying: ..." was about the run, now over
        self._running.pop(pk, None)
        self._cancel_requested.discard(pk)
        if ctx.ticker is not None:  # its last write first: log lines stay in order
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(ctx.ticker), 30)
        progress = ctx.final_progress(final.get("status") == OpStatus.SUCCESS)
        final = {**progress, **final}
        # The last log lines and the end in one write (it was two: most of the time from
        # restic's exit to the operation's end).
        op = await self.store.end_operation(
            pk, ctx.take_log(), ended_at=utcnow(), eta_seconds=None, **final
        )
        self.bus.publish(OperationChanged(op=op))
        if not item.done.done():
            item.done.set_result(op)

    async def close(self) -> None:
        """Stop: cancel running jobs (restic gets SIGINT), mark everything left unfinished."""
        self._closing = True
        for task in self._workers.values():
            task.cancel()
        for task in self._workers.values():
            with contextlib.suppress(BaseException):
                await task
        for pk, item in list(self._queued.items()):
            op = await self._set(
                item.op, status=OpStatus.INTERRUPTED, ended_at=utcnow(), error=STOPPED_MESSAGE
            )
            if not item.done.done():
                item.done.set_result(op)
            self._queued.pop(pk, None)
        for task in list(self._helpers):
            with contextlib.suppress(BaseException):
                await task
