"""Handshake and encrypted framing over an in-memory pipe, plus fuzzing of every decoder.

Every await that could hang is bounded (``asyncio.wait_for``/``handshake_timeout``), so a bug
shows up as a failure, never as a stuck test run.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
import nacl.bindings
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerstash.peer.links import channel as channel_mod
from peerstash.peer.links import protocol
from peerstash.peer.links.channel import (
    FRAME_OVERHEAD,
    AuthError,
    ChannelClosedError,
    ChannelError,
    HandshakeError,
    HandshakeTimeoutError,
    MemoryTransport,
    OutOfOrderFrameError,
    OversizedFrameError,
    PeerRejectedError,
    SecureChannel,
    TamperedFrameError,
    TransportClosed,
    TransportError,
    VersionMismatchError,
    initiate,
    memory_pipe,
    respond,
)
from peerstash.peer.links.protocol import (
    MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    Close,
    Error,
    HandshakeAuth,
    HandshakeInit,
    HandshakeReject,
    HandshakeResponse,
    Heartbeat,
    Hello,
    ProtocolError,
    Welcome,
    decode,
    decode_handshake,
    encode,
    peek_version,
)
from peerstash.peer.trust.identity import Identity

STEP = 5.0  # upper bound for any single await in these tests

ALICE = Identity.from_seed(b"a" * 32)  # initiator
BOB = Identity.from_seed(b"b" * 32)  # responder
MALLORY = Identity.from_seed(b"m" * 32)


@dataclass
class Tap:
    """A transport wrapper that records frames and can rewrite or drop outgoing ones."""

    inner: MemoryTransport
    sent: list[bytes] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    rewrite: Callable[[int, bytes], bytes | None] | None = None

    async def send(self, data: bytes) -> None:
        index = len(self.sent)
        self.sent.append(data)
        if self.rewrite is not None:
            new = self.rewrite(index, data)
            if new is None:
                return
            data = new
        await self.inner.send(data)

    async def recv(self) -> bytes:
        data = await self.inner.recv()
        self.received.append(data)
        return data

    def close(self) -> None:
        self.inner.close()


async def handshake(
    init_kwargs: dict[str, object] | None = None,
    resp_kwargs: dict[str, object] | None = None,
    initiator: Identity = ALICE,
    responder: Identity = BOB,
) -> tuple[SecureChannel, SecureChannel, Tap, Tap]:
    a, b = memory_pipe()
    ta, tb = Tap(a), Tap(b)
    ikw: dict[str, object] = {"expected_key_id": responder.key_id, **(init_kwargs or {})}
    ci, cr = await asyncio.wait_for(
        asyncio.gather(
            initiate(initiator, ta.send, ta.recv, **ikw),
            respond(responder, tb.send, tb.recv, **(resp_kwargs or {})),
        ),
        STEP,
    )
    return ci, cr, ta, tb


async def both(
    init: Awaitable[SecureChannel], resp: Awaitable[SecureChannel]
) -> tuple[BaseException | SecureChannel, BaseException | SecureChannel]:
    ri, rr = await asyncio.wait_for(asyncio.gather(init, resp, return_exceptions=True), STEP)
    return ri, rr


# -- the good path ------------------------------------------------------------------------


async def test_handshake_and_messages_both_ways() -> None:
    ci, cr, ta, tb = await handshake()
    assert ci.is_initiator and not cr.is_initiator
    assert ci.peer_public_key == BOB.public_key and cr.peer_public_key == ALICE.public_key
    assert ci.peer_key_id == BOB.key_id and cr.peer_key_id == ALICE.key_id
    assert ci.session_id == cr.session_id and len(ci.session_id) == 64
    # Four handshake frames: init, then response + auth, then auth.
    assert len(ta.sent) == 2 and len(tb.sent) == 2
    assert isinstance(decode_handshake(ta.sent[0]), HandshakeInit)
    assert isinstance(decode_handshake(tb.sent[0]), HandshakeResponse)
    assert isinstance(decode_handshake(tb.sent[1]), HandshakeAuth)
    assert isinstance(decode_handshake(ta.sent[1]), HandshakeAuth)

    await ci.send_msg(Hello(instance_id="alice", grants=("ops:*",)))
    assert await asyncio.wait_for(cr.recv_msg(), STEP) == Hello(
        instance_id="alice", grants=("ops:*",)
    )
    await cr.send_msg(Welcome(instance_id="bob"))
    assert await asyncio.wait_for(ci.recv_msg(), STEP) == Welcome(instance_id="bob")
    for i in range(50):
        await ci.send(f"ping {i}".encode())
        await cr.send(f"pong {i}".encode())
    for i in range(50):
        assert await asyncio.wait_for(cr.recv(), STEP) == f"ping {i}".encode()
        assert await asyncio.wait_for(ci.recv(), STEP) == f"pong {i}".encode()
    await ci.send(b"")  # empty messages are fine
    assert await asyncio.wait_for(cr.recv(), STEP) == b""


async def test_sessions_are_fresh_and_directions_use_different_keys() -> None:
    ci1, cr1, ta1, _ = await handshake()
    ci2, _, ta2, _ = await handshake()
    assert ci1.session_id != ci2.session_id
    await ci1.send(b"same")
    await ci2.send(b"same")
    await cr1.send(b"same")
    assert ta1.sent[-1] != ta2.sent[-1]  # different sessions, different ciphertext
    await asyncio.wait_for(cr1.recv(), STEP)
    assert await asyncio.wait_for(ci1.recv(), STEP) == b"same"


async def test_pinning_by_public_key_and_by_both() -> None:
    await handshake({"expected_key_id": None, "expected_public_key": BOB.public_key})
    await handshake({"expected_public_key": BOB.public_key})  # key id too (the default)
    await handshake({"expected_key_id": BOB.key_id.upper().replace("-", "")})


async def test_an_unpinned_initiate_is_refused() -> None:
    a, _ = memory_pipe()
    with pytest.raises(ValueError, match="pinned"):
        await initiate(ALICE, a.send, a.recv)
    with pytest.raises(ValueError):
        await initiate(ALICE, a.send, a.recv, expected_key_id="nonsense")
    with pytest.raises(ValueError):
        await initiate(ALICE, a.send, a.recv, expected_public_key=b"short")


async def test_authorize_callback() -> None:
    seen: list[bytes] = []

    async def allow(key: bytes) -> bool:
        seen.append(key)
        return True

    await handshake(resp_kwargs={"authorize": allow})
    assert seen == [ALICE.public_key]

    async def deny(key: bytes) -> bool:
        return False

    a, b = memory_pipe()
    _, rr = await both(
        initiate(ALICE, a.send, a.recv, expected_key_id=BOB.key_id),
        respond(BOB, b.send, b.recv, authorize=deny),
    )
    assert isinstance(rr, AuthError) and "not authorized" in str(rr)


# -- who is on the other end --------------------------------------------------------------


async def test_wrong_expected_key_id_fails_before_sending_anything_more() -> None:
    a, b = memory_pipe()
    ta = Tap(a)

    async def run_initiator() -> SecureChannel:
        try:
            return await initiate(ALICE, ta.send, ta.recv, expected_key_id=MALLORY.key_id)
        finally:
            ta.close()  # what a real caller does: drop the connection

    ri, rr = await both(run_initiator(), respond(BOB, b.send, b.recv))
    assert isinstance(ri, AuthError)
    assert MALLORY.key_id in str(ri) and BOB.key_id in str(ri)
    assert len(ta.sent) == 1  # only the init frame: no signature, nothing after
    assert isinstance(rr, HandshakeError) and "closed" in str(rr)


async def test_wrong_pinned_public_key_fails() -> None:
    a, b = memory_pipe()
    ta = Tap(a)
    ri, _ = await both(
        initiate(
            ALICE,
            ta.send,
            ta.recv,
            expected_public_key=MALLORY.public_key,
            handshake_timeout=1,
        ),
        respond(BOB, b.send, b.recv, handshake_timeout=1),
    )
    assert isinstance(ri, AuthError) and "pinned" in str(ri)
    assert len(ta.sent) == 1


def _rewrite_handshake(
    frame: bytes, **changes: object
) -> bytes:  # re-encode a handshake frame with some fields replaced
    msg = decode_handshake(frame)
    return encode(msgspec.structs.replace(msg, **changes))


async def test_substituted_ephemeral_key_in_response_is_caught() -> None:
    """An active attacker swapping the responder's X25519 key breaks its signature."""
    a, b = memory_pipe()
    tb = Tap(b)
    tb.rewrite = lambda i, f: (
        _rewrite_handshake(f, ephemeral=bytes(nacl.bindings.crypto_scalarmult_base(b"x" * 32)))
        if i == 0
        else f
    )
    ri, _ = await both(
        initiate(ALICE, a.send, a.recv, expected_key_id=BOB.key_id, handshake_timeout=1),
        respond(BOB, tb.send, tb.recv, handshake_timeout=1),
    )
    assert isinstance(ri, AuthError) and "signature" in str(ri)


