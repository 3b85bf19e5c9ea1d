"""Peer text in a real node process's log stays one visible line (issue 11, peer-given strings).

The unit tests of core/text.py prove the formatter; this proves the node process really logs
through it. A real ``peerstash --no-gui`` process (alpha) asks a hostile in-process peer
(bravo) for remote backups. Bravo first accepts one under an operation id it chose, holding a
newline that would forge a log line, a terminal escape, CR and a right-to-left override: alpha
refuses that answer (an operation id from a peer is a plain id). Then bravo refuses one with
such a text as its reason: alpha keeps and logs the reason, and the log line must show those
characters as ``\\uXXXX``; no raw control character may reach the log or ``remote list``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peerstash.peer.links import protocol as proto
from peerstash.peer.links.rpc import CallContext, CallError, _Method
from tests.fixtures.netnodes import LinkWatch
from tests.fixtures.netnodes import Node as ProcessNode
from tests.fixtures.nodes import MakeNode, token_for, wait_state

ESC, CR, RLO = "\x1b", "\r", "\u202e"
FORGED = "2026-12-05 09:00:00,000 INFO peerstash.peer.links.link: paired with mallory"
HOSTILE = f"\n{FORGED}{ESC}[2J{CR}{RLO}txt"
SHOWN = "\\u000a" + FORGED + "\\u001b[2J\\u000d\\u202etxt"


async def test_peer_text_is_logged_inert_by_the_node_process_and_an_unplain_op_id_refused(
    make_node: MakeNode, tmp_path: Path
) -> None:
    alpha = ProcessNode(tmp_path / "a-data", "alpha", timings="heartbeat=1,offline_after=4")
    await alpha.start()
    try:
        bravo = await make_node("bravo")
        assert bravo.rpc is not None and bravo.peer_url
        answers: list[str] = ["op id", "refusal"]

        async def hostile_run(ctx: CallContext, args: Mapping[str, Any]) -> dict[str, Any]:
            if answers.pop(0) == "op id":
                return {"op_id": "01HOSTILE" + HOSTILE, "status": "pending"}
            raise CallError(proto.ErrorCode.FORBIDDEN, "no" + HOSTILE)

        # Bravo turns hostile: its answers to remote.run are what no Peerstash node would send.
        bravo.rpc._methods["remote.run"] = _Method(hostile_run, "run")
        token = await token_for(bravo, grants=["run"])
        await alpha.cli_json("peer", "add", token, "--url", bravo.peer_url)
        await wait_state(bravo, "alpha", "online", 30)

        async with LinkWatch(alpha) as watch:
            await watch.wait("bravo", "online", 30)  # alpha's side of the link is up too
            said_first = await alpha.cli("remote", "run", "bravo", "docs", check=False)
            first = await watch.wait_remote("failed", 20)
            watch.remote.clear()
            said = await alpha.cli("remote", "run", "bravo", "docs", check=False)
            second = await watch.wait_remote("failed", 20)
        assert said_first.code == 1 and "in a way not understood" in said_first.stderr
        # What the person running the command reads: the reason, inert.
        assert said.code == 1 and "bravo refused: no" + SHOWN in said.stderr, said.stderr
        assert not any(c in said.stderr + said.stdout for c in (ESC, CR, RLO))
        # The operation id that is not a plain id is refused, not stored.
        assert first["error"] == "bravo answered the request in a way not understood"
        assert first["remote_op_id"] is None
        # The refusal's text is kept exactly (as --json shows) ...
        assert second["error"] == "bravo refused: no" + HOSTILE
        raw = (await alpha.cli("remote", "list", "--json")).stdout
        assert json.loads(raw)[0]["error"] == "bravo refused: no" + HOSTILE
        # ... and shown inert to a person.
        shown = (await alpha.cli("remote", "list")).stdout
        assert "bravo refused: no" + SHOWN in shown, shown
        assert ESC not in shown and CR not in shown and RLO not in shown
        # The node process logged it on one line, inert (written before that CLI ran).
        log = alpha.log_text()
        assert f"remote request {second['id']}: bravo refused: no{SHOWN}" in log, log[-2000:]
        assert not any(line.startswith(FORGED) for line in log.splitlines())
        assert ESC not in log and CR not in log and RLO not in log
    finally:
        await alpha.stop()
