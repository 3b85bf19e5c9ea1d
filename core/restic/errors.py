"""What can go wrong with a restic run, and how we tell which: the bottom of the package.

:class:`ErrorKind` names failures by what a person can do about them, :class:`ResticError`
carries one with a message that says what to do, and :func:`classify_failure` turns restic's
exit code and stderr into one. restic 0.14 uses exit code 1 for almost everything, so the text
of stderr decides (the patterns below, with the wordings of the restic versions we support);
0.17+'s exit codes 10/11/12/130 win when present. Lock holders (:func:`parse_lock_info`) and
backend retry notices (:func:`parse_retry_line`) are read here too, because the runner acts on
them. Nothing here runs restic or imports the rest of the package: the other modules build on
this one.
"""

from __future__ import annotations

import enum
import re
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: How many stderr lines an error keeps for the person reading it.
STDERR_TAIL_LINES = 20


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


def _identity(text: str) -> str:
    return text


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
