"""One link's outgoing queue for a service on it, and the task that sends in order.

Operation sync and shared repositories both send on their own schedule over a link whose read
loop must never wait on a large send (two peers filling each other's socket from their read
loops would deadlock). Each keeps, per link, a queue of jobs run one at a time by a task of
its own; this is that queue. A flood of jobs (a peer asking for work faster than we can do it)
closes the link rather than growing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from peerstash.peer.links import channel as ch
from peerstash.peer.links.link import Link

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it to end, without swallowing our *own* cancellation.

    (``with suppress(BaseException): await task`` would: a dialer cancelled while it stops
    an old link's sync would then carry on, and whoever stops the dialer waits forever.)
    """
    if not task.done():
        task.cancel()
        await asyncio.wait([task])


class LinkOutbox:
    """Jobs for one link, run in order by one task; ends when the link does.

    ``links`` is the owning service's map of live outboxes (an outbox removes itself when its
    link closes or it gives up); ``spawn`` runs a coroutine the service keeps track of.
    Subclasses may override :meth:`idle` (work to do when the queue is empty) and
    :meth:`job_failed` (how a failed job is logged).
    """

    #: Says whose work this is, in log lines.
    what = "link work"

    def __init__(
        self,
        link: Link,
        links: MutableMapping[str, Any],
        spawn: Callable[[Awaitable[None]], None],
        *,
        max_jobs: int,
        name: str,
    ) -> None:
        self.link = link
        self.peer_id = link.peer_id
        self.jobs: deque[Job] = deque()
        self.wake = asyncio.Event()
        self._links = links
        self._spawn = spawn
        self._max_jobs = max_jobs
        self._stopped = False
        self._task = asyncio.create_task(self._run(), name=f"{name}:{self.peer_id}")
        self._watch = asyncio.create_task(self._watch_link(), name=f"{name}-watch:{self.peer_id}")

    def enqueue(self, job: Job) -> None:
        if self._stopped:
            return
        if len(self.jobs) >= self._max_jobs:
            log.warning("too much queued %s for %s; closing the link", self.what, self.peer_id)
            self._stopped = True
            if self._links.get(self.peer_id) is self:
                del self._links[self.peer_id]
            self._spawn(self.link.close(f"too many {self.what} requests"))
            self.wake.set()
            return
        self.jobs.append(job)
        self.wake.set()

    async def stop(self) -> None:
        self._stopped = True
        self.wake.set()
        current = asyncio.current_task()
        for task in (self._task, self._watch):
            if task is not current:
                await cancel_and_wait(task)

    async def idle(self) -> float | None:
        """Work to do when no job is queued; returns how long to wait at most (None: until
        woken)."""
        return None

    def job_failed(self, exc: Exception) -> None:
        log.exception("%s for %s: a job failed", self.what, self.peer_id, exc_info=exc)

    async def _watch_link(self) -> None:
        await self.link.closed.wait()
        self._stopped = True
        self.wake.set()
        if self._links.get(self.peer_id) is self:
            del self._links[self.peer_id]

    async def _run(self) -> None:
        try:
            while not self._stopped:
                self.wake.clear()
                if self.jobs:
                    job = self.jobs.popleft()
                    try:
                        await job()
                    except (ch.ChannelError, ConnectionError):
                        raise
                    except Exception as exc:
                        self.job_failed(exc)
                    continue
                delay = await self.idle()
                if self.jobs or self.wake.is_set():
                    continue
                if delay is None:
                    await self.wake.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), delay)
        except (ch.ChannelError, ConnectionError) as exc:
            log.debug("%s with %s ended: %s", self.what, self.peer_id, exc)


class LinkService:
    """What a service that keeps an outbox per link shares: its outboxes, the tasks it spawns,
    and the one bus subscription its pump follows; :meth:`stop` ends them all in order."""

    def __init__(self) -> None:
        self._links: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pump: asyncio.Task[None] | None = None
        self._sub: Any = None

    def _follow_bus(self, sub: Any, pump: Awaitable[None], name: str) -> None:
        """Subscribe first (so no event is missed), then start the pump that reads it."""
        self._sub = sub
        self._pump = asyncio.ensure_future(pump)
        self._pump.set_name(name)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        if self._pump is not None:
            await cancel_and_wait(self._pump)
            self._pump = None
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        for outbox in list(self._links.values()):
            await outbox.stop()
        self._links.clear()
        for task in list(self._tasks):
            await cancel_and_wait(task)
