"""Wire messages of the peer link: typed, versioned msgspec structs with hard size limits.

Every frame on the link is one msgpack map with a ``"t"`` key naming its type (a msgspec tagged
union). Two families exist and are decoded separately, so one can never be mistaken for the
other:

* **Handshake messages** (:data:`HandshakeMessage`) travel in the clear, before any key exists.
  They carry only public values, and every field has its exact length checked while decoding.
  The one rule that holds across protocol versions: the first frame each side sends is a map
  with an integer ``"v"``; :func:`peek_version` reads it before anything else, so a peer that
  speaks another version gets a clear "version mismatch" rather than a parse error.
* **Link messages** (:data:`Message`) travel inside the encrypted channel once the handshake is
  done: ``Hello``/``Welcome`` introduce the two instances, ``Heartbeat`` keeps the link alive,
  ``Error`` and ``Close`` end it politely.

Unknown fields are ignored (a newer peer may add optional fields within a version); unknown
message types, wrong field types, wrong lengths, and frames over the size limit all raise
:class:`ProtocolError`. Decoding never raises anything else, whatever the bytes.
"""

from __future__ import annotations

import enum
from typing import Annotated, Final, TypeAlias

import msgspec
from msgspec import Meta

__all__ = [
    "KEM_CIPHERTEXT_BYTES",
    "KEM_ENCAPSULATION_KEY_BYTES",
    "MAX_CHUNK_ITEMS",
    "MAX_DISPLAY_NAME",
    "MAX_ERROR_MESSAGE",
    "MAX_FRAME_SIZE",
    "MAX_HANDSHAKE_FRAME_SIZE",
    "MAX_IDS_PER_FRAME",
    "MAX_OPS_PER_BATCH",
    "MAX_OP_ERROR",
    "MAX_OP_SUMMARY",
    "MAX_SHARED_REPOS",
    "PROTOCOL_VERSION",
    "Call",
    "CallCancel",
    "Close",
    "Error",
    "ErrorCode",
    "HandshakeAuth",
    "HandshakeInit",
    "HandshakeMessage",
    "HandshakeReject",
    "HandshakeResponse",
    "Heartbeat",
    "Hello",
    "Message",
    "OpRecord",
    "OpsBatch",
    "OpsDeleted",
    "OpsDigest",
    "OpsManifest",
    "OpsSince",
    "ProtocolError",
    "Reply",
    "ReplyChunk",
    "RepoSnapshotsChanged",
    "ReposShared",
    "SharedRepo",
    "Welcome",
    "check_display_name",
    "clean_message",
    "decode",
    "decode_handshake",
    "encode",
    "peek_version",
]

#: The version this code speaks. Both sides must speak the same one (checked in the handshake).
PROTOCOL_VERSION: Final = 1

#: Largest encoded link message (plaintext), in bytes. Frames are refused above it *before*
#: decrypting or decoding, so a peer cannot make us allocate or hash arbitrary amounts.
#: Sync batches must be split to fit.
MAX_FRAME_SIZE: Final = 4 * 1024 * 1024

#: Largest handshake frame. The biggest (``HandshakeInit``, with its 1184-byte ML-KEM key) is
#: about 1.3 KiB; anything near this limit is garbage.
MAX_HANDSHAKE_FRAME_SIZE: Final = 8 * 1024

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
KEM_ENCAPSULATION_KEY_BYTES: Final = 1184  # ML-KEM-768
KEM_CIPHERTEXT_BYTES: Final = 1088  # ML-KEM-768


class ProtocolError(Exception):
    """A frame that is malformed, oversized, or of an unknown type."""


# -- field types: every length is bounded ------------------------------------------------

