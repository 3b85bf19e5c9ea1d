"""The authenticated, encrypted channel between two peers: handshake and framing.

Transport-agnostic: everything here takes two awaitables, ``send(bytes)`` and ``recv() ->
bytes``, each call carrying exactly one frame. :func:`websocket_transport` adapts an aiohttp
WebSocket (binary messages), :func:`memory_pipe` gives an in-memory pair for tests.

Handshake (four frames, all msgpack, see :mod:`peerstash.peer.links.protocol`)::

    1  I -> R  HandshakeInit      v, identity_I, X25519 ephemeral e_I, nonce_I, ML-KEM-768 ek
    2  R -> I  HandshakeResponse  v, identity_R, X25519 ephemeral e_R, nonce_R, ML-KEM ct
    3  R -> I  HandshakeAuth      Sign_R("...responder" || TH(1,2))
    4  I -> R  HandshakeAuth      Sign_I("...initiator" || TH(1,2,3))

``TH(...)`` is a BLAKE2b-512 over the exact bytes of those frames, each length-prefixed, so both
signatures cover everything both sides sent: identities, ephemeral keys, nonces, the KEM key and
ciphertext, and the versions. Substituting any of it breaks a signature. Because each signature
covers *both* identities, neither side can be made to believe it talks to someone else
(identity misbinding), and the role labels stop a signature from being replayed in the other
role.

Keys: with ``ss_x = X25519(e_I, e_R)`` and ``ss_k`` the ML-KEM-768 shared secret,
``key_i2r = BLAKE2b-256(TH(1..4), key=ss_x || ss_k, person="peerstash/i2r/v1")`` and the same
with ``"peerstash/r2i/v1"`` for the other direction. Hybrid: the keys stay secret as long as
*either* X25519 or ML-KEM holds, so traffic recorded today is not readable by a future quantum
computer, and a flaw in the young ML-KEM implementations does not weaken us below X25519.

Pinning: the initiator always knows whom it dials, by key id (from a pairing token) or by full
public key (pinned after pairing). It compares the responder's identity as soon as frame 2
arrives and raises :class:`AuthError` *before sending anything else*; it then checks frame 3's
signature, proving the responder holds that key. The responder learns the initiator's key from
frame 1, checks its signature in frame 4, and returns it (``SecureChannel.peer_public_key``) for
the server to decide: a known peer, or one that must present a pairing secret in its first
encrypted message. An optional ``authorize`` callback can refuse a key outright.

Versions: frame 1 and 2 carry ``v``. On a mismatch the side that notices sends a cleartext
``HandshakeReject(code="version")`` and raises :class:`VersionMismatchError`; the other side
raises the same error when it reads the reject. Malformed handshake frames are answered the
same way with code ``"protocol"``. A reject is unauthenticated and only ever ends a handshake.

After the handshake each frame is ``counter (8 bytes, big-endian) || ChaCha20-Poly1305-IETF(
plaintext, nonce = 0^4 || counter, ad = counter)``. Counters start at 0 per direction and go
up by one; the receiver demands exactly the next one. A frame that is out of order, replayed,
dropped-then-continued, tampered with, too short or too large kills the channel: it raises a
:class:`ChannelError` subclass now and :class:`ChannelClosedError` on every later call. There is
no recovery inside a channel by design; the link reconnects and does a fresh handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import nacl.bindings
import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.public
from aiohttp import ClientWebSocketResponse, WSMsgType, web
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey

from peerstash.peer.links.protocol import (
    MAX_FRAME_SIZE,
    MAX_HANDSHAKE_FRAME_SIZE,
    PROTOCOL_VERSION,
    ErrorCode,
    HandshakeAuth,
    HandshakeInit,
    HandshakeMessage,
    HandshakeReject,
    HandshakeResponse,
    Message,
    ProtocolError,
    decode,
    decode_handshake,
    encode,
    peek_version,
)
from peerstash.peer.trust.identity import Identity, key_id, normalize_key_id

__all__ = [
    "FRAME_OVERHEAD",
    "HANDSHAKE_TIMEOUT",
    "MAX_WIRE_FRAME_SIZE",
    "WS_MAX_MSG_SIZE",
    "AuthError",
    "AuthorizeFn",
    "ChannelClosedError",
    "ChannelError",
    "HandshakeError",
    "HandshakeTimeoutError",
    "MemoryTransport",
    "OutOfOrderFrameError",
    "OversizedFrameError",
    "PeerRejectedError",
    "RecvFn",
    "SecureChannel",
    "SendFn",
    "TamperedFrameError",
    "TransportClosed",
    "TransportError",
    "VersionMismatchError",
    "initiate",
    "memory_pipe",
    "respond",
    "websocket_transport",
]

SendFn = Callable[[bytes], Awaitable[None]]
RecvFn = Callable[[], Awaitable[bytes]]
AuthorizeFn = Callable[[bytes], Awaitable[bool]]

#: Default limit for the whole handshake, in seconds. Generous for slow links; short enough
#: that a peer which connects and says nothing does not hold a slot for long.
HANDSHAKE_TIMEOUT: Final = 10.0

_COUNTER_BYTES: Final = 8
_TAG_BYTES: Final = nacl.bindings.crypto_aead_chacha20poly1305_ietf_ABYTES
#: Bytes an encrypted frame adds to its plaintext (counter header + Poly1305 tag).
FRAME_OVERHEAD: Final = _COUNTER_BYTES + _TAG_BYTES
#: Largest frame on the wire (the channel enforces it exactly).
MAX_WIRE_FRAME_SIZE: Final = MAX_FRAME_SIZE + FRAME_OVERHEAD
#: What to give aiohttp as ``max_msg_size`` on both ends: aiohttp refuses a message whose size
#: *equals* its limit, and its default (4 MiB) is below our largest frame. The small margin keeps
#: the exact check where it belongs, in :class:`SecureChannel`, with a clear error.
WS_MAX_MSG_SIZE: Final = MAX_WIRE_FRAME_SIZE + 1024
_MAX_COUNTER: Final = 2**64 - 1

_TRANSCRIPT_PERSON: Final = b"peerstash/hs/v1"
_SIG_LABEL_RESPONDER: Final = b"peerstash/v1 handshake signature: responder\x00"
_SIG_LABEL_INITIATOR: Final = b"peerstash/v1 handshake signature: initiator\x00"
_KDF_PERSON_I2R: Final = b"peerstash/i2r/v1"
_KDF_PERSON_R2I: Final = b"peerstash/r2i/v1"


# -- errors -------------------------------------------------------------------------------


class ChannelError(Exception):
    """Base of every error this module raises about a connection."""


class TransportError(ChannelError):
    """The underlying transport failed or delivered something that is not a binary frame."""


class TransportClosed(TransportError):
    """The underlying transport is closed. Transports raise this from ``recv`` at EOF."""


class HandshakeError(ChannelError):
    """The handshake failed: malformed or unexpected frame, broken connection..."""


class AuthError(HandshakeError):
    """The peer is not who we expected, or could not prove its identity."""


class VersionMismatchError(HandshakeError):
    """The two sides speak different protocol versions."""

    def __init__(self, message: str, *, ours: int, theirs: int | None) -> None:
        super().__init__(message)
        self.ours = ours
        self.theirs = theirs


class PeerRejectedError(HandshakeError):
    """The peer ended the handshake with a reject frame (its stated reason is the message)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class HandshakeTimeoutError(HandshakeError, TimeoutError):
    """The handshake did not complete in time."""


