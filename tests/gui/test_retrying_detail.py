"""A backup that restic keeps retrying says why, in the window, while it runs: real restic,
a real REST storage behind a proxy that answers uploads with 500 (issue 10 part 5: "show
'retrying: <restic's reason>' in the op's detail and the tray")."""

from __future__ import annotations

from typing import Any

from tests.fixtures.gui import GuiEnv, QLoop, wait_for
from tests.fixtures.servers import RestServer
from tests.fixtures.trouble import TroubleProxy


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
        proxy = TroubleProxy(rest_server.url)
        await proxy.start()
        try:
            async with AdminClient(gui.data_dir) as client:
                await client.call(
                    "POST",
                    "/v1/repos",
                    {
                        "id": "nas",
                        "uri": f"rest:http://127.0.0.1:{proxy.port}/gui-retrying",
                        "password": {"source": "secret", "value": "retry-pw"},
                        "init": True,
                    },
                )
                await client.call(
                    "POST",
                    "/v1/plans",
                    {"id": "far", "repo": "nas", "paths": [str(gui.src)], "backup_now": False},
                )
                proxy.fail_data = True
                started = await client.call("POST", "/v1/plans/far/backup")
            op_id = str(started.get("op_id") or started.get("id"))

            def shown() -> str:
                row = ops.model.row_of(op_id)
                if row is None:
                    return ""
                op = ops.model.op_at(row)
                if op.status != "running":
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
            assert proxy.failed >= 1
            # The storage heals: the same backup ends well, and says so instead.
            proxy.fail_data = False
            await wait_for(
                lambda: (
                    (row := ops.model.row_of(op_id)) is not None
                    and ops.model.op_at(row).status == "success"
                ),
                ops.model.dataChanged,
                timeout=120,
                what="the backup to succeed",
            )
            row = ops.model.row_of(op_id)
            assert row is not None
            assert str(ops.model.data(ops.model.index(row, 7))).startswith("snapshot ")
        finally:
            await proxy.stop()

    qloop.run(body())
