"""How restic opens one repository, and how its secrets are kept out of everything we show.

:class:`RepoAccess` is the repository's URI, exactly one password method (a value, a file or a
command) and extra env; :func:`build_env` makes restic's whole environment from it, dropping
every inherited ``RESTIC_*`` variable so none can redirect restic to another password or
repository. The password only ever travels in the environment, never on the command line.
:class:`Redactor` masks every secret of a repository (in its JSON- and URL-encoded forms too)
and :func:`redact_uri` the credentials of any ``scheme://user:pass@`` in a text: every line
restic prints passes through them before it reaches a log, an error or a person.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

#: Secrets shorter than this are not searched for in output: a 1-3 character value (``"1"``,
#: ``"eu"``) would match everywhere and make every log line unreadable.
MIN_SECRET_LENGTH = 4
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


def build_env(
    repo: RepoAccess, base: Mapping[str, str] | None = None, *, progress_fps: int | None = None
) -> dict[str, str]:
    """The complete environment for a restic process working on ``repo``.

    Starts from ``base`` (default ``os.environ``) without any ``RESTIC_*`` variable, then sets
    the repository, exactly one password method, and the repository's extra env.

    ``progress_fps``: how many status lines a second restic prints (``RESTIC_PROGRESS_FPS``),
    for the commands whose ``--json`` progress we read (backup, restore). Left unset for the
    others: there it would turn on progress output that restic leaves off when its output is
    not a terminal. Ours always decides: a ``RESTIC_PROGRESS_FPS`` in the node's environment is
    dropped with every other ``RESTIC_*``, and a repository's env may not set ``RESTIC_*``.
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
    if progress_fps is not None:
        env["RESTIC_PROGRESS_FPS"] = str(progress_fps)
    return env


# --------------------------------------------------------------------------------------------
# Redaction

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