async def test_substituted_init_is_caught_by_the_initiator() -> None:
    """Changing the initiator's nonce in transit: the responder signs a transcript the
    initiator never saw, so the initiator refuses."""
    a, b = memory_pipe()
    ta = Tap(a)
    ta.rewrite = lambda i, f: _rewrite_handshake(f, nonce=os.urandom(32)) if i == 0 else f
    ri, rr = await both(
        initiate(ALICE, ta.send, ta.recv, expected_key_id=BOB.key_id, handshake_timeout=1),
        respond(BOB, b.send, b.recv, handshake_timeout=1),
    )
    assert isinstance(ri, AuthError)
    assert isinstance(rr, HandshakeError)


async def test_substituted_initiator_identity_is_caught_by_the_responder() -> None:
    """Claiming to be someone else fails: the initiator cannot sign as Mallory."""
    a, b = memory_pipe()
    ta = Tap(a)
    ta.rewrite = lambda i, f: _rewrite_handshake(f, identity=MALLORY.public_key) if i == 0 else f
    ri, rr = await both(
        initiate(ALICE, ta.send, ta.recv, expected_key_id=BOB.key_id, handshake_timeout=1),
        respond(BOB, b.send, b.recv, handshake_timeout=1),
    )
    assert isinstance(ri, AuthError)  # Bob's signature covers "Mallory", Alice saw "Alice"
    assert isinstance(rr, HandshakeError)


