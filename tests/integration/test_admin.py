"""The local admin API on its Unix socket: private, and robust against garbage."""

from __future__ import annotations

import asyncio
import logging
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from peerstash.peer.node import Node, NodeOptions


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = Node(
        tmp_path / "d", NodeOptions(instance_id="adm", listen=None, discovery=False, schedule=False)
    )
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


def session(node: Node) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(node.socket_path)))


async def test_socket_is_private(node: Node) -> None:
    assert stat.S_IMODE(node.socket_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(node.data_dir.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "request body is not valid JSON"),
        (b"[1, 2]", "request body must be a JSON object"),
        (
            b'{"id": 5, "uri": "/x", "password": {"source": "secret", "value": "p"}}',
            "field 'id' must be a string",
        ),
        (b'{"id": "r", "uri": "/x"}', "missing field 'password' (an object with 'source')"),
        (
            b'{"id": "r", "uri": "/x", "password": {"source": "secret", "value": "p"}, "env": [1]}',
            "field 'env' must map names to strings",
        ),
        (b"\xff\xfe\x00garbage", "request body is not valid JSON"),
    ],
)
async def test_garbage_bodies_get_one_clear_sentence(node: Node, body: bytes, message: str) -> None:
    async with session(node) as s, s.post("http://n/v1/repos", data=body) as r:
        assert r.status == 400
        assert await r.json() == {"error": message}
    assert node.engine and await node.engine.list_repos() == []


async def test_oversized_and_unknown_requests(node: Node) -> None:
    async with session(node) as s:
        async with s.post("http://n/v1/plans", data=b"x" * (2 << 20)) as r:
            assert r.status in (400, 413)
        async with s.get("http://n/v1/nothing-here") as r:
            assert r.status == 404 and "error" in await r.json()
        async with s.delete("http://n/v1/status") as r:
            assert r.status == 405
        async with s.get("http://n/v1/ops?limit=lots") as r:
            assert r.status == 400 and await r.json() == {"error": "limit must be a whole number"}
        async with s.post("http://n/v1/plans/nope/backup") as r:
            assert r.status == 404 and await r.json() == {"error": "no plan named 'nope'"}
        async with s.get("http://n/v1/status") as r:  # and the node is still fine
            assert r.status == 200 and (await r.json())["instance_id"] == "adm"


async def test_client_leaving_a_stream_does_not_hold_up_shutdown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node(
        tmp_path / "d", NodeOptions(instance_id="adm", listen=None, discovery=False, schedule=False)
    )
    await node.start()
    async with session(node) as s:
        resp = await s.get("http://n/v1/events")
        assert (await resp.content.readline()).strip() == b'{"type": "ready"}'
        resp.close()
    await asyncio.sleep(0)  # let the server see the connection drop
    with caplog.at_level(logging.ERROR):
        started = time.monotonic()
        await node.stop()
        took = time.monotonic() - started
    assert took < 5, f"stopping took {took:.1f}s"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_restic_settings_are_checked_and_reach_the_engine(tmp_path: Path) -> None:
    """restic_retry_lock and restic_stall_seconds: whole seconds in range, else one sentence and
    nothing stored; a stored value is what the engine uses from the next start."""
    opts = NodeOptions(instance_id="adm", listen=None, discovery=False, schedule=False)
    n = Node(tmp_path / "d", opts)
    await n.start()
    try:
        async with session(n) as s:
            for key, value, message in (
                ("restic_stall_seconds", 5, "restic_stall_seconds is 0 (off) or seconds"),
                ("restic_stall_seconds", "120", "restic_stall_seconds is 0 (off) or seconds"),
                ("restic_retry_lock", -1, "restic_retry_lock is seconds from 0 (off) to 3600"),
                ("restic_retry_lock", True, "restic_retry_lock is seconds from 0 (off) to 3600"),
            ):
                body = {"key": key, "value": value}
                async with s.post("http://n/v1/settings", json=body) as r:
                    assert r.status == 400
                    assert (await r.json())["error"].startswith(message)
            async with s.get("http://n/v1/settings") as r:
                got = await r.json()
                assert got["restic_stall_seconds"] is None and got["restic_retry_lock"] is None
            assert n.engine is not None
            assert n.engine.runner.stall_after == 120.0 and n.engine.retry_lock == 60.0
            for key, value in (("restic_stall_seconds", 30), ("restic_retry_lock", 0)):
                async with s.post("http://n/v1/settings", json={"key": key, "value": value}) as r:
                    assert r.status == 200 and (await r.json())[key] == value
    finally:
        await n.stop()
    again = Node(tmp_path / "d", opts)
    await again.start()
    try:
        assert again.engine is not None
        assert again.engine.runner.stall_after == 30.0 and again.engine.retry_lock == 0.0
    finally:
        await again.stop()
