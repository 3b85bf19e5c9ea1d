"""The admin client of the commands that must start at once (``status``, ``backup --wait``).

Importing aiohttp takes several times as long as starting Python, and asyncio (which pulls in
``ssl`` and ``concurrent.futures``) about as long again; a command that makes one request, or
one request and then follows one NDJSON stream, needs neither. :class:`QuickAdminClient` speaks
HTTP/1.1 over the node's Unix socket with blocking :mod:`socket` calls, one connection per
request, with a deadline on the connect and on every read (a stream's node sends a keep-alive
line every 15 s, so a silent minute means a stuck node). It keeps every check and every error
of :class:`~peerstash.peer.cli.AdminClient` (the socket is checked before a byte is sent; "no
node is running" names a system node), so the user sees the same output either way.

Its coroutines never suspend: :func:`run_to_end` runs a command's handler without an event loop.
That is why this client must never be used on a running event loop (the tray, the node): its
socket calls block.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, BinaryIO, TypeVar

from peerstash.peer.cli import AdminClient, CliError

#: Seconds to wait for the node to accept the connection (aiohttp's ``sock_connect`` in the
#: full client), and for each read of its answer (a stream sends a keep-alive every 15 s).
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
#: An answer (or one streamed line) larger than this is not one the admin API sends.
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
    """:class:`AdminClient` without aiohttp or asyncio, for commands run by :func:`run_to_end`."""

    async def __aenter__(self) -> QuickAdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        with self._request(method, path, body) as answer:
            status, headers = answer.head()
            raw = b"".join(answer.body(headers)).strip()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            raise CliError(f"the node answered HTTP {status} with something not JSON") from None
        if status >= 400:
            msg = data.get("error") if isinstance(data, dict) else None
            raise CliError(msg or f"the node answered HTTP {status}")
        return data

    async def stream(self, path: str) -> AsyncIterator[dict[str, Any]]:
        """Yield NDJSON objects from a streaming endpoint (keep-alive ``{}`` lines skipped)."""
        with self._request("GET", path, None) as answer:
            status, headers = answer.head()
            if status >= 400:
                raw = b"".join(answer.body(headers)).strip()
                try:
                    data = json.loads(raw) if raw else None
                except ValueError:
                    data = None
                msg = data.get("error") if isinstance(data, dict) else None
                raise CliError(msg or f"the node answered HTTP {status}")
            pending = b""
            for piece in answer.body(headers):
                pending += piece
                *lines, pending = pending.split(b"\n")
                if len(pending) > MAX_ANSWER:
                    raise CliError("the node's answer is too large")
                for line in lines:
                    obj = _json_line(line)
                    if obj:
                        yield obj
            obj = _json_line(pending)
            if obj:
                yield obj

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> _Answer:
        """Connect (after the same checks as :class:`AdminClient`) and send one request."""
        if not self.socket.exists():
            raise self._not_running()
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
            sock.settimeout(READ_TIMEOUT)
            answer = _Answer(sock)
            with _socket_errors():
                sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        except BaseException:
            sock.close()
            raise
        return answer


def _json_line(line: bytes) -> Any:
    line = line.strip()
    if not line:
        return None
    try:
        return json.loads(line)
    except ValueError:
        raise CliError("the node sent a line that is not JSON") from None


@contextlib.contextmanager
def _socket_errors() -> Iterator[None]:
    """Turn the socket's own errors into the full client's one-line errors."""
    try:
        yield
    except TimeoutError:
        raise CliError(
            f"the node did not answer within {READ_TIMEOUT:.0f} s (is it stuck?)"
        ) from None
    except (ConnectionResetError, BrokenPipeError):
        raise _closed() from None


def _closed() -> CliError:
    return CliError("the node closed the connection (did it stop?)")


def _not_http() -> CliError:
    return CliError("the node's answer is not HTTP")


class _Answer:
    """One HTTP/1.1 response read from a blocking socket: its head, then its body in pieces
    (``Content-Length``, chunked, or up to the end of the connection)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file: BinaryIO = sock.makefile("rb")

    def __enter__(self) -> _Answer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
        self.sock.close()

    def _line(self) -> bytes:
        with _socket_errors():
            line = self.file.readline(65536)
        if not line.endswith(b"\n"):
            raise _closed() if len(line) < 65536 else _not_http()
        return line

    def head(self) -> tuple[int, dict[str, str]]:
        """The status code and the headers (names in lower case)."""
        version, _, rest = self._line().decode("latin-1").partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise _not_http()
        headers: dict[str, str] = {}
        for _ in range(100):
            line = self._line().decode("latin-1").strip()
            if not line:
                return int(code), headers
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        raise _not_http()

    def _exactly(self, size: int) -> bytes:
        with _socket_errors():
            data = self.file.read(size)
        if len(data) < size:
            raise _closed()
        return data

    def body(self, headers: dict[str, str]) -> Iterator[bytes]:
        """The body's bytes as they arrive."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size_text = self._line().split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise _not_http() from None
                if size == 0:
                    return
                if size > MAX_ANSWER:
                    raise CliError("the node's answer is too large")
                data = self._exactly(size + 2)
                yield data[:-2]
        elif "content-length" in headers:
            length = headers["content-length"]
            if not length.isdigit() or int(length) > MAX_ANSWER:
                raise _not_http()
            yield self._exactly(int(length))
        else:
            with _socket_errors():
                data = self.file.read(MAX_ANSWER + 1)
            if len(data) > MAX_ANSWER:
                raise CliError("the node's answer is too large")
            yield data