async def test_forged_initiator_signature_is_caught() -> None:
    a, b = memory_pipe()
    ta = Tap(a)
    ta.rewrite = lambda i, f: encode(HandshakeAuth(sig=bytes(64))) if i == 1 else f
    ri, rr = await both(
        initiate(ALICE, ta.send, ta.recv, expected_key_id=BOB.key_id),
        respond(BOB, b.send, b.recv),
    )
    assert isinstance(ri, SecureChannel)  # Alice cannot know yet...
    assert isinstance(rr, AuthError) and "signature" in str(rr)  # ...but Bob refuses


async def test_connecting_to_ourselves_is_refused() -> None:
    a, b = memory_pipe()
    ri, rr = await both(
        initiate(ALICE, a.send, a.recv, expected_key_id=ALICE.key_id, handshake_timeout=1),
        respond(ALICE, b.send, b.recv, handshake_timeout=1),
    )
    assert isinstance(rr, AuthError) and "own identity" in str(rr)
    assert isinstance(ri, HandshakeError)


# -- versions -----------------------------------------------------------------------------


@pytest.mark.parametrize(("vi", "vr"), [(2, 1), (1, 2), (0, 1)])
async def test_version_mismatch_is_clear_on_both_sides(vi: int, vr: int) -> None:
    a, b = memory_pipe()
    ri, rr = await both(
        initiate(ALICE, a.send, a.recv, expected_key_id=BOB.key_id, protocol_version=vi),
        respond(BOB, b.send, b.recv, protocol_version=vr),
    )
    for err, ours, theirs in ((ri, vi, vr), (rr, vr, vi)):
        assert isinstance(err, VersionMismatchError), err
        assert (err.ours, err.theirs) == (ours, theirs)
        assert f"version {theirs}" in str(err) and f"version {ours}" in str(err)


