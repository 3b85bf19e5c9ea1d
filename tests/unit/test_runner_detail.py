"""What a running operation says about itself (core/runner.py OpContext), one function at a
time; the real thing, with a real node and restic, is tests/integration/test_restic_trouble.py.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from peerstash.core.runner import RETRY_DETAIL_TTL, OpContext


class _Runner:
    """Only what OpContext reads from its runner."""

    progress_interval = 3600.0  # never flush from progress() in these tests
    stall_after = 120.0

    def _spawn(self, coro: Any) -> None:
        coro.close()


def ctx() -> OpContext:
    return OpContext(_Runner(), object())  # type: ignore[arg-type]


def test_a_retry_notice_becomes_the_detail_and_a_success_line_clears_it() -> None:
    c = ctx()
    c.log(
        "Save(<data/956b9ced99>) returned error, retrying after 720ms: "
        "unexpected HTTP response (500): 500 Internal Server Error"
    )
    assert c.detail == "retrying: unexpected HTTP response (500): 500 Internal Server Error"
    assert c.pending()
    c.log("Save(<data/956b9ced99>) operation successful after 1 retries")
    assert c.detail is None
    c.log("some other line")
    assert c.detail is None


def test_an_old_retry_is_forgotten_restic_014_never_says_it_worked() -> None:
    c = ctx()
    c.log("Load(<lock/1a>, 0, 0) returned error, retrying after 1s: connection reset by peer")
    assert c.detail and c.detail.startswith("retrying: ")
    c.check_stall(c.last_activity + 1)
    assert c.detail and c.detail.startswith("retrying: ")
    c.last_activity -= RETRY_DETAIL_TTL + 1
    c._last_retry -= RETRY_DETAIL_TTL + 1
    c.check_stall(c.last_activity + RETRY_DETAIL_TTL + 1)
    assert c.detail is None


def test_silence_is_stalled_once_and_only_moving_progress_ends_it() -> None:
    c = ctx()
    c.progress(bytes_done=10, bytes_total=100, eta_seconds=50)
    start = c.last_activity
    c.check_stall(start + 119)
    assert c.detail is None
    c.check_stall(start + 121)
    assert c.detail is not None and c.detail.startswith("stalled: no output or progress")
    assert c._log == [f"warning: {c.detail}"]
    c.check_stall(start + 500)  # said once, not every tick
    assert len(c._log) == 1
    c.progress(bytes_done=10, bytes_total=100, eta_seconds=40)  # the same, repeated: silence
    assert c.detail is not None and c.detail.startswith("stalled: ")
    c.progress(bytes_done=11, bytes_total=100, eta_seconds=40)
    assert c.detail is None


def test_stall_warning_off_when_the_setting_is_zero() -> None:
    c = ctx()
    c._runner.stall_after = 0  # type: ignore[attr-defined]
    c.check_stall(c.last_activity + 10**6)
    assert c.detail is None and c._log == []


def test_the_first_progress_with_work_done_is_published_at_once() -> None:
    spawned: list[Any] = []

    class Counting(_Runner):
        def _spawn(self, coro: Any) -> None:
            spawned.append(coro)
            coro.close()

    c = OpContext(Counting(), object())  # type: ignore[arg-type]
    c._last_flush = time.monotonic()  # a flush just happened: the window is shut
    c.progress(bytes_done=0, files_done=0, bytes_total=100)  # restic still scanning
    assert spawned == []
    c.progress(bytes_done=10, files_done=0, bytes_total=100)
    assert len(spawned) == 1  # something was done: shown now, not a window later
    c.progress(bytes_done=20, files_done=1, bytes_total=100)
    assert len(spawned) == 1  # after that, the window holds again


async def test_the_end_keeps_the_totals_a_flush_in_flight_took() -> None:
    """A short backup: restic's totals are its only report, so they start a flush at once;
    the operation ends while that flush waits for the store. The end must still carry them."""
    release = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    class Store:
        async def update_operation(self, pk: int, **fields: Any) -> Any:
            await release.wait()  # the store busy with another write
            return SimpleNamespace(pk=pk, **fields)

        async def append_log(self, pk: int, lines: list[str]) -> None:
            await release.wait()

    class Flushing(_Runner):
        store = Store()

        def _spawn(self, coro: Any) -> None:
            tasks.append(asyncio.ensure_future(coro))

        bus = SimpleNamespace(publish=lambda event: None)

        def is_running(self, pk: int) -> bool:
            return True

    c = OpContext(Flushing(), SimpleNamespace(pk=1, bytes_total=0, files_total=0))  # type: ignore[arg-type]
    c.progress(bytes_done=500, bytes_total=500, files_done=2, files_total=2)
    await asyncio.sleep(0)  # the flush starts and takes what was pending
    assert tasks and c._pending == {}
    final = c.final_progress(success=True)
    assert final == {"bytes_done": 500, "bytes_total": 500, "files_done": 2, "files_total": 2}
    release.set()
    await asyncio.gather(*tasks)
