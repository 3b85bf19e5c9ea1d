"""A backup that restic keeps retrying says why, in the window, while it runs: real restic,
a real REST storage behind a proxy that answers uploads with 500 (issue 10 part 5: "show
'retrying: <restic's reason>' in the op's detail and the tray")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from tests.fixtures.servers import RestServer
from tests.gui.conftest import GuiEnv, QLoop, wait_for


@asynccontextmanager
async def failing_uploads(upstream: str) -> AsyncIterator[dict[str, Any]]:
    """A proxy to ``upstream`` on 127.0.0.1; while ``state["fail"]``, pack uploads get 500."""
    state: dict[str, Any] = {"fail": False, "failed": 0}
    client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if state["fail"] and request.method == "POST" and "/data/" in request.path:
            state["failed"] += 1
            return web.Response(status=500, text="disk on fire\n")
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "content-length", "transfer-encoding")
        }
        async with client.request(
            request.method, upstream + request.path_qs, data=body, headers=headers
        ) as up:
            data = await up.read()
            if request.method == "HEAD":
                head = web.Response(status=up.status)
                head.headers["Content-Length"] = up.headers.get("Content-Length", "0")
                return head
            passed = {
                k: v
                for k, v in up.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
            }
            return web.Response(status=up.status, body=data, headers=passed)

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state["port"] = runner.addresses[0][1]
    try:
        yield state
    finally:
        await runner.cleanup()
        await client.close()


def test_a_retrying_backup_shows_restics_reason_in_the_window(
    gui: GuiEnv, qloop: QLoop, qtbot: Any, rest_server: RestServer
) -> None:
    from peerstash.peer.cli import AdminClient

    w = gui.window
    qtbot.addWidget(w)
    ops = w.operations

    async def body() -> None:
        w.show_page(ops)
        await ops.model.tasks.idle()
        async with failing_uploads(rest_server.url) as proxy:
            async with AdminClient(gui.data_dir) as client:
                await client.call(
                    "POST",
                    "/v1/repos",
                    {
                        "id": "nas",
                        "uri": f"rest:http://127.0.0.1:{proxy['port']}/gui-retrying",
                        "password": {"source": "secret", "value": "retry-pw"},
                        "init": True,
                    },
                )
                await client.call(
                    "POST",
                    "/v1/plans",
                    {"id": "far", "repo": "nas", "paths": [str(gui.src)], "backup_now": False},
                )
                proxy["fail"] = True
                started = await client.call("POST", "/v1/plans/far/backup")
            op_id = str(started.get("op_id") or started.get("id"))

            def shown() -> str:
                row = ops.model.row_of(op_id)
                if row is None:
                    return ""
                op = ops.model.op_at(row)
                if op.get("status") != "running":
                    return ""
                return str(ops.model.data(ops.model.index(row, 7)) or "")

            text = await wait_for(
                lambda: shown().startswith("retrying: ") and shown(),
                ops.model.dataChanged,
                ops.model.rowsInserted,
                timeout=90,
                what="a retrying detail",
            )
            assert "500" in text, text
            assert proxy["failed"] >= 1
            # The storage heals: the same backup ends well, and says so instead.
            proxy["fail"] = False
            await wait_for(
                lambda: (
                    (row := ops.model.row_of(op_id)) is not None
                    and ops.model.op_at(row).get("status") == "success"
                ),
                ops.model.dataChanged,
                timeout=120,
                what="the backup to succeed",
            )
            row = ops.model.row_of(op_id)
            assert row is not None
            assert str(ops.model.data(ops.model.index(row, 7))).startswith("snapshot ")

    qloop.run(body())