Version = Annotated[int, Meta(ge=0, le=0xFFFF)]
Key32 = Annotated[bytes, Meta(min_length=KEY_BYTES, max_length=KEY_BYTES)]
Nonce32 = Annotated[bytes, Meta(min_length=NONCE_BYTES, max_length=NONCE_BYTES)]
Signature64 = Annotated[bytes, Meta(min_length=SIGNATURE_BYTES, max_length=SIGNATURE_BYTES)]
KemEncapsulationKey = Annotated[
    bytes, Meta(min_length=KEM_ENCAPSULATION_KEY_BYTES, max_length=KEM_ENCAPSULATION_KEY_BYTES)
]
KemCiphertext = Annotated[
    bytes, Meta(min_length=KEM_CIPHERTEXT_BYTES, max_length=KEM_CIPHERTEXT_BYTES)
]
InstanceId = Annotated[str, Meta(min_length=1, max_length=100)]
Code = Annotated[str, Meta(min_length=1, max_length=64)]
Text = Annotated[str, Meta(max_length=2000)]
GrantEntry = Annotated[str, Meta(min_length=1, max_length=2000)]
GrantList = Annotated[tuple[GrantEntry, ...], Meta(max_length=64)]
Secret32 = Annotated[bytes, Meta(min_length=32, max_length=32)]
Millis = Annotated[int, Meta(ge=0, le=2**63 - 1)]
#: A display name as it may travel; :func:`check_display_name` then applies the real rules
#: (a bound here too, so an oversized one never gets decoded at all).
WireName = Annotated[str, Meta(min_length=1, max_length=256)]

#: Longest display name (one DNS label, which LAN discovery also announces it as).
MAX_DISPLAY_NAME: Final = 63
#: Longest refusal text a receiver shows of an :class:`Error` (senders cut theirs to it).
MAX_ERROR_MESSAGE: Final = 500


def check_display_name(name: object) -> str:
    """Return ``name`` if it can be shown as a machine's name, else raise ``ValueError``.

    A display name is what people read in every listing (``peer list``, ``status``, the tray),
    and it comes from another machine: 1 to 63 characters, every one printable (no control,
    format or bidi-override characters that could forge or hide what a terminal shows), and no
    space at either end. Unicode letters are fine. The error text names no rejected value, so it
    is safe to log and to send back.
    """
    if not isinstance(name, str):
        raise ValueError("a name is text")
    if not name:
        raise ValueError("a name cannot be empty")
    if len(name) > MAX_DISPLAY_NAME:
        raise ValueError(f"a name is at most {MAX_DISPLAY_NAME} characters")
    if not name.isprintable():
        raise ValueError("a name cannot contain control or invisible formatting characters")
    if name != name.strip():
        raise ValueError("a name cannot start or end with a space")
    return name


def clean_message(text: str, limit: int = MAX_ERROR_MESSAGE) -> str:
    """A peer's free text, safe to show on one line: unprintable characters become ``?``,
    and it is cut to ``limit`` characters."""
    cut = text[:limit]
    return "".join(c if c.isprintable() else "?" for c in cut)


class _Msg(msgspec.Struct, tag_field="t", frozen=True, omit_defaults=True):
    """Base of every wire struct: tagged by ``"t"``, immutable, defaults left off the wire."""


# -- handshake (cleartext) ----------------------------------------------------------------


class HandshakeInit(_Msg, tag="hs.init", frozen=True):
    """Initiator → responder, first frame."""

    v: Version
    identity: Key32  # Ed25519 public key
    ephemeral: Key32  # X25519 public key, fresh for this handshake
    nonce: Nonce32
    kem_ek: KemEncapsulationKey  # ML-KEM-768 encapsulation key, fresh for this handshake


class HandshakeResponse(_Msg, tag="hs.resp", frozen=True):
    """Responder → initiator, second frame."""

    v: Version
    identity: Key32
    ephemeral: Key32
    nonce: Nonce32
    kem_ct: KemCiphertext  # ML-KEM-768 ciphertext to the initiator's kem_ek


class HandshakeAuth(_Msg, tag="hs.auth", frozen=True):
    """A signature over the transcript so far (third frame from the responder, fourth from
    the initiator)."""

    sig: Signature64


