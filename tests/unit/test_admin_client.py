"""The one admin client (peer/api/client.py), both transports, against a real aiohttp server.

The server listens on a private Unix socket in tmp, as the node's admin API does, and runs the
node's own error middleware, in a thread with its own event loop (the quick transport blocks,
so it must not share a loop with the server). Every way a call or a stream can go wrong must
reach the user as the same one line whichever transport asked: the CLI's ``status`` and
``backup --wait`` use the quick one, everything else (and the tray) the aiohttp one.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from aiohttp import web

from peerstash.peer.api import client as client_module
from peerstash.peer.api import quickclient, schema
from peerstash.peer.api.client import AdminClient, AdminError
from peerstash.peer.api.quickclient import QuickAdminClient, run_to_end
from peerstash.peer.api.server import errors_middleware
from peerstash.peer.paths import admin_socket_path
from tests.fixtures.standin import admin_in_thread, private_socket

T = TypeVar("T")
TRANSPORTS = ["aiohttp", "quick"]


class Node:
    """A stand-in for the node's admin API on ``data_dir``'s socket."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        #: What the server received (method and path), to show a refused call sent nothing.
        self.received: list[str] = []


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    data_dir = tmp_path / "node"
    data_dir.mkdir(mode=0o700)
    state = Node(data_dir)
    stop = asyncio.Event()

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        state.received.append(f"{request.method} {request.path}")
        result: web.StreamResponse = await handler(request)
        return result

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"instance_id": "probe-1"})

    async def add_repo(request: web.Request) -> web.Response:
        body = await request.json()
        if not body.get("password"):
            return web.json_response(
                {"error": "the password is empty", "field": "password"}, status=400
            )
        return web.json_response({"id": body["id"]})

    async def edit_plan(request: web.Request) -> web.Response:
        """Answers the raw body it received, and what the node's own decoding makes of it."""
        raw = await request.read()
        decoded = msgspec.json.decode(raw, type=schema.EditPlan)
        return web.json_response({"raw": json.loads(raw), "changes": decoded.changes()})

    async def no_such_op(request: web.Request) -> web.Response:
        return web.json_response({"error": "no operation 'x'"}, status=404)

    async def not_json(request: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>", content_type="text/html")

    async def hang(request: web.Request) -> web.Response:
        """Takes the request and never answers (a stuck node)."""
        await stop.wait()
        return web.json_response({})

    async def cut_answer(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 500
        await resp.prepare(request)
        await resp.write(b'{"instance_id": "pro')
        assert request.transport is not None
        request.transport.close()
        return resp

    async def events(request: web.Request) -> web.StreamResponse:
        """``ready``, a keep-alive, then what ``?then=`` says: ``end``, ``cut`` (mid-line),
        ``silent`` (nothing at all until the server stops), ``garbage`` (a line not JSON)."""
        then = request.query.get("then", "end")
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(b'{"type": "ready"}\n{}\n')
        if then == "end":
            await resp.write(b'{"type": "notice", "message": "still here"}\n')
            await resp.write_eof()
        elif then == "cut":
            await resp.write(b'{"type": "noti')
            assert request.transport is not None
            request.transport.close()
        elif then == "silent":
            await stop.wait()
        elif then == "garbage":
            await resp.write(b"\x1b[2J not json\n")
            await resp.write_eof()
        return resp

    app = web.Application(middlewares=[record, errors_middleware])
    app.router.add_get("/v1/status", status)
    app.router.add_post("/v1/repos", add_repo)
    app.router.add_patch("/v1/plans/{id}", edit_plan)
    app.router.add_get("/v1/ops/x/wait", no_such_op)
    app.router.add_get("/v1/not-json", not_json)
    app.router.add_get("/v1/cut", cut_answer)
    app.router.add_get("/v1/hang", hang)
    app.router.add_get("/v1/events", events)
    with admin_in_thread(data_dir, app, stop):
        yield state


def ask(transport: str, data_dir: Path, job: Callable[[AdminClient], Coroutine[Any, Any, T]]) -> T:
    """Run ``job`` with a client of ``transport``, as the CLI would (quick: no event loop)."""
    client_class = QuickAdminClient if transport == "quick" else AdminClient

    async def go() -> T:
        async with client_class(data_dir) as client:
            return await job(client)

    if transport == "quick":
        return run_to_end(go())
    return asyncio.run(asyncio.wait_for(go(), 30))


def refused(transport: str, data_dir: Path, job: Callable[[AdminClient], Any]) -> AdminError:
    with pytest.raises(AdminError) as err:
        ask(transport, data_dir, job)
    return err.value


def follow(
    path: str, got: list[Any], *, idle_timeout: float | None = None
) -> Callable[[AdminClient], Coroutine[Any, Any, None]]:
    """A job that reads the stream at ``path`` into ``got`` (``"open"`` when it opened)."""

    async def job(client: AdminClient) -> None:
        async for obj in client.stream(
            path, on_open=lambda: got.append("open"), idle_timeout=idle_timeout
        ):
            got.append(obj)

    return job


# -- answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_answer_is_the_decoded_json(node: Node, transport: str) -> None:
    got = ask(transport, node.data_dir, lambda c: c.call("GET", "/v1/status"))
    assert got == {"instance_id": "probe-1"}
    body = {"id": "nas", "password": {"value": "x"}}
    assert ask(transport, node.data_dir, lambda c: c.call("POST", "/v1/repos", body)) == {
        "id": "nas"
    }


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_struct_body_is_sent_as_the_struct_encodes(node: Node, transport: str) -> None:
    """A schema struct goes out as ``msgspec.to_builtins`` makes it: the fields left UNSET are
    not sent at all (a PATCH changes only what it names), nested structs are objects."""
    body = schema.EditPlan(enabled=False, paths=["/srv/a"])
    got = ask(transport, node.data_dir, lambda c: c.call("PATCH", "/v1/plans/docs", body))
    assert got == {
        "raw": {"paths": ["/srv/a"], "enabled": False},
        "changes": {"paths": ["/srv/a"], "enabled": False},
    }
    repo = schema.AddRepo(id="nas", uri="/srv/nas", password=schema.Password(source="secret"))
    assert ask(transport, node.data_dir, lambda c: c.call("POST", "/v1/repos", repo)) == {
        "id": "nas"
    }
    # Nothing set: an empty object, which the node takes as "nothing to change".
    got = ask(
        transport, node.data_dir, lambda c: c.call("PATCH", "/v1/plans/docs", schema.EditPlan())
    )
    assert got == {"raw": {}, "changes": {}}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_refusal_carries_the_nodes_words_status_and_field(node: Node, transport: str) -> None:
    body = {"id": "nas", "password": ""}
    err = refused(transport, node.data_dir, lambda c: c.call("POST", "/v1/repos", body))
    assert (str(err), err.status, err.field) == ("the password is empty", 400, "password")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("method", "status"), [("GET", 404), ("DELETE", 405)])
def test_a_route_the_node_lacks_means_another_version(
    node: Node, transport: str, method: str, status: int
) -> None:
    """aiohttp's own 404/405 (no such route, through the node's middleware: ``Not Found``)
    is not a refusal of ours: only a node of another version lacks a route."""
    path = "/v1/no-such-route" if status == 404 else "/v1/status"
    err = refused(transport, node.data_dir, lambda c: c.call(method, path))
    assert str(err) == "the node does not know this request (it runs another version)"
    assert (err.status, err.field) == (status, None)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_404_with_the_nodes_words_stays_its_words(node: Node, transport: str) -> None:
    got: list[Any] = []
    err = refused(transport, node.data_dir, follow("/v1/ops/x/wait", got))
    assert (str(err), err.status) == ("no operation 'x'", 404)
    assert got == []  # on_open runs only once the node answered yes


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_answer_not_json_is_one_line(node: Node, transport: str) -> None:
    err = refused(transport, node.data_dir, lambda c: c.call("GET", "/v1/not-json"))
    assert str(err) == "the node answered HTTP 200 with something not JSON"


# -- no node, or not ours ----------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_missing_socket_means_no_node_runs(tmp_path: Path, transport: str) -> None:
    data_dir = tmp_path / "none"
    err = refused(transport, data_dir, lambda c: c.call("GET", "/v1/status"))
    assert str(err).startswith(f"no Peerstash node is running for {data_dir}; start one with ")
    assert f"`peerstash --no-gui --data-dir {data_dir}` (or the tray app)" in str(err)
    err = refused(transport, data_dir, follow("/v1/events", []))
    assert str(err).startswith(f"no Peerstash node is running for {data_dir}")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_socket_left_by_a_dead_node_means_no_node_runs(tmp_path: Path, transport: str) -> None:
    data_dir = tmp_path / "dead"
    private_socket(data_dir).close()  # the file stays, nobody listens
    err = refused(transport, data_dir, lambda c: c.call("GET", "/v1/status"))
    assert str(err).startswith(f"no Peerstash node is running for {data_dir}")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_socket_others_could_replace_is_refused_before_a_byte(node: Node, transport: str) -> None:
    node.data_dir.chmod(0o755)
    body = {"id": "nas", "password": {"value": "the-password"}}
    err = refused(transport, node.data_dir, lambda c: c.call("POST", "/v1/repos", body))
    assert str(err).startswith("refusing to use the admin socket")
    assert "its directory has mode 0755" in str(err)
    err = refused(transport, node.data_dir, follow("/v1/events", []))
    assert str(err).startswith("refusing to use the admin socket")
    assert node.received == []


@pytest.fixture
def full_queue(tmp_path: Path) -> Iterator[Path]:
    """A node that accepts nothing: its socket's queue of connections is full (a stuck or
    flooded node)."""
    data_dir = tmp_path / "stuck"
    listener = private_socket(data_dir)
    listener.listen(0)
    path = admin_socket_path(data_dir)
    held: list[socket.socket] = []
    try:
        while len(held) < 64:
            waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            waiting.setblocking(False)
            held.append(waiting)
            try:
                waiting.connect(str(path))
            except BlockingIOError:
                break
        else:
            pytest.fail("the queue of connections never filled")
        yield data_dir
    finally:
        for waiting in held:
            waiting.close()
        listener.close()


@pytest.mark.parametrize(
    ("transport", "error"),
    [
        # asyncio cannot wait for room in the queue: it says so at once.
        ("aiohttp", "the node did not accept the connection (is it stuck?)"),
        # The kernel waits, up to the connect deadline (10 s, shortened here).
        ("quick", "the node did not accept the connection within 0 s (is it stuck?)"),
    ],
)
def test_a_node_that_accepts_nothing_is_one_line(
    full_queue: Path, transport: str, error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quickclient, "CONNECT_TIMEOUT", 0.4)
    monkeypatch.setattr(client_module, "CONNECT_TIMEOUT", 0.4)
    started = time.monotonic()
    err = refused(transport, full_queue, lambda c: c.call("GET", "/v1/status"))
    took = time.monotonic() - started
    assert str(err) == error
    if transport == "quick":
        assert 0.3 < took < 5, took


# -- the connection ends early, or goes quiet ---------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_answer_cut_short_is_one_line(node: Node, transport: str) -> None:
    err = refused(transport, node.data_dir, lambda c: c.call("GET", "/v1/cut"))
    assert str(err) == "the node closed the connection (did it stop?)"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_stream_cut_mid_line_is_one_line_after_what_came(node: Node, transport: str) -> None:
    got: list[Any] = []
    err = refused(transport, node.data_dir, follow("/v1/events?then=cut", got))
    assert str(err) == "the node closed the connection (did it stop?)"
    assert got == ["open", {"type": "ready"}]  # the keep-alive is skipped, not yielded


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_stream_ends_when_the_node_ends_it(node: Node, transport: str) -> None:
    got: list[Any] = []
    ask(transport, node.data_dir, follow("/v1/events", got, idle_timeout=5))
    assert got == ["open", {"type": "ready"}, {"type": "notice", "message": "still here"}]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_silent_stream_hits_its_idle_timeout(node: Node, transport: str) -> None:
    got: list[Any] = []
    err = refused(transport, node.data_dir, follow("/v1/events?then=silent", got, idle_timeout=0.3))
    assert str(err) == "the node's stream /v1/events?then=silent said nothing for 0.3s"
    assert got == ["open", {"type": "ready"}]


def test_the_quick_client_reads_with_a_deadline_without_idle_timeout(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``backup --wait`` gives no idle timeout: every read still has the quick client's
    deadline (60 s, a keep-alive comes every 15 s), shortened here."""
    monkeypatch.setattr(quickclient, "READ_TIMEOUT", 0.3)
    got: list[Any] = []
    err = refused("quick", node.data_dir, follow("/v1/events?then=silent", got))
    assert str(err) == "the node did not answer within 0 s (is it stuck?)"
    assert got == ["open", {"type": "ready"}]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_node_that_takes_a_call_and_never_answers_is_one_line(
    node: Node, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that accepted the request and then went silent: the call ends with words
    within its deadline (quick client: 60 s a read; aiohttp: 600 s for the answer; both
    shortened here), never a wait for ever."""
    monkeypatch.setattr(quickclient, "READ_TIMEOUT", 0.3)
    monkeypatch.setattr(client_module, "ANSWER_TIMEOUT", 0.3)
    err = refused(transport, node.data_dir, lambda c: c.call("GET", "/v1/hang"))
    assert str(err) == "the node did not answer within 0 s (is it stuck?)"
    assert node.received[-1] == "GET /v1/hang"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_streamed_line_not_json_is_one_line(node: Node, transport: str) -> None:
    got: list[Any] = []
    err = refused(transport, node.data_dir, follow("/v1/events?then=garbage", got))
    assert str(err) == "the node sent a line that is not JSON"
    assert got == ["open", {"type": "ready"}]


# -- something else answers on the socket -------------------------------------------------------


def framed(body: bytes) -> bytes:
    return f"Content-Length: {len(body)}\r\n\r\n".encode() + body


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (b"\x1b[2J garbage\r\n\r\n", "the node's answer is not HTTP"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{}", "the node closed the connection"),
        (b"", "the node closed the connection"),
        (b"HTTP/1.1 403 Forbidden\r\n" + framed(b'{"error": "go away", "field": 7}'), "go away"),
    ],
    ids=["not-http", "cut", "nothing", "refusal-bad-field"],
)
def test_a_listener_that_is_not_the_node_gets_one_line(
    raw_listener: tuple[Path, list[bytes]], transport: str, sent: bytes, error: str
) -> None:
    data_dir, answer = raw_listener
    answer.append(sent)
    err = refused(transport, data_dir, lambda c: c.call("GET", "/v1/status"))
    assert str(err).startswith(error), str(err)
    assert err.field is None  # a field that is not a name is not passed on


def test_the_cli_and_the_tray_name_the_one_error() -> None:
    """``CliError`` (what every command raises and ``run_command`` prints) and the tray's
    ``ApiError`` are the client's error, so one ``except`` catches what either raises."""
    from peerstash.desktop.api import ApiError
    from peerstash.peer.cli import AdminClient as CliClient
    from peerstash.peer.cli import CliError

    assert CliError is AdminError and ApiError is AdminError
    assert CliClient is AdminClient and issubclass(QuickAdminClient, AdminClient)
