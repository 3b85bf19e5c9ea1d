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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from peerstash.core.events import EventBus, OperationChanged
from peerstash.core.models import Operation, OpStatus
from peerstash.core.restic import ResticError
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


class OpContext:
    """Handed to a job: report progress and log lines without thinking about the store."""

    def __init__(self, runner: Runner, op: Operation) -> None:
        self._runner = runner
        self.op = op
        self._last_flush = 0.0
        self._pending: dict[str, Any] = {}
        self._log: list[str] = []

    def progress(self, **fields: Any) -> None:
        """Record progress; written (and published) at most every ``progress_interval``."""
        self._pending.update(fields)
        now = time.monotonic()
        if now - self._last_flush >= self._runner.progress_interval:
            self._last_flush = now
            self._runner._spawn(self.flush())

    def log(self, line: str) -> None:
        self._log.append(line)
        if len(self._log) >= 200:
            self._runner._spawn(self.flush())

    async def flush(self) -> None:
        lines, self._log = self._log, []
        fields, self._pending = self._pending, {}
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


class Runner:
    def __init__(
        self, store: Store, bus: EventBus, *, max_parallel: int = 2, progress_interval: float = 1.0
    ) -> None:
        self.store = store
        self.bus = bus
        self.progress_interval = progress_interval
        self._slots = asyncio.Semaphore(max_parallel)
        self._queues: dict[str, asyncio.Queue[_Queued]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._running: dict[int, asyncio.Task[Outcome]] = {}
        self._queued: dict[int, _Queued] = {}
        self._cancel_requested: set[int] = set()
        self._helpers: set[asyncio.Task[Any]] = set()
        self._closing = False

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    def is_running(self, pk: int) -> bool:
        return pk in self._running

    def busy(self) -> bool:
        return bool(self._running or self._queued)

    async def _set(self, op: Operation, **fields: Any) -> Operation:
        op = await self.store.update_operation(op.pk, **fields)
        self.bus.publish(OperationChanged(op=op))
        return op

    async def submit(self, queue_key: str, op: Operation, job: Job) -> asyncio.Future[Operation]:
        """Queue ``job`` for the (already created, ``pending``) operation ``op``.

        Returns a future that resolves to the finished operation row.
        """
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
                self._worker(queue), name=f"runner:{queue_key}"
            )
        queue.put_nowait(item)
        return done

    async def cancel(self, pk: int) -> bool:
        """Cancel a queued or running operation. Returns False if it is not ours to cancel."""
        if pk in self._running:
            self._cancel_requested.add(pk)
            self._running[pk].cancel()
            return True
        item = self._queued.get(pk)
        if item is not None:
            self._cancel_requested.add(pk)
            return True
        return False

    async def _worker(self, queue: asyncio.Queue[_Queued]) -> None:
        while True:
            item = await queue.get()
            try:
                await self._run_one(item)
            except Exception:  # pragma: no cover - _run_one handles everything it can
                log.exception("runner: unexpected failure")
                if not item.done.done():
                    item.done.set_exception(RuntimeError("operation failed unexpectedly"))
            finally:
                queue.task_done()

    async def _run_one(self, item: _Queued) -> None:
        op = item.op
        if op.pk in self._cancel_requested:
            self._cancel_requested.discard(op.pk)
            self._queued.pop(op.pk, None)
            op = await self._set(op, status=OpStatus.CANCELLED, ended_at=utcnow())
            item.done.set_result(op)
            return
        async with self._slots:
            ctx = OpContext(self, op)
            op = await self._set(op, status=OpStatus.RUNNING, started_at=utcnow())
            ctx.op = op
            task = asyncio.ensure_future(item.job(ctx))
            self._running[op.pk] = task
            self._queued.pop(op.pk, None)
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
                final = {"status": OpStatus.ERROR, "error": exc.message}
            except Exception as exc:
                log.exception("operation %s failed", op.op_id)
                final = {"status": OpStatus.ERROR, "error": f"unexpected error: {exc}"}
            await self._finish(ctx, item, final)

    async def _finish(self, ctx: OpContext, item: _Queued, final: dict[str, Any]) -> None:
        pk = ctx.op.pk
        self._running.pop(pk, None)
        self._cancel_requested.discard(pk)
        await ctx.flush()
        op = await self._set(ctx.op, ended_at=utcnow(), eta_seconds=None, **final)
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
