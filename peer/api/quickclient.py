"""The admin client of the commands that must start at once (``status``, ``backup --wait``).

Importing aiohttp takes several times as long as starting Python, and asyncio (which pulls in
``ssl`` and ``concurrent.futures``) about as long again; a command that makes one request, or
one request and then follows one NDJSON stream, needs neither. :class:`QuickAdminClient` speaks
HTTP/1.1 over the node's Unix socket with blocking :mod:`socket` calls, one connection per
request, with a deadline on the connect and on every read (a stream's node sends a keep-alive
line every 15 s, so a silent minute means a stuck node). It is the other transport of the one
admin client (:mod:`peerstash.peer.api.client`): the socket checks, the error type and the
wording of every refusal and failure are that module's, so the user sees the same output
either way.

Its coroutines never suspend: :func:`run_to_end` runs a command's handler without an event loop.
That is why this client must never be used on a running event loop (the tray, the node): its
socket calls block.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator
from typing import Any, BinaryIO, TypeVar

from peerstash.peer.api.client import (
    CONNECT_TIMEOUT,
    MAX_ANSWER,
    AdminClient,
    AdminError,
    Body,
    answer,
    closed,
    ndjson_line,
    not_accepted,
    not_answered,
    not_http,
    payload,
    refusal,
    silent,
    too_large,
)

#: Seconds to wait for each read of the node's answer (a stream sends a keep-alive every 15 s).
READ_TIMEOUT = 60.0

T = TypeVar("T")


def run_to_end(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (all it awaits is :class:`QuickAdminClient`) to its
    result, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a quick command awaited something that needs an event loop")


class QuickAdminClient(AdminClient):
    """:class:`AdminClient` without aiohttp or asyncio, for commands run by :func:`run_to_end`."""

    async def __aenter__(self) -> QuickAdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def call(self, method: str, path: str, body: Body = None) -> Any:
        with self._request(method, path, payload(body)) as reply:
            status, headers = reply.head()
            raw = b"".join(reply.body(headers))
        return answer(status, raw)

    async def stream(
        self,
        path: str,
        on_open: Callable[[], None] | None = None,
        *,
        idle_timeout: float | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Yield NDJSON objects from a streaming endpoint (keep-alive ``{}`` lines skipped);
        ``on_open`` and ``idle_timeout`` as in :meth:`AdminClient.stream` (without
        ``idle_timeout`` every read has the :data:`READ_TIMEOUT` deadline)."""
        with self._request("GET", path, None) as reply:
            status, headers = reply.head()
            if status >= 400:
                raise refusal(status, b"".join(reply.body(headers)))
            if on_open is not None:
                on_open()
            if idle_timeout is not None:
                reply.sock.settimeout(idle_timeout)
                reply.on_deadline = lambda: silent(path, idle_timeout)
            pending = b""
            for piece in reply.body(headers):
                pending += piece
                *lines, pending = pending.split(b"\n")
                if len(pending) > MAX_ANSWER:
                    raise too_large()
                for line in lines:
                    obj = ndjson_line(line)
                    if obj:
                        yield obj
            obj = ndjson_line(pending)
            if obj:
                yield obj

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> _Answer:
        """Connect (after :meth:`~AdminClient.check_socket`) and send one request."""
        self.check_socket()
        payload = b"" if body is None else json.dumps(body).encode()
        head = [
            f"{method} {path} HTTP/1.1",
            "Host: node",
            "Connection: close",
            "Accept: application/json",
            f"Content-Length: {len(payload)}",
        ]
        if body is not None:
            head.append("Content-Type: application/json")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # A Unix socket's connect waits only while the node's queue of connections is
            # full, and Python's own timeout does not cover that wait (it gives EAGAIN at
            # once): a blocking connect with a send deadline lets the kernel wait, up to it.
            seconds, fraction = divmod(CONNECT_TIMEOUT, 1.0)
            timeval = struct.pack("@ll", int(seconds), int(fraction * 1_000_000))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
            try:
                sock.connect(str(self.socket))
            except (FileNotFoundError, ConnectionRefusedError):
                raise self.not_running() from None
            except (BlockingIOError, TimeoutError):
                raise not_accepted() from None
            sock.settimeout(READ_TIMEOUT)
            reply = _Answer(sock)
            with _socket_errors(_no_answer):
                sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        except BaseException:
            sock.close()
            raise
        return reply


def _no_answer() -> AdminError:
    return not_answered(READ_TIMEOUT)


@contextlib.contextmanager
def _socket_errors(on_deadline: Callable[[], AdminError]) -> Iterator[None]:
    """Turn the socket's own errors into the one-line errors of :mod:`.client`."""
    try:
        yield
    except TimeoutError:
        raise on_deadline() from None
    except (ConnectionResetError, BrokenPipeError):
        raise closed() from None


class _Answer:
    """One HTTP/1.1 response read from a blocking socket: its head, then its body in pieces
    (``Content-Length``, chunked, or up to the end of the connection)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file: BinaryIO = sock.makefile("rb")
        #: The error when a read misses its deadline.
        self.on_deadline: Callable[[], AdminError] = _no_answer

    def __enter__(self) -> _Answer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
        self.sock.close()

    def _line(self) -> bytes:
        with _socket_errors(self.on_deadline):
            line = self.file.readline(65536)
        if not line.endswith(b"\n"):
            raise closed() if len(line) < 65536 else not_http()
        return line

    def head(self) -> tuple[int, dict[str, str]]:
        """The status code and the headers (names in lower case)."""
        version, _, rest = self._line().decode("latin-1").partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise not_http()
        headers: dict[str, str] = {}
        for _ in range(100):
            line = self._line().decode("latin-1").strip()
            if not line:
                return int(code), headers
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        raise not_http()

    def _exactly(self, size: int) -> bytes:
        with _socket_errors(self.on_deadline):
            data = self.file.read(size)
        if len(data) < size:
            raise closed()
        return data

    def body(self, headers: dict[str, str]) -> Iterator[bytes]:
        """The body's bytes as they arrive."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size_text = self._line().split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise not_http() from None
                if size == 0:
                    return
                if size > MAX_ANSWER:
                    raise too_large()
                data = self._exactly(size + 2)
                yield data[:-2]
        elif "content-length" in headers:
            length = headers["content-length"]
            if not length.isdigit() or int(length) > MAX_ANSWER:
                raise not_http()
            yield self._exactly(int(length))
        else:
            with _socket_errors(self.on_deadline):
                data = self.file.read(MAX_ANSWER + 1)
            if len(data) > MAX_ANSWER:
                raise too_large()
            yield data
