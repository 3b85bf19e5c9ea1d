"""Repeated log records are counted, not written one by one.

Under a connection flood the same error comes thousands of times a second (``accept()``
failing with "Too many open files", a handshake timing out); written one by one it filled
289 MB in under two minutes and buried everything else. :class:`RepeatFilter` lets the first
``burst`` records of a kind through per ``window`` seconds, drops the rest, and appends
"(repeated N more times in the last W s)" to the next record of that kind it lets through.

A *kind* is the logger, the level, the message template (the first line of the message for
records logged without arguments, as asyncio's exception handler does) and the exception's type
and errno. Distinct events that share a template are throttled together on purpose: a flood
differs only in its arguments.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Seen:
    start: float
    count: int = 0
    suppressed: int = 0


class RepeatFilter(logging.Filter):
    """Throttle records of one kind to ``burst`` per ``window`` seconds (see the module doc)."""

    def __init__(
        self,
        window: float = 60.0,
        burst: int = 10,
        *,
        max_kinds: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.window = window
        self.burst = burst
        self.max_kinds = max_kinds
        self._clock = clock
        self._seen: OrderedDict[tuple[object, ...], _Seen] = OrderedDict()

    @staticmethod
    def _kind(record: logging.LogRecord) -> tuple[object, ...]:
        template = str(record.msg)
        if not record.args:
            template = template.split("\n", 1)[0]
        exc = record.exc_info[1] if record.exc_info else None
        return (
            record.name,
            record.levelno,
            template,
            type(exc).__name__ if exc is not None else None,
            getattr(exc, "errno", None),
        )

    def filter(self, record: logging.LogRecord) -> bool:
        # A record can meet this filter twice (on its logger, then on a handler): decide once.
        decided = getattr(record, "_peerstash_repeat", None)
        if decided is not None:
            return bool(decided)
        verdict = self._decide(record)
        setattr(record, "_peerstash_repeat", verdict)  # noqa: B010
        return verdict

    def _decide(self, record: logging.LogRecord) -> bool:
        key = self._kind(record)
        now = self._clock()
        seen = self._seen.get(key)
        if seen is None or now - seen.start >= self.window:
            suppressed = seen.suppressed if seen is not None else 0
            self._seen[key] = _Seen(start=now, count=1)
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_kinds:
                self._seen.popitem(last=False)
            if suppressed:
                record.msg = (
                    f"{record.getMessage()} (repeated {suppressed} more times in the last "
                    f"{self.window:g} s)"
                )
                record.args = None
            return True
        seen.count += 1
        if seen.count <= self.burst:
            return True
        seen.suppressed += 1
        return False


_installed: RepeatFilter | None = None


def install(loggers: tuple[str, ...] = ("asyncio", "aiohttp.server", "aiohttp.web")) -> None:
    """Throttle repeats on every handler of the root logger and on ``loggers`` (idempotent).

    Filters on a handler see the records of every logger that propagates to it; the named
    loggers also get it directly, for handlers added to them later.
    """
    global _installed
    if _installed is None:
        _installed = RepeatFilter()
    for handler in logging.getLogger().handlers:
        if _installed not in handler.filters:
            handler.addFilter(_installed)
    for name in loggers:
        logger = logging.getLogger(name)
        if _installed not in logger.filters:
            logger.addFilter(_installed)