class HandshakeReject(_Msg, tag="hs.reject", frozen=True):
    """Either side, instead of its next handshake frame: why it gives up (e.g. version).

    Unauthenticated, so it only ever *ends* a handshake; it is shown to a person as the
    peer's stated reason.
    """

    v: Version
    code: Code
    message: Text = ""


HandshakeMessage: TypeAlias = HandshakeInit | HandshakeResponse | HandshakeAuth | HandshakeReject


# -- link messages (inside the encrypted channel) -----------------------------------------


class ErrorCode(enum.StrEnum):
    """Codes for :class:`Error`. Receivers must accept codes they do not know."""

    PROTOCOL = "protocol"  # malformed or unexpected message
    VERSION = "version"  # protocol version not supported
    UNKNOWN_PEER = "unknown_peer"  # not a known peer and no pairing secret given
    BAD_TOKEN = "bad_token"  # pairing secret wrong, used up or expired
    RATE_LIMITED = "rate_limited"  # too many failed attempts from this address
    FORBIDDEN = "forbidden"  # a request outside the grants given
    REVOKED = "revoked"  # the sender removed (unpaired) the receiver: do not come back
    INTERNAL = "internal"  # the sender failed; not the receiver's fault
    # Codes of a failed Reply (the link stays up):
    UNKNOWN_METHOD = "unknown_method"  # the answerer does not offer this request
    BAD_REQUEST = "bad_request"  # arguments missing or of the wrong shape
    NOT_FOUND = "not_found"  # the plan, repository, snapshot... does not exist there
    FAILED = "failed"  # the answerer tried and could not (the message says why)
    BUSY = "busy"  # too many calls in flight on this link


class Hello(_Msg, tag="hello", frozen=True):
    """Initiator's first encrypted message: who it is and, on first contact, the token secret.

    ``grants`` lists what the *sender* grants the receiver (``Grants.to_strings()`` form),
    so each side can show what it was given; each side enforces its own grants regardless.
    """

    instance_id: InstanceId
    version: Version = PROTOCOL_VERSION
    grants: GrantList = ()
    pairing_secret: Secret32 | None = None  # the token's 32-byte secret, first contact only
    software: Text = ""  # e.g. "peerstash 0.1.0", for diagnostics only
    #: The sender's display name (settable, may change; the instance id never does). Optional:
    #: an older peer sends none, and its instance id is shown instead.
    name: WireName | None = None

    def __repr__(self) -> str:
        # Never let the pairing secret reach a log line through repr().
        secret = "<redacted>" if self.pairing_secret is not None else "None"
        return (
            f"Hello(instance_id={self.instance_id!r}, version={self.version!r}, "
            f"grants={self.grants!r}, pairing_secret={secret}, software={self.software!r}, "
            f"name={self.name!r})"
        )


class Welcome(_Msg, tag="welcome", frozen=True):
    """Responder's answer to an accepted :class:`Hello`."""

    instance_id: InstanceId
    version: Version = PROTOCOL_VERSION
    grants: GrantList = ()
    software: Text = ""
    name: WireName | None = None  # as in Hello


class Heartbeat(_Msg, tag="hb", frozen=True):
    """Sent every heartbeat interval each way; any frame counts as a sign of life."""

    sent_at_ms: Millis = 0  # sender's wall clock, for showing clock skew


class Error(_Msg, tag="error", frozen=True):
    """Something went wrong; the sender closes the link after sending it."""

    code: Code
    message: Text = ""


class Close(_Msg, tag="close", frozen=True):
    """A deliberate, clean close (shutdown, unpairing...)."""

    reason: Text = ""


# Room for the sync messages (another issue): operation batches and digests (ops), config
# snapshots and changes (config.read / config.write), shared repositories (repos.receive), and
# remote commands with their acknowledgements (run). Add each as a `_Msg` subclass with its own
# tag and bounded fields, then add it to `Message` below; keep every message under
# MAX_FRAME_SIZE by batching.

