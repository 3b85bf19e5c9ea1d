"""Pairing tokens: the one-time secret that lets a new peer in, and the limiter that guards it.

A token reads ``<key-id>:<secret>#<instance-id>``, for example::

    abcd-efgh-ijkl-mnop-qrst:q2Vb...43 chars...#nas

* ``key-id`` is the issuer's :func:`~peerstash.peer.trust.identity.key_id`. The new peer uses it to
  pin the issuer's public key during the very first handshake, so even that first connection
  cannot be intercepted by someone who can only see or redirect traffic.
* ``secret`` is 32 random bytes in URL-safe base64 without padding (43 characters). The new peer
  sends it inside the encrypted channel to prove it was given the token.
* ``instance-id`` names the issuer, so the new peer knows whom it paired with and which address
  discovery should look for. It is a hint, not a trust anchor: the key id is.

The issuer stores only :func:`hash_secret` of the secret, never the secret itself, and checks a
presented secret with :func:`verify_secret` (constant time). A plain, fast hash is enough here:
the secret has 256 bits of entropy, so unlike a password there is nothing to brute-force, and a
slow KDF would only make the pairing endpoint cheaper to overload. We use BLAKE2b-256 with a
``person`` string (domain separation) and prefix the stored form with the algorithm name so it
can change later without guessing.

:class:`RateLimiter` refuses an address after too many failed attempts, with memory bounded no
matter how many addresses an attacker uses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from peerstash.peer.trust.identity import normalize_key_id

__all__ = [
    "MAX_INSTANCE_ID_LENGTH",
    "SECRET_BYTES",
    "PairingToken",
    "ParsedToken",
    "RateLimiter",
    "TokenFormatError",
    "hash_secret",
    "parse_token",
    "token_id",
    "validate_instance_id",
    "verify_secret",
]

SECRET_BYTES = 32
_SECRET_CHARS = 43  # len(urlsafe_b64encode(32 bytes)) without the "=" padding
_URLSAFE_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
MAX_INSTANCE_ID_LENGTH = 100  # matches the store's origin column
_HASH_PREFIX = "blake2b-256:"
_HASH_PERSON = b"peerstash/token"
_TOKEN_ID_CHARS = 12


class TokenFormatError(ValueError):
    """The text is not a well-formed pairing token; the message says what is wrong."""


def validate_instance_id(instance_id: str) -> str:
    """Return ``instance_id`` if it is usable in a token, else raise :class:`TokenFormatError`.

    Instance ids are human-readable names such as a hostname: 1-100 printable characters with
    no whitespace (a token must survive being pasted into a terminal).
    """
    if not instance_id:
        raise TokenFormatError("the instance id after '#' is empty")
    if len(instance_id) > MAX_INSTANCE_ID_LENGTH:
        raise TokenFormatError(
            f"the instance id is longer than {MAX_INSTANCE_ID_LENGTH} characters"
        )
    if any(ch.isspace() or not ch.isprintable() for ch in instance_id):
        raise TokenFormatError("the instance id contains whitespace or control characters")
    return instance_id


def _encode_secret(secret: bytes) -> str:
    return base64.urlsafe_b64encode(secret).decode("ascii").rstrip("=")


def _decode_secret(text: str) -> bytes:
    if len(text) != _SECRET_CHARS:
        raise TokenFormatError(
            f"the secret must be {_SECRET_CHARS} characters of URL-safe base64, "
            f"got {len(text)} characters (was the token cut off when copied?)"
        )
    if not set(text) <= _URLSAFE_ALPHABET:
        raise TokenFormatError("the secret contains characters that are not URL-safe base64")
    try:
        secret = base64.urlsafe_b64decode(text + "=")
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - alphabet checked above
        raise TokenFormatError(f"the secret is not valid base64: {exc}") from exc
    if _encode_secret(secret) != text:
        # The last character carries 2 unused bits; only one spelling is canonical.
        raise TokenFormatError("the secret is not canonical base64 (last character altered?)")
    return secret


@dataclass(frozen=True, slots=True)
class ParsedToken:
    """A token as read from a person: who issued it and the secret to present."""

    key_id: str
    secret: bytes = field(repr=False)
    instance_id: str


@dataclass(frozen=True, slots=True)
class PairingToken:
    """A freshly generated token, held by its issuer only until it is shown once.

    ``repr`` hides the secret so a token never ends up in a log by accident; ``text`` (also
    ``str(token)``) is what a person copies to the other machine. Persist :attr:`secret_hash`,
    never the secret.
    """

    key_id: str
    secret: bytes = field(repr=False)
    instance_id: str

    @classmethod
    def generate(cls, key_id: str, instance_id: str) -> PairingToken:
        """A new token for the issuer with ``key_id`` and ``instance_id``."""
        try:
            canonical = normalize_key_id(key_id)
        except ValueError as exc:
            raise TokenFormatError(str(exc)) from exc
        return cls(
            key_id=canonical,
            secret=secrets.token_bytes(SECRET_BYTES),
            instance_id=validate_instance_id(instance_id),
        )

    @property
    def text(self) -> str:
        """The token as a person copies it: ``<key-id>:<secret>#<instance-id>``."""
        return f"{self.key_id}:{_encode_secret(self.secret)}#{self.instance_id}"

    @property
    def secret_hash(self) -> str:
        """What the issuer stores: :func:`hash_secret` of the secret."""
        return hash_secret(self.secret)

    @property
    def token_id(self) -> str:
        """The public handle for listing and deleting this token: :func:`token_id`."""
        return token_id(self.secret_hash)

    def __str__(self) -> str:
        return self.text


