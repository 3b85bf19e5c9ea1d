"""The admin client: how the CLI and the tray talk to a node over its admin socket.

There is one client, so a person sees the same words whichever of them asked:

- :class:`AdminError` is its one error: worded for a person (``str(exc)``), with the HTTP
  ``status`` and the request ``field`` the node said a refusal is about, so a form can mark
  that field instead of parsing the sentence. The CLI knows it as ``CliError``, the tray as
  ``ApiError``.
- :meth:`AdminClient.check_socket` is the one place that looks at the socket before a byte is
  sent: missing means "no node is running" (naming a system node if one runs), and a socket or
  directory that is not ours alone is refused (``socket_trouble`` in ``peer/paths.py``: in a
  shared runtime directory it could be another user's listener).
- :func:`refusal` reads an error answer (the node's ``error`` and ``field``; a 404/405 for a
  route it does not have means it runs another version), :func:`answer` a JSON answer and
  :func:`ndjson_line` a streamed line; :func:`closed`, :func:`silent`, :func:`not_answered` and
  :func:`too_large` word the transport's failures.
- :func:`decode` turns an answer that is a record into its struct (``core/records.py``), or
  into an :class:`AdminError` when it is not one.

Two transports share all of that and offer the same ``call``/``stream`` pair:
:class:`AdminClient` here (aiohttp, for the tray and the CLI commands that run an event loop)
and :class:`~peerstash.peer.api.quickclient.QuickAdminClient` (blocking ``socket`` calls, for
the commands that must start at once). Every ``peerstash`` call imports this module, so it
imports nothing heavy at its top: aiohttp and asyncio are imported by the methods that use them
(see tests/unit/test_cli_imports.py).
"""

from __future__ import annotations

import contextlib
import errno
import json
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeAlias, TypeVar

from peerstash.peer.paths import SOCKET_NAME, admin_socket_path, resolve_data_dir, socket_trouble

if TYPE_CHECKING:
    import aiohttp

    from peerstash.peer.api.schema import Request

#: A request body: the route's schema struct (``peer/api/schema.py``), or a plain dict (what a
#: test sends that our structs would not let through).
Body: TypeAlias = "Request | dict[str, Any] | None"

T = TypeVar("T")

#: Seconds to wait for the node to accept the connection (both transports).
CONNECT_TIMEOUT = 10.0
#: Seconds the aiohttp transport waits for the whole answer to one call. Most calls are
#: answered at once; the slowest run restic first (adding a repository on a slow remote,
#: listing a large repository's snapshots) or wait as asked (``/v1/discovered?timeout=60``).
#: Past this the node is taken as stuck, and the person is told, rather than waiting for ever.
#: (The quick client's commands are answered at once: it waits ``READ_TIMEOUT``, 60 s.)
ANSWER_TIMEOUT = 600.0
#: An answer (or one streamed line) larger than this is not one the admin API sends.
MAX_ANSWER = 64 * 1024 * 1024

#: The error texts aiohttp gives for a route that does not exist (through the node's middleware).
_NO_ROUTE = {"Not Found", "Method Not Allowed"}