# -- operation sync (peer/services/opsync.py) ------------------------------------------------------
#
# Each side *owns* the operations it minted (their origin is its instance id) and is the only
# one that sends them. A receiver says what it holds (``OpsSince``); the owner sends what is
# newer and in the scope of its ``ops`` grant (``OpsBatch``), then a digest of everything in
# scope (``OpsDigest``). On a mismatch the receiver lists what it holds (``OpsManifest``) and
# the owner answers with what is missing or stale (``OpsBatch``) and what must go
# (``OpsDeleted``), then a fresh digest.

#: Most operations one ``OpsBatch`` may carry (senders use fewer, and split by size).
MAX_OPS_PER_BATCH: Final = 5000
#: Most ids one ``OpsManifest`` or ``OpsDeleted`` may carry.
MAX_IDS_PER_FRAME: Final = 20_000
#: Longest ``OpRecord.error`` and ``OpRecord.summary`` (senders truncate to these).
MAX_OP_ERROR: Final = 4000
MAX_OP_SUMMARY: Final = 64 * 1024

OpId = Annotated[str, Meta(min_length=1, max_length=40)]
Modno = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Count64 = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Hash63 = Annotated[int, Meta(ge=0, le=2**63 - 1)]
#: UTC, microseconds, space-separated: ``2026-11-23 05:05:41.906297`` (the store's text form).
SyncTime = Annotated[str, Meta(min_length=26, max_length=26)]
Ident = Annotated[str, Meta(min_length=1, max_length=100)]


class OpRecord(msgspec.Struct, array_like=True, frozen=True):
    """One operation's state as its owner holds it (everything but the local row number).

    Encoded as an array, not a map: a full sync carries 100,000 of these, and field names
    would double the bytes. New fields may only be appended, with defaults (a receiver ignores
    trailing values it does not know). The order matches ``Store.SYNC_OP_COLUMNS``.
    """

    op_id: OpId
    modno: Modno
    flow_id: Annotated[str, Meta(max_length=40)]
    kind: Annotated[str, Meta(min_length=1, max_length=20)]
    status: Annotated[str, Meta(min_length=1, max_length=20)]
    plan_id: Ident | None
    repo_id: Ident | None
    created_at: SyncTime
    started_at: SyncTime | None
    ended_at: SyncTime | None
    bytes_done: Count64
    bytes_total: Count64
    files_done: Count64
    files_total: Count64
    eta_seconds: Annotated[int, Meta(ge=0, le=2**31 - 1)] | None
    summary: Annotated[str, Meta(max_length=MAX_OP_SUMMARY)]  # a JSON object, as text
    snapshot_id: Annotated[str, Meta(max_length=64)] | None
    error: Annotated[str, Meta(max_length=MAX_OP_ERROR)] | None


class OpsSince(_Msg, tag="ops.since", frozen=True):
    """Receiver → owner: "of each origin, I hold everything up to this modno"."""

    marks: Annotated[dict[InstanceId, Modno], Meta(max_length=64)] = {}


class OpsBatch(_Msg, tag="ops.batch", frozen=True):
    """Owner → receiver: operations of ``origin`` (which must be the sender), newest state.

    ``done`` marks the last batch of a catch-up or repair; live pushes always set it.
    """

    origin: InstanceId
    ops: Annotated[tuple[OpRecord, ...], Meta(max_length=MAX_OPS_PER_BATCH)] = ()
    done: bool = False


class OpsDigest(_Msg, tag="ops.digest", frozen=True):
    """Owner → receiver: count and order-free hash of (origin, op_id, modno) in scope."""

    origin: InstanceId
    count: Count64
    hash: Hash63


class OpsManifest(_Msg, tag="ops.manifest", frozen=True):
    """Receiver → owner, after a digest mismatch: (op_id, modno) of every operation of
    ``origin`` (the owner) the receiver holds, in chunks; ``done`` on the last."""

    origin: InstanceId
    op_ids: Annotated[tuple[OpId, ...], Meta(max_length=MAX_IDS_PER_FRAME)] = ()
    modnos: Annotated[tuple[Modno, ...], Meta(max_length=MAX_IDS_PER_FRAME)] = ()
    done: bool = False


