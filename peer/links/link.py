"""Peer links: one encrypted WebSocket per pair of peers, kept alive and healed.

The side that holds the token (a *known host* entry) dials; the other side (which lists the
dialer as an *authorized client*) answers at ``/v1/sync``. Either way, once the handshake and
Hello/Welcome are done, a :class:`Link` runs the same loop: a heartbeat every
``heartbeat`` seconds, and the link is declared dead after ``offline_after`` seconds without any
frame. The dialer then reconnects with exponential backoff and jitter.

Every step of a dial has a deadline: the TCP connect, TLS and HTTP upgrade together
(``dial_timeout``), the handshake (``handshake_timeout``) and Hello/Welcome (the same again), so
a listener that accepts and then says nothing (a frozen process behind a port forwarder) costs a
failed attempt, never a dial that hangs for ever. ``peer check`` restarts a dial in progress.
The backoff starts over whenever a handshake completes, and while the peer was reachable within
the last ``recent_for`` seconds it grows to ``backoff_max_recent`` at most, so a flaky hour does
not hold a healed path down for minutes.

The answering side bounds what a client that has not authenticated can hold: its first
handshake frame must come within ``first_frame_timeout``, waiting for one of the 64 handshake
slots (the handshake's CPU work is bounded by them) is limited to ``handshake_queue_wait``, and
a source that failed too often (bad tokens, unknown keys without a token) is refused before the
handshake's work unless it presents a known peer's key. Connection counts and the header
deadline live in :mod:`peerstash.peer.links.guard`.

States a person sees (persisted on the peer row and published as :class:`LinkStateChanged`):
``online``, ``connecting``, ``offline``, ``unreachable`` (many failures in a row) and
``auth failed`` (with the reason the other side gave).

Removing a peer (:meth:`PeerManager.remove`) *revokes* it: the peer is told on its live link
(an ``Error`` with code ``revoked``), and its key is remembered for :data:`REMOVED_MEMORY` so a
later dial is refused with the same code rather than as a stranger. The side that is told
shows ``auth failed`` with the reason ``removed by <who>`` (worded here from the authenticated
link, never from the peer's text) and stops dialing until it is paired again or removed.
What came from the removed peer (shared repositories, history, requests) is cleaned up by
the services on the links, each from its :meth:`PeerManager.add_peer_removed` hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from peerstash.core import __version__
from peerstash.core.events import Event, EventBus, Notice
from peerstash.core.models import Peer
from peerstash.core.store import KeyConflict, NotFound, Store, StoreError, TokenRefused, utcnow
from peerstash.peer.links import channel as ch
from peerstash.peer.links import protocol as proto
from peerstash.peer.links.guard import mark_authenticated
from peerstash.peer.trust.identity import Identity, key_id
from peerstash.peer.trust.permissions import Grants
from peerstash.peer.trust.tokens import (
    RateLimiter,
    TokenFormatError,
    hash_secret,
    token_id,
    validate_instance_id,
    verify_secret,
)

if TYPE_CHECKING:
    from peerstash.peer.links.discovery import DiscoveredPeer, Discovery

log = logging.getLogger(__name__)

ONLINE = "online"
CONNECTING = "connecting"
OFFLINE = "offline"
UNREACHABLE = "unreachable"
AUTH_FAILED = "auth failed"
#: Start of the ``state_reason`` of a peer that removed us (with ``auth failed``): its dialer
#: stops and stays stopped, also across restarts, until the peer is paired again.
REMOVED_BY = "removed by "

#: Setting holding the key ids of peers removed here: ``{key_id: {"id": ..., "at": iso}}``.
REMOVED_SETTING = "removed_peer_keys"
#: How long a removed peer's key is remembered (its dials are refused as ``revoked``), and
#: how many keys at most (the oldest are forgotten first; then it is refused as unknown).
REMOVED_MEMORY = timedelta(days=90)
REMOVED_MAX = 1000

#: How long a closing WebSocket waits for the other side's close frame.
CLOSE_TIMEOUT = 1.0


@dataclass(frozen=True)
class LinkStateChanged(Event):
    topic: str = field(init=False, default="link")
    peer_id: str = ""
    state: str = ""
    reason: str | None = None


@dataclass(frozen=True)
class Timings:
    """Link timings; tests shrink them so a whole reconnect cycle takes a second."""

    heartbeat: float = 15.0
    offline_after: float = 45.0
    backoff_min: float = 1.0
    backoff_max: float = 300.0
    #: No longer used (the backoff starts over at every completed handshake); still parsed.
    backoff_reset_after: float = 60.0
    unreachable_after: int = 5
    handshake_timeout: float = 10.0
    #: TCP connect + TLS + HTTP upgrade of one dial.
    dial_timeout: float = 10.0
    #: The answering side waits this long for a client's first handshake frame.
    first_frame_timeout: float = 5.0
    #: ... and this long for a free handshake slot before it hangs up.
    handshake_queue_wait: float = 5.0
    #: The backoff's ceiling while the peer was reachable within ``recent_for`` seconds.
    backoff_max_recent: float = 15.0
    recent_for: float = 3600.0

    @classmethod
    def parse(cls, text: str) -> Timings:
        """``heartbeat=0.5,offline_after=1.5,...`` (from ``$PEERSTASH_LINK_TIMINGS``)."""
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, raw = part.partition("=")
            if key not in cls.__dataclass_fields__:
                raise ValueError(f"unknown link timing {key!r}")
            values[key] = int(raw) if key == "unreachable_after" else float(raw)
        return cls(**values)


class PairingError(Exception):
    """Pairing failed; the message says why in words a person can act on."""


class PeerRevoked(PairingError):
    """The peer we dialed removed this node (it answered ``revoked``)."""


def is_revoked(peer: Peer) -> bool:
    """Whether ``peer`` told us it removed this node (so we do not dial it again)."""
    return peer.state == AUTH_FAILED and (peer.state_reason or "").startswith(REMOVED_BY)


@dataclass(frozen=True)
class PeerRemoved:
    """A peer was removed here; hooks clean up what came from it (see ``add_peer_removed``)."""

    peer_id: str
    #: Keep the copy of its operation history (``peer remove --keep-history``).
    keep_history: bool = False

    @property
    def reason(self) -> str:
        return f"peer {self.peer_id} was removed"


def describe_remote_error(err: proto.Error) -> str:
    """A refusal as a person reads it: what the code means, and always the peer's own reason
    when it gave one (cut to length, control characters neutralised: it is the peer's text)."""
    reasons = {
        proto.ErrorCode.BAD_TOKEN: "the pairing token was refused (wrong, expired or used up)",
        proto.ErrorCode.UNKNOWN_PEER: "the peer does not know this instance (was it removed there?)",
        proto.ErrorCode.RATE_LIMITED: "too many failed pairing attempts; try again later",
        proto.ErrorCode.VERSION: "the peer speaks another protocol version",
        proto.ErrorCode.REVOKED: "the peer removed this instance",
    }
    said = proto.clean_message(err.message).strip()
    code = proto.clean_message(err.code, 64)
    base = reasons.get(err.code)  # type: ignore[call-overload]
    if base is None:
        return f"the peer refused: {said}" if said else f"the peer refused ({code})"
    if not said or err.code == proto.ErrorCode.RATE_LIMITED:
        return str(base)
    return f"{base}: {said}"


MessageHandler = Callable[["Link", proto.Message], Awaitable[None]]


class Link:
    """One live, authenticated connection to a peer."""

    def __init__(
        self,
        manager: PeerManager,
        peer_id: str,
        chan: ch.SecureChannel,
        close_transport: Callable[[], Awaitable[Any]],
    ) -> None:
        self.manager = manager
        self.peer_id = peer_id
        self.channel = chan
        self._close_transport = close_transport
        self.last_rx = time.monotonic()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.started = time.monotonic()
        #: Set when the peer told us on this link that it removed us.
        self.revoked = False
        #: Set once :meth:`run` has returned: no message of this link is handled any more.
        self.ended = asyncio.Event()

    async def send(self, msg: proto.Message) -> None:
        await self.channel.send_msg(msg)

    async def run(self) -> str:
        """Serve the link until it ends; returns why it ended."""
        hb = asyncio.create_task(self._heartbeats())
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(
                        self.channel.recv_msg(), timeout=self.manager.timings.offline_after
                    )
                except TimeoutError:
                    return self._end(f"no frame for {self.manager.timings.offline_after:g}s")
                except proto.ProtocolError as exc:
                    with contextlib.suppress(Exception):
                        await self.send(
                            proto.Error(code=proto.ErrorCode.PROTOCOL, message=str(exc)[:500])
                        )
                    return self._end(f"malformed message from peer: {exc}")
                except ch.ChannelError as exc:
                    return self._end(str(exc) or type(exc).__name__)
                self.last_rx = time.monotonic()
                if isinstance(msg, proto.Heartbeat):
                    continue
                if isinstance(msg, proto.Close):
                    return self._end(f"closed by peer: {msg.reason}")
                if isinstance(msg, proto.Error):
                    if msg.code == proto.ErrorCode.REVOKED:
                        self.revoked = True
                        return self._end(REMOVED_BY + self.peer_id)
                    return self._end(f"peer reported an error: {msg.code}: {msg.message}")
                await self.manager.dispatch(self, msg)
        finally:
            hb.cancel()
            with contextlib.suppress(BaseException):
                await hb
            await self._shutdown()
            self.ended.set()

    def _end(self, reason: str) -> str:
        if not self.close_reason:
            self.close_reason = reason
        return self.close_reason

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.manager.timings.heartbeat)
            try:
                await self.send(proto.Heartbeat(sent_at_ms=int(time.time() * 1000)))
            except (ch.ChannelError, ConnectionError, RuntimeError):
                return

    async def close(self, reason: str) -> None:
        """Close politely (tell the peer why), then tear the transport down."""
        self._end(reason)
        if not self.channel.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.send(proto.Close(reason=reason[:500])), timeout=2)
        await self._shutdown()

    async def revoke(self, by: str) -> None:
        """Tell the peer it was removed (by ``by``, this instance), then tear down."""
        self._end("this peer was removed")
        if not self.channel.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.send(proto.Error(code=proto.ErrorCode.REVOKED, message=REMOVED_BY + by)),
                    timeout=2,
                )
        await self._shutdown()

    async def _shutdown(self) -> None:
        self.channel.close(self.close_reason or "closed")
        # A graceful WebSocket close waits for the other side's answer; a peer that went silent
        # never gives one, and its state must not wait on it.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._close_transport(), CLOSE_TIMEOUT)
        self.closed.set()