def parse_token(text: str) -> ParsedToken:
    """Read a token a person pasted; raise :class:`TokenFormatError` saying what is wrong.

    Surrounding whitespace is ignored (terminals and chat apps add it). The key id is accepted
    in any case and with or without dashes and returned in canonical form.
    """
    if not isinstance(text, str):
        raise TokenFormatError("a pairing token is text")
    text = text.strip()
    if not text:
        raise TokenFormatError("the pairing token is empty")
    # Neither the key id nor the secret can contain '#' or ':', so the first of each splits.
    head, hash_sign, instance_id = text.partition("#")
    if not hash_sign:
        raise TokenFormatError(
            "a pairing token reads <key-id>:<secret>#<instance-id>; the '#' is missing"
        )
    key_part, colon, secret_part = head.partition(":")
    if not colon:
        raise TokenFormatError(
            "a pairing token reads <key-id>:<secret>#<instance-id>; the ':' is missing"
        )
    try:
        canonical = normalize_key_id(key_part)
    except ValueError as exc:
        raise TokenFormatError(f"bad key id in pairing token: {exc}") from exc
    secret = _decode_secret(secret_part)
    return ParsedToken(
        key_id=canonical, secret=secret, instance_id=validate_instance_id(instance_id)
    )


def hash_secret(secret: bytes) -> str:
    """The stored form of a token secret: ``"blake2b-256:" + hex digest``.

    See the module docstring for why a fast hash is the right choice for a 256-bit secret.
    """
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a token secret is {SECRET_BYTES} bytes")
    digest = hashlib.blake2b(bytes(secret), digest_size=32, person=_HASH_PERSON).hexdigest()
    return _HASH_PREFIX + digest


def verify_secret(secret: bytes, stored_hash: str) -> bool:
    """Whether ``secret`` matches ``stored_hash``, compared in constant time.

    Never raises for a wrong-length secret or a malformed stored hash: those just don't match,
    so a caller cannot turn an exception into an accidental accept.
    """
    if not isinstance(secret, bytes | bytearray) or len(secret) != SECRET_BYTES:
        return False
    if not isinstance(stored_hash, str) or not stored_hash.isascii():
        return False
    return hmac.compare_digest(hash_secret(bytes(secret)).encode(), stored_hash.encode())


