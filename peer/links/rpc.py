"""Requests over a peer link: one side calls a method, the other answers, once or streaming.

Config reads and writes, remote commands and on-demand logs are all "ask the peer, get an
answer"; this module is that one mechanism, so each feature only registers its methods.

* **Grants are checked where the data lives.** Each method names the grant it needs; the
  answering side checks the caller holds it (``Grants.allows_any``) before the handler runs,
  and the handler checks the scope of the exact repo or plan (:meth:`CallContext.require`).
* **The link never blocks on a call.** Handlers run as tasks of their own, at most
  ``max_in_flight`` per link (more are answered ``busy``); the read loop only routes frames.
* **Streams never time out while data flows.** A caller's wait is bounded by *silence*, not
  by total time: every chunk restarts the clock. Sending is paced by the link itself (a send
  waits for the socket), so a slow caller slows the answerer instead of filling memory.
* **An answer cannot fill our memory.** :meth:`RpcService.call` gathers at most
  ``MAX_REPLY_BYTES`` (counted as msgpack), ``MAX_REPLY_CHUNKS`` chunks and ``MAX_REPLY_ITEMS``
  items; a peer that sends more fails the call with a clear error, and the call is cancelled
  on the peer (what it still sends is dropped as it arrives). :meth:`RpcService.stream` hands
  items on as they come, and at most ``QUEUED_FRAMES`` frames wait for a slow consumer: then
  the link's read loop waits too (the peer's sends wait on the socket), for at most the call's
  silence, after which the call fails rather than the queue growing.
* **A dropped link fails every call on it at once** with :class:`PeerUnavailable`, and the
  answerer cancels the handlers of calls it can no longer answer.
* **Errors are words, not tracebacks.** A handler raises :class:`CallError` (or a core
  ``EngineError`` / ``NotFound``, whose messages are written for people) to answer with a
  reason; anything else is logged on the answering side and reported as an internal error,
  so no detail (a path, a secret) leaks to the peer by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from peerstash.core.engine import EngineError
from peerstash.core.ids import new_ulid
from peerstash.core.store import NotFound
from peerstash.peer.links import channel as ch
from peerstash.peer.links import protocol as proto
from peerstash.peer.links.link import Link, PeerManager
from peerstash.peer.trust.permissions import Grants

log = logging.getLogger(__name__)
_encoder = msgspec.msgpack.Encoder()

#: Calls one peer may have running here at once.
MAX_IN_FLIGHT = 16
#: Items per ReplyChunk when a handler streams (well under the frame limit for listings).
CHUNK_ITEMS = 500
#: How long a caller waits for the first or next frame of an answer by default.
DEFAULT_SILENCE = 30.0
#: Most bytes (as msgpack on the wire) of the chunks one :meth:`RpcService.call` gathers. A
#: single ``Reply`` is already bounded by the frame limit.
MAX_REPLY_BYTES = 8 * 1024 * 1024
#: Most chunks, and most items in all, one :meth:`RpcService.call` gathers (many tiny items
#: cost far more memory here than bytes on the wire).
MAX_REPLY_CHUNKS = 4096
MAX_REPLY_ITEMS = 200_000
#: Frames of one answer that may wait for its consumer before the link's read loop waits.
QUEUED_FRAMES = 8
#: The code of a call that failed because the answer was over the limits (a local code).
TOO_LARGE = "too_large"

Result = Any
Handler = Callable[["CallContext", Mapping[str, Any]], Awaitable[Result] | AsyncIterator[Any]]


class CallError(Exception):
    """A call failed for a reason a person can act on (``code`` from :class:`proto.ErrorCode`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PeerUnavailable(CallError):
    """The peer is not linked now, or the link dropped before it answered."""

    def __init__(self, message: str) -> None:
        super().__init__("unavailable", message)


class ReplyTooLarge(CallError):
    """The peer's answer was over what a non-streamed call gathers; the call was cancelled."""

    def __init__(self, message: str) -> None:
        super().__init__(TOO_LARGE, message)


class CallTimeout(CallError):
    """The peer said nothing for longer than the caller was willing to wait."""

    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)


