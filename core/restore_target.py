"""Where a restore writes, decided before it runs: a fresh folder by default, and a preview of
what restoring over existing files would overwrite.

restic recreates a snapshot's absolute paths below the target (``/home/a/doc.txt`` restored
into ``/tmp/r`` becomes ``/tmp/r/home/a/doc.txt``; into ``/`` it goes back where it came from)
and overwrites files that are already there. ``restore --dry-run`` only exists from restic
0.16, so the preview compares the snapshot's listing with the file system itself, which works
with every version. The selection is checked first: a path that is not absolute, climbs with
``..`` or lies outside what the snapshot backed up is refused rather than looked up, so the
preview can never be turned into a probe of arbitrary files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

__all__ = [
    "PREVIEW_LIMIT",
    "RestorePreview",
    "SelectionError",
    "check_selection",
    "default_restore_folder",
    "existing_at_target",
    "in_selection",
    "restored_path",
    "target_state",
]

#: How many would-be-overwritten paths a preview names (the count is always complete).
PREVIEW_LIMIT = 1000


class SelectionError(ValueError):
    """A restore selection that is not a path of the snapshot (one sentence for a person)."""


def _within(path: str, folder: str) -> bool:
    folder = folder.rstrip("/") or "/"
    return path == folder or path.startswith(folder if folder == "/" else folder + "/")


def check_selection(paths: Sequence[str], snapshot_paths: Sequence[str]) -> list[str]:
    """The selected paths, normalised; :class:`SelectionError` for one that is not absolute,
    contains ``..`` or lies outside the folders the snapshot backed up (``snapshot_paths``).

    A folder above a backed-up one (``/`` or ``/home`` for a snapshot of ``/home/a``) is part
    of the snapshot too: restic stores the parents of every backed-up path.
    """
    out: list[str] = []
    for raw in paths:
        if not isinstance(raw, str) or not raw or "\0" in raw:
            raise SelectionError("a selected path is empty or not text")
        if not raw.startswith("/"):
            raise SelectionError(
                f"{raw!r} is not a path in the snapshot: snapshot paths are absolute"
            )
        if ".." in raw.split("/"):
            raise SelectionError(f"{raw!r} is refused: a selected path may not contain '..'")
        path = str(PurePosixPath(raw))
        if not any(_within(path, s) or _within(s, path) for s in snapshot_paths):
            held = ", ".join(snapshot_paths) or "nothing"
            raise SelectionError(f"{path} is not in the snapshot (it holds {held})")
        out.append(path)
    return out


def in_selection(path: str, selection: Sequence[str]) -> bool:
    """Whether the snapshot path ``path`` is restored when ``selection`` is (empty: all)."""
    return not selection or any(_within(path, s) for s in selection)


def restored_path(target: str, snapshot_path: str) -> str:
    """Where restic writes ``snapshot_path`` when restoring into ``target``."""
    return os.path.join(target, snapshot_path.lstrip("/")) if snapshot_path != "/" else target


@dataclass(frozen=True)
class RestorePreview:
    """What a restore of ``selection`` (empty: the whole snapshot) into ``target`` would do.

    ``files`` counts the files (and links) it writes; ``overwrite_count`` of them exist at the
    target already and would be replaced, ``overwrite`` names the first
    :data:`PREVIEW_LIMIT` of them (as paths at the target).
    """

    snapshot_id: str
    target: str
    selection: tuple[str, ...]
    files: int
    overwrite_count: int
    overwrite: tuple[str, ...]
    target_exists: bool
    target_empty: bool


def existing_at_target(
    target: str, snapshot_paths: Iterable[str], limit: int = PREVIEW_LIMIT
) -> tuple[int, list[str]]:
    """How many of ``snapshot_paths`` exist below ``target`` (a link counts, even a broken
    one: restic replaces it), and the first ``limit`` of them. Blocking: run it in a thread."""
    count = 0
    named: list[str] = []
    for path in snapshot_paths:
        where = restored_path(target, path)
        if os.path.lexists(where):
            count += 1
            if len(named) < limit:
                named.append(where)
    return count, named


def target_state(target: str) -> tuple[bool, bool]:
    """(exists, empty) for the folder ``target``. Blocking."""
    try:
        with os.scandir(target) as entries:
            return True, next(entries, None) is None
    except FileNotFoundError:
        return False, True
    except NotADirectoryError:
        return True, False


def default_restore_folder(base: Path, plan: str, when: datetime | None) -> Path:
    """A fresh folder for a restore: ``base/<plan>-<snapshot date and time>``, with ``-2``,
    ``-3``... when that one exists and is not empty, so a default never lands on top of
    something. Blocking (a few ``stat`` calls)."""
    stamp = when.astimezone().strftime("%Y-%m-%d_%H%M%S") if when else "snapshot"
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{plan or 'snapshot'}")
    first = base / f"{name}-{stamp}"
    candidate = first
    n = 1
    while True:
        exists, empty = target_state(str(candidate))
        if not exists or empty:
            return candidate
        n += 1
        candidate = first.with_name(f"{first.name}-{n}")
