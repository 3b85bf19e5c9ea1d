"""The admin API's streaming helpers (peer/api/common.py) over a real aiohttp server on a socket.

Every NDJSON route (wait, follow, events, the remote ones) writes through ``ndjson()``/``send()``
and waits with ``keepalive()``; a quiet stream must still say ``{}`` every period, or clients
(the quick client, the tray) take the node for stuck and give up.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from peerstash.core.events import EventBus, Notice
from peerstash.peer.api import common


async def test_a_quiet_stream_sends_keep_alives_then_the_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "KEEPALIVE", 0.1)
    bus = EventBus()
    waits: list[str] = []

    async def follow(request: web.Request) -> web.StreamResponse:
        resp = await common.ndjson(request)
        with bus.subscribe("notice") as sub:
            await common.send(resp, {"type": "ready"})
            while True:
                event = await common.keepalive(sub, resp)
                if event is None:
                    waits.append("keep-alive")
                    continue
                assert isinstance(event, Notice)
                await common.send(resp, {"type": "notice", "message": event.message})
                break
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/v1/follow", follow)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    sock = tmp_path / "admin.sock"
    await web.UnixSite(runner, str(sock)).start()
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as session,
            session.get("http://node/v1/follow") as resp,
        ):
            assert resp.headers["Content-Type"] == "application/x-ndjson"
            async with asyncio.timeout(10):
                assert json.loads(await resp.content.readline()) == {"type": "ready"}
                # Nothing happens: within a period or two the node says it is alive.
                assert await resp.content.readline() == b"{}\n"
                assert await resp.content.readline() == b"{}\n"
                bus.publish(Notice(level="info", message="still here"))
                rest = [json.loads(line) async for line in resp.content if line != b"{}\n"]
        assert rest == [{"type": "notice", "message": "still here"}]
        assert len(waits) >= 2
    finally:
        await runner.cleanup()