async def test_a_future_version_with_a_different_first_frame_gets_a_version_error() -> None:
    a, b = memory_pipe()
    future = msgspec.msgpack.encode({"t": "hs.init", "v": 7, "kem": "something else"})
    await a.send(future)
    with pytest.raises(VersionMismatchError) as info:
        await respond(BOB, b.send, b.recv, handshake_timeout=STEP)
    assert info.value.theirs == 7
    reject = decode_handshake(await asyncio.wait_for(a.recv(), STEP))
    assert isinstance(reject, HandshakeReject)
    assert (reject.code, reject.v) == ("version", PROTOCOL_VERSION)


async def test_a_reject_frame_ends_the_handshake_with_the_peers_reason() -> None:
    a, b = memory_pipe()

    async def refusing_responder() -> None:
        await b.recv()
        await b.send(encode(HandshakeReject(v=1, code="busy", message="too many peers")))

    task = asyncio.create_task(refusing_responder())
    with pytest.raises(PeerRejectedError, match="too many peers") as info:
        await initiate(ALICE, a.send, a.recv, expected_key_id=BOB.key_id, handshake_timeout=STEP)
    assert info.value.code == "busy"
    await task


# -- broken handshakes --------------------------------------------------------------------


async def test_handshake_timeout() -> None:
    a, b = memory_pipe()  # nobody answers on b
    with pytest.raises(HandshakeTimeoutError, match=r"0\.2 s"):
        await initiate(ALICE, a.send, a.recv, expected_key_id=BOB.key_id, handshake_timeout=0.2)
    with pytest.raises(HandshakeTimeoutError):
        await respond(BOB, b.send, b.recv, handshake_timeout=0.2)
    assert issubclass(HandshakeTimeoutError, TimeoutError)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00",
        b"GET / HTTP/1.1\r\n\r\n",
        os.urandom(300),
        msgspec.msgpack.encode({"t": "hs.init", "v": PROTOCOL_VERSION}),
        msgspec.msgpack.encode({"t": "hello", "instance_id": "x"}),
        b"\x00" * (protocol.MAX_HANDSHAKE_FRAME_SIZE + 1),
    ],
)
async def test_garbage_before_the_handshake(garbage: bytes) -> None:
    # At the responder, instead of an init frame.
    a, b = memory_pipe()
    await a.send(garbage)
    with pytest.raises(HandshakeError) as info:
        await respond(BOB, b.send, b.recv, handshake_timeout=STEP)
    assert not isinstance(info.value, AuthError | VersionMismatchError)
    reject = decode_handshake(await asyncio.wait_for(a.recv(), STEP))
    assert isinstance(reject, HandshakeReject) and reject.code == "protocol"

    # At the initiator, instead of the response.
    a, b = memory_pipe()

    async def garbage_responder() -> None:
        await b.recv()
        await b.send(garbage)

    task = asyncio.create_task(garbage_responder())
    with pytest.raises(HandshakeError):
        await initiate(ALICE, a.send, a.recv, expected_key_id=BOB.key_id, handshake_timeout=STEP)
    await task


async def test_out_of_order_handshake_frames() -> None:
    a, b = memory_pipe()
    await a.send(encode(HandshakeAuth(sig=bytes(64))))  # auth before init
    with pytest.raises(HandshakeError, match="expected HandshakeInit"):
        await respond(BOB, b.send, b.recv, handshake_timeout=STEP)


