"""Text a peer chooses (its instance id, plan and repository ids, error messages, close
reasons) never steers a terminal, a log or a listing.

Real in-process nodes linked over 127.0.0.1, a hostile side that sends what a Peerstash node
never would, and the real CLI run against the receiving node. Refused input leaves nothing
stored; accepted free text is stored as sent and shown inert (``\\u001b``), while ``--json``
stays valid JSON that carries the text exactly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from typing import Any

import pytest

from peerstash.core.logformat import PrintableFormatter, use_printable_log_lines
from peerstash.core.store import OpFilter
from peerstash.core.text import printable
from peerstash.peer.links import protocol as proto
from peerstash.peer.links.link import LinkStateChanged, PairingError
from peerstash.peer.links.rpc import CallError
from peerstash.peer.node import Node
from peerstash.peer.services.opsync import OpsSynced
from peerstash.peer.trust.tokens import parse_token
from tests.fixtures.nodes import MakeNode, link, store_of, token_for
from tests.fixtures.nodes import record as base_record
from tests.fixtures.processes import PEERSTASH

ESC, CR, RLO, BEL, NEL, LRI, DEL = "\x1b", "\r", "\u202e", "\x07", "\x85", "\u2066", "\x7f"
HOSTILE = f"boom{ESC}[2J{ESC}]52;c;cGF3bmVk{BEL}{CR}all good {RLO}exe.txt{LRI}{NEL}{DEL}"
RAW = (ESC, CR, RLO, BEL, NEL, LRI, DEL)


def no_raw_controls(text: str) -> bool:
    return not any(c in text for c in RAW)


async def cli(node: Node, *args: str) -> tuple[int, str, str]:
    """The real CLI against an in-process node (a subprocess, so the node's loop keeps going)."""
    proc = await asyncio.create_subprocess_exec(
        *PEERSTASH,
        "--data-dir",
        str(node.data_dir),
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def record(
    op_id: str, *, plan: str | None = "p1", repo: str | None = "r1", **kw: Any
) -> proto.OpRecord:
    """A failed backup as a peer would sync it (fixtures' ``record`` with this test's fields)."""
    return base_record(
        op_id,
        status="error",
        plan_id=plan,
        repo_id=repo,
        created_at="2026-11-23 05:05:41.906297",
        started_at="2026-11-23 05:05:42.000000",
        ended_at="2026-11-23 05:06:42.000000",
        **kw,
    )


@pytest.mark.parametrize(
    "claimed",
    [f"evil{ESC}[2J", f"evil{CR}alpha", f"{RLO}lanimret", "two words", "alpha"],
    ids=["esc", "cr", "rlo", "space", "our-own-id"],
)
async def test_a_hello_with_an_unusable_or_our_own_instance_id_is_refused(
    make_node: MakeNode, claimed: str, caplog: pytest.LogCaptureFixture
) -> None:
    a = await make_node("alpha")
    b = await make_node("bravo")
    assert b.peers and a.peer_url
    token = parse_token(await token_for(a, grants=["ops"]))
    # What a hostile node sends: a real handshake, then a Hello with the id it chose.
    hello = proto.Hello(instance_id=claimed, pairing_secret=token.secret)
    with pytest.raises(PairingError):
        await b.peers._dial(a.peer_url, expected_key_id=token.key_id, hello=hello)
    why = "own instance id" if claimed == "alpha" else "unusable instance id"
    assert any(
        why in r.getMessage() for r in caplog.records if r.name == "peerstash.peer.links.link"
    )
    # A stored nothing: no peer, and the token was not spent.
    assert await store_of(a).list_peers() == []
    assert len(await store_of(a).list_tokens()) == 1


async def test_synced_ops_with_hostile_ids_are_skipped_and_free_text_is_shown_inert(
    make_node: MakeNode,
) -> None:
    a = await make_node("alpha")
    b = await make_node("bravo")
    with a.bus.subscribe("sync") as sub:
        await link(a, b, [], ["ops"])
        # The first exchange ends with a digest comparison; only after it is what follows
        # not undone by a repair (bravo owns its operations and would delete the extra one).
        async with asyncio.timeout(10):
            while not (isinstance(ev := await sub.get(), OpsSynced) and ev.in_sync):
                pass
    assert b.peers is not None
    to_a = b.peers.links["alpha"]
    batch = proto.OpsBatch(
        origin="bravo",
        ops=(
            record("01GOOD", error=HOSTILE),
            record("01BADPLAN", plan=f"p{ESC}[31m"),
            record("01BADREPO", repo=f"{RLO}exe.r1"),
            record(f"01BAD{CR}ID"),
            record("01BADFLOW", flow_id=f"f{BEL}"),
            record("01BADSNAP", snapshot_id=f"{LRI}abc"),
        ),
        done=True,
    )
    with a.bus.subscribe("sync") as sub:
        await to_a.send(batch)
        async with asyncio.timeout(10):
            while not isinstance(ev := await sub.get(), OpsSynced) or not ev.stored:
                pass
    assert ev.stored == 1
    stored = await store_of(a).list_operations(OpFilter(origin="bravo"))
    assert [(op.op_id, op.error) for op in stored] == [("01GOOD", HOSTILE)]

    code, out, err = await cli(a, "ops", "--origin", "bravo")
    assert code == 0, err
    assert "01GOOD" in out and no_raw_controls(out)
    assert "boom\\u001b[2J" in out and "\\u202eexe.txt" in out
    code, out, err = await cli(a, "ops", "--origin", "bravo", "--json")
    assert code == 0, err
    assert [op["error"] for op in json.loads(out)] == [HOSTILE]  # exact, and valid JSON
    assert no_raw_controls(out)  # JSON escapes them


async def test_a_close_reason_from_a_peer_reaches_peer_list_inert(make_node: MakeNode) -> None:
    a = await make_node("alpha")
    b = await make_node("bravo")
    await link(a, b, [])
    assert b.peers is not None
    with a.bus.subscribe("link") as sub:
        # The hostile side forgets alpha (so its dialer does not come back and the reason
        # stays on show), then says goodbye with a reason of its choosing.
        await store_of(b).delete_peer("alpha")
        await b.peers.links["alpha"].send(proto.Close(reason=f"bye{ESC}[2J{RLO}"))
        async with asyncio.timeout(10):
            while not (
                isinstance(ev := await sub.get(), LinkStateChanged)
                and ev.peer_id == "bravo"
                and ev.state == "offline"
            ):
                pass
    assert ev.reason == f"closed by peer: bye{ESC}[2J{RLO}"
    code, out, err = await cli(a, "peer", "list")
    assert code == 0, err
    assert "closed by peer: bye\\u001b[2J\\u202e" in out
    assert no_raw_controls(out)
    code, out, err = await cli(a, "peer", "list", "--json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["state_reason"] == f"closed by peer: bye{ESC}[2J{RLO}"


def test_printable_escapes_controls_and_keeps_ordinary_text() -> None:
    assert printable("plain-id_1.2") == "plain-id_1.2"
    assert printable("Zürich 東京 ünïcödé") == "Zürich 東京 ünïcödé"
    assert printable(HOSTILE) == (
        "boom\\u001b[2J\\u001b]52;c;cGF3bmVk\\u0007\\u000dall good \\u202eexe.txt\\u2066"
        "\\u0085\\u007f"
    )
    assert printable("a\u200bb\ufeffc\u2028d") == "a\\u200bb\\ufeffc\\u2028d"
    assert printable("\U000e0041") == "\\U000e0041"  # a tag character (Cf) outside the BMP


def test_log_lines_with_peer_text_stay_one_visible_line() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    try:
        use_printable_log_lines()
        assert isinstance(handler.formatter, PrintableFormatter)
        rec = logging.LogRecord(
            "peerstash.peer.links.link",
            logging.WARNING,
            __file__,
            1,
            "refused link from %s: %s",
            ("10.0.0.9", f"evil\nINFO forged line{ESC}[2J{RLO}"),
            None,
        )
        line = handler.format(rec)
    finally:
        root.removeHandler(handler)
    assert line == (
        "WARNING peerstash.peer.links.link: refused link from 10.0.0.9: "
        "evil\\u000aINFO forged line\\u001b[2J\\u202e"
    )


async def test_a_remote_request_id_that_is_not_a_plain_id_is_refused(make_node: MakeNode) -> None:
    """The id becomes the flow id of the answering node's operation, which syncs onwards."""
    a = await make_node("alpha")
    b = await make_node("bravo")
    await link(a, b, ["run"])
    assert b.rpc is not None
    with pytest.raises(CallError) as err:
        await b.rpc.call("alpha", "remote.run", {"request_id": f"r{ESC}[2J", "plan": "p1"})
    assert err.value.code == proto.ErrorCode.BAD_REQUEST
    assert "request_id" in err.value.message
    assert await store_of(a).list_operations(OpFilter(origin="alpha")) == []


def test_a_traceback_quoting_peer_text_keeps_its_lines_but_no_control() -> None:
    """An exception message can quote a peer (``ValueError(f"bad id {peer_id}")``): its
    traceback keeps its line breaks, but no escape, CR or bidi character reaches the log."""
    handler = logging.StreamHandler()
    handler.setFormatter(PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
    try:
        raise ValueError(f"bad id evil{ESC}[2J{CR}ok{RLO}txt")
    except ValueError:
        rec = logging.LogRecord(
            "peerstash.peer.links.rpc",
            logging.ERROR,
            __file__,
            1,
            "answering %s failed",
            ("x",),
            None,
        )
        rec.exc_info = sys.exc_info()
    text = handler.format(rec)
    lines = text.split("\n")
    assert lines[0] == "ERROR peerstash.peer.links.rpc: answering x failed"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: bad id evil\\u001b[2J\\u000dok\\u202etxt"
    assert no_raw_controls(text.replace("\n", ""))