def token_id(stored_hash: str) -> str:
    """A short id for a stored token (the first 12 hex digits of its hash).

    Safe to show, log and type into ``peerstash token delete``: it is derived from the hash,
    which does not reveal the secret. 48 bits keep accidental clashes among a handful of live
    tokens out of the question.
    """
    if not stored_hash.startswith(_HASH_PREFIX):
        raise ValueError("not a stored token hash")
    digest = stored_hash[len(_HASH_PREFIX) :]
    if len(digest) < _TOKEN_ID_CHARS:
        raise ValueError("not a stored token hash")
    return digest[:_TOKEN_ID_CHARS]


# -- rate limiting ------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    failures: list[float]
    blocked_until: float = 0.0
    last_seen: float = 0.0


class RateLimiter:
    """Refuse a source after ``max_failures`` failures within ``window`` seconds.

    Semantics: failures are counted per source in a sliding window. The failure that makes
    ``max_failures`` within ``window`` locks the source out for ``window`` seconds from that
    moment (and clears its count), so a persistent guesser gets at most ``max_failures``
    attempts per window. Other sources are unaffected. Callers check :meth:`allowed` *before*
    doing any work for the attempt, then report :meth:`record_failure`. A success forgets
    nothing: failures age out of the window on their own.

    Sources are normalised by :meth:`source_key`: an IPv4-mapped IPv6 address counts as the
    IPv4 address, and IPv6 addresses are grouped by their /64 prefix (``ipv6_prefix``), since
    a single host usually owns a whole /64 and could otherwise rotate through it.

    Memory is bounded by ``max_entries``: entries are kept in order of last activity; expired
    ones are dropped from the front as time passes, and when the table is full the least
    recently active entry is evicted. A flood from many addresses therefore cannot grow memory
    without limit. (It can evict an older lockout, but an attacker with that many addresses
    gains as many fresh attempts by simply using them, so this costs nothing extra.)

    ``clock`` is injectable for tests; it must be monotonic.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 60.0,
        *,
        max_entries: int = 10_000,
        ipv6_prefix: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if window <= 0:
            raise ValueError("window must be positive")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if not 0 <= ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be between 0 and 128")
        self.max_failures = max_failures
        self.window = float(window)
        self.max_entries = max_entries
        self.ipv6_prefix = ipv6_prefix
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def source_key(self, address: str) -> str:
        """The key failures are counted under for ``address`` (see the class docstring)."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return address  # a Unix socket peer, a test label...: count it as given
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            net = ipaddress.IPv6Network((ip, self.ipv6_prefix), strict=False)
            return str(net)
        return str(ip)

    def _expiry(self, entry: _Entry) -> float:
        latest = entry.failures[-1] if entry.failures else entry.last_seen
        return max(entry.blocked_until, latest + self.window)

    def _prune(self, now: float) -> None:
        # Entries are ordered by last activity, and expiry grows with it, so expired ones are
        # at the front: this is amortised O(1) per call.
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if self._expiry(entry) > now:
                break
            del self._entries[key]

    def allowed(self, address: str) -> bool:
        """Whether an attempt from ``address`` may proceed now."""
        now = self._clock()
        self._prune(now)
        entry = self._entries.get(self.source_key(address))
        return entry is None or entry.blocked_until <= now

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` is allowed again (0 if it is allowed now)."""
        now = self._clock()
        entry = self._entries.get(self.source_key(address))
        if entry is None:
            return 0.0
        return max(0.0, entry.blocked_until - now)

    def record_failure(self, address: str) -> None:
        """Count a failed attempt from ``address``; may lock it out."""
        now = self._clock()
        self._prune(now)
        key = self.source_key(address)
        entry = self._entries.get(key)
        if entry is None:
            entry = _Entry(failures=[])
            self._entries[key] = entry
        else:
            self._entries.move_to_end(key)
        entry.last_seen = now
        cutoff = now - self.window
        entry.failures = [t for t in entry.failures if t > cutoff]
        entry.failures.append(now)
        if len(entry.failures) >= self.max_failures:
            entry.blocked_until = now + self.window
            entry.failures.clear()
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        """Number of sources currently tracked (bounded by ``max_entries``)."""
        return len(self._entries)
