"""An asyncio wrapper around the ``restic`` command line program.

restic is the engine; this module only runs it and reads what it prints. It supports restic 0.14
(Debian bookworm) through 0.19, whose output differs in small ways, so every parser here is
defensive: lines that are not JSON, ANSI colour codes, missing numeric fields, short and long
snapshot ids and unknown message types are all expected and tolerated.

The rules that matter most, and why:

* **Secrets.** The repository password is only ever given through the environment (never on the
  command line, where ``ps`` shows it), and exactly one password method is set: restic prefers a
  password *file* over ``RESTIC_PASSWORD``, so an inherited ``RESTIC_*`` variable could silently
  make it use another password or another repository. We therefore start from ``os.environ``,
  drop every ``RESTIC_*`` variable and set our own. Every line restic prints passes through a
  :class:`Redactor` before it reaches a log callback, an exception or a tail of stderr, because
  backends sometimes echo credentials (URLs with ``user:pass@``) in their errors.
* **Long lines.** restic 0.14 prints ``snapshots --json`` as one line that can be megabytes, far
  beyond asyncio's 64 KiB ``readline`` limit, so we read chunks and split lines ourselves.
* **Cancellation.** Cancelling the task awaiting a method sends SIGINT to restic, which then
  removes its lock and exits (SIGTERM would leave the lock behind in 0.14). After
  ``cancel_grace`` seconds we SIGKILL. The process is always reaped and the reader tasks always
  finished before the ``CancelledError`` propagates. On Linux the child also gets
  ``PR_SET_PDEATHSIG=SIGINT``, so a SIGKILLed node does not leave restic running as an orphan
  (set by util-linux's ``setpriv``, which then execs restic in the same process, so that
  Python can spawn it with vfork instead of forking the whole node; see
  :func:`_death_signal_prefix`).
* **Errors a person can act on.** Failures are classified from the exit code *and* the text of
  stderr (restic 0.14 uses exit code 1 for almost everything) into :class:`ErrorKind`, with a
  message saying what to do.
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import errno
import functools
import inspect
import json
import logging
import os
import re
import shutil
import signal
import sys
import urllib.parse
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, TypeAlias, TypeVar

from peerstash.core.retention import RetentionPolicy

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "BackupOutputParser",
    "BackupProgress",
    "BackupResult",
    "ErrorKind",
    "ForgetGroup",
    "ForgetResult",
    "LockInfo",
    "LogCallback",
    "LsNode",
    "Password",
    "PasswordCommand",
    "PasswordFile",
    "PasswordValue",
    "Redactor",
    "RepoAccess",
    "Restic",
    "ResticError",
    "RestoreOutputParser",
    "RestoreProgress",
    "RestoreResult",
    "RetentionPolicy",
    "Snapshot",
    "StderrCollector",
    "build_env",
    "classify_failure",
    "find_restic",
    "forget_args",
    "format_error_line",
    "iter_lines",
    "parse_cat_config",
    "parse_forget",
    "parse_lock_info",
    "parse_ls_line",
    "parse_retry_line",
    "parse_snapshots",
    "parse_version",
    "redact_uri",
    "same_snapshot_id",
    "split_json_output",
    "strip_ansi",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How many stderr lines an error keeps for the person reading it.
STDERR_TAIL_LINES = 20
#: Secrets shorter than this are not searched for in output: a 1-3 character value (``"1"``,
#: ``"eu"``) would match everywhere and make every log line unreadable.
MIN_SECRET_LENGTH = 4
#: A backup with a million unreadable files must not hold a million strings in memory.
MAX_WARNINGS = 1000
#: ``seconds_remaining`` above this is an estimator glitch, not an ETA.
MAX_SECONDS_REMAINING = 10 * 366 * 24 * 3600
#: restic versions from which ``restore --json`` prints progress.
RESTORE_JSON_SINCE = (0, 16, 0)
#: restic versions that have the global ``--retry-lock`` flag.
RETRY_LOCK_SINCE = (0, 16, 0)
# Commands that take no repository lock: --retry-lock means nothing to them.
_NO_LOCK_COMMANDS = frozenset({"init", "unlock", "version"})

_READ_CHUNK = 256 * 1024
# After restic exited, a pipe still open after this long is held by a grandchild (an ssh
# process, a password command's agent); we stop reading it rather than hang.
_PIPE_GRACE = 2.0
_LS_QUEUE_SIZE = 512
_RAW_TAIL_LINES = 60

_SNAPSHOT_REF_RE = re.compile(r"^(?:latest|[0-9a-fA-F]{4,64})$")
_HEX_ID_RE = re.compile(r"^[0-9a-f]{8,64}$")
_STATS_MODES = ("restore-size", "files-by-contents", "blobs-per-file", "raw-data")
# Variables a repository's extra env may not set: they would add a second password method or
# point restic at another repository.
_RESERVED_ENV = frozenset(
    {
        "RESTIC_REPOSITORY",
        "RESTIC_REPOSITORY_FILE",
        "RESTIC_PASSWORD",
        "RESTIC_PASSWORD_FILE",
        "RESTIC_PASSWORD_COMMAND",
    }
)


# --------------------------------------------------------------------------------------------
# Errors


class ErrorKind(enum.StrEnum):
    """What went wrong, in terms of what a person can do about it."""

    NOT_INSTALLED = "not_installed"
    WRONG_PASSWORD = "wrong_password"
    LOCKED = "locked"
    REPO_MISSING = "repo_missing"
    REPO_EXISTS = "repo_exists"
    #: The storage refused who we are: a REST server's 401/403, an S3 signature mismatch or
    #: unknown access key. restic calls these "no repository here"; they are not.
    WRONG_CREDENTIALS = "wrong_credentials"
    BACKEND_UNREACHABLE = "backend_unreachable"
    SOURCE_MISSING = "source_missing"
    INTERRUPTED = "interrupted"
    INVALID_ARGS = "invalid_args"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class LockInfo:
    """Who holds a repository lock, as restic reports it.

    The runner uses this to recognise a stale lock our own dead restic left behind (same host,
    PID gone) and remove it; a person uses it to find the machine that holds the lock.
    """

    pid: int | None = None
    host: str | None = None
    user: str | None = None
    uid: int | None = None
    gid: int | None = None
    exclusive: bool = False
    created_at: str | None = None  # as restic printed it: local time of the locking machine
    age: str | None = None  # e.g. "3.2s", restic's own rendering
    storage_id: str | None = None


class ResticError(Exception):
    """A restic run that failed, classified.

    ``message`` is meant for a person and says what to do; ``stderr_tail`` holds restic's last
    lines for the operation log. Neither ever contains a password or a repository env value.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        exit_code: int | None = None,
        stderr_tail: Sequence[str] = (),
        lock: LockInfo | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.exit_code = exit_code
        self.stderr_tail: tuple[str, ...] = tuple(stderr_tail)
        self.lock = lock

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"ResticError({self.kind.value!r}, {self.message!r}, exit_code={self.exit_code!r})"


# --------------------------------------------------------------------------------------------
# Repository access and the process environment


@dataclass(frozen=True)
class PasswordValue:
    """The password itself (from our secret store); given to restic as ``RESTIC_PASSWORD``."""

    value: str = field(repr=False)


@dataclass(frozen=True)
class PasswordFile:
    """A file holding the password; given to restic as ``RESTIC_PASSWORD_FILE``."""

    path: str