class PeerManager:
    """Owns every link of this node: the server side, the dialers, and pairing."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        identity: Identity,
        instance_id: str,
        *,
        timings: Timings | None = None,
        protocol_version: int = proto.PROTOCOL_VERSION,
        name: str | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.identity = identity
        self.instance_id = instance_id
        #: Our display name, sent in every Hello and Welcome (see :meth:`rename`).
        self.name = name or instance_id
        self.timings = timings or Timings()
        self.protocol_version = protocol_version
        self.links: dict[str, Link] = {}
        self._dialers: dict[str, _Dialer] = {}
        self._server_tasks: set[asyncio.Task[Any]] = set()
        self.limiter = RateLimiter(max_failures=5, window=60.0)
        #: Who handles which message type (see :meth:`add_handler`).
        self._handlers: dict[type[proto.Message], MessageHandler] = {}
        #: Called once a link is adopted, before its read loop starts, in the order added
        #: (operation sync sends its high-water marks from here).
        self._link_up_hooks: list[Callable[[Link], Awaitable[None]]] = []
        #: Called after a peer was removed, in the order added (see :meth:`add_peer_removed`).
        self._removed_hooks: list[Callable[[PeerRemoved], Awaitable[None]]] = []
        self._session: aiohttp.ClientSession | None = None
        self._handshakes = asyncio.Semaphore(64)
        self._closing = False
        self._wake_watch: asyncio.Task[None] | None = None
        self.discovery: Discovery | None = None

    # -- services on the links ----------------------------------------------------------------

    def add_handler(self, handler: MessageHandler, *types: type[proto.Message]) -> None:
        """Route messages of ``types`` to ``handler`` (one handler per type).

        Each service on the link (operation sync, shared repositories, requests) owns its
        message types; a type nobody handles is logged and dropped, so a newer peer's
        messages never break an older one. The handler runs in the link's read loop: it must
        hand anything slow to a task of its own.
        """
        for t in types:
            if t in self._handlers:
                raise ValueError(f"{t.__name__} already has a handler")
            self._handlers[t] = handler

    def add_link_up(self, hook: Callable[[Link], Awaitable[None]]) -> None:
        """Call ``hook(link)`` whenever a link is adopted, before its read loop starts."""
        self._link_up_hooks.append(hook)

    def add_peer_removed(self, hook: Callable[[PeerRemoved], Awaitable[None]]) -> None:
        """Call ``hook(removed)`` once a peer was removed here and its link closed: each service
        forgets what came from that peer (repositories, requests, history)."""
        self._removed_hooks.append(hook)

    async def dispatch(self, link: Link, msg: proto.Message) -> None:
        handler = self._handlers.get(type(msg))
        if handler is None:
            log.debug("no handler for %s from %s", type(msg).__name__, link.peer_id)
            return
        await handler(link, msg)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._wake_watch = asyncio.create_task(self._retry_on_wake(), name="links:wake")
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
        )
        for peer in await self.store.list_peers():
            if peer.role == "known_host":
                if not is_revoked(peer):
                    self._start_dialer(peer.id)
            elif peer.state != OFFLINE and peer.id not in self.links and not is_revoked(peer):
                # A state left from before this start; not one a peer's link set just now (the
                # peer port listens before this runs, so a peer may already be connected).
                await self._set_state(peer.id, OFFLINE, None)

    async def _retry_on_wake(self) -> None:
        """After a sleep, every dialer retries at once instead of finishing its backoff."""
        with self.bus.subscribe("wake") as sub:
            while True:
                await sub.get()
                self.wake_all()

    async def stop(self) -> None:
        self._closing = True
        if self._wake_watch is not None:
            self._wake_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._wake_watch
        for dialer in list(self._dialers.values()):
            await dialer.stop()
        self._dialers.clear()
        for link in list(self.links.values()):
            await link.close("the peer is shutting down")
        for task in list(self._server_tasks):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 5)
        if self._session is not None:
            await self._session.close()

    # -- state -------------------------------------------------------------------------------

    async def _set_state(
        self, peer_id: str, state: str, reason: str | None, *, seen: bool = False
    ) -> None:
        fields: dict[str, Any] = {"state": state, "state_reason": reason}
        if seen:
            fields["last_seen"] = utcnow()
        try:
            await self.store.update_peer(peer_id, **fields)
        except NotFound:
            return
        self.bus.publish(LinkStateChanged(peer_id=peer_id, state=state, reason=reason))

    async def _adopt(self, link: Link) -> None:
        """Make ``link`` the peer's link; a previous one is closed (newest wins)."""
        old = self.links.get(link.peer_id)
        self.links[link.peer_id] = link
        if old is not None and old is not link:
            await old.close("replaced by a newer connection")
        await self._set_state(link.peer_id, ONLINE, None, seen=True)
        for hook in self._link_up_hooks:
            await hook(link)

    async def _release(self, link: Link, reason: str) -> None:
        if self.links.get(link.peer_id) is link:
            del self.links[link.peer_id]
            if link.revoked:
                log.warning("peer %s removed this node; not connecting to it again", link.peer_id)
                await self._set_state(link.peer_id, AUTH_FAILED, reason, seen=True)
            elif not self._closing:
                await self._set_state(link.peer_id, OFFLINE, reason, seen=True)

    # -- server side -------------------------------------------------------------------------

    async def handle_ws(self, request: web.Request) -> web.StreamResponse:
        """``/v1/sync``: answer a dialing peer."""
        ws = web.WebSocketResponse(
            max_msg_size=ch.WS_MAX_MSG_SIZE, autoping=True, timeout=CLOSE_TIMEOUT
        )
        await ws.prepare(request)
        task = asyncio.current_task()
        if task is not None:
            self._server_tasks.add(task)
        try:
            await self._serve(ws, request.remote or "?", lambda: mark_authenticated(request))
        finally:
            if task is not None:
                self._server_tasks.discard(task)
            await ws.close()
        return ws

    async def _serve(
        self,
        ws: web.WebSocketResponse,
        remote: str,
        on_authenticated: Callable[[], None] | None = None,
    ) -> None:
        send, recv = ch.websocket_transport(ws)
        # An upgraded WebSocket that never speaks must not hold a handshake slot: the first
        # frame is awaited before one is taken, with a deadline of its own.
        try:
            first = await asyncio.wait_for(recv(), self.timings.first_frame_timeout)
        except (ch.ChannelError, TimeoutError) as exc:
            log.info(
                "peer link from %s sent no handshake within %gs: %s",
                remote,
                self.timings.first_frame_timeout,
                str(exc) or type(exc).__name__,
            )
            return
        if not self.limiter.allowed(remote) and not await self._claims_known_key(first):
            log.warning("refused a handshake from %s: too many failed attempts", remote)
            await self._reject_handshake(send, "too many failed attempts; try again later")
            return
        if not await _acquire(self._handshakes, self.timings.handshake_queue_wait):
            log.warning("refused a handshake from %s: every handshake slot is busy", remote)
            await self._reject_handshake(send, "too many handshakes at once; try again later")
            return
        try:
            try:
                chan = await ch.respond(
                    self.identity,
                    send,
                    _replaying(first, recv),
                    handshake_timeout=self.timings.handshake_timeout,
                    protocol_version=self.protocol_version,
                )
                hello = await asyncio.wait_for(chan.recv_msg(), self.timings.handshake_timeout)
            except (ch.ChannelError, proto.ProtocolError, TimeoutError) as exc:
                if isinstance(exc, ch.AuthError):
                    self.limiter.record_failure(remote)
                log.info("peer link from %s failed during handshake: %s", remote, exc)
                return
            if not isinstance(hello, proto.Hello):
                await _refuse(chan, proto.ErrorCode.PROTOCOL, "expected Hello")
                return
            peer = await self._authenticate(chan, hello, remote)
            if peer is None:
                return
            await chan.send_msg(
                proto.Welcome(
                    instance_id=self.instance_id,
                    grants=tuple(peer.grants),
                    software=f"peerstash {__version__}",
                    name=self.name,
                )
            )
        finally:
            self._handshakes.release()
        if on_authenticated is not None:
            on_authenticated()
        link = Link(self, peer.id, chan, ws.close)
        await self._adopt(link)
        reason = await link.run()
        await self._release(link, reason)

    async def _authenticate(
        self, chan: ch.SecureChannel, hello: proto.Hello, remote: str
    ) -> Peer | None:
        pub = chan.peer_public_key
        # The instance id becomes a key in our store and a name on screens and in logs: the
        # same rule as in tokens and discovery (no control, format or space characters), and
        # never our own (a peer claiming to be us would mix its rows with ours).
        try:
            validate_instance_id(hello.instance_id)
        except TokenFormatError as exc:
            log.warning("refused link from %s: unusable instance id (%s)", remote, exc)
            await _refuse(chan, proto.ErrorCode.PROTOCOL, f"unusable instance id: {exc}")
            return None
        if hello.instance_id == self.instance_id:
            log.warning("refused link from %s: it claims this node's own instance id", remote)
            await _refuse(
                chan,
                proto.ErrorCode.FORBIDDEN,
                f"your instance id {hello.instance_id!r} is also this node's id; two paired "
                "nodes need different ids: give one of them another --instance-id when its "
                "data directory is created",
            )
            return None
        name = hello.name
        if name is not None:
            try:
                proto.check_display_name(name)
            except ValueError as exc:
                log.warning(
                    "refused link from %s (%s): unusable name: %s", remote, hello.instance_id, exc
                )
                await _refuse(chan, proto.ErrorCode.PROTOCOL, f"your name is refused: {exc}")
                return None
        try:
            peer = await self.store.get_peer(hello.instance_id)
        except NotFound:
            peer = None
        if peer is not None and peer.public_key == pub and hello.pairing_secret is None:
            if peer.role != "authorized_client":
                await _refuse(
                    chan, proto.ErrorCode.UNKNOWN_PEER, "this node dials you, not the other way"
                )
                return None
            changes: dict[str, Any] = {}
            if list(peer.their_grants) != list(hello.grants):
                changes["their_grants"] = list(hello.grants)
            if name is not None and name != peer.name:
                changes["name"] = name  # it was renamed (or is newly telling us its name)
            if changes:
                peer = await self.store.update_peer(peer.id, **changes)
            return peer
        if hello.pairing_secret is None and await self._was_removed(key_id(pub)):
            log.warning(
                "refused link from %s (%s): key %s was removed here",
                remote,
                hello.instance_id,
                key_id(pub),
            )
            await _refuse(chan, proto.ErrorCode.REVOKED, REMOVED_BY + self.instance_id)
            return None
        if hello.pairing_secret is None:
            # A full hybrid handshake for nothing: it counts like a bad token.
            self.limiter.record_failure(remote)
            log.warning(
                "refused link from %s (%s): unknown key %s", remote, hello.instance_id, key_id(pub)
            )
            await _refuse(chan, proto.ErrorCode.UNKNOWN_PEER, "unknown instance or key")
            return None
        if not self.limiter.allowed(remote):
            await _refuse(chan, proto.ErrorCode.RATE_LIMITED, "too many failed attempts")
            return None
        secret = hello.pairing_secret
        candidate = Peer(
            id=hello.instance_id,
            public_key=pub,
            key_id=key_id(pub),
            role="authorized_client",
            url=None,
            grants=[],
            their_grants=list(hello.grants),
            state=CONNECTING,
            name=name,
        )
        try:
            await self.store.redeem_token(
                token_id(hash_secret(secret)),
                lambda stored: verify_secret(secret, stored),
                candidate,
            )
        except TokenRefused:
            self.limiter.record_failure(remote)
            log.warning("refused pairing from %s (%s): bad token", remote, hello.instance_id)
            await _refuse(chan, proto.ErrorCode.BAD_TOKEN, "")
            return None
        except KeyConflict as exc:
            # Never replaced silently: whoever holds the old key may be the real one.
            log.warning("refused pairing from %s: %s", remote, exc)
            await _refuse(chan, proto.ErrorCode.FORBIDDEN, str(exc))
            return None
        except StoreError as exc:
            await _refuse(chan, proto.ErrorCode.FORBIDDEN, str(exc))
            return None
        log.info("paired with %s (key %s) from %s", hello.instance_id, key_id(pub), remote)
        await self.forget_removed(key_id(pub))
        return await self.store.get_peer(hello.instance_id)

    async def _reject_handshake(self, send: ch.SendFn, message: str) -> None:
        """Say why, in a cleartext reject, before the handshake's work is done."""
        frame = proto.encode(
            proto.HandshakeReject(
                v=self.protocol_version, code=proto.ErrorCode.RATE_LIMITED, message=message
            ),
            max_size=proto.MAX_HANDSHAKE_FRAME_SIZE,
        )
        with contextlib.suppress(Exception):
            await send(frame)

    async def _claims_known_key(self, frame: bytes) -> bool:
        """Whether a first handshake frame names the key of a peer we know (unverified yet)."""
        try:
            init = proto.decode_handshake(frame)
        except proto.ProtocolError:
            return False
        identity = getattr(init, "identity", None)
        if not isinstance(init, proto.HandshakeInit) or identity is None:
            return False
        return any(p.public_key == identity for p in await self.store.list_peers())

    # -- dialing side ------------------------------------------------------------------------

    async def _dial(
        self,
        url: str,
        *,
        expected_key_id: str | None = None,
        expected_public_key: bytes | None = None,
        hello: proto.Hello,
    ) -> tuple[ch.SecureChannel, proto.Welcome, aiohttp.ClientWebSocketResponse]:
        assert self._session is not None
        ws_url = url.rstrip("/") + "/v1/sync"
        limit = self.timings.dial_timeout
        try:
            # Connect, TLS and the upgrade under one deadline: a listener that accepts and
            # then stays silent fails the attempt instead of holding it for ever.
            async with asyncio.timeout(limit):
                ws = await self._session.ws_connect(
                    ws_url, max_msg_size=ch.WS_MAX_MSG_SIZE, autoping=True, heartbeat=None
                )
        except TimeoutError:
            raise ConnectionError(f"cannot reach {url}: no answer within {limit:g} s") from None
        except aiohttp.WSServerHandshakeError as exc:
            raise PairingError(f"{url} is not a Peerstash peer port (HTTP {exc.status})") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionError(f"cannot reach {url}: {exc}") from None
        try:
            send, recv = ch.websocket_transport(ws)
            chan = await ch.initiate(
                self.identity,
                send,
                recv,
                expected_key_id=expected_key_id,
                expected_public_key=expected_public_key,
                handshake_timeout=self.timings.handshake_timeout,
                protocol_version=self.protocol_version,
            )
            await chan.send_msg(hello)
            try:
                reply = await asyncio.wait_for(chan.recv_msg(), self.timings.handshake_timeout)
            except TimeoutError:
                # Said in words: a bare TimeoutError reads as "failed: " or "TimeoutError".
                raise TimeoutError(
                    f"no answer to our Hello within {self.timings.handshake_timeout:g} s"
                ) from None
            if isinstance(reply, proto.Error):
                if reply.code == proto.ErrorCode.REVOKED:
                    raise PeerRevoked(describe_remote_error(reply))
                raise PairingError(describe_remote_error(reply))
            if not isinstance(reply, proto.Welcome):
                raise PairingError("the peer answered with an unexpected message")
            return chan, reply, ws
        except BaseException:
            await ws.close()
            raise

    def _hello(self, grants: list[str], secret: bytes | None = None) -> proto.Hello:
        return proto.Hello(
            instance_id=self.instance_id,
            grants=tuple(grants),
            pairing_secret=secret,
            software=f"peerstash {__version__}",
            name=self.name,
        )

    async def pair(
        self, token_text: str, url: str | None, grants: list[str], *, replace: bool = False
    ) -> Peer:
        """Dial ``url`` with a token, pin the issuer, and keep a link to it from now on.

        A peer already paired under the token's instance id with another key is never replaced
        silently: that is refused unless ``replace`` (the person says the machine was
        reinstalled), and logged either way. On a replace the old key's history stays here,
        under an archive origin (see :meth:`Store.replace_peer`).
        """
        from peerstash.peer.trust.tokens import TokenFormatError, parse_token

        try:
            token = parse_token(token_text)
        except TokenFormatError as exc:
            raise PairingError(f"that is not a pairing token: {exc}") from None
        parsed_grants = Grants.parse(grants).to_strings()
        if token.key_id == self.identity.key_id:
            raise PairingError("that token was made by this instance; use it on another one")
        if token.instance_id == self.instance_id:
            raise PairingError(
                f"that token's instance id {token.instance_id!r} is also this instance's id "
                f"(another machine, key {token.key_id}); two paired nodes need different ids: "
                "give one of them another --instance-id when its data directory is created"
            )
        try:
            existing: Peer | None = await self.store.get_peer(token.instance_id)
        except NotFound:
            existing = None
        if existing is not None and existing.key_id != token.key_id:
            msg = (
                f"instance {token.instance_id!r} is already paired with key {existing.key_id}; "
                f"this token is from key {token.key_id}; use `peer add --replace` if "
                f"{token.instance_id} was reinstalled"
            )
            if not replace:
                log.warning("refused to pair: %s", msg)
                raise PairingError(msg)
            log.warning(
                "replacing peer %s: key %s gives way to key %s (peer add --replace)",
                token.instance_id,
                existing.key_id,
                token.key_id,
            )
        if not url:
            if self.discovery is None:
                raise PairingError(
                    "LAN discovery is off here: give the issuer's address with --url"
                )
            url = await self.find_on_lan(token.instance_id, token.key_id)
            if url is None:
                raise PairingError(
                    f"{token.instance_id!r} was not found on the LAN; give its address with --url"
                )
        try:
            chan, welcome, ws = await self._dial(
                url, expected_key_id=token.key_id, hello=self._hello(parsed_grants, token.secret)
            )
        except ch.AuthError:
            raise PairingError(
                f"the node at {url} is not the one that issued this token (its key does not match "
                f"{token.key_id}); nothing was paired"
            ) from None
        except ch.VersionMismatchError as exc:
            raise PairingError(
                f"the node at {url} speaks peer protocol version {exc.theirs}, this one {exc.ours}; "
                "update the older one"
            ) from None
        except (ch.ChannelError, proto.ProtocolError, TimeoutError) as exc:
            raise PairingError(f"the secure handshake with {url} failed: {exc}") from None
        except ConnectionError as exc:
            raise PairingError(str(exc)) from None
        try:
            if welcome.instance_id != token.instance_id:
                raise PairingError(
                    f"the token names {token.instance_id!r} but the node answered as "
                    f"{welcome.instance_id!r}; nothing was paired"
                )
            if welcome.name is not None:
                try:
                    proto.check_display_name(welcome.name)
                except ValueError as exc:
                    raise PairingError(
                        f"the node at {url} gave an unusable name ({exc}); nothing was paired"
                    ) from None
            peer = Peer(
                id=welcome.instance_id,
                public_key=chan.peer_public_key,
                key_id=key_id(chan.peer_public_key),
                role="known_host",
                url=url.rstrip("/"),
                grants=parsed_grants,
                their_grants=list(welcome.grants),
                state=CONNECTING,
                name=welcome.name,
            )
            if existing is not None and existing.key_id != peer.key_id:
                await self._replace(existing, peer)
            else:
                await self.store.put_peer(peer)
            await self.forget_removed(peer.key_id)
        finally:
            with contextlib.suppress(Exception):
                await chan.send_msg(proto.Close(reason="pairing done; reconnecting"))
            await ws.close()
        self._start_dialer(peer.id, immediately=True)
        return peer

    async def _replace(self, old: Peer, peer: Peer) -> None:
        """Pin ``peer`` in place of ``old`` (same id, another key); keep old's history."""
        dialer = self._dialers.pop(old.id, None)
        if dialer is not None:
            await dialer.stop()
        link = self.links.pop(old.id, None)
        if link is not None:
            await link.close("this peer was replaced by another key")
        archive = archive_origin(old.id, old.key_id)
        kept = await self.store.replace_peer(peer, archive)
        msg = (
            f"peer {old.id!r} is now key {peer.key_id} (was {old.key_id}); "
            f"{kept} operations of the old key are kept under {archive!r}"
        )
        log.warning(msg)
        self.bus.publish(Notice(level="warning", message=msg))

    async def rename(self, name: str) -> None:
        """Go by ``name`` from now on, and let every peer know at once.

        Each link is restarted: the name travels in Hello and Welcome, so a fresh handshake is
        how every peer (of any version) learns it. Links we dial come straight back; the
        peers that dial us reconnect on their own schedule.
        """
        self.name = proto.check_display_name(name)
        for peer_id, link in list(self.links.items()):
            await link.close("renamed; reconnecting")
            self.check_now(peer_id)

    # -- discovery ---------------------------------------------------------------------------

    def on_discovered(self, found: DiscoveredPeer | None, change: str) -> None:
        """A node appeared or moved on the LAN: follow a known host to its new address.

        Only an address is learned this way; the dialer still insists on the pinned key, so a
        stranger announcing a known name gains nothing but a warning.
        """
        if found is None or change == "removed" or not found.compatible or not found.addresses:
            return
        task = asyncio.ensure_future(self._follow(found))
        self._server_tasks.add(task)
        task.add_done_callback(self._server_tasks.discard)

    async def _follow(self, found: DiscoveredPeer) -> None:
        try:
            peer = await self.store.get_peer(found.instance_id)
        except NotFound:
            return
        if peer.key_id != found.key_id:
            msg = (
                f"a node on the LAN announces itself as {peer.id!r} with key {found.key_id}, "
                f"but {peer.id!r} is paired with key {peer.key_id}; it is not trusted"
            )
            log.warning(msg)
            self.bus.publish(Notice(level="warning", message=msg))
            return
        if peer.role != "known_host":
            return
        url = f"http://{found.addresses[0]}:{found.port}"
        if peer.url == url or (peer.state == ONLINE and peer.id in self.links):
            return
        log.info("peer %s moved to %s (seen on the LAN); reconnecting", peer.id, url)
        await self.store.update_peer(peer.id, url=url)
        self.check_now(peer.id)

    async def find_on_lan(self, instance_id: str, key_id: str, within: float = 5.0) -> str | None:
        """The URL of the node that issued a token, found by its instance id and key id."""
        if self.discovery is None:
            return None
        from peerstash.peer.trust.identity import normalize_key_id

        want = normalize_key_id(key_id)
        try:
            found = await self.discovery.wait_for(
                lambda p: (
                    p.instance_id == instance_id
                    and normalize_key_id(p.key_id) == want
                    and p.compatible
                    and bool(p.addresses)
                ),
                within,
            )
        except TimeoutError:
            return None
        return f"http://{found.addresses[0]}:{found.port}"

    def _start_dialer(self, peer_id: str, *, immediately: bool = False) -> None:
        old = self._dialers.pop(peer_id, None)
        if old is not None:
            old.task.cancel()
        self._dialers[peer_id] = _Dialer(self, peer_id)

    async def set_grants(self, peer_id: str, grants: list[str]) -> Peer:
        """Replace what we grant ``peer_id``; a live link is restarted so it takes effect now.

        The reconnect runs the sync handshake again, which sends what is newly in scope and
        removes on the peer what fell out of it.
        """
        parsed = Grants.parse(grants).to_strings()
        peer = await self.store.update_peer(peer_id, grants=parsed)
        link = self.links.get(peer_id)
        if link is not None:
            await link.close("grants changed; reconnecting")
        return peer

    def check_now(self, peer_id: str) -> bool:
        dialer = self._dialers.get(peer_id)
        if dialer is None:
            return False
        dialer.wake()
        return True

    def wake_all(self) -> None:
        """Machine resumed or network changed: retry every dialer at once."""
        for dialer in self._dialers.values():
            dialer.wake()

    async def remove(self, peer_id: str, *, keep_history: bool = False) -> None:
        """Forget a peer and revoke it: its link (if any) is told and closes at once.

        Its key is remembered (:data:`REMOVED_SETTING`) before its row goes, so a dial in the
        meantime is already refused as ``revoked``; then each service's hook forgets what came
        from it (``keep_history`` keeps its operations here).
        """
        peer = await self.store.get_peer(peer_id)
        await self._remember_removed(peer)
        await self.store.delete_peer(peer_id)
        # Told before our dialer stops: the dialer serves the link we dial, and stopping it
        # first would cut the link without a word. Without its row, it does not dial again.
        link = self.links.pop(peer_id, None)
        if link is not None:
            await link.revoke(self.instance_id)
            # A message it sent just before may still be in its handler (a batch being
            # stored): let that finish, so the clean-up below is the last word.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(link.ended.wait(), self.timings.handshake_timeout)
        dialer = self._dialers.pop(peer_id, None)
        if dialer is not None:
            await dialer.stop()
        removed = PeerRemoved(peer_id=peer_id, keep_history=keep_history)
        for hook in self._removed_hooks:
            try:
                await hook(removed)
            except Exception:  # one service failing must not leave the others undone
                log.exception("cleaning up after removing peer %s failed", peer_id)
        log.info("removed peer %s (key %s)", peer_id, peer.key_id)
        self.bus.publish(LinkStateChanged(peer_id=peer_id, state="removed", reason=None))

    async def _removed_keys(self) -> dict[str, Any]:
        """The remembered keys of removed peers, without those past :data:`REMOVED_MEMORY`."""
        raw = await self.store.get_setting(REMOVED_SETTING, {})
        if not isinstance(raw, dict):
            return {}
        cutoff = utcnow() - REMOVED_MEMORY
        out: dict[str, Any] = {}
        for kid, entry in raw.items():
            try:
                at = datetime.fromisoformat(str(entry["at"]))
            except (KeyError, TypeError, ValueError):
                continue
            if at > cutoff:
                out[str(kid)] = entry
        return out

    async def _remember_removed(self, peer: Peer) -> None:
        keys = await self._removed_keys()
        keys[peer.key_id] = {"id": peer.id, "at": utcnow().isoformat()}
        if len(keys) > REMOVED_MAX:
            keep = sorted(keys, key=lambda k: str(keys[k]["at"]))[-REMOVED_MAX:]
            keys = {k: keys[k] for k in keep}
        await self.store.set_setting(REMOVED_SETTING, keys)

    async def _was_removed(self, kid: str) -> bool:
        return kid in await self._removed_keys()

    async def forget_removed(self, kid: str) -> None:
        """A removed peer was paired again: its key is welcome again."""
        raw = await self.store.get_setting(REMOVED_SETTING, {})
        if isinstance(raw, dict) and kid in raw:
            await self.store.set_setting(
                REMOVED_SETTING, {k: v for k, v in raw.items() if k != kid}
            )