class OpsDeleted(_Msg, tag="ops.deleted", frozen=True):
    """Owner → receiver: these operations of ``origin`` are gone or out of scope; drop them."""

    origin: InstanceId
    op_ids: Annotated[tuple[OpId, ...], Meta(max_length=MAX_IDS_PER_FRAME)] = ()


# -- requests (peer/links/rpc.py) ------------------------------------------------------------------
#
# One side asks (``Call``), the other answers once (``Reply``), after zero or more
# ``ReplyChunk`` frames for answers that stream (a large directory listing). Ids are minted by
# the caller and unique per link. Every call is checked against the grants of the side that
# answers; a method it does not know is answered with ``unknown_method``, never a closed link.

CallId = Annotated[str, Meta(min_length=1, max_length=40)]
Method = Annotated[str, Meta(min_length=1, max_length=64)]
#: Most items one ``ReplyChunk`` may carry.
MAX_CHUNK_ITEMS: Final = 10_000


class Call(_Msg, tag="call", frozen=True):
    """Caller → answerer: run ``method`` with ``args`` (a map of plain values)."""

    id: CallId
    method: Method
    args: dict[str, object] = {}

    def __repr__(self) -> str:
        # Arguments can hold a secret (a repository password for ``config.repo.add``): a Call
        # that ends up in a log or a traceback shows their names only.
        return f"Call(id={self.id!r}, method={self.method!r}, args=<{', '.join(self.args)}>)"


class Reply(_Msg, tag="reply", frozen=True):
    """Answerer → caller: the end of a call. ``code`` is set when it failed, and ``error``
    then says why in words a person can act on."""

    id: CallId
    result: object = None
    code: Code | None = None
    error: Text | None = None


class ReplyChunk(_Msg, tag="reply.chunk", frozen=True):
    """Answerer → caller: part of a streamed answer; the ``Reply`` that follows ends it."""

    id: CallId
    items: Annotated[tuple[object, ...], Meta(max_length=MAX_CHUNK_ITEMS)] = ()


class CallCancel(_Msg, tag="call.cancel", frozen=True):
    """Caller → answerer: the caller stopped waiting; stop working on the call."""

    id: CallId


# -- shared repositories (peer/services/shares.py) -------------------------------------------------
#
# An owner sends each peer that grants it ``repos.receive`` the *full* set of its repositories
# in that grant's scope (``ReposShared``): on every link-up and whenever the set or one of its
# repositories changes. A repository missing from a new set was unshared. Each entry carries
# the password and extra environment *values*: they travel only inside the encrypted channel,
# and the structs' repr never shows them. ``RepoSnapshotsChanged`` tells receivers that the
# owner's forget or prune changed a shared repository's snapshots.

#: Most repositories one ``ReposShared`` may carry.
MAX_SHARED_REPOS: Final = 256
RepoUri = Annotated[str, Meta(min_length=1, max_length=4000)]
RepoGuid = Annotated[str, Meta(min_length=8, max_length=64, pattern="^[0-9a-f]+$")]
SecretText = Annotated[str, Meta(min_length=1, max_length=4096)]
EnvName = Annotated[str, Meta(min_length=1, max_length=200, pattern="^[A-Za-z_][A-Za-z0-9_]*$")]
EnvValue = Annotated[str, Meta(max_length=4096)]
ResticOption = Annotated[str, Meta(min_length=3, max_length=2000)]