class ChannelClosedError(ChannelError):
    """The channel was closed or killed by an earlier error; it cannot be used any more."""


class TamperedFrameError(ChannelError):
    """A frame failed authentication: modified in transit, forged, or not for this channel."""


class OutOfOrderFrameError(ChannelError):
    """A frame carried the wrong counter: replayed, reordered, or one before it was dropped."""


class OversizedFrameError(ChannelError):
    """A frame (or a message to send) is over the size limit, or too short to be a frame."""


# -- the encrypted channel ----------------------------------------------------------------


class SecureChannel:
    """An established channel: send and receive opaque byte messages, encrypted both ways.

    Created by :func:`initiate` / :func:`respond`, never directly by callers. Safe to use from
    several tasks: sends are serialised (frames leave in counter order) and so are receives.
    Cancelling a ``recv`` that is waiting for the transport leaves the channel usable (no
    frame was consumed); cancelling a ``send`` kills it, since the frame may be half-sent.
    """

    def __init__(
        self,
        *,
        send: SendFn,
        recv: RecvFn,
        send_key: bytes,
        recv_key: bytes,
        peer_public_key: bytes,
        session_id: bytes,
        is_initiator: bool,
        max_message_size: int = MAX_FRAME_SIZE,
    ) -> None:
        self._send_fn = send
        self._recv_fn = recv
        self._send_key = send_key
        self._recv_key = recv_key
        self._send_counter = 0
        self._recv_counter = 0
        self._send_lock = asyncio.Lock()
        self._recv_lock = asyncio.Lock()
        self._dead: str | None = None
        self.max_message_size = max_message_size
        #: The peer's verified Ed25519 identity key.
        self.peer_public_key = peer_public_key
        #: The hash of the whole handshake transcript; unique per session, the same on both
        #: sides. Usable to bind higher-level proofs to this very channel.
        self.session_id = session_id
        self.is_initiator = is_initiator

    @property
    def peer_key_id(self) -> str:
        """:func:`~peerstash.peer.trust.identity.key_id` of the peer."""
        return key_id(self.peer_public_key)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or an error killed the channel."""
        return self._dead is not None

    @property
    def close_reason(self) -> str | None:
        """Why the channel is closed, or None while it is open."""
        return self._dead

    def close(self, reason: str = "closed locally") -> None:
        """Mark the channel dead (idempotent). Closing the transport is the owner's job."""
        if self._dead is None:
            self._dead = reason

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise ChannelClosedError(f"channel is closed: {self._dead}")

    def _kill(self, error: ChannelError) -> ChannelError:
        self.close(str(error))
        return error

    async def send(self, data: bytes) -> None:
        """Encrypt and send one message of at most ``max_message_size`` bytes.

        An oversized message raises :class:`OversizedFrameError` without sending anything
        (the channel stays usable). A transport failure kills the channel.
        """
        self._check_alive()
        if len(data) > self.max_message_size:
            raise OversizedFrameError(
                f"message of {len(data)} bytes is over the {self.max_message_size}-byte limit"
            )
        async with self._send_lock:
            self._check_alive()
            counter = self._send_counter
            if counter >= _MAX_COUNTER:
                raise self._kill(ChannelClosedError("send counter exhausted; reconnect"))
            header = counter.to_bytes(_COUNTER_BYTES, "big")
            sealed = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
                bytes(data), header, _nonce(header), self._send_key
            )
            self._send_counter = counter + 1
            try:
                await self._send_fn(header + sealed)
            except (TransportError, ConnectionError, OSError) as exc:
                raise self._kill(TransportError(f"sending failed: {exc}")) from exc
            except BaseException:
                # Cancelled or a bug mid-send: the peer may have a partial view; never reuse.
                self.close("send interrupted")
                raise

    async def recv(self) -> bytes:
        """Receive, authenticate and decrypt the next message.

        Raises :class:`TamperedFrameError`, :class:`OutOfOrderFrameError`,
        :class:`OversizedFrameError` or :class:`TransportError` (all :class:`ChannelError`);
        any of them kills the channel.
        """
        self._check_alive()
        async with self._recv_lock:
            self._check_alive()
            try:
                frame = await self._recv_fn()
            except TransportError as exc:
                self._kill(exc)
                raise
            except (ConnectionError, OSError) as exc:
                raise self._kill(TransportError(f"receiving failed: {exc}")) from exc
            self._check_alive()  # closed while we were waiting
            return self._open(frame)

    def _open(self, frame: object) -> bytes:
        if not isinstance(frame, bytes | bytearray | memoryview):
            raise self._kill(TransportError(f"expected a binary frame, got {type(frame)}"))
        frame = bytes(frame)
        if len(frame) > self.max_message_size + FRAME_OVERHEAD:
            raise self._kill(
                OversizedFrameError(
                    f"frame of {len(frame)} bytes is over the "
                    f"{self.max_message_size + FRAME_OVERHEAD}-byte limit"
                )
            )
        if len(frame) < FRAME_OVERHEAD:
            raise self._kill(OversizedFrameError(f"frame of {len(frame)} bytes is too short"))
        header = frame[:_COUNTER_BYTES]
        counter = int.from_bytes(header, "big")
        if counter != self._recv_counter:
            raise self._kill(
                OutOfOrderFrameError(
                    f"frame #{counter} arrived when #{self._recv_counter} was due "
                    "(replayed, reordered or dropped frame)"
                )
            )
        try:
            plaintext = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
                frame[_COUNTER_BYTES:], header, _nonce(header), self._recv_key
            )
        except nacl.exceptions.CryptoError as exc:
            raise self._kill(
                TamperedFrameError(f"frame #{counter} failed authentication (tampered?)")
            ) from exc
        self._recv_counter = counter + 1
        return bytes(plaintext)

    async def send_msg(self, msg: Message) -> None:
        """Encode a link message and :meth:`send` it."""
        try:
            data = encode(msg, max_size=self.max_message_size)
        except ProtocolError as exc:
            raise OversizedFrameError(str(exc)) from exc
        await self.send(data)

    async def recv_msg(self) -> Message:
        """:meth:`recv` and decode one link message.

        A message that decrypts but does not decode raises :class:`ProtocolError` and leaves the
        channel open, so the caller can still send an ``Error`` before closing the link.
        """
        return decode(await self.recv(), max_size=self.max_message_size)

    def __repr__(self) -> str:
        state = "open" if self._dead is None else f"closed: {self._dead}"
        role = "initiator" if self.is_initiator else "responder"
        return f"<SecureChannel {role} peer={self.peer_key_id} {state}>"