#: What marks the origin under which a replaced peer's history is kept (:func:`archive_origin`).
ARCHIVE_MARK = "~key-"


def archive_origin(origin: str, old_key_id: str) -> str:
    """Where a replaced peer's history is kept: ``origin~key-XXXX``. ``~`` is not allowed in
    an instance id, so no node can ever claim (or sync into) this origin; ``peer remove`` on
    that name deletes the history."""
    return f"{origin}{ARCHIVE_MARK}{old_key_id.replace('-', '')[:8]}"[:100]


async def _refuse(chan: ch.SecureChannel, code: str, message: str) -> None:
    """Tell the dialer why it is refused (its user sees these words), then it is closed."""
    with contextlib.suppress(Exception):
        await chan.send_msg(proto.Error(code=code, message=proto.clean_message(message)))


def _usable_name(name: str | None) -> bool:
    try:
        return name is None or bool(proto.check_display_name(name))
    except ValueError:
        return False


async def _acquire(sem: asyncio.Semaphore, within: float) -> bool:
    """Take a slot of ``sem`` if one frees up within ``within`` seconds."""
    try:
        await asyncio.wait_for(sem.acquire(), within)
    except TimeoutError:
        return False
    return True


def _replaying(first: bytes, recv: Callable[[], Awaitable[bytes]]) -> ch.RecvFn:
    """``recv`` that hands out ``first`` (already read) before reading on."""
    pending = [first]

    async def replay() -> bytes:
        if pending:
            return pending.pop()
        return await recv()

    return replay