async def test_invalid_key_material_in_the_init_frame() -> None:
    good = HandshakeInit(
        v=PROTOCOL_VERSION,
        identity=ALICE.public_key,
        ephemeral=bytes(nacl.bindings.crypto_scalarmult_base(b"e" * 32)),
        nonce=os.urandom(32),
        kem_ek=b"\xff" * protocol.KEM_ENCAPSULATION_KEY_BYTES,  # not a valid ML-KEM key
    )
    a, b = memory_pipe()
    await a.send(encode(good))
    with pytest.raises(HandshakeError, match="ML-KEM"):
        await respond(BOB, b.send, b.recv, handshake_timeout=STEP)

    from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey

    ek = MLKEM768PrivateKey.generate().public_key().public_bytes_raw()
    low_order = msgspec.structs.replace(good, kem_ek=ek, ephemeral=bytes(32))
    a, b = memory_pipe()
    await a.send(encode(low_order))
    with pytest.raises(HandshakeError, match="X25519"):
        await respond(BOB, b.send, b.recv, handshake_timeout=STEP)


@pytest.mark.parametrize(
    "field_name,length", [("identity", 31), ("ephemeral", 33), ("nonce", 0), ("kem_ek", 1183)]
)
def test_handshake_frames_have_exact_lengths(field_name: str, length: int) -> None:
    fields: dict[str, object] = {
        "t": "hs.init",
        "v": 1,
        "identity": bytes(32),
        "ephemeral": bytes(32),
        "nonce": bytes(32),
        "kem_ek": bytes(1184),
    }
    decode_handshake(msgspec.msgpack.encode(fields))
    fields[field_name] = bytes(length)
    with pytest.raises(ProtocolError, match=field_name):
        decode_handshake(msgspec.msgpack.encode(fields))


async def test_peer_closing_during_the_handshake() -> None:
    a, b = memory_pipe()
    b.close()
    with pytest.raises(HandshakeError, match="closed"):
        await initiate(ALICE, a.send, a.recv, expected_key_id=BOB.key_id, handshake_timeout=STEP)


# -- the encrypted channel under attack ---------------------------------------------------


async def test_tampered_frame_kills_the_channel() -> None:
    ci, cr, ta, _ = await handshake()
    ta.rewrite = lambda i, f: f[:-1] + bytes([f[-1] ^ 0x01])
    await ci.send(b"hello")
    with pytest.raises(TamperedFrameError, match="authentication"):
        await asyncio.wait_for(cr.recv(), STEP)
    assert cr.closed
    # Dead for good, even for a perfectly good next frame.
    ta.rewrite = None
    await ci.send(b"again")
    with pytest.raises(ChannelClosedError, match="authentication"):
        await asyncio.wait_for(cr.recv(), STEP)
    with pytest.raises(ChannelClosedError):
        await cr.send(b"reply")


@pytest.mark.parametrize("position", [0, 3, 7, 8, 12, -16, -1])
async def test_any_flipped_bit_is_detected(position: int) -> None:
    """Counter header, ciphertext or tag: any change is caught and kills the channel."""
    ci, cr, ta, _ = await handshake()

    def flip(index: int, frame: bytes) -> bytes:
        pos = position % len(frame)
        return frame[:pos] + bytes([frame[pos] ^ 0x80]) + frame[pos + 1 :]

    ta.rewrite = flip
    await ci.send(b"0123456789")
    with pytest.raises((TamperedFrameError, OutOfOrderFrameError)):
        await asyncio.wait_for(cr.recv(), STEP)
    assert cr.closed


async def test_replayed_frame_kills_the_channel() -> None:
    ci, cr, ta, _ = await handshake()
    await ci.send(b"transfer 1")
    assert await asyncio.wait_for(cr.recv(), STEP) == b"transfer 1"
    await ta.inner.send(ta.sent[-1])  # the attacker replays it
    with pytest.raises(OutOfOrderFrameError, match="#0 arrived when #1 was due"):
        await asyncio.wait_for(cr.recv(), STEP)
    with pytest.raises(ChannelClosedError):
        await cr.recv()


async def test_reordered_frames_kill_the_channel() -> None:
    ci, cr, ta, _ = await handshake()
    held: list[bytes] = []
    ta.rewrite = lambda i, f: held.append(f) if i == 2 else f
    await ci.send(b"first")  # held back
    await ci.send(b"second")  # delivered first
    with pytest.raises(OutOfOrderFrameError, match="#1 arrived when #0 was due"):
        await asyncio.wait_for(cr.recv(), STEP)
    await ta.inner.send(held[0])
    with pytest.raises(ChannelClosedError):
        await asyncio.wait_for(cr.recv(), STEP)