def _nonce(header: bytes) -> bytes:
    return b"\x00\x00\x00\x00" + header


# -- handshake ----------------------------------------------------------------------------


class _Transcript:
    """Running BLAKE2b-512 over every handshake frame, each prefixed by its length."""

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=64, person=_TRANSCRIPT_PERSON)

    def add(self, frame: bytes) -> None:
        self._hash.update(len(frame).to_bytes(4, "big"))
        self._hash.update(frame)

    def digest(self) -> bytes:
        return self._hash.digest()  # does not finalise: more frames may follow


def _derive_keys(ss_x: bytes, ss_k: bytes, transcript: bytes) -> tuple[bytes, bytes]:
    """(initiator→responder key, responder→initiator key)."""
    secret = ss_x + ss_k  # 64 bytes: exactly BLAKE2b's maximum key size

    def kdf(person: bytes) -> bytes:
        return nacl.hash.blake2b(
            transcript, digest_size=32, key=secret, person=person, encoder=nacl.encoding.RawEncoder
        )

    return kdf(_KDF_PERSON_I2R), kdf(_KDF_PERSON_R2I)


def _x25519(private: nacl.public.PrivateKey, peer_public: bytes) -> bytes:
    try:
        shared = nacl.bindings.crypto_scalarmult(bytes(private), peer_public)
    except (nacl.exceptions.CryptoError, ValueError) as exc:
        # libsodium refuses low-order points (an all-zero result).
        raise HandshakeError("peer sent an invalid X25519 key") from exc
    if not any(shared):  # pragma: no cover - libsodium already refuses this
        raise HandshakeError("peer sent an invalid X25519 key")
    return bytes(shared)


