"""When each backup plan runs: cron or interval schedules that survive sleep and clock jumps.

Vorta's users complain that backups silently stop, or run in a burst, after the laptop slept.
The usual cause is a scheduler that computes "sleep N seconds" once and trusts it: the event
loop's timers run on the monotonic clock, which on Linux and macOS does not advance while the
machine is suspended, so a 6-hour sleep that straddles a night in a bag ends hours late. This
scheduler never trusts one long sleep:

* Each plan's next due time is **persisted** (wall clock, UTC), so a restart, a crash or a
  night powered off cannot lose or repeat a run.
* The loop sleeps until the earliest due time but never longer than ``max_tick``. Every tick it
  compares how far the wall clock moved with how far the monotonic clock moved. A difference
  larger than ``jump_threshold`` means the machine was asleep or someone stepped the clock; so
  does a sleep that overslept by more than ``jump_threshold`` (Windows' monotonic clock keeps
  counting in suspend, so there the gap shows up as oversleeping instead). The OS can also say
  so directly through :meth:`Scheduler.notify_wake`.
* A plan that came due while we were not looking (asleep, powered off, before start) runs
  **once** with reason ``"catch-up"``, ``catch_up_grace`` seconds later so Wi-Fi and VPNs are
  back. It does not run once per missed slot: one fresh snapshot replaces them all.
* After every trigger the next due time is computed *from the time it ran* and persisted
  **before** the trigger is awaited, so a crash between the two can at worst skip a run, never
  repeat one.
* A clock stepped backwards leaves stored due times far in the future. A due time further away
  than one period (plus slack) is impossible in normal operation, so it is recomputed from now;
  for cron schedules slots less than half a period after the previous run (measured on the
  monotonic clock) are skipped, so the step can neither stall a plan for its length nor run the
  same slot twice. As a last safety net for steps too small to notice, two runs of one plan
  are never closer than min(shortest period, grace) on the monotonic clock.
* Paused means "skip until resumed": nothing triggers, due times keep advancing, and on resume
  each plan that came due while paused runs once, at once, as a catch-up.
* A plan that has not succeeded for ``stale_factor`` times its expected period is reported once
  through ``on_stale`` per episode, which is what lets the tray warn before anyone needs a
  restore that isn't there.

Cron expressions are evaluated in the machine's local time zone (DST-aware) and stored as UTC.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

log = logging.getLogger(__name__)

REASON_SCHEDULE = "schedule"
REASON_CATCH_UP = "catch-up"

MIN_INTERVAL_SECONDS = 60
"""Shortest ``--every``: cron cannot go below a minute either, and a backup queued every few
seconds would only pile up behind restic's repository lock."""

MAX_INTERVAL_SECONDS = 366 * 86400
"""Longest ``--every``: a backup plan that runs less than yearly is a typo."""

_MIN_SLEEP = 1.0
"""Floor for one loop sleep, so a due time that is a hair in the future (float rounding) or a
bug that leaves a plan due can never turn the loop into a busy loop."""

_ERROR_RETRY = 10.0
"""How long to wait before retrying after the store failed (capped by ``max_tick``)."""


# --------------------------------------------------------------------------------------------
# The data the node hands us


@dataclass(frozen=True)
class PlanSchedule:
    """What the scheduler needs to know about one backup plan.

    Exactly one of ``cron`` and ``interval_seconds`` is set for a scheduled plan; neither for a
    manual-only one. Datetimes are timezone-aware UTC (naive ones are read as UTC, because
    SQLite hands back naive datetimes).
    """

    plan_id: str
    cron: str | None
    interval_seconds: int | None
    enabled: bool
    next_due_at: datetime | None
    last_success_at: datetime | None
    created_at: datetime


class ScheduleStore(Protocol):
    """The slice of the store the scheduler uses; the node adapts the real store to it."""

    async def list_schedules(self) -> list[PlanSchedule]: ...

    async def set_next_due(self, plan_id: str, when: datetime | None) -> None: ...