async def test_dropped_frame_is_detected() -> None:
    ci, cr, ta, _ = await handshake()
    ta.rewrite = lambda i, f: None if i == 2 else f
    await ci.send(b"lost")
    await ci.send(b"next")
    with pytest.raises(OutOfOrderFrameError):
        await asyncio.wait_for(cr.recv(), STEP)


async def test_reflected_frame_is_rejected() -> None:
    """A frame sent back to its own sender fails: each direction has its own key."""
    _, cr, ta, tb = await handshake()
    await cr.send(b"to alice")
    reflected = tb.sent[-1]
    await ta.inner.send(reflected)  # an attacker bounces Bob's frame back to Bob
    with pytest.raises(TamperedFrameError):
        await asyncio.wait_for(cr.recv(), STEP)


async def test_oversized_frame_is_refused_before_decrypting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, cr, ta, _ = await handshake()
    calls: list[int] = []
    real = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt

    def spy(*args: bytes) -> bytes:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(nacl.bindings, "crypto_aead_chacha20poly1305_ietf_decrypt", spy)
    big = bytes(8) + b"\x00" * (MAX_FRAME_SIZE + FRAME_OVERHEAD)  # counter 0, one byte too many
    await ta.inner.send(big)
    with pytest.raises(OversizedFrameError, match="over the"):
        await asyncio.wait_for(cr.recv(), STEP)
    assert calls == []
    assert cr.closed


async def test_largest_message_passes_and_one_more_byte_is_refused_at_send() -> None:
    ci, cr, _, _ = await handshake()
    payload = os.urandom(MAX_FRAME_SIZE)
    await ci.send(payload)
    assert await asyncio.wait_for(cr.recv(), STEP) == payload
    with pytest.raises(OversizedFrameError):
        await ci.send(payload + b"x")
    assert not ci.closed  # nothing was sent: the channel is still fine
    await ci.send(b"ok")
    assert await asyncio.wait_for(cr.recv(), STEP) == b"ok"
    with pytest.raises(OversizedFrameError):
        await ci.send_msg(Close(reason="z" * MAX_FRAME_SIZE))
    assert not ci.closed


@pytest.mark.parametrize(
    "garbage", [b"", b"\x00" * 23, os.urandom(24), os.urandom(100), bytes(8) + os.urandom(40)]
)
async def test_garbage_after_the_handshake(garbage: bytes) -> None:
    _, cr, ta, _ = await handshake()
    await ta.inner.send(garbage)
    with pytest.raises(ChannelError) as info:
        await asyncio.wait_for(cr.recv(), STEP)
    assert isinstance(info.value, TamperedFrameError | OutOfOrderFrameError | OversizedFrameError)
    assert cr.closed


async def test_a_handshake_frame_after_the_handshake_is_rejected() -> None:
    _, cr, ta, _ = await handshake()
    await ta.inner.send(ta.sent[0])  # replay the init frame into the live channel
    with pytest.raises(ChannelError):
        await asyncio.wait_for(cr.recv(), STEP)


async def test_non_bytes_from_the_transport() -> None:
    async def recv() -> bytes:
        return "text"  # type: ignore[return-value]

    ci, _, _, _ = await handshake()
    ci._recv_fn = recv
    with pytest.raises(TransportError):
        await ci.recv()
    assert ci.closed


async def test_valid_frame_that_does_not_decode_leaves_the_channel_open() -> None:
    ci, cr, _, _ = await handshake()
    await ci.send(b"\xc1 not msgpack")
    with pytest.raises(ProtocolError):
        await asyncio.wait_for(cr.recv_msg(), STEP)
    assert not cr.closed  # the caller decides; it can still send an Error
    await cr.send_msg(Error(code="protocol", message="bad message"))
    assert await asyncio.wait_for(ci.recv_msg(), STEP) == Error(
        code="protocol", message="bad message"
    )