async def _send_frame(send: SendFn, frame: bytes) -> None:
    try:
        await send(frame)
    except (TransportError, ConnectionError, OSError) as exc:
        raise HandshakeError(f"connection failed during the handshake: {exc}") from exc


async def _recv_frame(recv: RecvFn) -> bytes:
    try:
        data = await recv()
    except TransportClosed as exc:
        raise HandshakeError("the peer closed the connection during the handshake") from exc
    except (TransportError, ConnectionError, OSError) as exc:
        raise HandshakeError(f"connection failed during the handshake: {exc}") from exc
    if not isinstance(data, bytes | bytearray | memoryview):
        raise HandshakeError(f"expected a binary handshake frame, got {type(data).__name__}")
    return bytes(data)


async def _reject(send: SendFn, code: str, message: str, version: int) -> None:
    """Tell the peer why we give up (best effort: the connection may already be gone)."""
    frame = encode(
        HandshakeReject(v=version, code=code, message=message[:2000]),
        max_size=MAX_HANDSHAKE_FRAME_SIZE,
    )
    with contextlib.suppress(Exception):
        await send(frame)


_T = TypeVar("_T", HandshakeInit, HandshakeResponse, HandshakeAuth)


async def _read(send: SendFn, recv: RecvFn, expected: type[_T], version: int) -> tuple[_T, bytes]:
    """Receive the next handshake frame, which must be an ``expected``.

    Turns every way it can go wrong into the right :class:`HandshakeError`, telling the peer
    (with a reject) when the fault is theirs and they might not know.
    """
    frame = await _recv_frame(recv)
    if len(frame) > MAX_HANDSHAKE_FRAME_SIZE:
        msg = f"handshake frame of {len(frame)} bytes is over the limit"
        await _reject(send, ErrorCode.PROTOCOL, msg, version)
        raise HandshakeError(msg)
    try:
        decoded: HandshakeMessage = decode_handshake(frame)
    except ProtocolError as exc:
        theirs = peek_version(frame)
        if theirs is not None and theirs != version and expected is not HandshakeAuth:
            raise await _version_mismatch(send, version, theirs) from exc
        await _reject(send, ErrorCode.PROTOCOL, f"malformed handshake frame: {exc}", version)
        raise HandshakeError(f"malformed handshake frame from the peer: {exc}") from exc
    if isinstance(decoded, HandshakeReject):
        if decoded.code == ErrorCode.VERSION:
            raise VersionMismatchError(
                f"protocol version mismatch: the peer speaks version {decoded.v}, "
                f"we speak version {version}",
                ours=version,
                theirs=decoded.v,
            )
        raise PeerRejectedError(
            f"the peer refused the handshake ({decoded.code}): {decoded.message}",
            code=decoded.code,
        )
    if isinstance(decoded, HandshakeInit | HandshakeResponse) and decoded.v != version:
        raise await _version_mismatch(send, version, decoded.v)
    if not isinstance(decoded, expected):
        msg = f"expected {expected.__name__} but got {type(decoded).__name__}"
        await _reject(send, ErrorCode.PROTOCOL, msg, version)
        raise HandshakeError(f"unexpected handshake frame: {msg}")
    return decoded, frame


