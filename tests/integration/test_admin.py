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
    ("body", "message", "field"),
    [
        (b"{not json", "request body is not valid JSON", None),
        (b"[1, 2]", "request body must be a JSON object", None),
        (
            b'{"id": 5, "uri": "/x", "password": {"source": "secret", "value": "p"}}',
            "field 'id' must be a string",
            "id",
        ),
        (
            b'{"id": "r", "uri": "/x"}',
            "missing field 'password' (an object with 'source')",
            "password",
        ),
        (
            b'{"id": "r", "uri": "/x", "password": {"source": "secret", "value": "p"}, "env": [1]}',
            "field 'env' must map names to strings",
            "env",
        ),
        (b"\xff\xfe\x00garbage", "request body is not valid JSON", None),
    ],
)
async def test_garbage_bodies_get_one_clear_sentence(
    node: Node, body: bytes, message: str, field: str | None
) -> None:
    """One sentence, and the request field it is about when there is one (a form marks it)."""
    async with session(node) as s, s.post("http://n/v1/repos", data=body) as r:
        assert r.status == 400
        assert await r.json() == ({"error": message} | ({"field": field} if field else {}))
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


async def test_a_refusal_names_the_field_it_is_about(
    node: Node, restic_bin: str, tmp_path: Path
) -> None:
    """What the engine refuses (restic could not open it, a relative path, a bad schedule, a
    repository that is gone) names the request field, so the tray marks that field."""
    assert node.engine
    node.engine.restic_path = restic_bin
    repo = tmp_path / "repo"
    good = {"source": "secret", "value": "right-password"}
    async with session(node) as s:

        async def refused(path: str, body: dict[str, object]) -> tuple[str, str | None]:
            async with s.post(f"http://n{path}", json=body) as r:
                assert r.status == 409, await r.text()
                answer = await r.json()
                return answer["error"], answer.get("field")

        # restic finds no repository there (no init): the location is wrong.
        msg, field = await refused("/v1/repos", {"id": "r", "uri": str(repo), "password": good})
        assert field == "uri" and "there is no restic repository at" in msg
        async with s.post(
            "http://n/v1/repos", json={"id": "r", "uri": str(repo), "password": good, "init": True}
        ) as r:
            assert r.status == 201
        wrong = {"source": "secret", "value": "wrong-password"}
        msg, field = await refused("/v1/repos", {"id": "r2", "uri": str(repo), "password": wrong})
        assert field == "password", msg
        msg, field = await refused("/v1/repos", {"id": "r", "uri": str(repo), "password": good})
        assert field == "id" and msg == "a repository named 'r' already exists"

        plan = {"id": "p", "repo": "r", "paths": ["/abs"], "backup_now": False}
        for change, expected in (
            ({"paths": ["relative/dir"]}, "paths"),
            ({"every": "soon"}, "schedule"),
            ({"schedule": "61 * * * *"}, "schedule"),
            ({"repo": "gone"}, "repo"),
            ({"id": "-p"}, "id"),
        ):
            msg, field = await refused("/v1/plans", plan | change)
            assert field == expected, (change, msg)
    assert [p.id for p in await node.engine.list_plans()] == []
    assert [r.id for r in await node.engine.list_repos()] == ["r"]
