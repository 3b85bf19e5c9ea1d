"""The desktop's NDJSON reader against a real aiohttp server on the admin socket path.

A stream the node keeps alive must never leave a window showing a frozen picture: silence
longer than the keep-alive period ends it with words, so the caller reopens it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from peerstash.desktop.api import ApiError
from peerstash.peer.api.client import AdminClient
from tests.fixtures.standin import serve_admin


async def serve(data_dir: Path, handler: web.RequestHandler) -> web.AppRunner:  # type: ignore[type-arg]
    app = web.Application()
    app.router.add_get("/v1/events", handler)
    return await serve_admin(data_dir, app)


async def test_a_silent_stream_ends_with_words_and_lines_before_it_arrive(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def stuck_after_ready(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b'{"type": "ready"}\n{}\n')
        await release.wait()  # then nothing at all, not even a keep-alive
        return resp

    runner = await serve(tmp_path, stuck_after_ready)
    try:
        got = []
        async with AdminClient(tmp_path) as client:
            with pytest.raises(ApiError) as err:
                async for obj in client.stream("/v1/events", idle_timeout=0.3):
                    got.append(obj)
        assert got == [{"type": "ready"}]  # the keep-alive is skipped, not yielded
        assert "said nothing for 0.3s" in str(err.value)
    finally:
        release.set()
        await runner.cleanup()


async def test_keep_alives_hold_a_quiet_stream_open(tmp_path: Path) -> None:
    async def quiet_but_alive(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(5):
            await resp.write(b"{}\n")
            await asyncio.sleep(0.1)  # the server's keep-alive period, shortened
        await resp.write(b'{"type": "notice", "message": "still here"}\n')
        return resp

    runner = await serve(tmp_path, quiet_but_alive)
    try:
        async with AdminClient(tmp_path) as client:
            got = [obj async for obj in client.stream("/v1/events", idle_timeout=0.3)]
        assert got == [{"type": "notice", "message": "still here"}]
    finally:
        await runner.cleanup()
