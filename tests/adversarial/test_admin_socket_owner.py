"""Another local user squats the admin socket: the CLI refuses before it sends a byte.

The data directory's path is long, so the socket goes to the per-user runtime directory
(``$XDG_RUNTIME_DIR/peerstash``), the shared place where a squatter can get in first. A real
listening Unix socket plays the squatter; after the real CLI ran, that listener must not even
have a connection waiting (so it received nothing, not a password, not a request line). As
root the test hands the directory or the socket to ``nobody``; mode problems need no root.
A positive control shows the same setup, made right, does reach the listener.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerstash.peer.node import Node, NodeError, NodeOptions
from peerstash.peer.paths import admin_socket_path
from tests.fixtures.processes import PEERSTASH

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="handing files to another user needs root")


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[tuple[Path, Path, dict[str, str]]]:
    """(data dir whose socket falls back to the runtime dir, that runtime dir, env for the CLI)."""
    base = Path(tempfile.mkdtemp(prefix="ps-rt-", dir="/tmp"))
    data_dir = tmp_path / ("long-data-dir-" + "d" * 100)
    data_dir.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEERSTASH_")}
    env["XDG_RUNTIME_DIR"] = str(base)
    old = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(base)  # the same place in this process, for the paths
    try:
        yield data_dir, base / "peerstash", env
    finally:
        if old is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = old
        shutil.rmtree(base, ignore_errors=True)


def squat(sock: Path, *, dir_mode: int = 0o700, sock_mode: int = 0o600) -> socket.socket:
    sock.parent.mkdir(mode=0o700, exist_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(sock))
    srv.listen(8)
    srv.setblocking(False)
    os.chmod(sock, sock_mode)
    os.chmod(sock.parent, dir_mode)
    return srv


def received_nothing(srv: socket.socket) -> bool:
    try:
        conn, _ = srv.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def run_cli(data_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PEERSTASH, "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        input="the-repository-password\n",
    )


def refused(
    data_dir: Path, env: dict[str, str], srv: socket.socket, why: str
) -> subprocess.CompletedProcess[str]:
    # `repo add --password-stdin` is the command that would hand the squatter a password.
    res = run_cli(data_dir, env, "repo", "add", "nas", "--uri", "/srv/nas", "--password-stdin")
    assert res.returncode == 1, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("peerstash: refusing to use the admin socket")
    assert why in lines[0]
    assert received_nothing(srv)
    return res


def test_the_fallback_socket_path_is_the_runtime_dir(
    runtime: tuple[Path, Path, dict[str, str]],
) -> None:
    data_dir, rt, _ = runtime
    assert admin_socket_path(data_dir).parent == rt


def test_a_socket_in_a_directory_others_can_write_is_refused(
    runtime: tuple[Path, Path, dict[str, str]],
) -> None:
    data_dir, _, env = runtime
    srv = squat(admin_socket_path(data_dir), dir_mode=0o777)
    try:
        refused(data_dir, env, srv, "its directory has mode 0777")
    finally:
        srv.close()


def test_a_socket_others_can_open_is_refused(runtime: tuple[Path, Path, dict[str, str]]) -> None:
    data_dir, _, env = runtime
    srv = squat(admin_socket_path(data_dir), sock_mode=0o666)
    try:
        refused(data_dir, env, srv, "group or others can open it")
    finally:
        srv.close()


@as_root
def test_a_directory_of_another_user_is_refused(runtime: tuple[Path, Path, dict[str, str]]) -> None:
    data_dir, rt, env = runtime
    srv = squat(admin_socket_path(data_dir))
    try:
        os.chown(rt, NOBODY, NOBODY)
        refused(data_dir, env, srv, f"its directory belongs to another user (uid {NOBODY})")
    finally:
        srv.close()


@as_root
def test_a_socket_of_another_user_is_refused(runtime: tuple[Path, Path, dict[str, str]]) -> None:
    data_dir, _, env = runtime
    sock = admin_socket_path(data_dir)
    srv = squat(sock)
    try:
        os.chown(sock, NOBODY, NOBODY)
        refused(data_dir, env, srv, f"it belongs to another user (uid {NOBODY})")
    finally:
        srv.close()


def test_control_a_private_socket_of_ours_is_used(
    runtime: tuple[Path, Path, dict[str, str]],
) -> None:
    """The same setup made right: the CLI does connect (so the refusals above are real)."""
    data_dir, _, env = runtime
    srv = squat(admin_socket_path(data_dir))
    srv.setblocking(True)
    srv.settimeout(30)
    proc = subprocess.Popen(
        [*PEERSTASH, "--data-dir", str(data_dir), "status", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        conn, _ = srv.accept()
        conn.settimeout(30)
        request = conn.recv(4096)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\n{}"
        )
        conn.close()
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        srv.close()
    assert request.startswith(b"GET /v1/status ")


@as_root
async def test_the_node_refuses_a_runtime_dir_of_another_user_and_leaves_it_alone(
    runtime: tuple[Path, Path, dict[str, str]],
) -> None:
    data_dir, rt, _ = runtime
    rt.mkdir(mode=0o755)
    os.chown(rt, NOBODY, NOBODY)
    node = Node(
        data_dir,
        NodeOptions(instance_id="alpha", listen="127.0.0.1:0", schedule=False, discovery=False),
    )
    with pytest.raises(NodeError) as err:
        await node.start()
    await node.stop()
    assert f"belongs to another user (uid {NOBODY})" in str(err.value)
    st = rt.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (NOBODY, 0o755)  # not taken over, not chmod-ed
    assert list(rt.iterdir()) == []


async def test_the_node_makes_its_runtime_dir_private_and_a_real_cli_reaches_it(
    runtime: tuple[Path, Path, dict[str, str]],
) -> None:
    data_dir, rt, env = runtime
    node = Node(
        data_dir,
        NodeOptions(instance_id="alpha", listen="127.0.0.1:0", schedule=False, discovery=False),
    )
    await node.start()
    try:
        assert rt.stat().st_mode & 0o777 == 0o700
        assert node.socket_path.parent == rt
        proc = await asyncio.create_subprocess_exec(
            *PEERSTASH,
            "--data-dir",
            str(data_dir),
            "status",
            "--json",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        out, err = await proc.communicate()
    finally:
        await node.stop()
    assert proc.returncode == 0, err
    assert json.loads(out)["instance_id"] == "alpha"


@pytest.mark.parametrize(
    "args",
    [("status",), ("status", "--json"), ("backup", "docs", "--wait")],
    ids=["status", "status-json", "backup-wait"],
)
def test_the_quick_client_commands_check_the_socket_too(
    runtime: tuple[Path, Path, dict[str, str]], args: tuple[str, ...]
) -> None:
    """``status`` and ``backup --wait`` run on the quick client (peer/api/quickclient.py), not on
    AdminClient's aiohttp path: the same refusal, before a byte is sent."""
    data_dir, _, env = runtime
    srv = squat(admin_socket_path(data_dir), dir_mode=0o777)
    try:
        res = run_cli(data_dir, env, *args)
        assert res.returncode == 1, res
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, res.stderr
        assert lines[0].startswith("peerstash: refusing to use the admin socket"), lines
        assert "its directory has mode 0777" in lines[0]
        assert res.stdout == ""
        assert received_nothing(srv)
    finally:
        srv.close()


async def test_the_desktop_client_checks_the_socket_too(
    runtime: tuple[Path, Path, dict[str, str]],
) -> None:
    """The tray's client (the aiohttp transport of peer/api/client.py) sends repository
    passwords too (the add dialogs): a squatted socket is refused for a call and for the event
    stream, before a byte is sent."""
    from peerstash.desktop.api import ApiError
    from peerstash.peer.api.client import AdminClient

    data_dir, _, _ = runtime
    srv = squat(admin_socket_path(data_dir), dir_mode=0o777)
    try:
        # A client that connected would wait on the squatter's answer: bounded here, so that
        # shows as a failure rather than a hang.
        async with asyncio.timeout(20), AdminClient(data_dir) as client:
            body = {"id": "nas", "uri": "/srv/nas", "password": {"value": "the-password"}}
            with pytest.raises(ApiError, match="refusing to use the admin socket") as call:
                await client.call("POST", "/v1/repos", body)
            assert "its directory has mode 0777" in str(call.value)
            with pytest.raises(ApiError, match="refusing to use the admin socket"):
                async for _ in client.stream("/v1/events"):
                    pass
        assert received_nothing(srv)
    finally:
        srv.close()