class AdminError(Exception):
    """A call the node refused or could not answer, worded for a person (``str(exc)``)."""

    def __init__(self, message: str, status: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        #: The HTTP status of the node's refusal; None when no answer came.
        self.status = status
        #: The request field the node said the refusal is about (its ``"field"``), if any.
        self.field = field


def payload(body: Body) -> dict[str, Any] | None:
    """The JSON object a request sends: a struct as ``msgspec.to_builtins`` gives it (its
    ``UNSET`` fields left out, as the struct defines), a dict as it is.

    msgspec is imported only for a struct, and then whoever built the struct has imported it
    already: the commands that must start at once do not pay for it.
    """
    if body is None or isinstance(body, dict):
        return body
    import msgspec

    data = msgspec.to_builtins(body)
    if not isinstance(data, dict):  # a Request is a struct: it always encodes to an object
        raise TypeError(f"a request body must encode to a JSON object, not {type(data).__name__}")
    return data


def refusal(status: int, raw: bytes) -> AdminError:
    """The error for an HTTP error answer: the node's sentence and the field it is about."""
    try:
        data = json.loads(raw) if raw.strip() else None
    except ValueError:
        data = None
    msg = data.get("error") if isinstance(data, dict) else None
    if status in (404, 405) and (msg is None or msg in _NO_ROUTE):
        # Only a node of another version lacks a route (tray and node ship together).
        return AdminError("the node does not know this request (it runs another version)", status)
    field = data.get("field") if isinstance(data, dict) else None
    return AdminError(
        str(msg) if msg else f"the node answered HTTP {status}",
        status,
        field if isinstance(field, str) else None,
    )


def answer(status: int, raw: bytes) -> Any:
    """What a one-shot call returns: the decoded JSON, None for an empty body, or the error."""
    if status >= 400:
        raise refusal(status, raw)
    raw = raw.strip()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise AdminError(f"the node answered HTTP {status} with something not JSON") from None


def ndjson_line(line: bytes) -> Any:
    """One streamed object; None for a blank line. A keep-alive is ``{}`` (falsy, skipped by
    the callers like a blank)."""
    line = line.strip()
    if not line:
        return None
    try:
        return json.loads(line)
    except ValueError:
        raise AdminError("the node sent a line that is not JSON") from None


def closed() -> AdminError:
    return AdminError("the node closed the connection (did it stop?)")


def not_http() -> AdminError:
    return AdminError("the node's answer is not HTTP")


def too_large() -> AdminError:
    return AdminError("the node's answer is too large")


def not_accepted(waited: bool = True) -> AdminError:
    """The node's socket takes no connection: it has more waiting than it accepts (a stuck or
    flooded node). ``waited``: we waited :data:`CONNECT_TIMEOUT` for it."""
    within = f" within {CONNECT_TIMEOUT:.0f} s" if waited else ""
    return AdminError(f"the node did not accept the connection{within} (is it stuck?)")


def decode(data: Any, kind: type[T], what: str) -> T:
    """The node's answer ``data`` as the record type ``kind`` (``core/records.py``, or a list of
    them), decoded once where it arrives so the CLI and the tray read attributes after. An
    answer that is something else (another version, a broken or hostile listener on the socket)
    is an :class:`AdminError` naming ``what`` was asked for, never a traceback.

    msgspec's words say where and what was wrong (``Expected `str`, got `int` - at
    `$[0].id```): field names and types of ours, never a value the node sent. msgspec is
    imported here, not at the top: the quick commands never decode a record.
    """
    import msgspec

    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise AdminError(f"the node's answer is not {what}: {exc}") from None


def not_answered(seconds: float) -> AdminError:
    """The node took the request and gave no answer within ``seconds`` (a stuck node)."""
    return AdminError(f"the node did not answer within {seconds:.0f} s (is it stuck?)")


def silent(path: str, seconds: float) -> AdminError:
    """A stream the node keeps alive said nothing (not even a keep-alive) for ``seconds``."""
    return AdminError(f"the node's stream {path} said nothing for {seconds:g}s")


class AdminClient:
    """The admin client over the node's Unix socket, on aiohttp.

    Use it as ``async with AdminClient(data_dir) as client``; ``call`` makes one JSON request,
    ``stream`` follows an NDJSON stream. Every failure is an :class:`AdminError`.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.socket = admin_socket_path(data_dir)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.socket)),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    # -- shared by both transports ---------------------------------------------------------

    def not_running(self) -> AdminError:
        """The error "no node is running", with how to start one or where a system node runs."""
        from peerstash.peer.systemd import SYSTEM_DATA_DIR

        # A system service's node lives elsewhere: name it rather than send people to start
        # a second node (only root can see those sockets).
        system = sorted(
            s.parent.name
            for s in SYSTEM_DATA_DIR.glob(f"*/{SOCKET_NAME}")
            if s.parent != self.data_dir and s.is_socket()
        )
        also = f"; a system node runs: peerstash --system {system[0]} ..." if system else ""
        dd_flag = "" if self.data_dir == resolve_data_dir(None) else f" --data-dir {self.data_dir}"
        return AdminError(
            f"no Peerstash node is running for {self.data_dir}; start one with "
            f"`peerstash --no-gui{dd_flag}` (or the tray app){also}"
        )

    def check_socket(self) -> None:
        """Refuse, before a byte is sent, a missing socket (no node runs) and a socket or
        directory that is not ours alone (see ``socket_trouble``)."""
        if not self.socket.exists():
            raise self.not_running()
        trouble = socket_trouble(self.socket)
        if trouble is not None:
            raise AdminError(trouble)

    # -- the aiohttp transport -------------------------------------------------------------

    def _ready(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise AdminError("not connected to the node")
        self.check_socket()
        return self._session

    @contextlib.contextmanager
    def _transport_errors(self) -> Iterator[None]:
        """aiohttp's failures as the one-line errors both transports give."""
        import aiohttp
        from aiohttp.http_exceptions import LineTooLong

        try:
            yield
        except aiohttp.ServerTimeoutError:  # the connect's deadline (the answer's is call's)
            raise not_accepted() from None
        except (aiohttp.ClientConnectorError, FileNotFoundError, ConnectionRefusedError):
            raise self.not_running() from None
        except aiohttp.ClientOSError as exc:
            if exc.errno == errno.ENOTCONN:
                # asyncio takes a Unix socket whose queue of connections is full for
                # connected, and the request then finds it is not: the node accepts nothing.
                raise not_accepted(waited=False) from None
            raise closed() from None
        except (
            aiohttp.ClientPayloadError,
            aiohttp.ClientConnectionError,
            ConnectionResetError,
            BrokenPipeError,
        ):
            raise closed() from None
        except aiohttp.ClientResponseError:  # the answer could not be parsed as HTTP
            raise not_http() from None
        except LineTooLong:
            raise too_large() from None

    async def call(self, method: str, path: str, body: Body = None) -> Any:
        """One JSON request; the node's answer decoded, or :class:`AdminError` (also when no
        answer came within :data:`ANSWER_TIMEOUT`). ``body`` is the route's schema struct (or a
        dict), see :func:`payload`."""
        import asyncio

        session = self._ready()
        data = payload(body)
        deadline = asyncio.timeout(ANSWER_TIMEOUT)
        with self._transport_errors():
            try:
                async with deadline:
                    async with session.request(method, f"http://node{path}", json=data) as resp:
                        return answer(resp.status, await resp.read())
            except TimeoutError:
                if not deadline.expired():
                    raise  # aiohttp's connect deadline: worded by _transport_errors
                raise not_answered(ANSWER_TIMEOUT) from None

    async def stream(
        self,
        path: str,
        on_open: Callable[[], None] | None = None,
        *,
        idle_timeout: float | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Yield the objects of an NDJSON stream (keep-alive ``{}`` lines skipped).

        ``on_open`` runs once the node has answered, before the first object: a view that must
        not miss a change subscribes first and then loads the current state in that callback.
        ``idle_timeout``: for a stream the node keeps alive, how long a silence (no line, not
        even a keep-alive) means the stream is stuck; :class:`AdminError` then, so the caller
        reopens it instead of showing a frozen picture.
        """
        import asyncio

        session = self._ready()
        with self._transport_errors():
            async with session.get(f"http://node{path}") as resp:
                if resp.status >= 400:
                    raise refusal(resp.status, await resp.read())
                if on_open is not None:
                    on_open()
                while True:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                    # cancellation that arrives as the line does, and the reader then never
                    # stops (a window that quits would wait on it for ever).
                    try:
                        async with asyncio.timeout(idle_timeout):
                            line = await resp.content.readline(max_line_length=MAX_ANSWER)
                    except TimeoutError:
                        raise silent(path, idle_timeout or 0) from None
                    if not line:
                        return
                    obj = ndjson_line(line)
                    if obj:
                        yield obj