async def test_transport_closed_kills_the_channel() -> None:
    ci, cr, ta, _ = await handshake()
    ta.close()
    with pytest.raises(TransportClosed):
        await asyncio.wait_for(cr.recv(), STEP)
    assert cr.closed
    with pytest.raises(ChannelClosedError):
        await cr.send(b"x")
    with pytest.raises(TransportError):
        await ci.send(b"x")
    assert ci.closed


async def test_close_is_final_and_idempotent() -> None:
    ci, _, _, _ = await handshake()
    ci.close("shutting down")
    ci.close("again")
    assert ci.close_reason == "shutting down"
    with pytest.raises(ChannelClosedError, match="shutting down"):
        await ci.send(b"x")
    with pytest.raises(ChannelClosedError):
        await ci.recv()
    assert "closed" in repr(ci)


async def test_cancelled_recv_leaves_the_channel_usable() -> None:
    ci, cr, _, _ = await handshake()
    waiter = asyncio.create_task(cr.recv())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not cr.closed
    await ci.send(b"after cancel")
    assert await asyncio.wait_for(cr.recv(), STEP) == b"after cancel"


async def test_concurrent_senders_keep_frames_in_counter_order() -> None:
    ci, cr, _, _ = await handshake()
    await asyncio.gather(*(ci.send(str(i).encode()) for i in range(200)))
    got = [await asyncio.wait_for(cr.recv(), STEP) for _ in range(200)]
    assert sorted(int(x) for x in got) == list(range(200))


async def test_plaintext_never_appears_on_the_wire() -> None:
    ci, cr, ta, _ = await handshake()
    marker = b"SECRET-MARKER-123"
    await ci.send_msg(Close(reason=marker.decode()))
    await asyncio.wait_for(cr.recv_msg(), STEP)
    assert all(marker not in frame for frame in ta.sent)


# -- protocol messages --------------------------------------------------------------------


def test_message_round_trip_and_repr_hides_the_pairing_secret() -> None:
    secret = os.urandom(32)
    msgs: list[protocol.Message] = [
        Hello(instance_id="a", grants=("ops:*",), pairing_secret=secret, software="x"),
        Welcome(instance_id="b", grants=("run:plan:p",)),
        Heartbeat(sent_at_ms=123),
        Heartbeat(),
        Error(code="bad_token", message="no"),
        Close(reason="bye"),
    ]
    for msg in msgs:
        assert decode(encode(msg)) == msg
    assert secret.hex() not in repr(msgs[0]) and repr(secret) not in repr(msgs[0])
    assert "<redacted>" in repr(msgs[0])
    assert len(encode(Heartbeat())) < 16  # defaults stay off the wire


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgspec.msgpack.encode([1, 2, 3]),
        msgspec.msgpack.encode({"t": "nope"}),
        msgspec.msgpack.encode({"t": "hello"}),
        msgspec.msgpack.encode({"t": "hello", "instance_id": ""}),
        msgspec.msgpack.encode({"t": "hello", "instance_id": "x" * 101}),
        msgspec.msgpack.encode({"t": "hello", "instance_id": "x", "pairing_secret": b"s"}),
        msgspec.msgpack.encode({"t": "hello", "instance_id": "x", "grants": ["g"] * 65}),
        msgspec.msgpack.encode({"t": "hb", "sent_at_ms": -1}),
        msgspec.msgpack.encode({"t": "error", "code": ""}),
        msgspec.msgpack.encode({"t": "hs.auth", "sig": bytes(64)}),  # handshake type
        msgspec.msgpack.encode({"t": "close"}) + b"\x00",  # trailing bytes
        b"\x00" * (MAX_FRAME_SIZE + 1),
    ],
)
def test_decode_rejects_malformed(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(data)


def test_decode_ignores_unknown_fields() -> None:
    data = msgspec.msgpack.encode({"t": "close", "reason": "r", "added_later": [1, 2]})
    assert decode(data) == Close(reason="r")


def test_encode_refuses_oversized() -> None:
    with pytest.raises(ProtocolError, match="limit"):
        encode(Close(reason="x" * 100), max_size=50)


def test_peek_version() -> None:
    assert peek_version(msgspec.msgpack.encode({"v": 9, "t": "anything"})) == 9
    for bad in [b"", b"\xc1", msgspec.msgpack.encode({"v": "1"}), msgspec.msgpack.encode([1])]:
        assert peek_version(bad) is None


# -- fuzzing ------------------------------------------------------------------------------

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=64),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
tags = st.sampled_from(
    ["hello", "welcome", "hb", "error", "close", "hs.init", "hs.resp", "hs.auth", "hs.reject", "?"]
)
fields = st.sampled_from(
    ["t", "v", "instance_id", "version", "grants", "pairing_secret", "software", "sent_at_ms",
     "code", "message", "reason", "identity", "ephemeral", "nonce", "kem_ek", "kem_ct", "sig"]
)  # fmt: skip
structured = st.builds(
    lambda t, extra: msgspec.msgpack.encode({"t": t, **extra}),
    tags,
    st.dictionaries(fields, msgpack_values, max_size=6),
)
frames = st.binary(max_size=2048) | structured