class SharedRepo(msgspec.Struct, frozen=True, omit_defaults=True):
    """One shared repository as its owner offers it (``name`` is the owner's id for it)."""

    name: Ident
    uri: RepoUri
    guid: RepoGuid
    password: SecretText
    env: Annotated[dict[EnvName, EnvValue], Meta(max_length=32)] = {}
    options: Annotated[tuple[ResticOption, ...], Meta(max_length=32)] = ()

    def __repr__(self) -> str:
        # The password and the environment values never reach a log line through repr().
        return (
            f"SharedRepo(name={self.name!r}, uri=<{len(self.uri)} chars>, guid={self.guid!r}, "
            f"password=<redacted>, env={sorted(self.env)!r}, options={self.options!r})"
        )


class ReposShared(_Msg, tag="repos.shared", frozen=True):
    """Owner → receiver: every repository the owner shares with it, now (may be empty)."""

    repos: Annotated[tuple[SharedRepo, ...], Meta(max_length=MAX_SHARED_REPOS)] = ()

    def __repr__(self) -> str:
        return f"ReposShared(repos={[r.name for r in self.repos]!r}, secrets=<redacted>)"


class RepoSnapshotsChanged(_Msg, tag="repos.snapshots", frozen=True):
    """Owner → receiver: a forget or prune changed shared repository ``name``'s snapshots."""

    name: Ident
    reason: Code


Message: TypeAlias = (
    Hello
    | Welcome
    | Heartbeat
    | Error
    | Close
    | OpsSince
    | OpsBatch
    | OpsDigest
    | OpsManifest
    | OpsDeleted
    | Call
    | Reply
    | ReplyChunk
    | CallCancel
    | ReposShared
    | RepoSnapshotsChanged
)


# -- encoding and decoding ----------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()
_message_decoder = msgspec.msgpack.Decoder(Message)
_handshake_decoder = msgspec.msgpack.Decoder(HandshakeMessage)


class _VersionProbe(msgspec.Struct):
    v: Version


_probe_decoder = msgspec.msgpack.Decoder(_VersionProbe)


def encode(msg: Message | HandshakeMessage, *, max_size: int = MAX_FRAME_SIZE) -> bytes:
    """Encode a message; :class:`ProtocolError` if it would exceed ``max_size``."""
    data = _encoder.encode(msg)
    if len(data) > max_size:
        raise ProtocolError(
            f"{type(msg).__name__} encodes to {len(data)} bytes, over the {max_size}-byte limit"
        )
    return data


def _check_frame(data: object, max_size: int) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"a frame is bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise ProtocolError(f"frame of {len(data)} bytes is over the {max_size}-byte limit")
    if not data:
        raise ProtocolError("empty frame")
    return bytes(data)


def decode(data: bytes, *, max_size: int = MAX_FRAME_SIZE) -> Message:
    """Decode one link message, or raise :class:`ProtocolError` (and nothing else)."""
    frame = _check_frame(data, max_size)
    try:
        return _message_decoder.decode(frame)
    except msgspec.MsgspecError as exc:
        raise ProtocolError(f"malformed message: {exc}") from exc
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # pragma: no cover
        raise ProtocolError(f"malformed message: {exc}") from exc


def decode_handshake(data: bytes) -> HandshakeMessage:
    """Decode one handshake frame, or raise :class:`ProtocolError` (and nothing else)."""
    frame = _check_frame(data, MAX_HANDSHAKE_FRAME_SIZE)
    try:
        return _handshake_decoder.decode(frame)
    except msgspec.MsgspecError as exc:
        raise ProtocolError(f"malformed handshake frame: {exc}") from exc
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # pragma: no cover
        raise ProtocolError(f"malformed handshake frame: {exc}") from exc


def peek_version(data: bytes) -> int | None:
    """The ``"v"`` of a handshake frame, read leniently; None if there is none to read.

    Used on the first frame before full validation, so that a peer speaking a different
    protocol version (whose frames may look different) is told exactly that.
    """
    try:
        frame = _check_frame(data, MAX_HANDSHAKE_FRAME_SIZE)
        return _probe_decoder.decode(frame).v
    except (ProtocolError, msgspec.MsgspecError, ValueError, TypeError, RecursionError):
        return None