async def _version_mismatch(send: SendFn, ours: int, theirs: int) -> VersionMismatchError:
    await _reject(
        send, ErrorCode.VERSION, f"this peer speaks protocol version {ours}, not {theirs}", ours
    )
    return VersionMismatchError(
        f"protocol version mismatch: the peer speaks version {theirs}, we speak version {ours}",
        ours=ours,
        theirs=theirs,
    )


async def _with_deadline(coro: Awaitable[SecureChannel], seconds: float) -> SecureChannel:
    try:
        async with asyncio.timeout(seconds):
            return await coro
    except TimeoutError as exc:
        if isinstance(exc, ChannelError):
            raise
        raise HandshakeTimeoutError(f"the handshake did not complete within {seconds:g} s") from exc


async def initiate(
    identity: Identity,
    send: SendFn,
    recv: RecvFn,
    *,
    expected_key_id: str | None = None,
    expected_public_key: bytes | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    protocol_version: int = PROTOCOL_VERSION,
) -> SecureChannel:
    """Run the handshake as the side that dialled; return the established channel.

    Exactly whom we expect must be given: ``expected_key_id`` (first contact, from the pairing
    token) and/or ``expected_public_key`` (a pinned peer); both are checked if both are given.
    A different responder raises :class:`AuthError` before we send anything more.
    ``protocol_version`` exists for tests and future negotiation; leave it alone.
    """
    if expected_key_id is None and expected_public_key is None:
        raise ValueError("initiate() needs expected_key_id or expected_public_key: trust is pinned")
    canonical_id = None if expected_key_id is None else normalize_key_id(expected_key_id)
    if expected_public_key is not None and len(expected_public_key) != 32:
        raise ValueError("expected_public_key must be a 32-byte Ed25519 public key")
    return await _with_deadline(
        _initiate(identity, send, recv, canonical_id, expected_public_key, protocol_version),
        handshake_timeout,
    )


