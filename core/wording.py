"""How results are worded for people: one wording, used by the CLI and the desktop alike.

A finished backup's line ("12 new, 3 changed, 480 unmodified files · 4.2 MiB added · took 5s")
and a snapshot's tags read as plan and host are built here, from what the engine stores (an
operation's ``summary``, restic's snapshot record), so ``peerstash backup --wait``, the
operation's log and the tray never say the same thing three ways. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

__all__ = [
    "SnapshotTags",
    "backup_summary_line",
    "human_bytes",
    "human_duration",
    "snapshot_size",
    "split_tags",
]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _int(summary: Mapping[str, Any], key: str) -> int | None:
    value = summary.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def backup_summary_line(summary: Mapping[str, Any] | None) -> str | None:
    """What restic reported about a finished backup, in one line; None when ``summary`` is not
    a backup's (a running operation's ``{"detail": ...}``, a forget's ids, nothing at all).

    The fields are those of :meth:`peerstash.core.restic.BackupResult.summary_dict`.
    """
    if not summary:
        return None
    new, changed, same = (
        _int(summary, "files_new"),
        _int(summary, "files_changed"),
        _int(summary, "files_unmodified"),
    )
    if new is None or changed is None or same is None:
        return None
    parts = [f"{new} new, {changed} changed, {same} unmodified files"]
    added = _int(summary, "data_added")
    if added is not None:
        parts.append(f"{human_bytes(added)} added")
    duration = summary.get("total_duration")
    if isinstance(duration, int | float) and not isinstance(duration, bool):
        parts.append(f"took {human_duration(duration)}")
    return " · ".join(parts)


class SnapshotTags(NamedTuple):
    """A snapshot's tags as people read them: the plan and the machine that made it (the
    ``plan:`` and ``host:`` tags :meth:`peerstash.core.engine.Engine.backup` writes), and
    whatever other tags it has. A NamedTuple rather than a dataclass: this module is on the
    quick CLI path, and :mod:`dataclasses` costs several milliseconds to import."""

    plan: str = ""
    host: str = ""
    others: tuple[str, ...] = ()


def split_tags(tags: Sequence[str] | None) -> SnapshotTags:
    plan = host = ""
    others: list[str] = []
    for tag in tags or ():
        if tag.startswith("plan:") and not plan:
            plan = tag.removeprefix("plan:")
        elif tag.startswith("host:") and not host:
            host = tag.removeprefix("host:")
        else:
            others.append(tag)
    return SnapshotTags(plan=plan, host=host, others=tuple(others))


def snapshot_size(summary: Mapping[str, Any] | None) -> tuple[int | None, int | None]:
    """(bytes, files) of a snapshot from the ``summary`` restic 0.17+ stores in it; (None,
    None) when restic did not say (older versions write no summary)."""
    if not summary:
        return None, None
    return _int(summary, "total_bytes_processed"), _int(summary, "total_files_processed")
