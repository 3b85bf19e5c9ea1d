"""``peerstash --version`` and ``peerstash status`` import only what they use.

Their speed is their imports (aiohttp alone takes several times as long as starting Python), so
this asserts on the modules loaded, in a fresh interpreter, rather than on a timing that a busy
machine would make flaky. The figures are in docs/benchmarks.md ("CLI start-up").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: Never for these two commands: the HTTP stack, the event loop, the store, the GUI, the crypto,
#: the node's own modules, and what only other commands need.
HEAVY = (
    "aiohttp",
    "asyncio",
    "ssl",
    "sqlalchemy",
    "alembic",
    "PySide6",
    "qasync",
    "nacl",
    "msgspec",
    "zeroconf",
    "importlib.metadata",
    # Standard modules that pull in a dozen more (inspect, ast, traceback, threading, string):
    # together 15-20 ms of the status command's CPU before they were kept off its path.
    "logging",
    "dataclasses",
    "peerstash.peer.node",
    "peerstash.peer.api.server",
    "peerstash.core.store",
    "peerstash.core.engine",
    "peerstash.desktop.app",
)

#: Runs the entry point as the console script does, then reports the exit code, the output and
#: every module loaded.
PROBE = """
import contextlib, io, json, sys
from peerstash.desktop.__main__ import main
out = io.StringIO()
err = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "out": out.getvalue(), "err": err.getvalue(),
                  "modules": sorted(sys.modules)}))
