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
  (set through util-linux's ``setpriv`` where it works, see ``process._death_signal_prefix``).
* **Errors a person can act on.** Failures are classified from the exit code *and* the text of
  stderr (restic 0.14 uses exit code 1 for almost everything) into :class:`ErrorKind`, with a
  message saying what to do.

The package, by concern (each module's docstring says more):

* ``errors``: :class:`ErrorKind`, :class:`ResticError`, failure classification, lock holders.
* ``access``: :class:`RepoAccess`, the password methods, the environment, redaction.
* ``parse``: line splitting, the records restic's output becomes, the line-fed parsers.
* ``process``: finding restic, spawning it, its pipes, PDEATHSIG, SIGINT then SIGKILL.
* ``client``: :class:`Restic`, one method per restic command.

This ``__init__`` re-exports every name the single ``restic.py`` module had in ``__all__`` (and
the few others that callers and tests import), so ``from peerstash.core.restic import X`` keeps
working. A test that monkeypatches a name must patch the module that uses it, not this one.
"""

from __future__ import annotations

from peerstash.core.restic.access import (
    Password,
    PasswordCommand,
    PasswordFile,
    PasswordValue,
    Redactor,
    RepoAccess,
    build_env,
    redact_uri,
)
from peerstash.core.restic.client import Restic, forget_args, progress_fps_for
from peerstash.core.restic.errors import (
    ErrorKind,
    LockInfo,
    ResticError,
    classify_failure,
    parse_lock_info,
    parse_retry_line,
)
from peerstash.core.restic.parse import MAX_SECONDS_REMAINING as MAX_SECONDS_REMAINING
from peerstash.core.restic.parse import MAX_WARNINGS as MAX_WARNINGS
from peerstash.core.restic.parse import (
    BackupOutputParser,
    BackupProgress,
    BackupResult,
    ForgetGroup,
    ForgetResult,
    LsNode,
    RestoreOutputParser,
    RestoreProgress,
    RestoreResult,
    Snapshot,
    StderrCollector,
    format_error_line,
    iter_lines,
    parse_cat_config,
    parse_forget,
    parse_ls_line,
    parse_snapshots,
    parse_version,
    same_snapshot_id,
    split_json_output,
    strip_ansi,
)
from peerstash.core.restic.process import LogCallback, find_restic
from peerstash.core.restic.process import _Session as _Session
from peerstash.core.retention import RetentionPolicy

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
    "progress_fps_for",
    "redact_uri",
    "same_snapshot_id",
    "split_json_output",
    "strip_ansi",
]