class _Dialer:
    """Keeps one known host connected: dial, serve the link, back off, repeat."""

    def __init__(self, manager: PeerManager, peer_id: str) -> None:
        self.m = manager
        self.peer_id = peer_id
        self._wake = asyncio.Event()
        self.task = asyncio.create_task(self._loop(), name=f"dial:{peer_id}")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Cancel the dialer until it has ended.

        One cancel is not always enough: ``asyncio.wait_for`` on Python 3.11 returns the
        inner result instead of raising when a frame arrives in the same moment as the cancel
        (gh-86296), and ``Link.run`` suppresses everything while it awaits its heartbeat task;
        either way the link served on, heartbeats and all, while this waited forever.
        """
        while not self.task.done():
            self.task.cancel()
            await asyncio.wait([self.task], timeout=1.0)
        if not self.task.cancelled():
            self.task.exception()  # mark it retrieved; stopping is all that was asked

    async def _still_ours(self) -> Peer | None:
        """The peer, if we still dial it; else this dialer leaves the manager's table.

        Pairing again the other way round (we redeemed the peer's token after it redeemed
        ours) turns a known host into an authorized client: it dials us now, and a dialer
        left running would show it ``offline``/``unreachable`` next to its live link.
        """
        try:
            peer = await self.m.store.get_peer(self.peer_id)
        except NotFound:
            return None
        if peer.role == "known_host":
            return peer
        if self.m._dialers.get(self.peer_id) is self:
            del self.m._dialers[self.peer_id]
        log.info("%s dials us now; this side stops dialling it", self.peer_id)
        return None

    def _recently_seen(self, peer: Peer) -> bool:
        if peer.last_seen is None:
            return False
        seen = peer.last_seen
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=UTC)
        return (utcnow() - seen).total_seconds() < self.m.timings.recent_for

    async def _dial(
        self, peer: Peer
    ) -> tuple[ch.SecureChannel, proto.Welcome, aiohttp.ClientWebSocketResponse]:
        """One dial; ``peer check`` (a wake) during it abandons it and dials again at once."""
        while True:
            self._wake.clear()
            dial = asyncio.ensure_future(
                self.m._dial(
                    peer.url or "",
                    expected_public_key=peer.public_key,
                    hello=self.m._hello(list(peer.grants)),
                )
            )
            woken = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({dial, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
                if not dial.done():
                    dial.cancel()
                    with contextlib.suppress(BaseException):
                        await dial
            if not dial.cancelled():
                return dial.result()
            log.info("dial to %s restarted on request", self.peer_id)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _loop(self) -> None:
        t = self.m.timings
        delay = t.backoff_min
        failures = 0
        while True:
            peer = await self._still_ours()
            if peer is None:
                return
            if is_revoked(peer):
                return  # it removed us: not again until paired again
            await self.m._set_state(self.peer_id, CONNECTING, None)
            state, reason = UNREACHABLE, ""
            recent_cap = min(t.backoff_max, t.backoff_max_recent)
            cap = recent_cap if self._recently_seen(peer) else t.backoff_max
            try:
                chan, welcome, ws = await self._dial(peer)
            except PeerRevoked:
                await self.m._set_state(self.peer_id, AUTH_FAILED, REMOVED_BY + self.peer_id)
                log.warning("peer %s removed this node; not connecting to it again", self.peer_id)
                return
            except (PairingError, ch.AuthError) as exc:
                state, reason = (
                    AUTH_FAILED,
                    str(exc) or "the peer's key does not match the pinned key",
                )
            except ch.VersionMismatchError as exc:
                state, reason = (
                    AUTH_FAILED,
                    f"protocol version mismatch (we {exc.ours}, they {exc.theirs})",
                )
            except (ConnectionError, ch.ChannelError, proto.ProtocolError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
            else:
                # The path works: a flaky past must not hold the next reconnect back.
                failures = 0
                delay = t.backoff_min
                if welcome.instance_id != self.peer_id:
                    await ws.close()
                    state, reason = AUTH_FAILED, f"answered as {welcome.instance_id!r}"
                elif not _usable_name(welcome.name):
                    await ws.close()
                    state, reason = AUTH_FAILED, "answered with an unusable name"
                else:
                    changes: dict[str, Any] = {"their_grants": list(welcome.grants)}
                    if welcome.name is not None:
                        changes["name"] = welcome.name  # it may have been renamed
                    with contextlib.suppress(NotFound):
                        await self.m.store.update_peer(self.peer_id, **changes)
                    link = Link(self.m, self.peer_id, chan, ws.close)
                    await self.m._adopt(link)
                    reason = await link.run()
                    await self.m._release(link, reason)
                    if link.revoked:
                        return
                    await self._pause(delay * random.uniform(0.5, 1.0))
                    delay = min(recent_cap, delay * 2)
                    continue
            if await self._still_ours() is None:
                return
            failures += 1
            shown = (
                state
                if state == AUTH_FAILED
                else (UNREACHABLE if failures >= t.unreachable_after else OFFLINE)
            )
            # A live link of the peer's own (it reached us meanwhile, e.g. it paired the other
            # way round) means online, whatever this attempt says: checked right before the
            # write, so an "offline" can never land after the link's "online".
            if self.peer_id not in self.m.links:
                await self.m._set_state(self.peer_id, shown, reason)
            await self._pause(min(delay, cap) * random.uniform(0.5, 1.0))
            delay = min(cap, delay * 2)