"""


def probe(*argv: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEERSTASH_")}
    res = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(res.stdout)
    return result


def heavy_in(modules: list[str]) -> list[str]:
    return [m for m in modules if m in HEAVY or m.split(".", 1)[0] in HEAVY]


def families_in(modules: list[str]) -> list[str]:
    """The command families (``peer/cli/commands/``) that were imported."""
    prefix = "peerstash.peer.cli.commands."
    return [m.removeprefix(prefix) for m in modules if m.startswith(prefix)]


def test_version_imports_nothing_heavy() -> None:
    from peerstash.core import __version__

    got = probe("--version")
    assert got["code"] == 0 and got["out"] == f"peerstash {__version__}\n"
    assert heavy_in(got["modules"]) == []
    assert "peerstash.peer.cli" not in got["modules"]


STATUS = {
    "instance_id": "probe-1",
    "name": "probe-1",
    "version": "0.0.1",
    "pid": 4242,
    "data_dir": "/srv/probe",
    "paused": False,
    "health": {"level": "ok", "summary": "ok", "reasons": []},
    "plans": [],
    "peers": [],
}


def op(status: str) -> dict[str, Any]:
    return {
        "id": "01OPQUICK",
        "kind": "backup",
        "status": status,
        "snapshot_id": "abcdef0123456789" if status == "success" else None,
        "error": None,
    }


@pytest.fixture
def admin_socket(tmp_path: Path) -> Iterator[Path]:
    """A real aiohttp server on a private Unix socket standing in for the node's admin API:
    ``GET /v1/status`` (written in small chunks), a backup of plan ``p`` whose progress is
    streamed with a keep-alive line in between, plan ``cut`` whose stream ends mid-line (the
    node stopping), and 404 elsewhere."""
    from aiohttp import web

    from tests.fixtures.standin import admin_in_thread

    data_dir = tmp_path / "node"
    data_dir.mkdir(mode=0o700)

    async def status(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        body = json.dumps(STATUS).encode()
        for i in range(0, len(body), 50):
            await resp.write(body[i : i + 50])
        await resp.write_eof()
        return resp

    async def backup(request: web.Request) -> web.Response:
        if request.match_info["plan"] not in ("p", "cut"):
            return web.json_response({"error": "no plan named 'x'"}, status=404)
        if request.match_info["plan"] == "cut":
            return web.json_response({**op("pending"), "id": "cut"})
        return web.json_response(op("pending"))

    async def wait(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        if request.match_info["id"] == "cut":
            await resp.write(b'{"id": "cut", "kind": "backup", "sta')
            assert request.transport is not None
            request.transport.close()
            return resp
        for line in (op("running"), {}, op("success")):
            await resp.write(json.dumps(line).encode() + b"\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/v1/status", status)
    app.router.add_post("/v1/plans/{plan}/backup", backup)
    app.router.add_get("/v1/ops/{id}/wait", wait)
    with admin_in_thread(data_dir, app):
        yield data_dir


def test_status_imports_nothing_heavy(admin_socket: Path) -> None:
    got = probe("--data-dir", str(admin_socket), "status")
    assert got["code"] == 0, got["err"]
    assert got["out"].splitlines()[:4] == [
        "health: ok",
        "instance  probe-1  (Peerstash 0.0.1, pid 4242)",
        "data dir  /srv/probe",
        "schedules active",
    ]
    assert heavy_in(got["modules"]) == []
    # Only the status parser was built: no command module of another family was imported.
    assert "peerstash.peer.systemd" not in got["modules"]
    assert families_in(got["modules"]) == ["status"]


def test_status_json_and_check_stay_quick(admin_socket: Path) -> None:
    got = probe("--data-dir", str(admin_socket), "status", "--json")
    assert got["code"] == 0 and json.loads(got["out"]) == STATUS
    assert heavy_in(got["modules"]) == []
    got = probe("--data-dir", str(admin_socket), "status", "--check")
    assert (got["code"], got["out"]) == (0, "PEERSTASH OK - ok\n")


def test_backup_wait_follows_the_stream_without_aiohttp(admin_socket: Path) -> None:
    got = probe("--data-dir", str(admin_socket), "backup", "p", "--wait")
    assert got["code"] == 0, got["err"]
    assert got["out"] == "backup 01OPQUICK: success, snapshot abcdef01\n"
    assert heavy_in(got["modules"]) == []
    assert families_in(got["modules"]) == ["ops"]


def test_a_stream_cut_short_is_one_clear_line(admin_socket: Path) -> None:
    got = probe("--data-dir", str(admin_socket), "backup", "cut", "--wait")
    assert got["code"] == 1 and got["out"] == ""
    assert got["err"] == "peerstash: the node closed the connection (did it stop?)\n"


def test_a_refusal_is_the_nodes_own_words(admin_socket: Path) -> None:
    got = probe("--data-dir", str(admin_socket), "backup", "nope", "--wait")
    assert (got["code"], got["err"]) == (1, "peerstash: no plan named 'x'\n")


def test_status_without_a_node_says_so_quickly(tmp_path: Path) -> None:
    got = probe("--data-dir", str(tmp_path / "none"), "status")
    assert got["code"] == 1 and got["out"] == ""
    assert "no Peerstash node is running" in got["err"]
    # The hint names the service that would start one, read with the service module (which
    # uses dataclasses): a few ms on a path that ends in an error anyway.
    assert heavy_in(got["modules"]) == ["dataclasses"]


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["--data-dir", "status", "status", "--json"],
        ["plan", "delete", "p"],
        ["repo", "add", "r", "--uri", "/srv/r", "--password-stdin", "--init"],
        ["backup", "p", "--wait"],
        ["prune", "r"],
    ],
)
def test_parsing_with_one_parser_built_is_parsing_with_all(argv: list[str]) -> None:
    from peerstash.peer import cli

    assert cli.parse_args(argv) == cli.build_parser().parse_args(argv)


@pytest.mark.parametrize("argv", [["--help"], ["bogus"], ["status", "--bogus"], ["repo"]])
def test_usage_and_errors_read_as_with_every_parser_built(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from peerstash.peer import cli

    with pytest.raises(SystemExit) as full:
        cli.build_parser().parse_args(argv)
    expected = capsys.readouterr()
    with pytest.raises(SystemExit) as quick:
        cli.parse_args(argv)
    assert quick.value.code == full.value.code
    assert capsys.readouterr() == expected


def test_a_parser_left_out_is_never_used() -> None:
    """Had ``status`` been left out, parsing it builds everything rather than misparse."""
    from peerstash.peer import cli

    with pytest.raises(cli.NotBuilt):
        cli.build_parser(frozenset()).parse_args(["status"])


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (b"\x1b[2J garbage\r\n\r\n", "the node's answer is not HTTP"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{}", "the node closed the connection"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!", "with something not JSON"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n", "the node's answer is not HTTP"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "not HTTP"),
        (b"", "the node closed the connection"),
    ],
)
def test_a_listener_that_is_not_the_node_gets_one_line(
    raw_listener: tuple[Path, list[bytes]], sent: bytes, error: str
) -> None:
    """Whatever answers on the socket, ``status`` says one line and exits 1: no traceback, no
    terminal escape from the answer."""
    data_dir, answer = raw_listener
    answer.append(sent)
    got = probe("--data-dir", str(data_dir), "status")
    assert got["code"] == 1 and got["out"] == ""
    assert got["err"].startswith("peerstash: ") and error in got["err"]
    assert got["err"].count("\n") == 1 and "\x1b" not in got["err"]
