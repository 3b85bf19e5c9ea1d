"""What a peer may place in this node's configuration: the rules that keep programs out.

A repository's settings can make this machine run programs: its password source can be a
command, restic ``-o`` options can name one (``sftp.command``, ``rclone.program``), an
``rclone:`` URI runs rclone, a host starting with ``-`` becomes an ssh option, and environment
variables such as ``RESTIC_PASSWORD_COMMAND``, ``LD_PRELOAD`` or ``PATH`` change what runs
(``HTTPS_PROXY``, ``SSL_CERT_DIR`` or ``OPENSSL_CONF`` what is trusted or loaded). So whatever
a peer places here, it gives:

* the password only as a value (never a file, variable or command);
* no ``-o`` options at all;
* a URI of a backend that runs no program of its choosing (an absolute local path, ``sftp:``,
  ``rest:``, ``s3:``, ``b2:``, ``azure:``, ``gs:``, ``swift:``), each in the form restic
  documents for it, without whitespace or control characters;
* environment variables only from an allow-list of backend credentials
  (:data:`PEER_ENV_ALLOWED`): an allow-list, because no list of harmful names is complete.

One set of rules, in core, for every path by which a peer's words reach this node's
configuration: repositories a peer shares with us (``Engine.receive_shared``, and again each
time a received repository is opened) and repositories a peer writes with ``config.write``
(``peer/services/remote_config.py``). A refusal is a :class:`PeerRuleError` whose message names
the rule and never a secret value.

A local path from a peer is taken as it is (absolute only): a receiver only backs up *into* a
shared repository and never runs ``restic init`` for one, so the path can only name a place
where a restic repository (whose password the peer gave) already is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from peerstash.core.restic import redact_uri

#: restic backends a peer may name: none of them runs a program the URI or a peer chooses
#: (``sftp:`` runs ``ssh`` with fixed arguments; ``rclone:`` runs rclone and is refused).
PEER_BACKENDS = ("local", "sftp", "rest", "s3", "b2", "azure", "gs", "swift")

#: The only environment variables a peer may set: the backend credentials and settings restic
#: documents ("Preparing a new repository" and "Environment Variables" in restic's manual),
#: each a value restic sends to its backend. Anything else is refused, because so many
#: variables change what a program loads, runs, trusts or reads (``LD_PRELOAD``, ``PATH``,
#: ``HTTPS_PROXY``, ``SSL_CERT_DIR``, ``OPENSSL_CONF``, ``GLIBC_TUNABLES``, ``LOCPATH``,
#: ``HOSTALIASES``, ``KRB5_CONFIG``...) that no list of bad ones can be complete. Left out on
#: purpose: ``GOOGLE_APPLICATION_CREDENTIALS`` and ``AWS_SHARED_CREDENTIALS_FILE`` (they name
#: a file on this machine), ``AWS_PROFILE`` (a section of this user's AWS files), every
#: ``RESTIC_*`` and ``RCLONE_*``.
PEER_ENV_ALLOWED = frozenset(
    {
        # S3 and S3-compatible servers
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        # Backblaze B2
        "B2_ACCOUNT_ID",
        "B2_ACCOUNT_KEY",
        # Azure Blob Storage
        "AZURE_ACCOUNT_NAME",
        "AZURE_ACCOUNT_KEY",
        "AZURE_ACCOUNT_SAS",
        "AZURE_ENDPOINT_SUFFIX",
        # Google Cloud Storage (a token or the default credentials, never a key file's path)
        "GOOGLE_PROJECT_ID",
        "GOOGLE_ACCESS_TOKEN",
        # OpenStack Swift: keystone v1
        "ST_AUTH",
        "ST_USER",
        "ST_KEY",
        # OpenStack Swift: keystone v2 and v3, application credentials, tokens
        "OS_AUTH_URL",
        "OS_REGION_NAME",
        "OS_USERNAME",
        "OS_USER_ID",
        "OS_PASSWORD",
        "OS_TENANT_ID",
        "OS_TENANT_NAME",
        "OS_USER_DOMAIN_NAME",
        "OS_USER_DOMAIN_ID",
        "OS_PROJECT_NAME",
        "OS_PROJECT_DOMAIN_NAME",
        "OS_PROJECT_DOMAIN_ID",
        "OS_TRUST_ID",
        "OS_APPLICATION_CREDENTIAL_ID",
        "OS_APPLICATION_CREDENTIAL_NAME",
        "OS_APPLICATION_CREDENTIAL_SECRET",
        "OS_STORAGE_URL",
        "OS_AUTH_TOKEN",
        "SWIFT_DEFAULT_CONTAINER_POLICY",
    }
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")

# The forms each backend's URI may take. A host or user never starts with "-" (ssh would read
# it as an option), names are plain, and no part holds whitespace or a control character.
_HOST = r"(?:[A-Za-z0-9_][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])"
_USER = r"[A-Za-z0-9._][A-Za-z0-9._-]*"
_PORT = r"(?::[0-9]{1,5})?"
_USERINFO = r"(?:[^/@\s]*@)?"  # rest:/s3: may carry user:password@ (sealed, see engine)
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_FORMS: dict[str, tuple[re.Pattern[str], str]] = {
    "sftp": (
        re.compile(rf"^sftp:(?:(?:{_USER}@)?{_HOST}:[^:].*|//(?:{_USER}@)?{_HOST}{_PORT}/.+)$"),
        "sftp:user@host:/path or sftp://user@host[:port]//path",
    ),
    "rest": (
        re.compile(rf"^rest:https?://{_USERINFO}{_HOST}{_PORT}(?:/.*)?$"),
        "rest:https://[user:password@]host[:port]/[path]",
    ),
    "s3": (
        re.compile(rf"^s3:(?:https?://{_USERINFO})?{_HOST}{_PORT}/{_NAME}(?:/.*)?$"),
        "s3:host/bucket[/path] or s3:https://host[:port]/bucket[/path]",
    ),
    "b2": (re.compile(rf"^b2:{_NAME}(?::.*)?$"), "b2:bucket[:path]"),
    "azure": (re.compile(rf"^azure:{_NAME}:.*$"), "azure:container:/path"),
    "gs": (re.compile(rf"^gs:{_NAME}:.*$"), "gs:bucket:/path"),
    "swift": (re.compile(rf"^swift:{_NAME}:.*$"), "swift:container:/path"),
}


class PeerRuleError(Exception):
    """A setting a peer may not place here; the message names the rule, never a secret."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _bad_char(text: str, *, spaces: bool) -> bool:
    return any(
        ord(c) < 32 or ord(c) == 127 or (c.isspace() and not (spaces and c == " ")) for c in text
    )


