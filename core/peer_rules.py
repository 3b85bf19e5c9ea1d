"""What a peer may place in this node's configuration: the rules that keep programs out.

A repository's settings can make this machine run programs: its password source can be a
command, restic ``-o`` options can name one (``sftp.command``, ``rclone.program``), an
``rclone:`` URI runs rclone, and environment variables such as ``RESTIC_PASSWORD_COMMAND``,
``LD_PRELOAD`` or ``SSH_ASKPASS`` change what runs. So a peer gives the password only as a
value (never a file, variable or command), no ``-o`` options at all, environment names that
look like plain variables and are not on the list of ones that change what runs
(:data:`PEER_ENV_REFUSED`), and a URI of a backend that runs no program of its choosing (an
absolute local path, ``sftp:``, ``rest:``, ``s3:``, ``b2:``, ``azure:``, ``gs:``, ``swift:``).

The rules live in core so that every path by which a peer's words reach this node's
configuration is checked by the same code. A refusal is a :class:`PeerRuleError` whose message
names the rule and never a secret value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from peerstash.core.restic import redact_uri

#: restic backends a peer may name: none of them runs a program the URI or a peer chooses
#: (``sftp:`` runs ``ssh`` with fixed arguments; ``rclone:`` runs rclone and is refused).
PEER_BACKENDS = ("local", "sftp", "rest", "s3", "b2", "azure", "gs", "swift")
#: Environment names a peer may not set, by prefix, by suffix and whole: they set restic's
#: password or repository (``RESTIC_*``), choose what programs run or load (the loader, PATH,
#: ssh's askpass, the shell's startup files, rclone), or name a file or program to use.
PEER_ENV_REFUSED_PREFIXES = ("RESTIC_", "RCLONE_", "LD_", "DYLD_", "SSH_", "GIT_", "PYTHON")
PEER_ENV_REFUSED_SUFFIXES = ("_FILE", "_COMMAND", "_PROGRAM", "_EXECUTABLES", "_PATH")
PEER_ENV_REFUSED = frozenset(
    {"PATH", "HOME", "SHELL", "ENV", "BASH_ENV", "IFS", "TMPDIR", "GODEBUG", "XDG_CONFIG_HOME"}
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


class PeerRuleError(Exception):
    """A setting a peer may not place here; the message names the rule, never a secret."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def check_peer_uri(uri: str) -> None:
    """Refuse a repository URI a peer may not set (see :data:`PEER_BACKENDS`)."""
    shown = redact_uri(uri)
    if not uri or uri != uri.strip() or any(c in uri for c in "\0\r\n"):
        raise PeerRuleError(f"repository URI {shown!r} is not a usable restic repository")
    scheme_match = None if _DRIVE.match(uri) else _SCHEME.match(uri)
    scheme = scheme_match.group(1) if scheme_match else "local"
    if scheme == "rclone":
        raise PeerRuleError(
            "a peer may not add rclone: repositories: restic runs the rclone program for them; "
            "add it on this machine itself"
        )
    if scheme not in PEER_BACKENDS:
        raise PeerRuleError(
            f"a peer may not use the {scheme}: backend; it may give an absolute local path or "
            "a URI starting with " + ", ".join(f"{b}:" for b in PEER_BACKENDS[1:])
        )
    rest = uri[len(scheme_match.group(0)) :] if scheme_match else uri
    if scheme == "local" and not os.path.isabs(rest):  # as this machine reads its own paths
        raise PeerRuleError(f"a local repository path from a peer must be absolute, not {shown!r}")
    if scheme == "sftp":
        authority = rest[2:].split("/", 1)[0] if rest.startswith("//") else rest.split(":")[0]
        parts = re.split(r"[@:]", authority)
        if any(ch.isspace() for ch in uri) or any(p.startswith("-") for p in parts):
            raise PeerRuleError(
                f"sftp URI {shown!r} would pass options to ssh (a host or user starting with "
                "'-', or spaces); a peer may not set that"
            )


def check_peer_env(env: Mapping[str, str]) -> None:
    """Refuse environment variables a peer may not set (names only are ever said)."""
    for key, value in env.items():
        if not _ENV_NAME.match(key):
            raise PeerRuleError(
                f"environment name {key[:100]!r} does not look like a variable name "
                "(letters, digits and _, not starting with a digit)"
            )
        name = key.upper()
        if name.startswith("RESTIC_"):
            raise PeerRuleError(
                f"a peer may not set {key}: RESTIC_ variables choose restic's password "
                "(RESTIC_PASSWORD_COMMAND runs a program) or repository"
            )
        if (
            name in PEER_ENV_REFUSED
            or name.startswith(PEER_ENV_REFUSED_PREFIXES)
            or name.endswith(PEER_ENV_REFUSED_SUFFIXES)
        ):
            raise PeerRuleError(
                f"a peer may not set {key}: it can choose a program, library or file that "
                "restic or ssh uses on this machine"
            )
        if "\0" in value:
            raise PeerRuleError(f"the value of {key} holds a NUL character")


def peer_may_set(key: str) -> bool:
    """Whether a peer may set the environment variable ``key``."""
    try:
        check_peer_env({key: ""})
    except PeerRuleError:
        return False
    return True


def check_no_options(options: object) -> None:
    """Refuse restic ``-o`` options from a peer (any at all)."""
    if options:
        raise PeerRuleError(
            "a peer may not set restic -o options: some name a program to run "
            "(sftp.command, rclone.program); set them on this machine itself"
        )


def check_peer_password_source(source: object, ref: object) -> None:
    """Refuse a password a peer gives other than as the value itself."""
    if source != "secret" or ref:
        raise PeerRuleError(
            "a peer may give a repository password only as a value (--password-stdin): a "
            "password file, variable or command would make this machine read or run what a "
            "peer named"
        )


__all__ = [
    "PEER_BACKENDS",
    "PeerRuleError",
    "check_no_options",
    "check_peer_env",
    "check_peer_password_source",
    "check_peer_uri",
    "peer_may_set",
]