async def _initiate(
    identity: Identity,
    send: SendFn,
    recv: RecvFn,
    expected_key_id: str | None,
    expected_public_key: bytes | None,
    version: int,
) -> SecureChannel:
    ephemeral = nacl.public.PrivateKey.generate()
    kem = MLKEM768PrivateKey.generate()
    init = HandshakeInit(
        v=version,
        identity=identity.public_key,
        ephemeral=bytes(ephemeral.public_key),
        nonce=os.urandom(32),
        kem_ek=kem.public_key().public_bytes_raw(),
    )
    transcript = _Transcript()
    frame1 = encode(init, max_size=MAX_HANDSHAKE_FRAME_SIZE)
    transcript.add(frame1)
    await _send_frame(send, frame1)

    resp, frame2 = await _read(send, recv, HandshakeResponse, version)
    # Pin check first: if this is not the peer we dialled, it learns nothing more from us.
    if expected_public_key is not None and not hmac.compare_digest(
        resp.identity, expected_public_key
    ):
        raise AuthError(
            f"the peer's identity key (key id {key_id(resp.identity)}) is not the pinned key "
            f"(key id {key_id(expected_public_key)}): possible interception or a reinstalled peer"
        )
    if expected_key_id is not None and key_id(resp.identity) != expected_key_id:
        raise AuthError(
            f"the peer's key id is {key_id(resp.identity)}, expected {expected_key_id}: "
            "possible interception, or the token belongs to another instance"
        )
    if resp.identity == identity.public_key:
        raise AuthError("the peer presents our own identity key (connected to ourselves?)")
    transcript.add(frame2)

    auth_r, frame3 = await _read(send, recv, HandshakeAuth, version)
    if not Identity.verify(resp.identity, _SIG_LABEL_RESPONDER + transcript.digest(), auth_r.sig):
        raise AuthError("the peer's handshake signature does not verify")
    transcript.add(frame3)

    ss_x = _x25519(ephemeral, resp.ephemeral)
    try:
        ss_k = kem.decapsulate(resp.kem_ct)
    except ValueError as exc:  # pragma: no cover - length is validated by the decoder
        raise HandshakeError("peer sent an invalid ML-KEM ciphertext") from exc

    sig = identity.sign(_SIG_LABEL_INITIATOR + transcript.digest())
    frame4 = encode(HandshakeAuth(sig=sig), max_size=MAX_HANDSHAKE_FRAME_SIZE)
    transcript.add(frame4)
    await _send_frame(send, frame4)

    session_id = transcript.digest()
    key_i2r, key_r2i = _derive_keys(ss_x, ss_k, session_id)
    return SecureChannel(
        send=send,
        recv=recv,
        send_key=key_i2r,
        recv_key=key_r2i,
        peer_public_key=resp.identity,
        session_id=session_id,
        is_initiator=True,
    )


async def respond(
    identity: Identity,
    send: SendFn,
    recv: RecvFn,
    *,
    authorize: AuthorizeFn | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    protocol_version: int = PROTOCOL_VERSION,
) -> SecureChannel:
    """Run the handshake as the side that accepted the connection; return the channel.

    The initiator's verified key is ``channel.peer_public_key``. If ``authorize`` is given it
    is awaited with that key once the signature checks out; returning False raises
    :class:`AuthError` (use it to refuse keys outright; "known peer or pairing secret?" is
    decided after the handshake, from the first encrypted message).
    """
    return await _with_deadline(
        _respond(identity, send, recv, authorize, protocol_version), handshake_timeout
    )