def check_peer_uri(uri: str) -> None:
    """Refuse a repository URI a peer may not set: a backend of :data:`PEER_BACKENDS`, in one
    of the forms restic documents for it (``_FORMS``); a local path must be absolute."""
    shown = redact_uri(uri)
    if not uri or uri != uri.strip() or _bad_char(uri, spaces=True):
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
    if scheme == "local":
        if not os.path.isabs(rest):  # as this machine reads its own paths
            raise PeerRuleError(
                f"a local repository path from a peer must be absolute, not {shown!r}"
            )
        return
    if _bad_char(uri, spaces=False):
        raise PeerRuleError(f"{scheme} URI {shown!r} holds spaces; a peer may not set that")
    if scheme == "sftp":
        authority = rest[2:].split("/", 1)[0] if rest.startswith("//") else rest.split(":")[0]
        if any(p.startswith("-") for p in re.split(r"[@:]", authority)):
            raise PeerRuleError(
                f"sftp URI {shown!r} would pass options to ssh (a host or user starting with "
                "'-'); a peer may not set that"
            )
    form, example = _FORMS[scheme]
    if not form.match(uri):
        raise PeerRuleError(
            f"{scheme} URI {shown!r} is not of the form {example}; a peer may not set it"
        )


def check_peer_env(env: Mapping[str, str]) -> None:
    """Refuse environment variables a peer may not set: only the backend credentials of
    :data:`PEER_ENV_ALLOWED` (names only are ever said, never a value)."""
    for key, value in env.items():
        if not _ENV_NAME.match(key):
            raise PeerRuleError(
                f"environment name {key[:100]!r} does not look like a variable name "
                "(letters, digits and _, not starting with a digit)"
            )
        if key not in PEER_ENV_ALLOWED:
            why = (
                "RESTIC_ variables choose restic's password (RESTIC_PASSWORD_COMMAND runs a "
                "program) or repository"
                if key.upper().startswith("RESTIC_")
                else "only the backend credentials restic documents are allowed (it can "
                "otherwise choose a program, library, file or proxy that restic or ssh uses "
                "on this machine)"
            )
            raise PeerRuleError(f"a peer may not set {key}: {why}")
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


def check_peer_repo(
    *,
    uri: str,
    env: Mapping[str, str],
    options: Sequence[str] = (),
    password_source: str = "secret",
    password_ref: str = "",
) -> None:
    """Every rule at once, for a whole repository a peer places here (a shared repository as
    it arrives, or a received one about to be opened)."""
    check_no_options(list(options))
    check_peer_password_source(password_source, password_ref)
    check_peer_uri(uri)
    check_peer_env(env)


__all__ = [
    "PEER_BACKENDS",
    "PEER_ENV_ALLOWED",
    "PeerRuleError",
    "check_no_options",
    "check_peer_env",
    "check_peer_password_source",
    "check_peer_repo",
    "check_peer_uri",
    "peer_may_set",
]
