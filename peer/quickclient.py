"""The admin client of the commands that must answer at once (``peerstash status``).

Importing aiohttp takes several times as long as starting Python, and asyncio (which pulls in
``ssl`` and ``concurrent.futures``) about as long again; a one-request command needs neither.
:class:`QuickAdminClient` sends one HTTP/1.1 request over the node's Unix socket with blocking
:mod:`socket` calls and reads the JSON answer, with a deadline on the connect and on the
answer. It keeps every check and every error of :class:`~peerstash.peer.cli.AdminClient`
(the socket is checked before a byte is sent; "no node is running" names a system node), so
the user sees the same output either way.

Its coroutines never suspend: :func:`run_to_end` runs a command's handler without an event loop.
That is why this client must never be used on a running event loop (the tray, the node): its
socket calls block. It cannot stream (``--wait``, ``--follow``); those commands use
:class:`~peerstash.peer.cli.AdminClient`.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from peerstash.peer.cli import AdminClient, CliError

#: Seconds to wait for the node to accept the connection (aiohttp's ``sock_connect`` in the
#: full client) and for its whole answer; a status that takes longer than this is a node stuck.
CONNECT_TIMEOUT = 10.0
ANSWER_TIMEOUT = 60.0
#: An answer larger than this is not one the admin API sends to these commands.
MAX_ANSWER = 64 * 1024 * 1024

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
    """:class:`AdminClient` for one-request commands, without aiohttp or asyncio."""

    async def __aenter__(self) -> QuickAdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if not self.socket.exists():
            raise self._not_running()
        self.check_socket()
        status, raw = self._exchange(method, path, body)
        text = raw.strip()
        try:
            data = json.loads(text) if text else None
        except ValueError:
            raise CliError(f"the node answered HTTP {status} with something not JSON") from None
        if status >= 400:
            msg = data.get("error") if isinstance(data, dict) else None
            raise CliError(msg or f"the node answered HTTP {status}")
        return data

    def stream(self, path: str) -> AsyncIterator[dict[str, Any]]:
        raise RuntimeError("QuickAdminClient cannot stream; use AdminClient")

    def _exchange(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, bytes]:
        """Send one request; return the HTTP status and the (de-chunked) body."""
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
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECT_TIMEOUT)
            try:
                sock.connect(str(self.socket))
            except (FileNotFoundError, ConnectionRefusedError):
                raise self._not_running() from None
            except TimeoutError:
                raise CliError(
                    f"the node did not accept the connection within {CONNECT_TIMEOUT:.0f} s "
                    "(is it stuck?)"
                ) from None
            sock.settimeout(ANSWER_TIMEOUT)
            try:
                sock.sendall(request)
                answer = _read_all(sock)
            except TimeoutError:
                raise CliError(
                    f"the node did not answer within {ANSWER_TIMEOUT:.0f} s (is it stuck?)"
                ) from None
            except (ConnectionResetError, BrokenPipeError):
                raise _closed() from None
        return parse_response(answer)


def _read_all(sock: socket.socket) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        part = sock.recv(65536)
        if not part:
            return b"".join(parts)
        size += len(part)
        if size > MAX_ANSWER:
            raise CliError("the node's answer is too large")
        parts.append(part)


def _closed() -> CliError:
    return CliError("the node closed the connection (did it stop?)")


def parse_response(answer: bytes) -> tuple[int, bytes]:
    """The status and body of a whole HTTP/1.1 response (``Content-Length`` or chunked);
    a response cut short is "the node closed the connection", as in the full client."""
    head, sep, rest = answer.partition(b"\r\n\r\n")
    if not sep:
        raise _closed()
    lines = head.decode("latin-1").split("\r\n")
    version, _, tail = lines[0].partition(" ")
    code = tail[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise CliError("the node's answer is not HTTP")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return int(code), _dechunk(rest)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or len(rest) < int(length):
            raise _closed()
        rest = rest[: int(length)]
    return int(code), rest


def _dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            raise _closed()
        size_text = data[pos:end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise CliError("the node's answer is not HTTP") from None
        if size == 0:
            return b"".join(out)
        start = end + 2
        if len(data) < start + size + 2:
            raise _closed()
        out.append(data[start : start + size])
        pos = start + size + 2
