"""This instance's long-term identity: an Ed25519 key pair, and the key id people compare.

Why Ed25519 (pynacl): small keys and signatures, deterministic signing (no nonce to get wrong),
and the same library gives us X25519 and the AEAD used by the channel.

The private key lives in one small file, created with mode 0600 and never readable by anyone
else. We refuse to *use* a key file that group or others can access, the way OpenSSH does: a key
that may have been read by someone else no longer identifies this instance alone, and silently
carrying on would hide that.

File format (text, so it survives copy/paste into a backup)::

    PEERSTASH-ED25519-SEED-V1
    <the 32-byte seed in standard base64>

All file access here is synchronous and tiny; an async caller that cares can wrap
:meth:`Identity.load_or_create` in ``asyncio.to_thread``. It normally runs once at start-up.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import stat
from pathlib import Path

import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.signing

__all__ = [
    "KEY_ID_CHARS",
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "Identity",
    "IdentityError",
    "key_id",
    "normalize_key_id",
]

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
SEED_BYTES = 32

#: Number of base32 characters in a key id (5 bits each: 100 bits of the hash).
KEY_ID_CHARS = 20
_KEY_ID_GROUP = 4
_KEY_ID_PERSON = b"peerstash/keyid"
_BASE32_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")

_FILE_HEADER = "PEERSTASH-ED25519-SEED-V1"
_MAX_KEY_FILE = 4096


class IdentityError(Exception):
    """The identity key file is missing, malformed, or unsafe to use."""


def key_id(public_key: bytes) -> str:
    """The short, human-comparable fingerprint of an Ed25519 public key.

    Recipe (stable; changing it would break every pairing token and pinned peer)::

        digest = BLAKE2b(public_key, digest_size=20, person=b"peerstash/keyid")
        text   = base32(digest).lower()[:20]          # RFC 4648 alphabet a-z2-7, 100 bits
        key_id = "-".join(text[i:i + 4] for i in range(0, 20, 4))   # "abcd-efgh-ijkl-mnop-qrst"

    Why 100 bits: the key id in a pairing token is what pins the issuer's key on first contact,
    so forging a key with the same id must be out of reach (a second preimage costs ~2^100
    work), while people can still read it aloud and compare it on two screens. The ``person``
    string keeps this hash from ever colliding with another use of BLAKE2b over the same bytes.
    """
    if not isinstance(public_key, bytes | bytearray) or len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes")
    digest = nacl.hash.blake2b(
        bytes(public_key),
        digest_size=20,
        person=_KEY_ID_PERSON,
        encoder=nacl.encoding.RawEncoder,
    )
    text = base64.b32encode(digest).decode("ascii").lower()[:KEY_ID_CHARS]
    return "-".join(text[i : i + _KEY_ID_GROUP] for i in range(0, KEY_ID_CHARS, _KEY_ID_GROUP))


def normalize_key_id(text: str) -> str:
    """Return the canonical (lowercase, dash-grouped) form of a key id a person typed.

    Accepts any case and any grouping by dashes or spaces, so ``ABCD EFGH...`` and
    ``abcdefgh...`` both compare equal to what :func:`key_id` printed. Raises ``ValueError`` if
    the text cannot be a key id.
    """
    compact = "".join(ch for ch in text.strip().lower() if ch not in "- ")
    if len(compact) != KEY_ID_CHARS or not set(compact) <= _BASE32_ALPHABET:
        raise ValueError(
            f"a key id is {KEY_ID_CHARS} characters from a-z and 2-7 "
            f"(dashes optional), got {text!r}"
        )
    return "-".join(compact[i : i + _KEY_ID_GROUP] for i in range(0, KEY_ID_CHARS, _KEY_ID_GROUP))


class Identity:
    """An Ed25519 signing key with the helpers the peer layer needs.

    Holds the private key in memory only; ``repr`` never shows it.
    """

    __slots__ = ("_signing_key",)

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity (not persisted)."""
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Rebuild an identity from its 32-byte seed."""
        if len(seed) != SEED_BYTES:
            raise IdentityError(f"an Ed25519 seed is {SEED_BYTES} bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(bytes(seed)))

    @classmethod
    def load(cls, path: Path) -> Identity:
        """Load the key file at ``path``, refusing one that group or others can access."""
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise IdentityError(f"cannot open identity key file {path}: {exc}") from exc
        try:
            # fstat on the opened descriptor: no window between checking and reading.
            st = os.fstat(fd)
            _check_key_file_mode(path, st)
            data = os.read(fd, _MAX_KEY_FILE + 1)
        finally:
            os.close(fd)
        return cls.from_seed(_parse_key_file(path, data))

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """Load the identity at ``path``, creating it (mode 0600, parent 0700) if absent.

        Creation is atomic and race-free: the key is written to a private temporary file and
        then hard-linked into place, which fails if the name already exists. So two processes
        starting together end up with one identity, and nobody ever reads a half-written key.
        Where hard links are unsupported we fall back to ``O_CREAT | O_EXCL`` on the final name.
        """
        path = Path(path)
        try:
            return cls.load(path)
        except FileNotFoundError:
            pass
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        identity = cls.generate()
        try:
            _write_new_key_file(path, _format_key_file(identity._signing_key.encode()))
        except FileExistsError:
            # Someone else created it first: theirs wins, and it is complete (see above).
            return cls.load(path)
        return identity

    # -- use ------------------------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key, as sent in the handshake."""
        return bytes(self._signing_key.verify_key)

    @property
    def key_id(self) -> str:
        """This identity's :func:`key_id`."""
        return key_id(self.public_key)

    def sign(self, data: bytes) -> bytes:
        """A detached 64-byte Ed25519 signature over ``data``."""
        return bytes(self._signing_key.sign(bytes(data)).signature)

    @staticmethod
    def verify(public_key: bytes, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is ``public_key``'s signature over ``data``.

        Never raises: malformed keys or signatures simply do not verify, so callers cannot
        forget an exception path and accidentally accept.
        """
        if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
            return False
        try:
            nacl.signing.VerifyKey(bytes(public_key)).verify(bytes(data), bytes(signature))
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
            return False
        return True

    def __repr__(self) -> str:
        return f"Identity(key_id={self.key_id!r})"


# -- the key file -------------------------------------------------------------------------


def _check_key_file_mode(path: Path, st: os.stat_result) -> None:
    """Refuse a key file that is not a regular file private to us."""
    if not stat.S_ISREG(st.st_mode):
        raise IdentityError(f"identity key file {path} is not a regular file")
    if os.name != "posix":  # pragma: no cover - permissions are POSIX-only here
        return
    if st.st_mode & 0o077:
        raise IdentityError(
            f"identity key file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); its key may have been copied. "
            f"If you are sure it was not, run `chmod 600 {path}`; otherwise delete it so "
            f"a new identity is created, and pair this instance again."
        )
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise IdentityError(
            f"identity key file {path} belongs to uid {st.st_uid}, not to us ({os.getuid()})"
        )


def _format_key_file(seed: bytes) -> bytes:
    return f"{_FILE_HEADER}\n{base64.b64encode(seed).decode('ascii')}\n".encode("ascii")


def _parse_key_file(path: Path, data: bytes) -> bytes:
    if len(data) > _MAX_KEY_FILE:
        raise IdentityError(f"identity key file {path} is too large to be a key")
    try:
        lines = data.decode("ascii").split()
    except UnicodeDecodeError:
        lines = []
    if len(lines) != 2 or lines[0] != _FILE_HEADER:
        raise IdentityError(f"identity key file {path} is not a Peerstash key file")
    try:
        seed = base64.b64decode(lines[1], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise IdentityError(f"identity key file {path} is corrupt: {exc}") from exc
    if len(seed) != SEED_BYTES:
        raise IdentityError(f"identity key file {path} is corrupt: wrong key length")
    return seed


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _create_private(path: Path) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    # The umask can only remove bits from 0600, but be explicit anyway.
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o600)
    return fd


def _write_new_key_file(path: Path, content: bytes) -> None:
    """Write ``content`` to a new file at ``path``; ``FileExistsError`` if it exists."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = _create_private(tmp)
    try:
        try:
            _write_all(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic, and never replaces an existing file
        except FileExistsError:
            raise
        except OSError:
            # No hard links on this filesystem: exclusive create on the final name instead.
            fd = _create_private(path)
            try:
                _write_all(fd, content)
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the new directory entry durable (best effort; not all platforms allow it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