@dataclass(frozen=True)
class PasswordCommand:
    """A command printing the password; given to restic as ``RESTIC_PASSWORD_COMMAND``."""

    command: str


Password: TypeAlias = PasswordValue | PasswordFile | PasswordCommand


@dataclass(frozen=True)
class RepoAccess:
    """Everything restic needs to open one repository.

    ``env`` holds extra variables (``AWS_ACCESS_KEY_ID``...) whose values are all treated as
    secrets. ``options`` are restic ``-o key=value`` extended options (not secret by contract).
    ``name`` is how Peerstash calls this repository in messages (its repo id); when empty, the
    URI with credentials masked is used.
    """

    uri: str
    password: Password
    env: Mapping[str, str] = field(default_factory=dict)
    options: Sequence[str] = ()
    cache_dir: str | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if not self.uri or not self.uri.strip():
            raise ValueError("repository URI is empty")
        if not isinstance(self.password, PasswordValue | PasswordFile | PasswordCommand):
            raise TypeError(
                "password must be a PasswordValue, PasswordFile or PasswordCommand, "
                f"not {type(self.password).__name__}"
            )
        env = dict(self.env)
        reserved = sorted(k for k in env if k in _RESERVED_ENV)
        if reserved:
            raise ValueError(
                f"repository env must not set {', '.join(reserved)}: the repository and its "
                "password are given by uri and password, and restic must see exactly one "
                "password method"
            )
        options = tuple(self.options)
        for option in options:
            if "=" not in option:
                raise ValueError(f"restic option {option!r} is not of the form key=value")
        # Copies, so a caller mutating its dict later cannot change a frozen value.
        object.__setattr__(self, "env", env)
        object.__setattr__(self, "options", options)

    @property
    def display_name(self) -> str:
        """A name for messages that never contains credentials."""
        return self.name or redact_uri(self.uri)

    def secrets(self) -> list[str]:
        """Every value that must never appear in output: password, env values, URI password."""
        found: list[str] = []
        if isinstance(self.password, PasswordValue):
            found.append(self.password.value)
        elif isinstance(self.password, PasswordFile):
            found.extend(_read_password_file(self.password.path))
        found.extend(self.env.values())
        match = _URI_CREDENTIALS_RE.search(self.uri)
        if match and match["secret"]:
            found.append(match["secret"])
            found.append(urllib.parse.unquote(match["secret"]))
        return found

    def __repr__(self) -> str:
        return (
            f"RepoAccess(uri={redact_uri(self.uri)!r}, password={type(self.password).__name__}, "
            f"env_keys={sorted(self.env)!r}, options={list(self.options)!r}, "
            f"cache_dir={self.cache_dir!r}, name={self.name!r})"
        )


def _read_password_file(path: str) -> list[str]:
    """The password in a password file, best effort, so that it can be redacted too.

    restic never prints it, but "never" is cheap to make certain of. Unreadable files are
    skipped silently: restic will report that itself, with a better message.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(64 * 1024).decode("utf-8", "replace")
    except OSError:
        return []
    first = data.splitlines()[0] if data.splitlines() else ""
    return [data.rstrip("\r\n"), data.strip(), first]


def _base_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    source = os.environ if base is None else base
    return {key: value for key, value in source.items() if not key.startswith("RESTIC_")}


def build_env(repo: RepoAccess, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The complete environment for a restic process working on ``repo``.

    Starts from ``base`` (default ``os.environ``) without any ``RESTIC_*`` variable, then sets
    the repository, exactly one password method, and the repository's extra env.
    """
    env = _base_env(base)
    env["RESTIC_REPOSITORY"] = repo.uri
    password = repo.password
    if isinstance(password, PasswordValue):
        env["RESTIC_PASSWORD"] = password.value
    elif isinstance(password, PasswordFile):
        env["RESTIC_PASSWORD_FILE"] = password.path
    else:
        env["RESTIC_PASSWORD_COMMAND"] = password.command
    env.update(repo.env)
    return env


# --------------------------------------------------------------------------------------------
# Redaction and text cleaning

# scheme://user:password@ — the password runs to the last "@" before a "/" or whitespace, so
# an unencoded "@" inside a password is still masked whole.
_URI_CREDENTIALS_RE = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^/@\s:]*:)(?P<secret>[^/\s]*)@"
)


def redact_uri(uri: str) -> str:
    """Mask the password of every ``scheme://user:password@`` in ``uri`` (or any text).

    ``rest:http://user:pass@host/`` becomes ``rest:http://user:***@host/``.
    """
    return _URI_CREDENTIALS_RE.sub(lambda m: m["head"] + ("***" if m["secret"] else "") + "@", uri)


