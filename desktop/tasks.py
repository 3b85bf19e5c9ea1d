"""Fire-and-forget coroutines for Qt callbacks, kept referenced and reported.

A button's ``clicked`` handler cannot await. It hands its coroutine to :class:`Tasks`, which keeps
a reference (asyncio only keeps weak ones, so an unreferenced task can vanish mid-flight),
reports a failure through ``on_error`` in words instead of a traceback in a terminal nobody
reads, and cancels everything when its owner closes. Tests await :meth:`Tasks.idle`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

#: Seconds :meth:`Tasks.close` waits for cancelled tasks to end.
CLOSE_DEADLINE = 10.0


class Tasks:
    def __init__(self, on_error: Callable[[BaseException], None] | None = None) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.on_error = on_error

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if self.on_error is not None:
            try:
                self.on_error(exc)
                return
            except Exception:  # pragma: no cover - the reporter itself failed
                log.exception("error reporter failed")
        log.error("background task %s failed", task.get_name(), exc_info=exc)

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    async def idle(self) -> None:
        """Wait until every task spawned so far (and any they spawn) has ended."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def close(self, deadline: float = CLOSE_DEADLINE) -> None:
        """Cancel every task and wait for them, at most ``deadline`` seconds: quitting must not
        hang on a task that does not stop (it is named in the log and left behind)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=deadline)
            for task in stuck:
                log.warning(
                    "task %s did not stop within %gs of being cancelled", task.get_name(), deadline
                )