class Clock(Protocol):
    """Time, injectable so tests can drive sleeps, suspends and clock jumps deterministically."""

    def now(self) -> datetime:
        """Wall clock, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (and on Linux does not advance in suspend)."""
        ...

    async def sleep(self, seconds: float, wake: asyncio.Event) -> None:
        """Sleep ``seconds``, returning early as soon as ``wake`` is set."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float, wake: asyncio.Event) -> None:
        if wake.is_set():
            return
        try:
            async with asyncio.timeout(max(0.0, seconds)):
                await wake.wait()
        except TimeoutError:
            pass


# --------------------------------------------------------------------------------------------
# Parsing and validation


_UNIT_SECONDS = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
}
_EVERY_PART = re.compile(r"\s*(\d+)\s*([a-z]*)\s*")


def parse_every(text: str) -> int:
    """Parse an ``--every`` value such as ``"90s"``, ``"15m"``, ``"6h"``, ``"1d"``, ``"1h30m"``.

    Returns seconds. Units: s, m, h, d, w (long forms like ``"2 hours"`` work too). A bare
    number is refused rather than guessed, because "every 6" could mean hours or seconds.
    """
    cleaned = text.strip().lower()
    if not cleaned:
        raise ValueError("empty interval: write e.g. '6h', '30m', '1d' or '1h30m'")
    if "." in cleaned or "," in cleaned:
        raise ValueError(f"interval {text!r}: use whole numbers, e.g. '1h30m' rather than '1.5h'")
    total = 0
    seen: set[int] = set()
    pos = 0
    while pos < len(cleaned):
        match = _EVERY_PART.match(cleaned, pos)
        if match is None or match.end() == pos:
            raise ValueError(
                f"cannot read interval {text!r}: write a number and a unit, e.g. '6h' or '1h30m'"
            )
        number, unit = match.groups()
        if not unit:
            raise ValueError(
                f"interval {text!r} has no unit after {number}: "
                "add one of s, m, h, d, w (e.g. '6h', '90m')"
            )
        if unit not in _UNIT_SECONDS:
            raise ValueError(f"unknown unit {unit!r} in interval {text!r}: use s, m, h, d or w")
        factor = _UNIT_SECONDS[unit]
        if factor in seen:
            raise ValueError(f"interval {text!r} gives the same unit twice")
        seen.add(factor)
        total += int(number) * factor
        pos = match.end()
    if total < MIN_INTERVAL_SECONDS:
        raise ValueError(
            f"interval {text!r} is too short: the minimum is {MIN_INTERVAL_SECONDS // 60}m"
        )
    if total > MAX_INTERVAL_SECONDS:
        raise ValueError(
            f"interval {text!r} is too long: the maximum is {MAX_INTERVAL_SECONDS // 86400}d"
        )
    return total


def _cron(expr: str, start: datetime) -> croniter:
    """A croniter for a 5-field expression (or an ``@daily``-style alias), or a clear ValueError.

    croniter also accepts 6 and 7 fields (seconds, years); we refuse them so that what the user
    typed means what crontab(5) says it means.
    """
    stripped = expr.strip()
    if not stripped:
        raise ValueError("empty cron expression: write e.g. '0 3 * * *' (every day at 03:00)")
    if not stripped.startswith("@"):
        fields = stripped.split()
        if len(fields) != 5:
            raise ValueError(
                f"cron expression {expr!r} has {len(fields)} field(s); it needs exactly 5: "
                "minute hour day-of-month month day-of-week, e.g. '0 3 * * *'"
            )
    try:
        return croniter(stripped, start)
    except CroniterError as exc:
        raise ValueError(f"invalid cron expression {expr!r}: {exc}") from exc


_GAP_REFERENCE = datetime(2024, 1, 1, tzinfo=UTC)


@functools.lru_cache(maxsize=256)
def _cron_gaps(expr: str) -> tuple[float, float]:
    """(shortest, longest) gap in seconds between consecutive fires of ``expr``.

    Evaluated in UTC so the answer is the schedule's nominal rhythm, free of DST artefacts
    (callers add DST slack where it matters). The longest gap, not a typical one, is what
    staleness needs: "0 3 * * 1-5" fires daily but leaves 72 h over the weekend, and a plan
    must not be reported stale every Monday morning. Sampling: the first fires in sequence
    (for the short gaps), plus the gap around probes every 6 h for 8 days (weekly patterns) and
    every week for 14 months (monthly and yearly ones). Probes sit 17 s past the minute so
    they never coincide with a fire. Cached: a few hundred croniter steps per expression.
    """
    it = _cron(expr, _GAP_REFERENCE)
    try:
        fires: list[float] = [float(it.get_next(float))]
        end = _GAP_REFERENCE.timestamp() + 400 * 86400
        while len(fires) < 3 or (len(fires) < 200 and fires[-1] < end):
            fires.append(float(it.get_next(float)))
        gaps = [b - a for a, b in itertools.pairwise(fires)]
        shortest, longest = min(gaps), max(gaps)
        probes = [_GAP_REFERENCE + timedelta(hours=6 * i, seconds=17) for i in range(1, 33)]
        probes += [_GAP_REFERENCE + timedelta(weeks=i, seconds=17) for i in range(1, 61)]
        for probe in probes:
            ts = probe.timestamp()
            after = float(it.get_next(float, ts, update_current=False))
            before = float(it.get_prev(float, ts, update_current=False))
            longest = max(longest, after - before)
    except CroniterBadDateError as exc:
        raise ValueError(f"cron expression {expr!r} never fires") from exc
    except CroniterError as exc:
        raise ValueError(f"invalid cron expression {expr!r}: {exc}") from exc
    return shortest, longest


def validate_cron(expr: str) -> None:
    """Raise ValueError with a message a person can act on if ``expr`` is not a usable cron.

    Besides syntax this refuses expressions that never fire (``"0 0 30 2 *"``), which croniter
    would otherwise only notice when asked for the next run.
    """
    _cron_gaps(expr.strip())


# --------------------------------------------------------------------------------------------
# Time zone


class _LocalZone:
    cached: tzinfo | None = None


def _resolve_local_timezone() -> tzinfo:
    """The machine's zone as a DST-aware tzinfo where we can find one.

    ``datetime.astimezone()`` only gives a fixed offset, which would move a "03:00" cron job to
    02:00 or 04:00 for half the year, so we look for the IANA zone: ``$TZ``, then the
    ``/etc/localtime`` link (Linux, macOS) or file. The fixed offset is the last resort
    (Windows without tzdata hints), refreshed on every wake.
    """
    name = os.environ.get("TZ", "").strip().lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            # A POSIX TZ string like "CET-1CEST,...": libc understands it, zoneinfo doesn't.
            return datetime.now().astimezone().tzinfo or UTC
    try:
        target = os.readlink("/etc/localtime")
    except OSError:
        target = ""
    if "zoneinfo/" in target:
        try:
            return ZoneInfo(target.rsplit("zoneinfo/", 1)[1])
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with open("/etc/localtime", "rb") as fh:
            return ZoneInfo.from_file(fh)
    except (OSError, ValueError):
        pass
    return datetime.now().astimezone().tzinfo or UTC


def local_timezone() -> tzinfo:
    """The machine's time zone (cached; see :func:`refresh_local_timezone`)."""
    if _LocalZone.cached is None:
        _LocalZone.cached = _resolve_local_timezone()
    return _LocalZone.cached


