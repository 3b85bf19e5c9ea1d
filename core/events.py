"""In-process publish/subscribe for typed events.

Sync, the admin API's live stream and the tray all react to the same changes; none of them polls
the database. A subscriber that falls behind loses the oldest events and is told so (``lagged``),
which is safe because every consumer can re-read current state from the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """Base of every event; ``topic`` lets a subscriber filter cheaply."""

    topic: str = field(init=False, default="event")


@dataclass(frozen=True)
class OperationChanged(Event):
    topic: str = field(init=False, default="operation")
    op: Any = None  # peerstash.core.models.Operation (detached)


@dataclass(frozen=True)
class OperationsDeleted(Event):
    """Operations were deleted here: some of our own (garbage collection), or of our copy of
    another instance's history (trimmed to its limits, or removed by a person).

    Published so peers holding copies of ours can drop them at once instead of at the next
    connect, and so views showing any of them reload.
    ``ops`` are ``peerstash.core.store.DeletedOp`` (id, repo, plan): the repo and plan decide
    which peers were allowed to see each one.
    """

    topic: str = field(init=False, default="operations-deleted")
    origin: str = ""
    ops: tuple[Any, ...] = ()


@dataclass(frozen=True)
class ConfigChanged(Event):
    topic: str = field(init=False, default="config")
    what: str = ""  # "repo" | "plan" | "settings"
    id: str = ""


@dataclass(frozen=True)
class PlanStale(Event):
    topic: str = field(init=False, default="stale")
    plan_id: str = ""
    last_success_at: Any = None


@dataclass(frozen=True)
class Woke(Event):
    """The machine resumed from sleep (or its clock jumped): retry what waits on the network."""

    topic: str = field(init=False, default="wake")


@dataclass(frozen=True)
class Notice(Event):
    """Something a person should see (e.g. 'schedules paused')."""

    topic: str = field(init=False, default="notice")
    level: str = "info"
    message: str = ""


@dataclass(frozen=True)
class SnapshotsChanged(Event):
    """A repository's snapshots changed behind the views' back: a forget or prune here, or
    (``origin`` set) the owner of a shared repository told us it forgot or pruned.

    The engine caches no snapshot list (each ``snapshots`` call asks restic), so this is for
    views that show one (the desktop's snapshot page, ``events`` followers) to reload it.
    """

    topic: str = field(init=False, default="snapshots")
    repo_id: str = ""
    reason: str = ""  # "forget" | "prune"
    origin: str | None = None


@dataclass(frozen=True)
class SharesReceived(Event):
    """A peer's full set of shared repositories was applied here (``result`` says what
    changed: a :class:`peerstash.core.sharing.ShareResult`). Published even when nothing
    changed, so a view (or a test) knows the set arrived."""

    topic: str = field(init=False, default="shares")
    origin: str = ""
    result: Any = None


class Subscription:
    def __init__(self, bus: EventBus, topics: frozenset[str] | None, maxsize: int) -> None:
        self._bus = bus
        self.topics = topics
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.lagged = False

    def offer(self, event: Event) -> None:
        if self.topics is not None and event.topic not in self.topics:
            return
        if self.queue.full():
            self.queue.get_nowait()
            self.lagged = True
        self.queue.put_nowait(event)

    async def get(self) -> Event:
        return await self.queue.get()

    def close(self) -> None:
        self._bus._subs.discard(self)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Event]:
        while True:
            yield await self.queue.get()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    def __init__(self) -> None:
        self._subs: set[Subscription] = set()

    def subscribe(self, *topics: str, maxsize: int = 10_000) -> Subscription:
        sub = Subscription(self, frozenset(topics) if topics else None, maxsize)
        self._subs.add(sub)
        return sub

    def publish(self, event: Event) -> None:
        for sub in list(self._subs):
            sub.offer(event)
