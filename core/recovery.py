"""Getting back into a repository without Peerstash: strong passwords and the recovery sheet.

A restic repository is useless without its password, and the password lives on the machine
whose disk may be the thing that died. So the first-run assistant generates a strong password,
and both the assistant and the repository editor (and ``peerstash repo show --reveal-password``)
let the owner take it elsewhere: shown, copied, or written to a *recovery sheet*: a plain text
file with the repository's location, its password and the exact ``restic`` command that opens
it, so that restic alone (no Peerstash, no node) gets the data back.

The sheet holds the repository password on purpose (that is its point) but no other secret the
owner did not ask to export: credentials in the URI stay ``***`` and the environment variables a
backend needs (S3 keys...) are named, not written. It is written mode 0600.

Pure functions and one small blocking file write; nothing here knows Qt or HTTP.
"""

from __future__ import annotations

import os
import secrets
import shlex
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

#: Letters and digits without the look-alikes (0/O, 1/l/I): a password someone may copy by hand.
_ALPHABET = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def generate_password(groups: int = 6, size: int = 5) -> str:
    """A strong random password in dash-separated groups, e.g. ``k7Pqz-3mWxa-...``.

    6 groups of 5 from 56 symbols: about 174 bits, far beyond guessing, still typeable.
    """
    return "-".join("".join(secrets.choice(_ALPHABET) for _ in range(size)) for _ in range(groups))


def restic_command(uri: str, options: Sequence[str] = (), action: str = "snapshots") -> str:
    """``restic -r URI [-o K=V]... ACTION``, quoted for a POSIX shell."""
    parts = ["restic", "-r", uri]
    for opt in options:
        parts += ["-o", opt]
    parts += action.split()
    return shlex.join(parts)


def recovery_sheet(
    *,
    name: str,
    uri: str,
    password: str,
    env_keys: Sequence[str] = (),
    options: Sequence[str] = (),
    machine: str = "",
    now: datetime | None = None,
) -> str:
    """The text of a recovery sheet for repository ``name``.

    ``uri`` must already have its credentials masked (``***``), as the node lists it; the
    sheet then says where the missing part goes instead of holding it. ``env_keys`` are the
    names of the extra environment restic needs (their values are not written).
    """
    when = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    where = f" on {machine}" if machine else ""
    lines = [
        f"Peerstash recovery sheet: repository {name!r}",
        f"Written {when}{where}.",
        "",
        "Keep this sheet away from the computer it protects (print it, or put it in a",
        "password manager). Whoever has it and can reach the repository can read the backups;",
        "without the password below, nobody can, not even you.",
        "",
        f"Repository location: {uri}",
        f"Repository password: {password}",
        "",
        "To open the repository with restic alone (https://restic.net), run:",
        "",
        f"    {restic_command(uri, options)}",
        "",
        "restic asks for the password above. To restore the latest snapshot into a folder:",
        "",
        f"    {restic_command(uri, options, 'restore latest --target RESTORE_FOLDER')}",
        "",
    ]
    if "***" in uri:
        lines += [
            "The location holds *** where the server's password goes: that password is not on",
            "this sheet. Write it in place of *** when you run the commands.",
            "",
        ]
    if env_keys:
        lines += [
            "restic also needs these environment variables, which are not on this sheet",
            "(set each before running the commands, e.g. export NAME=value):",
            "",
            *(f"    {key}" for key in env_keys),
            "",
        ]
    return "\n".join(lines)


def password_from_sheet(text: str) -> str | None:
    """The password written on a sheet made by :func:`recovery_sheet` (None if there is none)."""
    for line in text.splitlines():
        if line.startswith("Repository password: "):
            return line.removeprefix("Repository password: ")
    return None


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (mode 0600), also when it existed.

    The mode is set on the open descriptor before anything is written, so the password is
    never in a file others can read, not even for a moment. Blocking: run it in a thread.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fd = -1
            fh.write(text)
    finally:
        if fd >= 0:
            os.close(fd)
