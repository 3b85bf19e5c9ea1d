"""Repeated log records are counted, not written one by one (peer/logflood.py)."""

from __future__ import annotations

import asyncio
import logging

from peerstash.peer.logflood import RepeatFilter


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_flood_of_accept_errors_from_asyncio_becomes_a_few_lines_and_a_count() -> None:
    now = [1000.0]
    flt = RepeatFilter(window=60.0, burst=10, clock=lambda: now[0])
    out = _Collect()
    out.addFilter(flt)
    logger = logging.getLogger("asyncio")
    # A node started earlier in this process installed the node-wide filter (a real clock) on
    # this logger; this test is about the filter it drives by hand.
    earlier = list(logger.filters)
    for f in earlier:
        logger.removeFilter(f)
    logger.addHandler(out)
    loop = asyncio.new_event_loop()
    try:
        # What asyncio's selector loop reports when accept() hits the descriptor limit.
        for _ in range(10_000):
            loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(24, "Too many open files"),
                }
            )
        assert len(out.lines) == 10
        # Something else is not held back by it.
        logger.error("another problem")
        assert out.lines[-1] == "another problem"
        # A minute later the next one carries the count of what was left out.
        now[0] += 61
        loop.call_exception_handler(
            {
                "message": "socket.accept() out of system resource",
                "exception": OSError(24, "Too many open files"),
            }
        )
        assert out.lines[-1].startswith("socket.accept() out of system resource")
        assert out.lines[-1].endswith("(repeated 9990 more times in the last 60 s)")
        assert len(out.lines) == 12
    finally:
        loop.close()
        logger.removeHandler(out)
        for f in earlier:
            logger.addFilter(f)


def test_templates_with_different_arguments_count_as_one_kind() -> None:
    flt = RepeatFilter(window=60.0, burst=2, clock=lambda: 0.0)
    log = logging.getLogger("peerstash.test.logflood")
    records = [
        log.makeRecord(log.name, logging.INFO, __file__, 1, "closed %s", (f"10.0.0.{i}",), None)
        for i in range(5)
    ]
    assert [flt.filter(r) for r in records] == [True, True, False, False, False]
    # The same record met twice (logger filter, then handler filter) is decided once.
    assert flt.filter(records[0]) is True