async def _respond(
    identity: Identity,
    send: SendFn,
    recv: RecvFn,
    authorize: AuthorizeFn | None,
    version: int,
) -> SecureChannel:
    init, frame1 = await _read(send, recv, HandshakeInit, version)
    if init.identity == identity.public_key:
        raise AuthError("the peer presents our own identity key (connected to ourselves?)")
    transcript = _Transcript()
    transcript.add(frame1)

    try:
        peer_kem = MLKEM768PublicKey.from_public_bytes(init.kem_ek)
    except ValueError as exc:
        await _reject(send, ErrorCode.PROTOCOL, "invalid ML-KEM encapsulation key", version)
        raise HandshakeError("peer sent an invalid ML-KEM encapsulation key") from exc
    ss_k, kem_ct = peer_kem.encapsulate()
    ephemeral = nacl.public.PrivateKey.generate()
    try:
        ss_x = _x25519(ephemeral, init.ephemeral)
    except HandshakeError:
        await _reject(send, ErrorCode.PROTOCOL, "invalid X25519 key", version)
        raise

    resp = HandshakeResponse(
        v=version,
        identity=identity.public_key,
        ephemeral=bytes(ephemeral.public_key),
        nonce=os.urandom(32),
        kem_ct=kem_ct,
    )
    frame2 = encode(resp, max_size=MAX_HANDSHAKE_FRAME_SIZE)
    transcript.add(frame2)
    sig = identity.sign(_SIG_LABEL_RESPONDER + transcript.digest())
    frame3 = encode(HandshakeAuth(sig=sig), max_size=MAX_HANDSHAKE_FRAME_SIZE)
    transcript.add(frame3)
    await _send_frame(send, frame2)
    await _send_frame(send, frame3)

    auth_i, frame4 = await _read(send, recv, HandshakeAuth, version)
    if not Identity.verify(init.identity, _SIG_LABEL_INITIATOR + transcript.digest(), auth_i.sig):
        raise AuthError("the peer's handshake signature does not verify")
    transcript.add(frame4)
    if authorize is not None and not await authorize(init.identity):
        raise AuthError(f"peer with key id {key_id(init.identity)} is not authorized")

    session_id = transcript.digest()
    key_i2r, key_r2i = _derive_keys(ss_x, ss_k, session_id)
    return SecureChannel(
        send=send,
        recv=recv,
        send_key=key_r2i,
        recv_key=key_i2r,
        peer_public_key=init.identity,
        session_id=session_id,
        is_initiator=False,
    )


# -- transports ---------------------------------------------------------------------------


class MemoryTransport:
    """One end of an in-memory frame pipe (see :func:`memory_pipe`)."""

    def __init__(
        self, inbox: asyncio.Queue[bytes | None], outbox: asyncio.Queue[bytes | None]
    ) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self._closed = False

    async def send(self, data: bytes) -> None:
        """Deliver one frame to the other end."""
        if self._closed:
            raise TransportClosed("this end of the pipe is closed")
        await self._outbox.put(bytes(data))

    async def recv(self) -> bytes:
        """The next frame from the other end; :class:`TransportClosed` once either end closed."""
        if self._closed:
            raise TransportClosed("this end of the pipe is closed")
        item = await self._inbox.get()
        if item is None:
            self._inbox.put_nowait(None)  # keep the EOF for any later recv
            raise TransportClosed("the other end closed the pipe")
        return item

    def close(self) -> None:
        """Close both directions: the other end's ``recv`` sees EOF after pending frames."""
        if not self._closed:
            self._closed = True
            self._outbox.put_nowait(None)
            self._inbox.put_nowait(None)


def memory_pipe() -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected in-memory transports, for tests and in-process links."""
    a_to_b: asyncio.Queue[bytes | None] = asyncio.Queue()
    b_to_a: asyncio.Queue[bytes | None] = asyncio.Queue()
    return MemoryTransport(b_to_a, a_to_b), MemoryTransport(a_to_b, b_to_a)


def websocket_transport(
    ws: web.WebSocketResponse | ClientWebSocketResponse,
) -> tuple[SendFn, RecvFn]:
    """``(send, recv)`` over an aiohttp WebSocket, one binary message per frame.

    Create the socket with ``max_msg_size=WS_MAX_MSG_SIZE`` on both ends (aiohttp's default of
    4 MiB is just below our largest frame). A close or error becomes :class:`TransportClosed`,
    a text message :class:`TransportError`.
    """

    async def send(data: bytes) -> None:
        await ws.send_bytes(data)

    async def recv() -> bytes:
        msg = await ws.receive()
        if msg.type == WSMsgType.BINARY:
            data: bytes = msg.data
            return data
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            raise TransportClosed("the WebSocket is closed")
        if msg.type == WSMsgType.ERROR:
            raise TransportClosed(f"the WebSocket failed: {ws.exception()}")
        raise TransportError(f"unexpected WebSocket message of type {msg.type.name}")

    return send, recv
