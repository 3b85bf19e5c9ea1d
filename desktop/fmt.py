"""How the desktop words numbers, times and results. Pure functions, no Qt."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from peerstash.core.ops import OpStatus
from peerstash.core.wording import backup_summary_line, human_bytes, human_duration

if TYPE_CHECKING:
    from peerstash.core.records import OpRecord, PlanRecord

__all__ = [
    "STATUS_WORDS",
    "ago",
    "date_time",
    "human_bytes",
    "human_duration",
    "local_time",
    "op_detail",
    "op_progress",
    "parse_time",
    "schedule_text",
    "until",
]

#: How each operation status reads in the views.
STATUS_WORDS: dict[str, str] = {
    OpStatus.PENDING: "queued",
    OpStatus.RUNNING: "running",
    OpStatus.SUCCESS: "success",
    OpStatus.WARNING: "warning",
    OpStatus.ERROR: "failed",
    OpStatus.CANCELLED: "cancelled",
    OpStatus.INTERRUPTED: "interrupted",
}


def parse_time(iso: str | None) -> datetime | None:
    if not iso:
        return None
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def local_time(iso: str | None, *, seconds: bool = False) -> str:
    """A timestamp in the person's zone; the date is left out when it is today."""
    dt = parse_time(iso)
    if dt is None:
        return "—"
    local = dt.astimezone()
    fmt = "%H:%M:%S" if seconds else "%H:%M"
    if local.date() != datetime.now().astimezone().date():
        fmt = "%Y-%m-%d " + fmt
    return local.strftime(fmt)


def date_time(iso: str | None) -> str:
    """Date and time in the person's zone, always both (a snapshot list spans days)."""
    dt = parse_time(iso)
    return "—" if dt is None else dt.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _span(seconds: float) -> str:
    s = int(abs(seconds))
    if s < 60:
        return "a few seconds" if s < 45 else "a minute"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        h = s // 3600
        return f"{h} hour" + ("s" if h != 1 else "")
    d = s // 86400
    return f"{d} day" + ("s" if d != 1 else "")


def ago(iso: str | None, now: datetime | None = None) -> str:
    dt = parse_time(iso)
    if dt is None:
        return "never"
    now = now or datetime.now(UTC)
    return f"{_span((now - dt).total_seconds())} ago"


def until(iso: str | None, now: datetime | None = None) -> str:
    dt = parse_time(iso)
    if dt is None:
        return "not scheduled"
    now = now or datetime.now(UTC)
    delta = (dt - now).total_seconds()
    if delta <= 0:
        return "due now"
    return f"in {_span(delta)}"


def schedule_text(plan: PlanRecord) -> str:
    if plan.schedule:
        return f"cron {plan.schedule}"
    if plan.every_seconds:
        return f"every {human_duration(plan.every_seconds)}"
    return "manual"


def op_progress(op: OpRecord) -> float | None:
    """0..1 for a running operation that knows its total, else None."""
    total = op.bytes_total
    if op.status != OpStatus.RUNNING or total <= 0:
        return None
    return max(0.0, min(1.0, op.bytes_done / total))


def op_detail(op: OpRecord) -> str:
    """The last column of the operations list: progress, error, or what came out."""
    status = op.status
    if status == OpStatus.RUNNING:
        # ``summary`` is free-form (what the runner and restic said): read as a dict.
        detail = op.summary.get("detail")
        if detail:  # restic retrying a failing storage, or silent for a while
            return str(detail).splitlines()[0]
        frac = op_progress(op)
        if frac is None:
            return "starting…" if not op.files_done else f"{op.files_done} files"
        eta = op.eta_seconds
        tail = f" · ETA {human_duration(eta)}" if eta is not None else ""
        return f"{frac * 100:.0f}% of {human_bytes(op.bytes_total)}{tail}"
    if status == OpStatus.PENDING:
        return "waiting for its turn"
    if op.error:
        return op.error.splitlines()[0]
    if op.snapshot_id:
        # What restic reported, in the words the CLI's `backup --wait` uses too.
        said = backup_summary_line(op.summary)
        return f"snapshot {op.snapshot_id[:8]}" + (f" · {said}" if said else "")
    return ""


def took(op: OpRecord) -> str:
    start, end = parse_time(op.started_at), parse_time(op.ended_at)
    if start is None:
        return "—"
    if end is None:
        end = datetime.now(UTC)
    return human_duration((end - start).total_seconds())