@settings(max_examples=400, deadline=None)
@given(frames)
def test_decoders_raise_only_protocol_error(data: bytes) -> None:
    for fn in (decode, decode_handshake):
        try:
            fn(data)
        except ProtocolError:
            pass
    peek_version(data)  # never raises at all


async def _run_channel_fuzz(frames_in: list[bytes], mutate: list[int]) -> None:
    ci, cr, ta, _ = await handshake()
    # Make some genuine frames without delivering them, mutate some, mix in random ones.
    ta.rewrite = lambda i, f: None
    for i, flip in enumerate(mutate):
        await ci.send(f"genuine {i}".encode())
        genuine = ta.sent[-1]
        if flip:
            pos = flip % len(genuine)
            genuine = genuine[:pos] + bytes([genuine[pos] ^ (flip % 255 + 1)]) + genuine[pos + 1 :]
        frames_in.insert(i % (len(frames_in) + 1), genuine)
    ta.rewrite = None
    dead = False
    for frame in frames_in:
        await ta.inner.send(frame)
        try:
            got = await asyncio.wait_for(cr.recv(), STEP)
        except ChannelError:
            dead = True
            assert cr.closed
        else:
            assert not dead
            assert got.startswith(b"genuine ")
    if dead:
        with pytest.raises(ChannelClosedError):
            await asyncio.wait_for(cr.recv(), STEP)
        with pytest.raises(ChannelClosedError):
            await cr.send(b"x")


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.lists(st.binary(max_size=200) | structured, max_size=5),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=4),
)
def test_channel_survives_random_frames(frames_in: list[bytes], mutate: list[int]) -> None:
    """Random and mutated frames at a live channel: our errors or genuine data, no hangs."""
    asyncio.run(asyncio.wait_for(_run_channel_fuzz(list(frames_in), mutate), 30))


async def _run_handshake_fuzz(frames_in: list[bytes], as_responder: bool) -> None:
    a, b = memory_pipe()
    for frame in frames_in:
        await a.send(frame)
    a.close()
    try:
        if as_responder:
            await respond(BOB, b.send, b.recv, handshake_timeout=STEP)
        else:
            await initiate(
                ALICE, b.send, b.recv, expected_key_id=BOB.key_id, handshake_timeout=STEP
            )
    except HandshakeError:
        return
    raise AssertionError("a handshake with a random peer must not succeed")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=1500) | structured, max_size=4), st.booleans())
def test_handshake_survives_random_frames(frames_in: list[bytes], as_responder: bool) -> None:
    asyncio.run(asyncio.wait_for(_run_handshake_fuzz(frames_in, as_responder), 30))


def test_channel_module_exports() -> None:
    for name in channel_mod.__all__:
        assert hasattr(channel_mod, name), name
    for name in protocol.__all__:
        assert hasattr(protocol, name), name
