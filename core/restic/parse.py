"""Reading what restic prints: lines, JSON documents, records and the line-fed parsers.

Every parser here is defensive, because restic 0.14 through 0.19 print slightly different
things: lines that are not JSON, ANSI colour codes, missing numeric fields, short and long
snapshot ids and unknown message types are all expected and tolerated. :func:`iter_lines`
splits a pipe into lines of any length (0.14's ``snapshots --json`` is one line of megabytes).
The records (:class:`Snapshot`, :class:`LsNode`, :class:`BackupResult`...) are what the rest of
Peerstash sees of restic. :class:`BackupOutputParser`, :class:`RestoreOutputParser` and
:class:`StderrCollector` are fed one line at a time, by a running restic or by a recording in
the tests; the collector keeps the redacted tail and the per-file warnings of stderr, and the
raw text that :func:`~peerstash.core.restic.errors.classify_failure` matches against. Nothing
here starts a process.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from peerstash.core.restic.errors import STDERR_TAIL_LINES, ErrorKind, ResticError, _identity

#: A backup with a million unreadable files must not hold a million strings in memory.
MAX_WARNINGS = 1000
#: ``seconds_remaining`` above this is an estimator glitch, not an ETA.
MAX_SECONDS_REMAINING = 10 * 366 * 24 * 3600

_READ_CHUNK = 256 * 1024
_RAW_TAIL_LINES = 60


# --------------------------------------------------------------------------------------------
# Text cleaning and line splitting

_ANSI_RE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves, "erase line"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC: window titles, hyperlinks
    r"|\x1b[@-Z\\-_]"  # other two-byte escapes
)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def strip_ansi(text: str) -> str:
    """Remove terminal escapes and control characters from one line of output.

    A ``\\r`` means restic redrew the line (terminal-style progress); the last non-empty
    redraw is what a person would have seen, so that is what we keep.
    """
    text = _ANSI_RE.sub("", text)
    if "\r" in text:
        parts = [part for part in text.split("\r") if part.strip()]
        text = parts[-1] if parts else ""
    return _CONTROL_RE.sub("", text).rstrip()


async def iter_lines(
    stream: asyncio.StreamReader, chunk_size: int = _READ_CHUNK
) -> AsyncIterator[bytes]:
    """Yield the lines of ``stream`` (without their newline), however long they are.

    ``StreamReader.readline`` fails on lines over its limit (64 KiB by default); restic 0.14's
    ``snapshots --json`` is one line that can be many megabytes. We read chunks and split
    ourselves, joining a long line's pieces once, so the cost stays linear in its length.
    """
    pending: list[bytes] = []
    while True:
        chunk = await stream.read(chunk_size)
        if not chunk:
            break
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                if start < len(chunk):
                    pending.append(chunk[start:])
                break
            piece = chunk[start:newline]
            if pending:
                pending.append(piece)
                line = b"".join(pending)
                pending.clear()
            else:
                line = piece
            start = newline + 1
            yield line
    if pending:
        yield b"".join(pending)


def _decode(line: bytes) -> str:
    return strip_ansi(line.decode("utf-8", "replace"))


# --------------------------------------------------------------------------------------------
# Small parsing helpers


def _json_object(line: str) -> dict[str, Any] | None:
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _num(data: Mapping[str, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or value is None:
        return 0.0
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return 0.0
    else:
        return 0.0
    if number != number or number in (float("inf"), float("-inf")):  # NaN, infinities
        return 0.0
    return number


def _count(data: Mapping[str, Any], key: str) -> int:
    """A non-negative integer field; missing or malformed reads as 0."""
    return max(0, int(_num(data, key)))


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def _strs(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key)
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str))


def _seconds_remaining(data: Mapping[str, Any]) -> int | None:
    if "seconds_remaining" not in data or data.get("seconds_remaining") is None:
        return None
    return int(min(max(_num(data, "seconds_remaining"), 0.0), MAX_SECONDS_REMAINING))


def _percent(data: Mapping[str, Any], done: int, total: int) -> float:
    """0-100. restic's ``percent_done`` is a fraction; computed from bytes when missing."""
    if "percent_done" in data:
        fraction = _num(data, "percent_done")
    elif total > 0:
        fraction = done / total
    else:
        fraction = 0.0
    return min(max(fraction * 100.0, 0.0), 100.0)