class Redactor:
    """Replaces every known secret (of at least ``MIN_SECRET_LENGTH`` chars) with ``***``.

    Each secret is also searched for in its JSON-escaped and URL-encoded forms, since restic's
    JSON lines and backend URLs carry it that way. URI credentials are masked whatever their
    length.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if not secret or len(secret) < MIN_SECRET_LENGTH:
                continue
            forms.add(secret)
            in_json = json.dumps(secret, ensure_ascii=False)[1:-1]
            variants = (
                in_json,
                json.dumps(secret)[1:-1],  # with non-ASCII escaped
                # Go's encoder also escapes <, > and & for HTML safety.
                in_json.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"),
                urllib.parse.quote(secret, safe=""),
                urllib.parse.quote_plus(secret, safe=""),
            )
            forms.update(v for v in variants if len(v) >= MIN_SECRET_LENGTH)
        ordered = sorted(forms, key=len, reverse=True)  # longest first: no partial leftovers
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub("***", text)
        return redact_uri(text)


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


def _identity(text: str) -> str:
    return text


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
# Failure classification

_LOCK_RE = re.compile(
    r"repository is already locked (?P<excl>exclusively )?by PID (?P<pid>\d+) on (?P<host>\S+)"
    r"(?: by (?P<user>[^\n(]*?))?(?: \(UID (?P<uid>\d+), GID (?P<gid>\d+)\))?\s*$",
    re.MULTILINE,
)
_LOCK_CREATED_RE = re.compile(r"lock was created at (?P<at>.+?) \((?P<age>.+?) ago\)")
_LOCK_STORAGE_RE = re.compile(r"storage ID (?P<id>[0-9a-f]+)")
# Not "unable to create lock" alone: a network failure while writing the lock file says that
# too, and is BACKEND_UNREACHABLE.
_LOCKED_RE = re.compile(
    r"repository is already locked|already locked exclusively|failed to lock repository",
    re.IGNORECASE,
)
_WRONG_PASSWORD_RE = re.compile(
    r"wrong password or no key found|empty password is not (?:a password|allowed)",
    re.IGNORECASE,
)
_PASSWORD_SOURCE_RE = re.compile(
    r"resolving password failed|reading password (?:file|from)|password file .*(?:not|no such)",
    re.IGNORECASE,
)
# The storage refused our credentials. REST: restic 0.14 and 0.18 print "unexpected HTTP
# response (401): 401 Unauthorized" (open) or "server response unexpected: 401 Unauthorized"
# (init); S3 (minio-go) prints the error's message, e.g. "The request signature we calculated
# does not match the signature you provided", or its code.
_CREDENTIALS_RE = re.compile(
    r"unexpected HTTP response \(40[13]\)|server response unexpected: 40[13]\b|"
    r"\b401 Unauthorized\b|\b403 Forbidden\b|"
    r"SignatureDoesNotMatch|request signature we calculated does not match|"
    r"InvalidAccessKeyId|access key id you provided does not exist|"
    r"\bAccess Denied\b|AccessDenied\b|InvalidToken\b|ExpiredToken\b|"
    r"Server failed to authenticate the request|AuthenticationFailed|"
    r"bad_auth_token|unauthorized for|invalid_grant",
    re.IGNORECASE,
)
# restic's backend retry notice (0.14 through 0.19), e.g.
#   Save(<data/956b9ced99>) returned error, retrying after 357.131936ms: <reason>
#   Stat(<config/>) returned error, retrying after 1.968056138s: Stat: <reason>
_RETRY_RE = re.compile(
    r"^(?P<what>\S.*?) returned error, retrying after (?P<after>[0-9][0-9a-zµ.]*): (?P<reason>.+)$"
)
#: Credential refusals seen in retry notices before a run is given up (restic 0.17+ retries
#: even a signature mismatch for about 15 minutes, in silence but for these lines).
CREDENTIAL_RETRIES_BEFORE_GIVING_UP = 2


def parse_retry_line(line: str) -> tuple[str, str] | None:
    """``(what, reason)`` from a backend retry notice, else ``None``.

    ``what`` is the backend call (``Save(<data/956b9ced99>)``), ``reason`` restic's error text.
    The line should already be redacted when the result is shown to anyone.
    """
    match = _RETRY_RE.match(line.strip())
    if not match:
        return None
    return match["what"], match["reason"].strip()


_UNREACHABLE_RE = re.compile(
    r"connection refused|dial tcp|ssh: connect to host|ssh: Could not resolve|"
    r"no route to host|network is unreachable|i/o timeout|connection timed out|"
    r"connection reset by peer|no such host|temporary failure in name resolution|"
    r"name or service not known|unable to start the sftp session|"
    r"host key verification failed|permission denied \(publickey|tls handshake|"
    r"x509: certificate|context deadline exceeded|server misbehaving|"
    r"unexpected HTTP response \((?:50[234])\)",
    re.IGNORECASE,
)
_REPO_MISSING_RE = re.compile(
    r"Is there a repository at the following location\?|repository does not exist|"
    r"unable to open config file|config: no such file or directory",
    re.IGNORECASE,
)
_REPO_EXISTS_RE = re.compile(
    r"config file already exists|repository master key and config already initialized|"
    r"already initialized",
    re.IGNORECASE,
)
_SOURCE_MISSING_RE = re.compile(
    r"all (?:target|source) directories/files do not exist", re.IGNORECASE
)
_INVALID_ARGS_RE = re.compile(
    r"unknown flag|unknown shorthand flag|unknown command|invalid argument|"
    r"flag needs an argument|accepts (?:at most |between )?\d+ arg|requires at least|"
    r"no matching ID found|invalid id|unknown counting mode|"
    r"--read-data-subset|invalid (?:duration|policy|snapshot)|no snapshot(?:s)? (?:found|matched)",
    re.IGNORECASE,
)
_NO_SUCH_SNAPSHOT_RE = re.compile(
    r"no matching ID found|no snapshot found|snapshot not found", re.I
)
_INTERRUPT_CODES = frozenset({130, -int(signal.SIGINT), -int(signal.SIGTERM), -int(signal.SIGKILL)})


def parse_lock_info(text: str) -> LockInfo | None:
    """Who holds the lock, from restic's "repository is already locked ..." message."""
    match = _LOCK_RE.search(text)
    if not match:
        return None
    created = _LOCK_CREATED_RE.search(text)
    storage = _LOCK_STORAGE_RE.search(text)
    user = (match["user"] or "").strip() or None
    return LockInfo(
        pid=int(match["pid"]),
        host=match["host"],
        user=user,
        uid=int(match["uid"]) if match["uid"] else None,
        gid=int(match["gid"]) if match["gid"] else None,
        exclusive=bool(match["excl"]),
        created_at=created["at"] if created else None,
        age=created["age"] if created else None,
        storage_id=storage["id"] if storage else None,
    )