def refresh_local_timezone() -> tzinfo:
    """Look the zone up again: laptops cross time zones, typically while asleep."""
    _LocalZone.cached = None
    return local_timezone()


# --------------------------------------------------------------------------------------------
# Pure schedule arithmetic


def _utc(value: datetime) -> datetime:
    """Aware UTC; naive values are taken to be UTC already (SQLite returns them naive)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _timing(schedule: PlanSchedule) -> str | None:
    """``"cron"``, ``"interval"`` or None (manual only); ValueError for contradictions."""
    if schedule.cron is not None and schedule.interval_seconds is not None:
        raise ValueError(f"plan {schedule.plan_id}: set either a cron expression or an interval")
    if schedule.interval_seconds is not None:
        if schedule.interval_seconds <= 0:
            raise ValueError(
                f"plan {schedule.plan_id}: interval must be positive, "
                f"not {schedule.interval_seconds}"
            )
        return "interval"
    if schedule.cron is not None:
        return "cron"
    return None


def _is_second_pass(moment: datetime) -> bool:
    """True for the second occurrence of a wall time repeated when DST ends."""
    return moment.fold == 1 and moment.replace(fold=0).utcoffset() != moment.utcoffset()


def _cron_next(expr: str, after: datetime, zone: tzinfo) -> datetime:
    """First fire strictly after ``after``, evaluated in ``zone``.

    When DST ends, 02:30 happens twice; croniter fires both. cron(8) runs fixed-time jobs once
    and only lets frequent ones follow real time, and so do we: the second pass is skipped
    unless the schedule fires at least as often as the clock falls back (hourly and faster).
    A wall time skipped when DST starts is moved to the first minute that exists (croniter).
    """
    shortest, _ = _cron_gaps(expr.strip())
    it = _cron(expr, after.astimezone(zone))
    try:
        for _ in range(16):
            candidate: datetime = it.get_next(datetime)
            if _is_second_pass(candidate):
                first_offset = candidate.replace(fold=0).utcoffset() or timedelta()
                repeat = first_offset - (candidate.utcoffset() or timedelta())
                if shortest > repeat.total_seconds():
                    continue
            return candidate.astimezone(UTC)
    except CroniterBadDateError as exc:
        raise ValueError(f"cron expression {expr!r} never fires") from exc
    raise ValueError(f"cron expression {expr!r}: could not find a next run")  # pragma: no cover


def next_after(
    schedule: PlanSchedule, after: datetime, *, tz: tzinfo | None = None
) -> datetime | None:
    """When the plan runs next, strictly after ``after`` (UTC); None if it never runs by itself.

    Interval plans run ``interval_seconds`` after ``after``: the scheduler passes the time of
    the last run, so "every 6h" means six hours between runs, however late one was. Cron plans
    use the machine's local zone (``tz`` overrides it, for tests and previews). Disabled and
    manual-only plans return None.
    """
    kind = _timing(schedule)
    if kind is None or not schedule.enabled:
        return None
    start = _utc(after)
    if kind == "interval":
        assert schedule.interval_seconds is not None
        return start + timedelta(seconds=schedule.interval_seconds)
    assert schedule.cron is not None
    return _cron_next(schedule.cron, start, tz if tz is not None else local_timezone())


def expected_period(schedule: PlanSchedule) -> timedelta | None:
    """How long the plan may go between runs: the interval, or the cron's longest gap.

    The longest gap between two consecutive fires (not the typical one), so that a weekday
    schedule is not judged by its 24 h gaps over a 72 h weekend. None for manual-only plans.
    Ignores ``enabled``: this describes the schedule, not whether it is active.
    """
    kind = _timing(schedule)
    if kind == "interval":
        assert schedule.interval_seconds is not None
        return timedelta(seconds=schedule.interval_seconds)
    if kind == "cron":
        assert schedule.cron is not None
        return timedelta(seconds=_cron_gaps(schedule.cron.strip())[1])
    return None


def is_stale(schedule: PlanSchedule, now: datetime, factor: float = 2.0) -> bool:
    """True when the plan has gone more than ``factor`` periods without a successful backup.

    A plan that never succeeded is measured from its creation, so a new plan gets the same
    grace as any other. Disabled and manual-only plans are never stale: nobody promised they
    would run.
    """
    if factor <= 0:
        raise ValueError(f"stale factor must be positive, not {factor}")
    if not schedule.enabled:
        return False
    period = expected_period(schedule)
    if period is None:
        return False
    since = schedule.last_success_at or schedule.created_at
    return _utc(now) - _utc(since) > period * factor


# --------------------------------------------------------------------------------------------
# The scheduler


@dataclass
class _PlanState:
    """What the scheduler remembers about a plan between ticks (never persisted)."""

    signature: tuple[str | None, int | None, bool]
    catch_up_at: float | None = None
    """Monotonic deadline of a pending catch-up run."""
    missed_while_paused: bool = False
    last_trigger_mono: float | None = None
    """Monotonic time of our last trigger, to keep runs apart whatever the wall clock does."""
    stale: bool = False
    broken: str | None = None
    """The error last logged for a schedule we cannot compute, so we log it once, not per tick."""


class Scheduler:
    """Decides when each plan runs and asks ``trigger(plan_id, reason)`` to enqueue it.

    ``trigger`` must only enqueue (it is awaited inside the loop); its exceptions are logged.
    All state that matters across restarts lives in the store; what is kept in memory (pending
    catch-ups, paused misses, stale episodes) is recreated sensibly after a restart: overdue
    plans catch up, and a plan still stale is reported once more.

    Plans are re-read from the store on every tick, so edits are picked up within ``max_tick``
    even without :meth:`reschedule`; a changed cron, interval or enabled flag recomputes the
    next due time from now. Disabled and manual-only plans get ``next_due_at = None``.

    ``stale_factor`` is passed to :func:`is_stale`. Staleness is reported while paused too:
    a forgotten pause is exactly what the warning is for. ``tz`` pins the zone cron is
    evaluated in (tests); by default it is the machine's, re-read after every wake.
    """

    def __init__(
        self,
        store: ScheduleStore,
        trigger: Callable[[str, str], Awaitable[None]],
        *,
        clock: Clock | None = None,
        catch_up_grace: float = 60.0,
        max_tick: float = 60.0,
        jump_threshold: float = 120.0,
        on_stale: Callable[[str, datetime | None], None] | None = None,
        stale_factor: float = 2.0,
        tz: tzinfo | None = None,
        on_wake: Callable[[], None] | None = None,
    ) -> None:
        if catch_up_grace < 0:
            raise ValueError("catch_up_grace must not be negative")
        if max_tick <= 0:
            raise ValueError("max_tick must be positive")
        if jump_threshold <= 0:
            raise ValueError("jump_threshold must be positive")
        if stale_factor <= 0:
            raise ValueError("stale_factor must be positive")
        self._store = store
        self._trigger = trigger
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._grace = float(catch_up_grace)
        self._max_tick = float(max_tick)
        self._threshold = float(jump_threshold)
        self._on_wake = on_wake
        self._gap_seen = False  # a sleep or jump we noticed ourselves (not a requested wake)
        self._on_stale = on_stale
        self._stale_factor = stale_factor
        self._tz_override = tz
        self._tz_seen: tzinfo | None = None

        self._states: dict[str, _PlanState] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._wake_requested = False
        self._base_offset: float | None = None
        self._sleep_started: float | None = None
        self._sleep_requested: float | None = None

    # -- control ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the loop. Plans already overdue run once as catch-up after the grace."""
        if self._task is not None and not self._task.done():
            return
        self._base_offset = None
        self._sleep_started = None
        self._sleep_requested = None
        # Whatever came due while we were not running is a catch-up, as after a wake.
        self._wake_requested = True
        self._task = asyncio.create_task(self._run(), name="peerstash-scheduler")

    async def stop(self) -> None:
        """Stop the loop and wait for it; safe to call twice, and while being cancelled."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        except Exception:
            log.exception("scheduler loop ended with an error")

    def reschedule(self) -> None:
        """Plans changed: re-read them and recompute at once."""
        self._wake.set()

    def notify_wake(self) -> None:
        """The OS says we resumed from sleep (or the network changed): catch up after grace.

        Like the other control methods, call it on the loop's thread (from another thread, use
        ``loop.call_soon_threadsafe``). It only adds certainty: the loop notices sleeps itself.
        """
        self._wake_requested = True
        self._wake.set()

    def pause(self) -> None:
        """Skip every run until :meth:`resume`; due times keep advancing meanwhile."""
        if not self._paused:
            log.info("scheduler paused")
            self._paused = True
            self._wake.set()

    def resume(self) -> None:
        """Undo :meth:`pause`; each plan that came due meanwhile runs once, now."""
        if not self._paused:
            return
        log.info("scheduler resumed")
        self._paused = False
        now = self._clock.monotonic()
        for state in self._states.values():
            if state.missed_while_paused:
                state.missed_while_paused = False
                if state.catch_up_at is None:
                    state.catch_up_at = now
        self._wake.set()

    @property
    def paused(self) -> bool:
        return self._paused

    # -- loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            # Cleared before the tick reads anything, so a reschedule() during the tick makes
            # the following sleep return at once instead of being lost.
            self._wake.clear()
            try:
                delay = await self._tick()
            except Exception:
                log.exception("scheduler tick failed; retrying shortly")
                delay = min(self._max_tick, _ERROR_RETRY)
            self._sleep_started = self._clock.monotonic()
            self._sleep_requested = delay
            await self._clock.sleep(delay, self._wake)

    def _detect_gap(self, now: datetime, mono: float) -> tuple[bool, bool]:
        """(woke, went_back): did we sleep / jump forward, or did the wall clock step back?

        Compares the wall-minus-monotonic offset with the one at the last reset rather than
        tick by tick, so that several steps each under the threshold still add up.
        """
        woke = self._wake_requested
        self._wake_requested = False
        went_back = False
        offset = now.timestamp() - mono
        if self._base_offset is None:
            self._base_offset = offset
            return woke, went_back
        drift = offset - self._base_offset
        overslept = False
        slept = 0.0
        if self._sleep_started is not None and self._sleep_requested is not None:
            slept = mono - self._sleep_started
            overslept = slept > self._sleep_requested + self._threshold
        if drift > self._threshold:
            log.info("wall clock ran %.0fs ahead of the monotonic clock: sleep or jump", drift)
            woke = self._gap_seen = True
        elif drift < -self._threshold:
            log.warning("wall clock stepped back by %.0fs", -drift)
            went_back = True
        if overslept:
            log.info("loop overslept (%.0fs asleep): treating it as a wake", slept)
            woke = self._gap_seen = True
        if woke or went_back:
            self._base_offset = offset
        return woke, went_back

    async def _tick(self) -> float:
        """One pass over all plans; returns how long to sleep."""
        now = _utc(self._clock.now())
        mono = self._clock.monotonic()
        woke, _went_back = self._detect_gap(now, mono)
        if self._gap_seen and self._on_wake is not None:
            # Others care too: peer links retry at once instead of waiting out their backoff.
            self._gap_seen = False
            try:
                self._on_wake()
            except Exception:
                log.exception("on_wake callback failed")
        if woke and self._tz_override is None:
            refresh_local_timezone()
        zone = self._tz_override if self._tz_override is not None else local_timezone()
        zone_changed = self._tz_seen is not None and zone is not self._tz_seen
        zone_changed = zone_changed and zone != self._tz_seen
        self._tz_seen = zone

        try:
            schedules = await self._store.list_schedules()
        except Exception:
            # Keep the news of a wake for the next attempt: the base offset has moved on.
            self._wake_requested = self._wake_requested or woke
            raise
        delay = self._max_tick
        store_failed = False
        for schedule in sorted(schedules, key=_due_key):
            try:
                wait = await self._handle(schedule, now, mono, zone, woke, zone_changed)
            except ValueError as exc:
                self._report_broken(schedule, exc)
                continue
            except Exception:
                log.exception("scheduling plan %s failed", schedule.plan_id)
                store_failed = True
                continue
            if wait is not None:
                delay = min(delay, wait)
            self._check_stale(schedule, now)

        known = {s.plan_id for s in schedules}
        for plan_id in list(self._states):
            if plan_id not in known:
                del self._states[plan_id]
        if store_failed:
            delay = max(delay, min(self._max_tick, _ERROR_RETRY))
        return max(delay, min(_MIN_SLEEP, self._max_tick))

    def _report_broken(self, schedule: PlanSchedule, exc: ValueError) -> None:
        state = self._states.get(schedule.plan_id)
        message = str(exc)
        if state is not None and state.broken == message:
            return
        if state is not None:
            state.broken = message
        log.error("plan %s cannot be scheduled: %s", schedule.plan_id, message)

    async def _handle(
        self,
        schedule: PlanSchedule,
        now: datetime,
        mono: float,
        zone: tzinfo,
        woke: bool,
        zone_changed: bool,
    ) -> float | None:
        """Bring one plan up to date, trigger it if due; return seconds until it needs us."""
        plan_id = schedule.plan_id
        signature = (schedule.cron, schedule.interval_seconds, schedule.enabled)
        state = self._states.get(plan_id)
        first_sight = state is None
        if state is None:
            state = self._states[plan_id] = _PlanState(signature)
        changed = state.signature != signature
        state.signature = signature
        if changed:
            state.broken = None

        kind = _timing(schedule)
        if kind is None or not schedule.enabled:
            state.catch_up_at = None
            state.missed_while_paused = False
            state.stale = False
            if schedule.next_due_at is not None:
                await self._store.set_next_due(plan_id, None)
            return None

        due = _utc(schedule.next_due_at) if schedule.next_due_at is not None else None
        if due is None or changed:
            due = self._next_slot(schedule, now, mono, state, zone, just_ran=False)
            await self._store.set_next_due(plan_id, due)
        elif due - now > self._absurd_limit(schedule) or (
            zone_changed and kind == "cron" and due > now
        ):
            fresh = self._next_slot(schedule, now, mono, state, zone, just_ran=False)
            log.warning(
                "plan %s: next run %s is implausible now (clock or zone changed); now %s",
                plan_id,
                due.isoformat(),
                fresh.isoformat(),
            )
            due = fresh
            await self._store.set_next_due(plan_id, due)
        elif due <= now and (first_sight or woke) and state.catch_up_at is None:
            state.catch_up_at = mono + self._grace
            log.info("plan %s missed its run at %s: catching up", plan_id, due.isoformat())
        state.broken = None

        if state.catch_up_at is not None:
            if mono < state.catch_up_at:
                return state.catch_up_at - mono
            reason = REASON_CATCH_UP
        elif due <= now:
            reason = REASON_SCHEDULE
        else:
            return (due - now).total_seconds()

        if not self._paused and state.last_trigger_mono is not None:
            # Never two runs closer than min(period, grace) in real time, whatever the wall
            # clock did in between (small forward steps go unnoticed by _detect_gap).
            ready = state.last_trigger_mono + min(self._shortest(schedule), self._grace)
            if mono < ready:
                return ready - mono

        following = self._next_slot(schedule, now, mono, state, zone, just_ran=True)
        # Persist first: if we die after this line the run is lost, not repeated.
        await self._store.set_next_due(plan_id, following)
        state.catch_up_at = None
        if self._paused:
            state.missed_while_paused = True
            log.info("plan %s came due while paused; it will run on resume", plan_id)
            return (following - now).total_seconds()
        state.last_trigger_mono = mono
        try:
            await self._trigger(plan_id, reason)
        except Exception:
            log.exception("could not enqueue plan %s (%s)", plan_id, reason)
        return (following - now).total_seconds()

    def _shortest(self, schedule: PlanSchedule) -> float:
        if schedule.interval_seconds is not None:
            return float(schedule.interval_seconds)
        assert schedule.cron is not None
        return _cron_gaps(schedule.cron.strip())[0]

    def _absurd_limit(self, schedule: PlanSchedule) -> timedelta:
        """How far ahead a due time can legitimately be; beyond it the clock went back.

        An interval plan's next run is at most one interval after now. A cron plan's is at
        most its longest gap away, plus half its shortest gap (slots that close to the last
        run are skipped) and an hour of DST for schedules slower than two hours.
        """
        if schedule.interval_seconds is not None:
            return timedelta(seconds=schedule.interval_seconds + self._threshold)
        assert schedule.cron is not None
        shortest, longest = _cron_gaps(schedule.cron.strip())
        dst = 3600.0 if longest >= 7200 else 0.0
        return timedelta(seconds=longest + shortest / 2 + dst + self._threshold)

    def _next_slot(
        self,
        schedule: PlanSchedule,
        now: datetime,
        mono: float,
        state: _PlanState,
        zone: tzinfo,
        *,
        just_ran: bool,
    ) -> datetime:
        """The next due time counted from now, keeping cron slots apart from the last run.

        For cron, a slot less than half the shortest gap after the previous run is skipped
        (measured on the monotonic clock): a catch-up at 02:59 must not be followed by the
        03:00 run, and a clock stepped back two hours must not replay today's 03:00.
        """
        candidate = next_after(schedule, now, tz=zone)
        assert candidate is not None  # only called for enabled, scheduled plans
        if schedule.cron is None:
            return candidate
        if just_ran:
            since: float | None = 0.0
        elif state.last_trigger_mono is not None:
            since = mono - state.last_trigger_mono
        else:
            since = None
        if since is None:
            return candidate
        half = self._shortest(schedule) / 2
        for _ in range(10_000):
            if since + (candidate - now).total_seconds() >= half:
                break
            following = next_after(schedule, candidate, tz=zone)
            assert following is not None
            candidate = following
        return candidate

    def _check_stale(self, schedule: PlanSchedule, now: datetime) -> None:
        """Report a plan once when it goes stale; again only after it recovered."""
        state = self._states.get(schedule.plan_id)
        if state is None:
            return
        stale = is_stale(schedule, now, self._stale_factor)
        if not stale:
            state.stale = False
            return
        if state.stale:
            return
        state.stale = True
        log.warning(
            "plan %s is stale: last success %s",
            schedule.plan_id,
            schedule.last_success_at.isoformat() if schedule.last_success_at else "never",
        )
        if self._on_stale is not None:
            try:
                self._on_stale(schedule.plan_id, schedule.last_success_at)
            except Exception:
                log.exception("on_stale callback failed for plan %s", schedule.plan_id)


def _due_key(schedule: PlanSchedule) -> tuple[datetime, str]:
    """Order plans by due time so that the most overdue one is enqueued first."""
    due = schedule.next_due_at
    return (_utc(due) if due is not None else datetime.max.replace(tzinfo=UTC), schedule.plan_id)