_GO_TIME_RE = re.compile(
    r"^(?P<main>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})(?:\.(?P<frac>\d+))?\s*(?P<tz>Z|[+-]\d{2}:?\d{2})?"
)


def _parse_time(value: Any) -> datetime | None:
    """Go's RFC 3339 with nanoseconds; Python wants at most microseconds."""
    if not isinstance(value, str):
        return None
    match = _GO_TIME_RE.match(value.strip())
    if not match:
        return None
    text = match["main"].replace(" ", "T")
    if match["frac"]:
        text += "." + match["frac"][:6].ljust(6, "0")
    tz = match["tz"]
    if tz:
        text += "+00:00" if tz == "Z" else tz
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def same_snapshot_id(a: str, b: str) -> bool:
    """True when two snapshot ids name the same snapshot (either may be the 8-char short id).

    restic 0.14 reports the short id after a backup, 0.17+ the full one; ``snapshots`` always
    has both. A prefix of at least 8 hex digits is what restic itself accepts as unambiguous.
    """
    a, b = a.lower(), b.lower()
    if len(a) < 8 or len(b) < 8:
        return a == b
    return a.startswith(b) or b.startswith(a)


_VERSION_RE = re.compile(r"restic\s+v?(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int, int]:
    """``restic 0.14.0 compiled with go1.19.8 on linux/amd64`` -> ``(0, 14, 0)``."""
    match = _VERSION_RE.search(text)
    if not match:
        raise ResticError(
            ErrorKind.NOT_INSTALLED,
            f"could not read restic's version from {text.strip()[:200]!r}; is this really restic?",
        )
    return int(match[1]), int(match[2]), int(match[3] or 0)


# --------------------------------------------------------------------------------------------
# Result types


@dataclass(frozen=True)
class Snapshot:
    """One snapshot as ``restic snapshots --json`` describes it."""

    id: str
    short_id: str
    time: datetime | None
    hostname: str = ""
    username: str = ""
    paths: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    parent: str | None = None
    tree: str | None = None
    program_version: str | None = None
    summary: Mapping[str, Any] | None = None


def _snapshot(obj: Any) -> Snapshot | None:
    if not isinstance(obj, dict):
        return None
    snap_id = _str(obj, "id")
    if not snap_id:
        return None
    summary = obj.get("summary")
    return Snapshot(
        id=snap_id,
        short_id=_str(obj, "short_id") or snap_id[:8],
        time=_parse_time(obj.get("time")),
        hostname=_str(obj, "hostname"),
        username=_str(obj, "username"),
        paths=_strs(obj, "paths"),
        tags=_strs(obj, "tags"),
        excludes=_strs(obj, "excludes"),
        parent=_str(obj, "parent") or None,
        tree=_str(obj, "tree") or None,
        program_version=_str(obj, "program_version") or None,
        summary=summary if isinstance(summary, dict) else None,
    )


def parse_snapshots(doc: Any) -> list[Snapshot]:
    """The snapshot list from the parsed ``snapshots --json`` document.

    Entries without an id are skipped rather than failing the whole list. ``--group-by``
    output (a list of ``{"group_key":..., "snapshots": [...]}``) is flattened.
    """
    if not isinstance(doc, list):
        raise ResticError(ErrorKind.UNKNOWN, "restic's snapshot list was not a JSON array")
    found: list[Snapshot] = []
    for item in doc:
        if isinstance(item, dict) and isinstance(item.get("snapshots"), list):
            found.extend(s for s in map(_snapshot, item["snapshots"]) if s is not None)
            continue
        snap = _snapshot(item)
        if snap is not None:
            found.append(snap)
    return found


@dataclass(frozen=True)
class LsNode:
    """One file, directory or other entry of a snapshot, from ``ls --json``."""

    name: str
    type: str
    path: str
    size: int = 0
    mode: int = 0
    permissions: str = ""
    uid: int = 0
    gid: int = 0
    inode: int = 0
    mtime: datetime | None = None
    atime: datetime | None = None
    ctime: datetime | None = None
    link_target: str | None = None


def parse_ls_line(line: str) -> LsNode | Snapshot | None:
    """One line of ``ls --json``: the snapshot header, a node, or ``None`` for anything else.

    0.14 tells them apart by ``struct_type``; 0.17+ also has ``message_type``.
    """
    obj = _json_object(line)
    if obj is None:
        return None
    kind = _str(obj, "message_type") or _str(obj, "struct_type")
    if kind == "snapshot":
        return _snapshot(obj)
    if kind != "node":
        return None
    return LsNode(
        name=_str(obj, "name"),
        type=_str(obj, "type"),
        path=_str(obj, "path"),
        size=_count(obj, "size"),
        mode=_count(obj, "mode"),
        permissions=_str(obj, "permissions"),
        uid=_count(obj, "uid"),
        gid=_count(obj, "gid"),
        inode=_count(obj, "inode"),
        mtime=_parse_time(obj.get("mtime")),
        atime=_parse_time(obj.get("atime")),
        ctime=_parse_time(obj.get("ctime")),
        link_target=_str(obj, "link_target") or None,
    )


@dataclass(frozen=True)
class BackupProgress:
    """Where a running backup is.

    ``percent`` is 0-100. ``seconds_remaining`` is restic's estimate clamped to [0, 10 years],
    ``None`` while restic has none. ``scan_finished`` turns true once restic has counted the
    whole backup set, i.e. once ``files_total``/``bytes_total`` are final.
    """

    percent: float = 0.0
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    seconds_remaining: int | None = None
    current_files: tuple[str, ...] = ()
    seconds_elapsed: int = 0
    error_count: int = 0
    scan_finished: bool = False


def _jsonable(value: Any) -> Any:
    """Tuples as lists, recursively: what an operation's JSON ``summary`` column stores."""
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


@dataclass(frozen=True)
class BackupResult:
    """The outcome of a backup that produced a snapshot.

    ``partial`` is true when some source data was not backed up (restic exit code 3, or a
    source path that does not exist): the snapshot exists but is incomplete, which the runner
    records as a *warning*. ``warnings`` says what was skipped (at most ``MAX_WARNINGS``;
    ``warning_count`` is the full number). ``snapshot_id`` is short on restic 0.14 and long on
    0.17+; compare ids with :func:`same_snapshot_id`.
    """

    snapshot_id: str | None
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs_new: int = 0
    dirs_changed: int = 0
    dirs_unmodified: int = 0
    data_blobs: int = 0
    tree_blobs: int = 0
    data_added: int = 0
    data_added_packed: int = 0
    total_files_processed: int = 0
    total_bytes_processed: int = 0
    total_duration: float = 0.0
    partial: bool = False
    warnings: tuple[str, ...] = ()
    warning_count: int = 0
    exit_code: int = 0

    @classmethod
    def from_summary(
        cls,
        summary: Mapping[str, Any] | None,
        *,
        partial: bool = False,
        warnings: Sequence[str] = (),
        warning_count: int | None = None,
        exit_code: int = 0,
    ) -> BackupResult:
        """Build a result from restic's ``summary`` message (missing fields read as 0)."""
        data: Mapping[str, Any] = summary or {}
        return cls(
            snapshot_id=_str(data, "snapshot_id") or None,
            files_new=_count(data, "files_new"),
            files_changed=_count(data, "files_changed"),
            files_unmodified=_count(data, "files_unmodified"),
            dirs_new=_count(data, "dirs_new"),
            dirs_changed=_count(data, "dirs_changed"),
            dirs_unmodified=_count(data, "dirs_unmodified"),
            data_blobs=_count(data, "data_blobs"),
            tree_blobs=_count(data, "tree_blobs"),
            data_added=_count(data, "data_added"),
            data_added_packed=_count(data, "data_added_packed"),
            total_files_processed=_count(data, "total_files_processed"),
            total_bytes_processed=_count(data, "total_bytes_processed"),
            total_duration=max(0.0, _num(data, "total_duration")),
            partial=partial,
            warnings=tuple(warnings),
            warning_count=len(warnings) if warning_count is None else warning_count,
            exit_code=exit_code,
        )

    def summary_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready, for the operation's summary."""
        return dict(_jsonable(asdict(self)))


@dataclass(frozen=True)
class RestoreProgress:
    """Where a running restore is (restic 0.16+ only; older versions print no progress)."""

    percent: float = 0.0
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    files_skipped: int = 0
    seconds_elapsed: int = 0
    seconds_remaining: int | None = None


@dataclass(frozen=True)
class RestoreResult:
    """The outcome of a restore. Counts are ``None`` when restic (before 0.16) did not say.

    restic counts as ``restic stats --mode restore-size`` does: ``files_restored`` and
    ``files_total`` include the directories (and symlinks, devices...) below the snapshot's
    paths, not regular files alone - restoring 8 files in 3 directories reports 11. Show them
    as "entries", never compare them with a count of files.
    """

    snapshot_id: str
    target: str
    files_restored: int | None = None
    files_skipped: int | None = None
    files_total: int | None = None
    bytes_restored: int | None = None
    bytes_total: int | None = None
    warnings: tuple[str, ...] = ()

    def summary_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready, for the operation's summary."""
        return dict(_jsonable(asdict(self)))


@dataclass(frozen=True)
class ForgetGroup:
    """One group ``forget`` applied the policy to, with the (full) ids it kept and removed."""

    host: str
    paths: tuple[str, ...]
    tags: tuple[str, ...]
    keep: tuple[str, ...]
    remove: tuple[str, ...]
    #: The same snapshots in full (time, host, paths, tags), for a dry run's listing. Left out
    #: of :meth:`ForgetResult.summary_dict`: an operation's summary keeps only the ids.
    keep_snapshots: tuple[Snapshot, ...] = ()
    remove_snapshots: tuple[Snapshot, ...] = ()


@dataclass(frozen=True)
class ForgetResult:
    """Which snapshots ``forget`` kept and removed, over all groups."""

    kept: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    groups: tuple[ForgetGroup, ...] = ()
    pruned: bool = False

    def summary_dict(self) -> dict[str, Any]:
        """Every field but the full snapshots, JSON-ready, for the operation's summary."""
        summary = dict(_jsonable(asdict(self)))
        for group in summary["groups"]:
            group.pop("keep_snapshots", None)
            group.pop("remove_snapshots", None)
        return summary

    @property
    def kept_snapshots(self) -> tuple[Snapshot, ...]:
        return tuple(s for g in self.groups for s in g.keep_snapshots)

    @property
    def removed_snapshots(self) -> tuple[Snapshot, ...]:
        return tuple(s for g in self.groups for s in g.remove_snapshots)


def _snapshots_of(value: Any) -> tuple[Snapshot, ...]:
    if not isinstance(value, list):  # restic prints "remove": null when nothing is removed
        return ()
    return tuple(snap for snap in map(_snapshot, value) if snap is not None)


def parse_forget(doc: Any, *, pruned: bool = False) -> ForgetResult:
    """The parsed ``forget --json`` document (a list of groups) as a :class:`ForgetResult`."""
    if doc is None:
        return ForgetResult(pruned=pruned)  # forget printed nothing: no snapshot matched
    if not isinstance(doc, list):
        raise ResticError(ErrorKind.UNKNOWN, "restic's forget report was not a JSON array")
    groups: list[ForgetGroup] = []
    for item in doc:
        if not isinstance(item, dict):
            continue
        keep = _snapshots_of(item.get("keep"))
        remove = _snapshots_of(item.get("remove"))
        groups.append(
            ForgetGroup(
                host=_str(item, "host"),
                paths=_strs(item, "paths"),
                tags=_strs(item, "tags"),
                keep=tuple(snap.id for snap in keep),
                remove=tuple(snap.id for snap in remove),
                keep_snapshots=keep,
                remove_snapshots=remove,
            )
        )
    return ForgetResult(
        kept=tuple(i for g in groups for i in g.keep),
        removed=tuple(i for g in groups for i in g.remove),
        groups=tuple(groups),
        pruned=pruned,
    )


def parse_cat_config(text: str) -> dict[str, Any]:
    """The repository config from ``cat config`` (pretty-printed JSON, possibly after noise)."""
    candidates = [text]
    start = text.find("{")
    if start > 0:
        candidates.append(text[start:])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise ResticError(ErrorKind.UNKNOWN, "could not read the repository config restic printed")


# --------------------------------------------------------------------------------------------
# Output parsers (fed line by line; usable on recordings in tests)

_SCAN_FINISHED = "scan_finished"


class BackupOutputParser:
    """Reads ``backup --json`` stdout lines into progress updates and the final summary.

    ``scan_finished`` arrives as ``message_type: "status"`` with ``action: "scan_finished"`` in
    0.14 and as ``verbose_status`` in later versions; both are recognised. Progress fields that
    a status line omits (restic leaves out zero values) read as 0, except the totals restic
    already counted during its scan, which are kept.
    """

    def __init__(self, redact: Callable[[str], str] | None = None) -> None:
        self._redact = redact or _identity
        self.summary: dict[str, Any] | None = None
        self.last: BackupProgress | None = None
        self._scan_files = 0
        self._scan_bytes = 0
        self._scan_finished = False

    def feed_stdout(self, line: str) -> BackupProgress | str | None:
        """A progress update, a (redacted) text line to log, or ``None`` for nothing."""
        obj = _json_object(line)
        if obj is None:
            text = line.strip()
            return self._redact(text) if text else None
        kind = _str(obj, "message_type")
        if _str(obj, "action") == _SCAN_FINISHED and kind in ("status", "verbose_status"):
            self._scan_finished = True
            self._scan_files = _count(obj, "total_files")
            self._scan_bytes = _count(obj, "data_size") or _count(obj, "total_bytes")
            previous = self.last or BackupProgress()
            files_total = max(previous.files_total, self._scan_files)
            bytes_total = max(previous.bytes_total, self._scan_bytes)
            self.last = BackupProgress(
                percent=previous.percent,
                bytes_done=previous.bytes_done,
                bytes_total=bytes_total,
                files_done=previous.files_done,
                files_total=files_total,
                seconds_remaining=previous.seconds_remaining,
                current_files=previous.current_files,
                seconds_elapsed=previous.seconds_elapsed,
                error_count=previous.error_count,
                scan_finished=True,
            )
            return self.last
        if kind == "status":
            bytes_done = _count(obj, "bytes_done")
            bytes_total = max(_count(obj, "total_bytes"), self._scan_bytes)
            self.last = BackupProgress(
                percent=_percent(obj, bytes_done, bytes_total),
                bytes_done=bytes_done,
                bytes_total=bytes_total,
                files_done=_count(obj, "files_done"),
                files_total=max(_count(obj, "total_files"), self._scan_files),
                seconds_remaining=_seconds_remaining(obj),
                current_files=tuple(self._redact(f) for f in _strs(obj, "current_files")),
                seconds_elapsed=_count(obj, "seconds_elapsed"),
                error_count=_count(obj, "error_count"),
                scan_finished=self._scan_finished,
            )
            return self.last
        if kind == "summary":
            self.summary = obj
            return None
        return None  # verbose_status per file and anything newer: not progress


class RestoreOutputParser:
    """Reads ``restore --json`` stdout lines (restic 0.16+) into progress and a summary."""

    def __init__(self, redact: Callable[[str], str] | None = None) -> None:
        self._redact = redact or _identity
        self.summary: dict[str, Any] | None = None
        self.last: RestoreProgress | None = None

    def feed_stdout(self, line: str) -> RestoreProgress | str | None:
        obj = _json_object(line)
        if obj is None:
            text = line.strip()
            return self._redact(text) if text else None
        kind = _str(obj, "message_type")
        if kind == "status":
            done = _count(obj, "bytes_restored")
            total = _count(obj, "total_bytes")
            self.last = RestoreProgress(
                percent=_percent(obj, done, total),
                bytes_done=done,
                bytes_total=total,
                files_done=_count(obj, "files_restored"),
                files_total=_count(obj, "total_files"),
                files_skipped=_count(obj, "files_skipped"),
                seconds_elapsed=_count(obj, "seconds_elapsed"),
                seconds_remaining=_seconds_remaining(obj),
            )
            return self.last
        if kind == "summary":
            self.summary = obj
        return None


def format_error_line(obj: Mapping[str, Any]) -> str:
    """A readable sentence from a JSON ``error`` message of backup or restore.

    0.17+ prints ``{"error": {"message": ...}, "during": ..., "item": ...}``; 0.14 serialises
    Go's error value, e.g. ``{"Op": "open", "Path": "/x", "Err": 13}`` for a PathError.
    """
    error = obj.get("error")
    item = _str(obj, "item")
    during = _str(obj, "during")
    message = ""
    if isinstance(error, str):
        message = error
    elif isinstance(error, dict):
        message = _str(error, "message")
        if not message and ("Op" in error or "Path" in error):
            errno = error.get("Err")
            reason = os.strerror(errno).lower() if isinstance(errno, int) else str(errno or "")
            message = " ".join(part for part in (_str(error, "Op"), _str(error, "Path")) if part)
            message = f"{message}: {reason}" if reason else message
        if not message and error:
            message = json.dumps(error, sort_keys=True)
    if not message:
        message = _str(obj, "message") or "unknown error"
    if item and item not in message:
        message = f"{item}: {message}"
    if during:
        message = f"{message} (during {during})"
    return f"error: {message}"


# Text lines on stderr that name a piece of source data restic did not back up.
_WARNING_LINE_RE = re.compile(
    r"^(?:error|warning)\b|^ignoring error for|does not exist, skipping$", re.IGNORECASE
)
# restic's closing remark after per-file errors: not a warning in itself.
_GENERIC_WARNING_RE = re.compile(r"^Warning: at least one source file could not be read", re.I)
_SKIPPED_PATH_RE = re.compile(r"does not exist, skipping$")


class StderrCollector:
    """Reads restic's stderr: keeps a redacted tail, the per-item warnings and exit errors.

    Classification needs the unredacted text (a password that happens to be the word
    "password" must not turn "wrong password" into "wrong ***"), so a raw tail is kept too;
    it is only ever matched against, never shown.
    """

    def __init__(self, redact: Callable[[str], str] | None = None) -> None:
        self._redact = redact or _identity
        self.tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._raw_tail: deque[str] = deque(maxlen=_RAW_TAIL_LINES)
        self._fatal: list[str] = []
        self.warnings: list[str] = []
        self.warning_count = 0
        self.skipped_paths = 0
        self.exit_error_code: int | None = None

    def feed(self, line: str) -> str | None:
        """Take one stderr line; return its redacted, readable form for the log (or None)."""
        text = line.strip()
        if not text:
            return None
        is_warning = False
        obj = _json_object(text)
        if obj is not None:
            kind = _str(obj, "message_type")
            if kind == "exit_error":
                text = _str(obj, "message") or text
                code = obj.get("code")
                if isinstance(code, int) and not isinstance(code, bool):
                    self.exit_error_code = code
                self._fatal.append(text)
            elif kind == "error":
                text = format_error_line(obj)
                is_warning = True
            elif "message" in obj and isinstance(obj["message"], str):
                text = obj["message"]
        else:
            if _WARNING_LINE_RE.search(text) and not _GENERIC_WARNING_RE.match(text):
                is_warning = True
            if _SKIPPED_PATH_RE.search(text):
                self.skipped_paths += 1
            if text.startswith("Fatal:") and len(self._fatal) < 20:
                self._fatal.append(text)
        shown = self._redact(text)
        if is_warning:
            self.warning_count += 1
            if len(self.warnings) < MAX_WARNINGS:
                self.warnings.append(shown)
        self.tail.append(shown)
        self._raw_tail.append(text)
        return shown

    def raw_text(self) -> str:
        """Unredacted text to classify from. Never show this to anyone."""
        lines = list(self._raw_tail)
        lines.extend(f for f in self._fatal if f not in lines)
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# JSON documents among text lines

_NOT_JSON = object()


def _json_doc_or_not(text: str) -> Any:
    """The JSON value of a line that is a whole JSON array/object, else ``_NOT_JSON``."""
    if text and text[0] in "[{":
        try:
            return json.loads(text)
        except ValueError:
            pass  # prune's "[0:00] 100.00% ..." progress lines start with "[" too
    return _NOT_JSON


def split_json_output(lines: Iterable[str]) -> tuple[list[Any], list[str]]:
    """Separate the JSON documents of a command's stdout from its text lines.

    ``forget --prune --json`` prints its JSON report followed by prune's text; any command may
    print a stray notice. Each JSON document is on one line (restic uses Go's json.Encoder).
    """
    docs: list[Any] = []
    text: list[str] = []
    for line in lines:
        stripped = strip_ansi(line).strip()
        if not stripped:
            continue
        value = _json_doc_or_not(stripped)
        if value is _NOT_JSON:
            text.append(stripped)
        else:
            docs.append(value)
    return docs, text