@dataclass
class CallContext:
    """What a handler knows about the call: who asked and what they were granted here."""

    peer_id: str
    grants: Grants
    link: Link
    method: str

    def require(self, grant: str, *, repo: str | None = None, plan: str | None = None) -> None:
        """Refuse (``forbidden``) unless our grant to the caller covers this repo or plan."""
        if not self.grants.allows(grant, repo=repo, plan=plan):
            what = f"repository {repo!r}" if repo else f"plan {plan!r}" if plan else "this"
            raise CallError(
                proto.ErrorCode.FORBIDDEN,
                f"{self.peer_id} has no {grant!r} grant for {what} here",
            )


@dataclass
class _Method:
    handler: Handler
    grant: str | None


@dataclass
class _Waiting:
    """A call we made, waiting for its answer."""

    link: Link
    silence: float = DEFAULT_SILENCE
    frames: asyncio.Queue[proto.Reply | proto.ReplyChunk] = field(
        default_factory=lambda: asyncio.Queue(QUEUED_FRAMES)
    )
    #: Set when the call failed while its frames were being routed (a consumer too slow).
    failed: CallError | None = None


def arg(args: Mapping[str, Any], name: str, kind: type | tuple[type, ...] = str, **opt: Any) -> Any:
    """``args[name]`` checked against ``kind``; ``default=`` makes it optional.

    A wrong or missing argument is the caller's fault: ``bad_request``, never a crash.
    """
    if name not in args or args[name] is None:
        if "default" in opt:
            return opt["default"]
        raise CallError(proto.ErrorCode.BAD_REQUEST, f"argument {name!r} is missing")
    value = args[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise CallError(proto.ErrorCode.BAD_REQUEST, f"argument {name!r} has the wrong type")
    return value


class RpcService:
    """Calls out to peers and answers their calls, on every link of one node."""

    def __init__(self, manager: PeerManager, *, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.manager = manager
        self.max_in_flight = max_in_flight
        self._methods: dict[str, _Method] = {}
        self._waiting: dict[str, _Waiting] = {}
        #: Handlers running for each link (by link object: a replaced link's calls end).
        self._serving: dict[Link, dict[str, asyncio.Task[None]]] = {}
        self._watches: set[asyncio.Future[None]] = set()
        self._attach()

    def _attach(self) -> None:
        self.manager.add_handler(
            self._on_message, proto.Call, proto.Reply, proto.ReplyChunk, proto.CallCancel
        )

    def register(self, method: str, handler: Handler, *, grant: str | None) -> None:
        """Offer ``method`` to peers holding ``grant`` (None: any paired peer).

        ``handler(ctx, args)`` returns the result, or is an async generator whose items are
        streamed to the caller.
        """
        if method in self._methods:
            raise ValueError(f"method {method!r} is already registered")
        self._methods[method] = _Method(handler, grant)

    async def stop(self) -> None:
        for watch in list(self._watches):
            watch.cancel()
        for calls in list(self._serving.values()):
            for task in list(calls.values()):
                task.cancel()
        for calls in list(self._serving.values()):
            for task in list(calls.values()):
                with contextlib.suppress(BaseException):
                    await task
        self._serving.clear()

    # -- calling -----------------------------------------------------------------------------

    def _link(self, peer_id: str) -> Link:
        link = self.manager.links.get(peer_id)
        if link is None or link.closed.is_set():
            raise PeerUnavailable(f"peer {peer_id} is not connected now")
        return link

    async def call(
        self,
        peer_id: str,
        method: str,
        args: Mapping[str, Any] | None = None,
        *,
        silence: float = DEFAULT_SILENCE,
        max_bytes: int = MAX_REPLY_BYTES,
    ) -> Any:
        """Ask ``peer_id`` and return its answer (a streamed answer is returned as a list).

        An answer over ``max_bytes`` (or :data:`MAX_REPLY_CHUNKS` chunks, or
        :data:`MAX_REPLY_ITEMS` items) raises :class:`ReplyTooLarge` and cancels the call;
        use :meth:`stream` for answers that may be long.
        """
        items: list[Any] = []
        result: Any = None
        size = chunks = 0
        async with contextlib.aclosing(self._exchange(peer_id, method, args, silence)) as frames:
            async for chunk, final in frames:
                if chunk is None:
                    result = final
                    continue
                chunks += 1
                size += len(_encoder.encode(chunk))
                if (
                    size > max_bytes
                    or chunks > MAX_REPLY_CHUNKS
                    or len(items) + len(chunk) > MAX_REPLY_ITEMS
                ):
                    raise ReplyTooLarge(
                        f"peer {peer_id} sent a reply larger than {_size(max_bytes)} "
                        f"(or over {MAX_REPLY_CHUNKS} chunks or {MAX_REPLY_ITEMS} items) to "
                        f"{method}; the call was cancelled"
                    )
                items.extend(chunk)
        return items if items else result

    async def stream(
        self,
        peer_id: str,
        method: str,
        args: Mapping[str, Any] | None = None,
        *,
        silence: float = DEFAULT_SILENCE,
    ) -> AsyncIterator[Any]:
        """Ask ``peer_id`` and yield the items of its streamed answer as they arrive.

        Nothing is gathered here: the consumer's pace is the peer's (see the module notes).
        """
        async with contextlib.aclosing(self._exchange(peer_id, method, args, silence)) as frames:
            async for chunk, _ in frames:
                for item in chunk or ():
                    yield item

    async def _exchange(
        self,
        peer_id: str,
        method: str,
        args: Mapping[str, Any] | None,
        silence: float,
    ) -> AsyncGenerator[tuple[tuple[Any, ...] | None, Any], None]:
        """Yields ``(items, None)`` per chunk, then ``(None, result)`` once at the end."""
        link = self._link(peer_id)
        call_id = new_ulid()
        waiting = _Waiting(link, silence)
        self._waiting[call_id] = waiting
        finished = False
        try:
            try:
                await link.send(proto.Call(id=call_id, method=method, args=dict(args or {})))
            except (ch.ChannelError, ConnectionError, RuntimeError) as exc:
                raise PeerUnavailable(f"peer {peer_id} went away: {exc}") from None
            while True:
                frame = await self._next(waiting, peer_id, method, silence)
                if isinstance(frame, proto.ReplyChunk):
                    yield frame.items, None
                    continue
                finished = True
                if frame.code is not None:
                    raise CallError(frame.code, frame.error or f"{method} failed on {peer_id}")
                yield None, frame.result
                return
        finally:
            self._waiting.pop(call_id, None)
            # A read loop waiting for room in this queue (see _route) must not wait for a
            # consumer that left: what is queued is dropped, and so is what still comes.
            waiting.failed = waiting.failed or PeerUnavailable("the call ended")
            while not waiting.frames.empty():
                waiting.frames.get_nowait()
            if not finished and not link.closed.is_set():
                with contextlib.suppress(Exception):
                    await link.send(proto.CallCancel(id=call_id))

    async def _next(
        self, waiting: _Waiting, peer_id: str, method: str, silence: float
    ) -> proto.Reply | proto.ReplyChunk:
        if waiting.failed is not None:
            raise waiting.failed
        get = asyncio.ensure_future(waiting.frames.get())
        closed = asyncio.ensure_future(waiting.link.closed.wait())
        try:
            done, _ = await asyncio.wait(
                {get, closed}, timeout=silence, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            closed.cancel()
            if not get.done():
                get.cancel()
        if get in done:
            return get.result()
        if closed in done:
            why = waiting.link.close_reason or "closed"
            raise PeerUnavailable(f"the link to {peer_id} dropped before it answered ({why})")
        raise CallTimeout(f"{peer_id} did not answer {method} within {silence:g}s")

    # -- answering ---------------------------------------------------------------------------

    async def _on_message(self, link: Link, msg: proto.Message) -> None:
        if isinstance(msg, proto.Reply | proto.ReplyChunk):
            waiting = self._waiting.get(msg.id)
            if waiting is not None and waiting.link is link and waiting.failed is None:
                await self._route(waiting, msg)
            return
        if isinstance(msg, proto.CallCancel):
            task = self._serving.get(link, {}).get(msg.id)
            if task is not None:
                task.cancel()
            return
        if isinstance(msg, proto.Call):
            if link not in self._serving:
                self._serving[link] = {}
                watch = asyncio.ensure_future(self._forget_link(link))
                self._watches.add(watch)
                watch.add_done_callback(self._watches.discard)
            calls = self._serving[link]
            if msg.id in calls:
                return  # a duplicate id: the first call answers
            if len(calls) >= self.max_in_flight:
                await self._reply(
                    link,
                    msg.id,
                    code=proto.ErrorCode.BUSY,
                    error=f"too many requests in flight (at most {self.max_in_flight})",
                )
                return
            task = asyncio.create_task(self._serve(link, msg), name=f"rpc:{msg.method}")
            calls[msg.id] = task
            call_id = msg.id

            def done(_: asyncio.Task[None]) -> None:
                calls.pop(call_id, None)

            task.add_done_callback(done)

    async def _route(self, waiting: _Waiting, msg: proto.Reply | proto.ReplyChunk) -> None:
        """Hand a frame to its caller; a full queue pauses the link (bounded by silence)."""
        try:
            waiting.frames.put_nowait(msg)
            return
        except asyncio.QueueFull:
            pass
        try:
            await asyncio.wait_for(waiting.frames.put(msg), waiting.silence)
        except TimeoutError:
            waiting.failed = CallTimeout(
                f"the answer from {waiting.link.peer_id} was not read for {waiting.silence:g}s; "
                "the call was cancelled"
            )

    async def _forget_link(self, link: Link) -> None:
        """When a link ends, its calls can no longer be answered: stop them."""
        await link.closed.wait()
        calls = self._serving.pop(link, {})
        for task in list(calls.values()):
            task.cancel()

    async def _serve(self, link: Link, msg: proto.Call) -> None:
        method = self._methods.get(msg.method)
        if method is None:
            await self._reply(
                link,
                msg.id,
                code=proto.ErrorCode.UNKNOWN_METHOD,
                error=f"this peer does not offer {msg.method!r} (it may run an older version)",
            )
            return
        try:
            grants = await self._grants_of(link.peer_id)
            if method.grant is not None and not grants.allows_any(method.grant):
                raise CallError(
                    proto.ErrorCode.FORBIDDEN,
                    f"{link.peer_id} has no {method.grant!r} grant here",
                )
            ctx = CallContext(peer_id=link.peer_id, grants=grants, link=link, method=msg.method)
            out = method.handler(ctx, msg.args)
            if inspect.isasyncgen(out):
                await self._stream_out(link, msg.id, out)
                return
            assert inspect.isawaitable(out)
            result = await out
        except asyncio.CancelledError:
            raise
        except CallError as exc:
            await self._reply(link, msg.id, code=exc.code, error=exc.message)
            return
        except NotFound as exc:
            await self._reply(link, msg.id, code=proto.ErrorCode.NOT_FOUND, error=str(exc))
            return
        except EngineError as exc:
            await self._reply(link, msg.id, code=proto.ErrorCode.FAILED, error=str(exc))
            return
        except Exception:
            log.exception("answering %s from %s failed", msg.method, link.peer_id)
            await self._reply(
                link,
                msg.id,
                code=proto.ErrorCode.INTERNAL,
                error=f"{msg.method} failed on the peer (its log says why)",
            )
            return
        await self._reply(link, msg.id, result=result)

    async def _stream_out(self, link: Link, call_id: str, items: AsyncIterator[Any]) -> None:
        batch: list[Any] = []
        async for item in items:
            batch.append(item)
            if len(batch) >= CHUNK_ITEMS:
                await _send_whole(link, proto.ReplyChunk(id=call_id, items=tuple(batch)))
                batch = []
        if batch:
            await _send_whole(link, proto.ReplyChunk(id=call_id, items=tuple(batch)))
        await self._reply(link, call_id)

    async def _reply(self, link: Link, call_id: str, **fields: Any) -> None:
        if "error" in fields and fields["error"] is not None:
            fields["error"] = str(fields["error"])[:2000]
        with contextlib.suppress(ch.ChannelError, ConnectionError, RuntimeError):
            await _send_whole(link, proto.Reply(id=call_id, **fields))

    async def _grants_of(self, peer_id: str) -> Grants:
        try:
            peer = await self.manager.store.get_peer(peer_id)
        except NotFound:
            return Grants.none()
        return Grants.stored(peer.grants, whose=f"the grants stored for {peer_id}")


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB" if n >= 1024 * 1024 else f"{n} bytes"


async def _send_whole(link: Link, msg: proto.Message) -> None:
    """Send ``msg`` even if the handler is cancelled meanwhile (the caller's CallCancel).

    A send cancelled halfway kills the channel (the frame may be half-written), so one call's
    cancel would drop the whole link; shielded, the frame goes out whole (when the socket has
    room) and the handler stops right after.
    """
    await asyncio.shield(link.send(msg))
