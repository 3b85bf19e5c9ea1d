"""Peer text in a real node process's log stays one visible line (issue 11, peer-given strings).

The unit tests of core/text.py prove the formatter; this proves the node process really logs
through it. A real ``peerstash --no-gui`` process (alpha) asks a hostile in-process peer
(bravo) for a remote backup; bravo accepts it under an operation id it chose, holding a newline
that would forge a log line, a terminal escape, CR and a right-to-left override. Alpha logs
that it was accepted: the line must show those characters as ``\\uXXXX``, and no raw control
character may reach the log.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peerstash.peer.rpc import CallContext, _Method
from tests.adversarial.netnodes import LinkWatch
from tests.adversarial.netnodes import Node as ProcessNode
from tests.fixtures.nodes import MakeNode, token_for, wait_state

ESC, CR, RLO = "\x1b", "\r", "\u202e"
FORGED = "2026-12-05 09:00:00,000 INFO peerstash.peer.link: paired with mallory"
HOSTILE_OP = f"01HOSTILE\n{FORGED}{ESC}[2J{CR}{RLO}txt"


async def test_a_peer_chosen_operation_id_is_logged_inert_by_the_node_process(
    make_node: MakeNode, tmp_path: Path
) -> None:
    alpha = ProcessNode(tmp_path / "a-data", "alpha", timings="heartbeat=1,offline_after=4")
    await alpha.start()
    try:
        bravo = await make_node("bravo")
        assert bravo.rpc is not None and bravo.peer_url

        async def hostile_run(ctx: CallContext, args: Mapping[str, Any]) -> dict[str, Any]:
            return {"op_id": HOSTILE_OP, "status": "pending"}

        # Bravo turns hostile: its answer to remote.run is what no Peerstash node would send.
        bravo.rpc._methods["remote.run"] = _Method(hostile_run, "run")
        token = await token_for(bravo, grants=["run"])
        await alpha.cli_json("peer", "add", token, "--url", bravo.peer_url)
        await wait_state(bravo, "alpha", "online", 30)

        async with LinkWatch(alpha) as watch:
            await watch.wait("bravo", "online", 30)  # alpha's side of the link is up too
            await alpha.cli("remote", "run", "bravo", "docs", "--json")
            accepted = await watch.wait_remote("accepted", 20)
        rid = accepted["id"]
        expected = (
            f"bravo accepted request {rid} as operation 01HOSTILE\\u000a"
            + FORGED
            + "\\u001b[2J\\u000d\\u202etxt"
        )
        # What a person reads of the request shows the id inert too.
        shown = (await alpha.cli("remote", "list")).stdout
        assert "01HOSTILE\\u000a" in shown and ESC not in shown and CR not in shown, shown
        assert RLO not in shown
        # (the log line was written right after the accepted event, before that CLI ran)
        log = alpha.log_text()
        assert expected in log, log[-2000:]
        assert not any(line.startswith(FORGED) for line in log.splitlines())
        assert ESC not in log and CR not in log and RLO not in log
        # --json carries the id exactly, as valid JSON.
        raw = (await alpha.cli("remote", "list", "--json")).stdout
        assert json.loads(raw)[0]["remote_op_id"] == HOSTILE_OP
    finally:
        await alpha.stop()