def _key_line(text: str, pattern: re.Pattern[str] | None = None) -> str:
    """The most telling line of stderr: one matching ``pattern``, else the last Fatal line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if pattern is not None:
        for line in lines:
            if pattern.search(line):
                return line
    for line in reversed(lines):
        if line.startswith("Fatal:"):
            return line
    return lines[-1] if lines else ""


def classify_failure(
    exit_code: int | None,
    stderr: str,
    *,
    command: str,
    repo_name: str = "the repository",
    redact: Callable[[str], str] | None = None,
    stderr_tail: Sequence[str] | None = None,
) -> ResticError:
    """Turn a failed restic run into a :class:`ResticError` a person can act on.

    ``stderr`` may be unredacted (it is only matched against); everything that ends up in the
    error goes through ``redact``. Text is checked before exit codes where 0.14's exit code 1
    hides the reason, and exit codes 10/11/12/130 (0.17+) win when present.
    """
    redact = redact or _identity
    shown_name = redact(repo_name)
    tail = (
        tuple(stderr_tail)
        if stderr_tail is not None
        else tuple(redact(line) for line in stderr.splitlines()[-STDERR_TAIL_LINES:])
    )

    def error(kind: ErrorKind, message: str, lock: LockInfo | None = None) -> ResticError:
        # Only what restic printed is interpolated into ``message``, always redacted first;
        # our own wording is left alone (a password "password" must not garble it).
        return ResticError(kind, message, exit_code=exit_code, stderr_tail=tail, lock=lock)

    def detail(pattern: re.Pattern[str] | None = None) -> str:
        line = _key_line(stderr, pattern)
        return f" (restic said: {redact(line)})" if line else ""

    if exit_code in _INTERRUPT_CODES:
        return error(
            ErrorKind.INTERRUPTED,
            f"restic {command} on {shown_name} was interrupted before it finished; run it again",
        )
    if exit_code == 12 or _WRONG_PASSWORD_RE.search(stderr):
        return error(
            ErrorKind.WRONG_PASSWORD,
            f"wrong password for {shown_name}: restic could not open the repository with it. "
            "Check the password (or password file/command) configured for this repository"
            + detail(_WRONG_PASSWORD_RE),
        )
    if _PASSWORD_SOURCE_RE.search(stderr):
        return error(
            ErrorKind.WRONG_PASSWORD,
            f"restic could not get the password for {shown_name}: check the password file or "
            "password command configured for this repository" + detail(_PASSWORD_SOURCE_RE),
        )
    if exit_code == 11 or _LOCKED_RE.search(stderr):
        lock = parse_lock_info(stderr)
        if lock is not None:
            lock = LockInfo(
                pid=lock.pid,
                host=redact(lock.host) if lock.host else None,
                user=redact(lock.user) if lock.user else None,
                uid=lock.uid,
                gid=lock.gid,
                exclusive=lock.exclusive,
                created_at=redact(lock.created_at) if lock.created_at else None,
                age=lock.age,
                storage_id=lock.storage_id,
            )
            holder = f"{lock.host} (PID {lock.pid}" + (f", user {lock.user}" if lock.user else "")
            holder += ")"
            since = f" since {lock.created_at}" if lock.created_at else ""
            ago = f" ({redact(lock.age)} ago)" if lock.age else ""
            message = f"repository {shown_name} is locked by {holder}{since}{ago}"
        else:
            message = f"repository {shown_name} is locked by another restic process"
        message += (
            f"; wait for that operation to finish, or if that process is gone run "
            f"`peerstash unlock {shown_name}`"
        )
        return error(ErrorKind.LOCKED, message, lock)
    # Refused credentials before missing: restic follows a 401 from a REST server, or an S3
    # signature mismatch, with "Is there a repository at the following location?".
    if _CREDENTIALS_RE.search(stderr):
        return error(
            ErrorKind.WRONG_CREDENTIALS,
            f"the storage of {shown_name} refused the credentials: check the user name and "
            "password in the repository's URI (REST), or its access keys (S3 and other "
            "services) in the repository's env" + detail(_CREDENTIALS_RE),
        )
    # Unreachable before missing: restic 0.14 follows a refused connection to a REST server
    # with "Is there a repository at the following location?".
    if _UNREACHABLE_RE.search(stderr):
        return error(
            ErrorKind.BACKEND_UNREACHABLE,
            f"cannot reach the storage of {shown_name}: check that the server is running and "
            "reachable from this machine, and the network is up" + detail(_UNREACHABLE_RE),
        )
    if _SOURCE_MISSING_RE.search(stderr):
        return error(
            ErrorKind.SOURCE_MISSING,
            "none of the paths to back up exist on this machine: check the plan's paths "
            "(a removable disk or network share may not be mounted)" + detail(_SOURCE_MISSING_RE),
        )
    if _REPO_EXISTS_RE.search(stderr):
        return error(
            ErrorKind.REPO_EXISTS,
            f"a restic repository already exists at {shown_name}: add it as an existing "
            "repository instead of initialising it" + detail(_REPO_EXISTS_RE),
        )
    if exit_code == 10 or _REPO_MISSING_RE.search(stderr):
        return error(
            ErrorKind.REPO_MISSING,
            f"there is no restic repository at {shown_name}: check the location, or "
            "initialise a new repository there" + detail(_REPO_MISSING_RE),
        )
    if _INVALID_ARGS_RE.search(stderr):
        return error(
            ErrorKind.INVALID_ARGS,
            f"restic rejected the {command} command" + detail(_INVALID_ARGS_RE),
        )
    if command == "check" and re.search(r"repository contains errors|error", stderr, re.I):
        return error(
            ErrorKind.UNKNOWN,
            f"restic check found problems in {shown_name}; see the log, and consider "
            "`restic repair` as restic suggests" + detail(),
        )
    code = "no exit code" if exit_code is None else f"exit code {exit_code}"
    return error(ErrorKind.UNKNOWN, f"restic {command} failed on {shown_name} ({code})" + detail())


# --------------------------------------------------------------------------------------------
# Finding the binary


def find_restic(configured: str | None) -> str:
    """The restic executable: the configured path first, then ``restic`` on ``PATH``.

    A configured path that does not exist falls back to ``PATH`` with a logged warning (a
    package upgrade may have moved the binary); nothing found at all is NOT_INSTALLED.
    """
    if configured:
        path = os.path.expanduser(configured)
        if os.sep in path or (os.altsep and os.altsep in path):
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return os.path.abspath(path)
        else:
            found = shutil.which(path)
            if found:
                return found
        log.warning("configured restic %r is not an executable file; looking on PATH", configured)
    found = shutil.which("restic")
    if found:
        return found
    where = f"at {configured!r} nor " if configured else ""
    raise ResticError(
        ErrorKind.NOT_INSTALLED,
        f"restic was not found {where}on PATH: install restic (e.g. `apt install restic`) or "
        "set the path to the restic program in the settings",
    )


# --------------------------------------------------------------------------------------------
# Process plumbing

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


# Looked up once in the parent: the child, between fork and exec, should do as little as
# possible.
_PRCTL = _load_prctl()


def _child_setup(parent_pid: int) -> None:
    """Runs in the child before exec: SIGINT restic when we die, so it unlocks and exits.

    The death signal fires when the *thread* that forked exits; asyncio forks from the loop's
    thread, which lives as long as the node. If we already died between fork and prctl, the
    signal will never come, so the child exits at once instead of running unsupervised.
    """
    if _PRCTL is None:
        return
    _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGINT), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


#: util-linux's ``setpriv``, looked for in the system's own directories only: it runs with
#: restic's environment (its password included), so it is not taken from ``PATH``.
_SETPRIV_PATHS = ("/usr/bin/setpriv", "/bin/setpriv")
#: ``[setpriv, "--pdeathsig", "INT", "--"]`` once one was seen to work, ``[]`` when none does
#: (restic is then started with :func:`_child_setup`); ``None`` until the first spawn asks.
_setpriv_prefix: list[str] | None = None


async def _death_signal_prefix() -> list[str]:
    """What goes before restic's argv so that it gets SIGINT when the node dies.

    ``PR_SET_PDEATHSIG`` must be set in the child. Done in Python (``preexec_fn``), it makes
    ``subprocess`` fork the whole node (page tables of 90+ MB) and run Python code in the
    child instead of using vfork: measured in a 108 MB process on the loaded 2-core machine,
    12-22 ms of wall time and 4.5 ms of the node's CPU per spawn, against 1.6-3 ms and 0.6 ms.
    ``setpriv --pdeathsig INT -- restic ...`` sets it in the child and execs restic in the same
    process (the death signal survives exec), so restic's pid, process group and pipes are
    as before. Tried once per process (``setpriv`` before util-linux 2.33 has no
    ``--pdeathsig``); where it does not work the ``preexec_fn`` stays.

    One difference: :func:`_child_setup` exits if the node died between fork and ``prctl``;
    ``setpriv`` cannot tell, so a node killed in that window (the time setpriv takes to
    start, about a millisecond) leaves that one restic to run to its end unsupervised.
    """
    global _setpriv_prefix
    if _setpriv_prefix is None:
        prefix: list[str] = []
        if _PRCTL is not None:
            for path in _SETPRIV_PATHS:
                if not os.access(path, os.X_OK):
                    continue
                candidate = [path, "--pdeathsig", "INT", "--"]
                try:
                    probe = await asyncio.create_subprocess_exec(
                        *candidate,
                        path,
                        "--version",
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.DEVNULL,
                    )
                    works = await probe.wait() == 0
                except OSError:
                    works = False
                if works:
                    prefix = candidate
                break
        _setpriv_prefix = prefix
    return _setpriv_prefix


def _check_executable(program: str) -> None:
    """Raise what exec would for a missing or non-executable ``program``.

    Started through ``setpriv``, restic's own exec failure would be setpriv's exit code 127
    and a message of its own, not the ``FileNotFoundError``/``PermissionError`` that the
    caller turns into NOT_INSTALLED with a hint.
    """
    path = program if os.sep in program else shutil.which(program)
    if path is None or not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)


LogCallback: TypeAlias = Callable[[str], Awaitable[None] | None]


async def _call(callback: Callable[[T], Awaitable[None] | None] | None, value: T) -> None:
    """Run a sync or async callback; a failing callback is logged, never kills the run."""
    if callback is None:
        return
    try:
        result = callback(value)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("restic output callback failed")


class _Pump:
    """Reads one pipe of the child line by line and hands the lines to a handler."""

    def __init__(self, stream: asyncio.StreamReader, handler: Callable[[str], Awaitable[None]]):
        self.stream = stream
        self.handler = handler
        self.discard = False  # set while stopping: keep the pipe drained, ignore content
        self.reading_since: float | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        lines = iter_lines(self.stream)
        while True:
            self.reading_since = loop.time()
            try:
                raw = await anext(lines)
            except StopAsyncIteration:
                return
            finally:
                self.reading_since = None
            if not self.discard:
                await self.handler(_decode(raw))


class _Session:
    """The per-run state shared by a method and the stderr pump: redaction, logging, errors."""

    def __init__(self, repo: RepoAccess | None, command: str, on_log: LogCallback | None) -> None:
        self.redact = Redactor(repo.secrets() if repo is not None else ())
        self.command = command
        self.repo_name = repo.display_name if repo is not None else "restic"
        self.on_log = on_log
        self.stderr = StderrCollector(self.redact)
        #: Set when the run cannot succeed although restic keeps trying (it retries refused
        #: credentials for ~15 minutes from 0.17 on): the wrapper stops it and reports why.
        self.give_up = asyncio.Event()
        self._credential_retries = 0

    async def log(self, line: str) -> None:
        """Log an already redacted line."""
        await _call(self.on_log, line)

    async def on_stderr(self, line: str) -> None:
        retry = parse_retry_line(line)
        if retry is not None and _CREDENTIALS_RE.search(retry[1]):
            self._credential_retries += 1
            if self._credential_retries >= CREDENTIAL_RETRIES_BEFORE_GIVING_UP:
                self.give_up.set()
        shown = self.stderr.feed(line)
        if shown is not None:
            await self.log(shown)

    def snapshot_missing(self, snapshot_id: str, exit_code: int) -> ResticError | None:
        """The error for an unknown snapshot id, if that is what restic said.

        0.14: ``Ignoring "deadbeef", no matching ID found`` (``ls`` then exits 0); 0.17+:
        ``no matching ID found for prefix "deadbeef"``. One sentence for both.
        """
        if not _NO_SUCH_SNAPSHOT_RE.search(self.stderr.raw_text()):
            return None
        return ResticError(
            ErrorKind.INVALID_ARGS,
            f"snapshot {snapshot_id} was not found in {self.repo_name}",
            exit_code=exit_code,
            stderr_tail=tuple(self.stderr.tail),
        )

    def error(self, exit_code: int | None) -> ResticError:
        if exit_code == 1 and self.stderr.exit_error_code not in (None, 1):
            exit_code = self.stderr.exit_error_code
        return classify_failure(
            exit_code,
            self.stderr.raw_text(),
            command=self.command,
            repo_name=self.repo_name,
            redact=self.redact,
            stderr_tail=tuple(self.stderr.tail),
        )


async def _wait_through_cancellation(awaitable: Awaitable[Any]) -> bool:
    """Await to completion even if our task is cancelled meanwhile; True if it was."""
    future = asyncio.ensure_future(awaitable)
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.done():
                break
            cancelled = True
        except Exception:
            break
    if future.done() and not future.cancelled():
        future.exception()  # mark retrieved: the caller decides whether it matters
    return cancelled


async def _finish_unless_given_up(child: _Child, session: _Session) -> bool:
    """Wait for restic to end; False (restic still running) if the session gave up first."""
    finish = asyncio.ensure_future(child.finish())
    give_up = asyncio.ensure_future(session.give_up.wait())
    try:
        await asyncio.wait({finish, give_up}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        give_up.cancel()
        if not finish.done():
            finish.cancel()
            if await _wait_through_cancellation(finish):
                raise asyncio.CancelledError
    if finish.cancelled():
        return False
    finish.result()  # a reader's error
    return True


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


def _json_docs_handler(session: _Session, docs: list[Any]) -> Callable[[str], Awaitable[None]]:
    """Streaming form of :func:`split_json_output`: documents collected, text logged."""

    async def handle(line: str) -> None:
        text = line.strip()
        if not text:
            return
        value = _json_doc_or_not(text)
        if value is _NOT_JSON:
            await session.log(session.redact(text))
        else:
            docs.append(value)

    return handle


def _text_handler(session: _Session) -> Callable[[str], Awaitable[None]]:
    async def handle(line: str) -> None:
        text = line.strip()
        if text:
            await session.log(session.redact(text))

    return handle


def _check_tags(tags: Iterable[str]) -> list[str]:
    result = []
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip():
            raise ResticError(
                ErrorKind.INVALID_ARGS, f"invalid tag {tag!r}: tags must not be empty"
            )
        if "," in tag:
            # restic splits --tag values on commas: "a,b" would become two tags.
            raise ResticError(
                ErrorKind.INVALID_ARGS, f"invalid tag {tag!r}: tags cannot contain ','"
            )
        result.append(tag)
    return result


def forget_args(
    policy: RetentionPolicy,
    *,
    tags: Sequence[str] = (),
    host: str | None = None,
    group_by: str | None = None,
    prune: bool = False,
    dry_run: bool = False,
) -> list[str]:
    """The ``restic forget`` arguments for ``policy`` on the snapshots of ``host`` that carry
    *all* of ``tags``; an empty policy is refused (it would keep nothing in particular).

    ``host`` becomes ``--host`` and the tags one ``--tag a,b`` (restic reads the comma as AND;
    separate ``--tag`` flags would be OR and widen the selection). Both filters together are
    how a plan's retention stays on the snapshots this instance made for it: a repository may
    hold other machines' plans of the same name and snapshots made by hand.

    ``group_by`` (``None`` = choose): without tags we use restic's own default,
    ``host,paths``, so each machine and each backup set keeps its own history - grouping
    by tags alone would let one host's snapshots count against another's in a shared
    repository. With tags (a plan's ``plan:<id>`` and ``host:<instance>``) we use
    ``host,tags``: the tag filter already selects the plan, and grouping by tags rather
    than paths means editing a plan's paths does not strand its older snapshots in a group
    of their own that the policy would then keep forever. Pass ``""`` to disable grouping.

    ``dry_run`` adds ``--dry-run`` and the global ``--no-lock``: restic 0.14 then reports
    what it would remove without touching the repository or waiting for its lock, so a
    preview never queues behind (or blocks) a running backup. It cannot go with ``prune``.
    """
    if policy.is_empty():
        raise ResticError(
            ErrorKind.INVALID_ARGS,
            "refusing to run forget with an empty retention policy: with no keep rule "
            "restic has nothing telling it which snapshots to keep. Set at least one rule "
            "(e.g. keep last 10)",
        )
    if dry_run and prune:
        raise ResticError(ErrorKind.INVALID_ARGS, "a dry run of forget cannot also prune")
    checked = _check_tags(_seq(tags))
    args = ["forget", "--json", *policy.to_args()]
    if host is not None:
        if not host.strip() or host.startswith("-"):
            raise ResticError(ErrorKind.INVALID_ARGS, f"invalid host {host!r} for forget")
        args += ["--host", host]
    if checked:
        args += ["--tag", ",".join(checked)]
    if group_by is None:
        group_by = "host,tags" if checked else "host,paths"
    args += ["--group-by", group_by]
    if prune:
        args.append("--prune")
    if dry_run:
        args += ["--dry-run", "--no-lock"]
    return args


def _seq(value: str | os.PathLike[str] | Sequence[Any]) -> list[Any]:
    """A list from a sequence argument; a lone string is one item, not its characters."""
    if isinstance(value, str | os.PathLike):
        return [value]
    return list(value)


def _absolute(path: str | os.PathLike[str]) -> str:
    """An absolute, normalised path: restic stores relative backup paths oddly."""
    return os.path.abspath(os.fspath(path))


def _check_snapshot_ref(snapshot_id: str) -> None:
    if not isinstance(snapshot_id, str) or not _SNAPSHOT_REF_RE.match(snapshot_id):
        raise ResticError(
            ErrorKind.INVALID_ARGS,
            f"invalid snapshot id {snapshot_id!r}: expected 'latest' or a hex snapshot id",
        )


_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
# Room for restic to write its goodbye (and a few seconds of status lines) after we died.
_PIPE_SIZE = 1024 * 1024


def _make_pipe() -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    if _F_SETPIPE_SZ is not None:
        try:
            fcntl.fcntl(write_fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size: the default 64 KiB still works
    return read_fd, write_fd


async def _open_reader(fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    """A StreamReader over the read end ``fd``, which it takes ownership of (even on error)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_READ_CHUNK)
    pipe = os.fdopen(fd, "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    except BaseException:
        pipe.close()
        raise
    return reader, transport


class _Child:
    """One running restic: the process, the readers of its two pipes, and how to end it.

    We make the stdout/stderr pipes ourselves instead of asyncio's ``PIPE`` for two reasons:

    * With PR_SET_PDEATHSIG, restic gets SIGINT when we die - but by then the kernel has
      already closed our read ends, so restic's first words ("signal interrupt received,
      cleaning up") would hit a broken pipe and Go would kill it with SIGPIPE before it removes
      its lock. (Go ignores an inherited SIG_IGN for SIGPIPE.) So where PDEATHSIG exists, the
      child also inherits the read ends of its own pipes: they never break, and a 1 MiB buffer
      leaves it room to finish. Elsewhere we don't, so an orphan dies rather than blocks.
    * ``Process.wait()`` then means "restic exited", not "and every holder of its pipes closed
      them", which matters when a grandchild (ssh, a password agent) keeps a pipe open.
    """

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        pumps: list[_Pump],
        transports: list[asyncio.BaseTransport],
    ) -> None:
        self.proc = proc
        self.pumps = pumps
        self.transports = transports
        self.tasks = [asyncio.create_task(pump.run()) for pump in pumps]
        self.waiter: asyncio.Future[int] = asyncio.ensure_future(proc.wait())

    @classmethod
    async def spawn(
        cls,
        argv: Sequence[str],
        env: Mapping[str, str],
        on_stdout: Callable[[str], Awaitable[None]],
        on_stderr: Callable[[str], Awaitable[None]],
    ) -> _Child:
        prefix = await _death_signal_prefix()
        preexec = None
        if prefix:
            _check_executable(argv[0])
        elif _PRCTL is not None:
            preexec = functools.partial(_child_setup, os.getpid())
        out_r, out_w = _make_pipe()
        err_r, err_w = _make_pipe()
        keep_readable = (out_r, err_r) if _PRCTL is not None else ()
        try:
            proc = await asyncio.create_subprocess_exec(
                *prefix,
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                env=dict(env),
                pass_fds=keep_readable,
                # Own session: a Ctrl-C or SIGHUP meant for the node must not reach restic
                # behind our back; we decide when restic is interrupted.
                start_new_session=True,
                preexec_fn=preexec,
            )
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        transports: list[asyncio.BaseTransport] = []
        readers: list[asyncio.StreamReader] = []
        try:
            for fd in (out_r, err_r):
                reader, transport = await _open_reader(fd)
                readers.append(reader)
                transports.append(transport)
        except BaseException:
            for transport in transports:
                transport.close()
            for fd in (out_r, err_r)[len(transports) + 1 :]:  # the failed one closed its own
                os.close(fd)
            proc.kill()
            await _wait_through_cancellation(proc.wait())
            raise
        pumps = [_Pump(readers[0], on_stdout), _Pump(readers[1], on_stderr)]
        return cls(proc, pumps, transports)

    def _close_transports(self) -> None:
        for transport in self.transports:
            transport.close()  # the reader sees EOF

    async def finish(self) -> None:
        """Wait until restic exited and both readers reached EOF; re-raise a reader's error.

        Once restic has exited, a pipe on which nothing arrives for ``_PIPE_GRACE`` seconds is
        held open by a grandchild: we close our end rather than wait for it forever.
        """
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = [self.waiter, *self.tasks]
        try:
            while True:
                for task in self.tasks:
                    if task.done() and not task.cancelled():
                        exc = task.exception()
                        if exc is not None:
                            raise exc
                pending = {f for f in futures if not f.done()}
                if not pending:
                    return
                # A timeout only to notice stuck pipes; normal runs end by EOF and exit.
                await asyncio.wait(pending, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                if self.proc.returncode is None:
                    continue
                now = loop.time()
                open_pumps = [
                    p for p, t in zip(self.pumps, self.tasks, strict=True) if not t.done()
                ]
                if open_pumps and all(
                    p.reading_since is not None and now - p.reading_since > _PIPE_GRACE
                    for p in open_pumps
                ):
                    self._close_transports()
        finally:
            if all(f.done() for f in futures):
                self._close_transports()

    async def stop(self, grace: float) -> None:
        """SIGINT, wait ``grace`` seconds, SIGKILL; always reap and finish the readers.

        SIGINT, not SIGTERM: restic 0.14 removes its lock on SIGINT only. If our task is
        cancelled again meanwhile we still finish (killing at once), then re-raise
        ``CancelledError``.
        """
        proc = self.proc
        for pump in self.pumps:
            pump.discard = True  # keep draining so restic never blocks writing while exiting
        cancelled_again = False
        if proc.returncode is None:
            try:
                proc.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(asyncio.shield(self.waiter), grace)
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                cancelled_again = True
            except Exception:
                pass
            if proc.returncode is None:
                log.warning("restic (pid %d) still running after SIGINT; killing it", proc.pid)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # restic leads its own process group
                except (ProcessLookupError, PermissionError):
                    try:
                        proc.kill()
                    except ProcessLookupError:
                        pass
        # Reap restic and end both readers, even if cancelled again while doing so.
        if await _wait_through_cancellation(self.finish()):
            cancelled_again = True
        for task in self.tasks:
            if not task.done():
                task.cancel()
        if await _wait_through_cancellation(asyncio.gather(*self.tasks, return_exceptions=True)):
            cancelled_again = True
        self._close_transports()
        if cancelled_again:
            raise asyncio.CancelledError


# --------------------------------------------------------------------------------------------
# The wrapper


class Restic:
    """Runs restic commands for the runner. One instance can serve many concurrent runs.

    Every method raises :class:`ResticError` on failure and propagates ``CancelledError``
    after stopping restic cleanly (SIGINT, then SIGKILL after ``cancel_grace`` seconds).
    """

    def __init__(
        self, binary: str, *, cancel_grace: float = 10.0, retry_lock: float | None = None
    ) -> None:
        self.binary = binary
        self.cancel_grace = cancel_grace
        #: Seconds restic (0.16+) waits for a lock another process holds before it fails
        #: (``--retry-lock``); ``None`` or 0: fail at once, as restic 0.14 always does.
        self.retry_lock = retry_lock
        self._version: tuple[int, int, int] | None = None
        self._active: dict[int, tuple[str, ...]] = {}
        self._idle_waiters: list[asyncio.Future[None]] = []

    @property
    def active_pids(self) -> frozenset[int]:
        """PIDs of restic processes this instance is running now (to recognise our locks)."""
        return frozenset(self._active)

    async def wait_idle(self) -> None:
        """Wait until no restic process started by this instance is running (or reaped).

        For shutdown: after cancelling the runner's tasks, await this before the loop ends so
        every restic got its SIGINT, removed its lock and was reaped.
        """
        while self._active:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
            await waiter

    def _forget_process(self, pid: int) -> None:
        self._active.pop(pid, None)
        if not self._active:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # -- process handling ------------------------------------------------------------------

    def _argv(self, repo: RepoAccess | None, args: Sequence[str]) -> list[str]:
        argv = [self.binary]
        if repo is not None:
            for option in repo.options:
                argv += ["-o", option]
            if repo.cache_dir:
                argv += ["--cache-dir", repo.cache_dir]
        argv.extend(args)
        return argv

    async def _with_retry_lock(self, repo: RepoAccess | None, args: Sequence[str]) -> list[str]:
        """``args`` with ``--retry-lock`` in front where restic (0.16+) has it and it helps.

        A brief lock by another process (a peer's ``check``, a scheduled ``forget``) is then
        waited for instead of failing the run. Never for ``unlock``/``init``, which take no
        lock, nor when the version cannot be read (restic will then say what is wrong).
        """
        if (
            repo is None
            or not self.retry_lock
            or self.retry_lock <= 0
            or not args
            or args[0] in _NO_LOCK_COMMANDS
        ):
            return list(args)
        try:
            version = await self.version()
        except ResticError:
            return list(args)
        if version < RETRY_LOCK_SINCE:
            return list(args)
        return ["--retry-lock", f"{max(1, round(self.retry_lock))}s", *args]

    async def _execute(
        self,
        repo: RepoAccess | None,
        args: Sequence[str],
        session: _Session,
        on_stdout: Callable[[str], Awaitable[None]],
    ) -> int:
        """Run restic to completion and return its exit code (negative: killed by signal)."""
        argv = self._argv(repo, await self._with_retry_lock(repo, args))
        env = build_env(repo) if repo is not None else _base_env()
        try:
            child = await _Child.spawn(argv, env, on_stdout, session.on_stderr)
        except FileNotFoundError:
            raise ResticError(
                ErrorKind.NOT_INSTALLED,
                f"restic was not found at {self.binary}: install restic or set its path in the "
                "settings",
            ) from None
        except PermissionError:
            raise ResticError(
                ErrorKind.NOT_INSTALLED,
                f"{self.binary} cannot be executed (permission denied): check the restic path",
            ) from None
        pid = child.proc.pid
        self._active[pid] = tuple(argv)
        gave_up = False
        try:
            try:
                gave_up = not await _finish_unless_given_up(child, session)
            except BaseException:
                await child.stop(self.cancel_grace)
                raise
            if gave_up:
                await child.stop(self.cancel_grace)
        finally:
            self._forget_process(pid)
        if gave_up:
            # Classified from what restic said before we stopped it, not from its exit code
            # (which only says that we interrupted it).
            raise session.error(None)
        assert child.proc.returncode is not None
        return child.proc.returncode

    async def _run(
        self,
        repo: RepoAccess | None,
        command: str,
        args: Sequence[str],
        *,
        on_log: LogCallback | None = None,
        on_stdout: Callable[[_Session], Callable[[str], Awaitable[None]]] = _text_handler,
        ok_codes: Iterable[int] = (0,),
    ) -> tuple[int, _Session]:
        session = _Session(repo, command, on_log)
        code = await self._execute(repo, args, session, on_stdout(session))
        if code not in set(ok_codes):
            raise session.error(code)
        return code, session

    async def _json_doc(
        self, repo: RepoAccess, command: str, args: Sequence[str], on_log: LogCallback | None
    ) -> Any:
        docs: list[Any] = []
        await self._run(
            repo, command, args, on_log=on_log, on_stdout=lambda s: _json_docs_handler(s, docs)
        )
        return docs[0] if docs else None

    # -- commands --------------------------------------------------------------------------

    async def version(self) -> tuple[int, int, int]:
        """restic's version, e.g. ``(0, 14, 0)``; asked once per instance."""
        if self._version is None:
            lines: list[str] = []

            def collect(session: _Session) -> Callable[[str], Awaitable[None]]:
                async def handle(line: str) -> None:
                    lines.append(line)

                return handle

            await self._run(None, "version", ["version"], on_stdout=collect)
            self._version = parse_version("\n".join(lines))
        return self._version

    async def init(self, repo: RepoAccess, *, on_log: LogCallback | None = None) -> None:
        """Create a new repository at ``repo.uri`` (REPO_EXISTS if there already is one)."""
        await self._run(repo, "init", ["init"], on_log=on_log)

    async def cat_config(self, repo: RepoAccess) -> dict[str, Any]:
        """The repository config; its ``id`` is the repository's GUID."""
        lines: list[str] = []

        def collect(session: _Session) -> Callable[[str], Awaitable[None]]:
            async def handle(line: str) -> None:
                lines.append(line)

            return handle

        await self._run(repo, "cat config", ["cat", "config"], on_stdout=collect)
        return parse_cat_config("\n".join(lines))

    async def guid(self, repo: RepoAccess) -> str:
        """The repository's GUID (the id in ``restic cat config``), stable across URIs."""
        config = await self.cat_config(repo)
        guid = config.get("id")
        if not isinstance(guid, str) or not _HEX_ID_RE.match(guid):
            raise ResticError(ErrorKind.UNKNOWN, "the repository config has no valid id")
        return guid

    async def backup(
        self,
        repo: RepoAccess,
        paths: Sequence[str | os.PathLike[str]],
        *,
        excludes: Sequence[str] = (),
        tags: Sequence[str] = (),
        host: str | None = None,
        on_progress: Callable[[BackupProgress], Awaitable[None] | None] | None = None,
        on_log: LogCallback | None = None,
    ) -> BackupResult:
        """Back up ``paths`` (made absolute: restic stores relative paths oddly).

        Exit code 3 (some source data unreadable) is not an error: the snapshot exists, and the
        result says ``partial=True`` with the warnings.
        """
        path_list = _seq(paths)
        if not path_list:
            raise ResticError(ErrorKind.INVALID_ARGS, "nothing to back up: no paths given")
        absolute = [_absolute(path) for path in path_list]
        args = ["backup", "--json"]
        for pattern in _seq(excludes):
            if not pattern:
                raise ResticError(ErrorKind.INVALID_ARGS, "an exclude pattern is empty")
            args += ["--exclude", pattern]
        for tag in _check_tags(_seq(tags)):
            args += ["--tag", tag]
        if host:
            args += ["--host", host]
        args += ["--", *absolute]

        session = _Session(repo, "backup", on_log)
        parser = BackupOutputParser(session.redact)

        async def handle(line: str) -> None:
            item = parser.feed_stdout(line)
            if isinstance(item, BackupProgress):
                await _call(on_progress, item)
            elif isinstance(item, str):
                await session.log(item)

        code = await self._execute(repo, args, session, handle)
        if code not in (0, 3):
            raise session.error(code)
        stderr = session.stderr
        return BackupResult.from_summary(
            parser.summary,
            partial=code == 3 or stderr.skipped_paths > 0,
            warnings=stderr.warnings,
            warning_count=stderr.warning_count,
            exit_code=code,
        )

    async def snapshots(self, repo: RepoAccess, *, tags: Sequence[str] = ()) -> list[Snapshot]:
        """All snapshots, or those carrying *all* of ``tags``."""
        args = ["snapshots", "--json"]
        checked = _check_tags(_seq(tags))
        if checked:
            args += ["--tag", ",".join(checked)]  # one --tag a,b = a AND b
        doc = await self._json_doc(repo, "snapshots", args, None)
        return [] if doc is None else parse_snapshots(doc)

    async def forget(
        self,
        repo: RepoAccess,
        policy: RetentionPolicy,
        *,
        tags: Sequence[str] = (),
        host: str | None = None,
        group_by: str | None = None,
        prune: bool = False,
        dry_run: bool = False,
        on_log: LogCallback | None = None,
    ) -> ForgetResult:
        """Apply ``policy`` to the snapshots of ``host`` carrying all of ``tags``; refuse an
        empty policy. ``dry_run`` only reports what would go (see :func:`forget_args`)."""
        args = forget_args(
            policy, tags=tags, host=host, group_by=group_by, prune=prune, dry_run=dry_run
        )
        doc = await self._json_doc(repo, "forget", args, on_log)
        return parse_forget(doc, pruned=prune)

    async def prune(self, repo: RepoAccess, *, on_log: LogCallback | None = None) -> None:
        """Remove data no snapshot references any more (text output goes to ``on_log``)."""
        await self._run(repo, "prune", ["prune"], on_log=on_log)

    async def check(
        self,
        repo: RepoAccess,
        *,
        read_data_subset: str | None = None,
        on_log: LogCallback | None = None,
    ) -> None:
        """Verify the repository's structure (and some data, e.g. ``"1/10"`` or ``"5%"``)."""
        args = ["check"]
        if read_data_subset:
            args += ["--read-data-subset", read_data_subset]
        await self._run(repo, "check", args, on_log=on_log)

    async def restore(
        self,
        repo: RepoAccess,
        snapshot_id: str,
        target: str | os.PathLike[str],
        *,
        include: Sequence[str] = (),
        on_progress: Callable[[RestoreProgress], Awaitable[None] | None] | None = None,
        on_log: LogCallback | None = None,
    ) -> RestoreResult:
        """Restore a snapshot (or the ``include`` paths of it) under ``target``.

        restic recreates the snapshot's absolute paths below ``target``. Progress is only
        available from restic 0.16 (``restore --json``); before that ``on_progress`` is never
        called and the result's counts are ``None``.
        """
        _check_snapshot_ref(snapshot_id)
        target_path = _absolute(target)
        with_json = await self.version() >= RESTORE_JSON_SINCE
        args = ["restore"]
        if with_json:
            args.append("--json")
        args += ["--target", target_path]
        for pattern in _seq(include):
            if not pattern:
                raise ResticError(ErrorKind.INVALID_ARGS, "an include pattern is empty")
            args += ["--include", pattern]
        args += ["--", snapshot_id]

        session = _Session(repo, "restore", on_log)
        parser = RestoreOutputParser(session.redact)

        async def handle(line: str) -> None:
            item = parser.feed_stdout(line) if with_json else (session.redact(line.strip()) or None)
            if isinstance(item, RestoreProgress):
                await _call(on_progress, item)
            elif isinstance(item, str):
                await session.log(item)

        code = await self._execute(repo, args, session, handle)
        if code != 0:
            raise session.snapshot_missing(snapshot_id, code) or session.error(code)
        summary = parser.summary
        warnings = tuple(session.stderr.warnings)
        if summary is None:
            return RestoreResult(snapshot_id, target_path, warnings=warnings)
        return RestoreResult(
            snapshot_id,
            target_path,
            files_restored=_count(summary, "files_restored"),
            files_skipped=_count(summary, "files_skipped"),
            files_total=_count(summary, "total_files"),
            bytes_restored=_count(summary, "bytes_restored"),
            bytes_total=_count(summary, "total_bytes"),
            warnings=warnings,
        )

    async def ls(
        self, repo: RepoAccess, snapshot_id: str, path: str | None = None
    ) -> AsyncGenerator[LsNode, None]:
        """Stream the nodes of a snapshot (below ``path``) as restic prints them.

        Nodes are yielded while restic is still listing, with a bounded queue in between, so a
        directory of millions of entries costs constant memory and the first entries show at
        once. With ``path``, restic 0.14 lists that directory itself and its direct children.

        Stopping early is fine, but close the iterator (``contextlib.aclosing``) so restic is
        stopped right away rather than when the generator is garbage collected.
        """
        _check_snapshot_ref(snapshot_id)
        args = ["ls", "--json", "--", snapshot_id]
        if path:
            args.append(path)
        session = _Session(repo, "ls", None)
        queue: asyncio.Queue[LsNode] = asyncio.Queue(maxsize=_LS_QUEUE_SIZE)
        stopping = False
        snapshot_seen = False

        async def handle(line: str) -> None:
            nonlocal snapshot_seen
            if stopping:
                return
            item = parse_ls_line(line)
            if isinstance(item, LsNode):
                await queue.put(item)
            elif isinstance(item, Snapshot):
                snapshot_seen = True

        task = asyncio.create_task(self._execute(repo, args, session, handle))
        # A consumer task cancelled mid-iteration leaves this generator suspended until it is
        # garbage collected; tie restic's lifetime to that task so it is stopped right away.
        consumer = asyncio.current_task()

        def consumer_done(_: asyncio.Task[Any]) -> None:
            if not task.done():
                task.cancel()

        if consumer is not None:
            consumer.add_done_callback(consumer_done)
        getter: asyncio.Task[LsNode] | None = None
        try:
            while True:
                if not queue.empty():  # fast path: no task per node while restic is ahead
                    yield queue.get_nowait()
                    continue
                if task.done():
                    break
                getter = asyncio.create_task(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    node = getter.result()
                    getter = None
                    yield node
                    continue
                getter.cancel()
                getter = None
                break
            while not queue.empty():
                yield queue.get_nowait()
            code = task.result()
            if code != 0:
                raise session.snapshot_missing(snapshot_id, code) or session.error(code)
            if not snapshot_seen:
                # restic 0.14 prints "Ignoring ..." and exits 0 for an unknown snapshot.
                missing = session.snapshot_missing(snapshot_id, code)
                if missing is not None:
                    raise missing
        finally:
            if consumer is not None:
                consumer.remove_done_callback(consumer_done)
            if getter is not None:
                getter.cancel()
            if not task.done():
                stopping = True
                while not queue.empty():  # unblock a reader waiting on a full queue
                    queue.get_nowait()
                task.cancel()
                again = await _wait_through_cancellation(task)
                if again:
                    raise asyncio.CancelledError

    async def stats(self, repo: RepoAccess, mode: str = "restore-size") -> dict[str, Any]:
        """``restic stats --json`` in ``mode`` (restore-size, raw-data, ...)."""
        if mode not in _STATS_MODES:
            raise ResticError(
                ErrorKind.INVALID_ARGS,
                f"unknown stats mode {mode!r}; use one of {', '.join(_STATS_MODES)}",
            )
        doc = await self._json_doc(repo, "stats", ["stats", "--json", "--mode", mode], None)
        if not isinstance(doc, dict):
            raise ResticError(ErrorKind.UNKNOWN, "restic stats printed no JSON object")
        return doc

    async def unlock(self, repo: RepoAccess, *, remove_all: bool = False) -> None:
        """Remove stale locks (``remove_all``: every lock, even live ones - use with care)."""
        args = ["unlock"]
        if remove_all:
            args.append("--remove-all")
        await self._run(repo, "unlock", args)
