"""The fleet's health as a node computes it: real in-process nodes, real links, real restic.

What a person sees is the ``health`` of ``GET /v1/status`` (the CLI and the tray show it).
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from peerstash.core.engine import BackupRunning, PasswordSpec
from peerstash.core.models import OpStatus
from peerstash.core.store import OpFilter, utcnow
from peerstash.peer.links.rpc import CallError
from peerstash.peer.node import Node
from tests.fixtures.gate import gated_password
from tests.fixtures.nodes import MakeNode, admin, change, converge, link
from tests.fixtures.sharing import link_b_gives_a, next_shares

PASSWORD = "health-test-password-5678"


async def health(node: Node) -> dict[str, Any]:
    status, st = await admin(node, "GET", "/v1/status")
    assert status == 200, st
    return dict(st["health"])


def reasons(h: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(r["level"], r["kind"], r.get("peer"), r.get("plan")) for r in h["reasons"]]


async def backup(node: Node, plan: str) -> str:
    assert node.engine
    op = await node.engine.wait((await node.engine.backup(plan)).pk)
    return op.status


async def test_fresh_plan_attention_then_ok_then_failing(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a = await make_node("a", restic_path=restic_bin)
    assert a.engine
    assert await health(a) == {"level": "ok", "summary": "ok", "reasons": []}
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("protect me\n")
    await a.engine.add_repo(
        "r1", str(tmp_path / "repo"), PasswordSpec("secret", value=PASSWORD), init=True
    )
    await a.engine.add_plan("docs", repo_id="r1", paths=[str(src)])
    h = await health(a)
    assert h["level"] == "attention" and h["summary"] == "attention — 1 thing needs a look"
    assert reasons(h) == [("attention", "never_succeeded", None, "docs")]
    assert h["reasons"][0]["message"] == "plan docs has never succeeded"

    assert await backup(a, "docs") == "success"
    assert (await health(a))["level"] == "ok"

    shutil.move(tmp_path / "repo", tmp_path / "gone")
    assert await backup(a, "docs") == "error"
    h = await health(a)
    assert reasons(h) == [("failing", "backup_failed", None, "docs")]
    assert h["reasons"][0]["message"].startswith("plan docs: last backup failed: ")

    # A run in progress does not hide the failure before it: still failing while it runs.
    op = await a.engine.backup("docs")
    running = await health(a)
    assert running["level"] == "failing"
    assert (await a.engine.wait(op.pk)).status == "error"

    # A plan the user disabled is their call: not reported.
    await a.engine.update_plan("docs", enabled=False)
    assert (await health(a))["level"] == "ok"


async def test_peer_failure_makes_this_node_failing_naming_the_machine(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    c = await make_node("c", restic_path=restic_bin)
    assert a.engine and b.engine
    await link(a, b, ["ops"])  # B receives A's operations
    await link(a, c, ["config.read"])  # C does not: A is not a machine C watches
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("laptop files\n")
    await a.engine.add_repo(
        "r1", str(tmp_path / "repo"), PasswordSpec("secret", value=PASSWORD), init=True
    )
    await a.engine.add_plan("home", repo_id="r1", paths=[str(src)])
    assert await backup(a, "home") == "success"
    await converge(a, b, ["ops"])
    assert (await health(b))["level"] == "ok"

    shutil.move(tmp_path / "repo", tmp_path / "gone")
    assert await backup(a, "home") == "error"
    await converge(a, b, ["ops"])
    h = await health(b)
    assert h["level"] == "failing"
    assert reasons(h) == [("failing", "peer_backup_failed", "a", "home")]
    assert h["reasons"][0]["message"].startswith("machine a, plan home: last backup failed: ")
    assert PASSWORD not in str(h)
    # C holds nothing of A's and does not watch it.
    assert (await health(c))["level"] == "ok"

    # Hostile: A's next operation carries a 3 kB (the wire allows 4), multi-line, escape-laden
    # error. B's reason stays one printable, bounded line (status --check promises one line).
    await change(
        a,
        repo="r1",
        plan="home",
        status=OpStatus.ERROR,
        error="first\nsecond\x1b[2J\x00" + "y" * 3_000,
    )
    await converge(a, b, ["ops"])
    (msg,) = [r["message"] for r in (await health(b))["reasons"]]
    assert msg.startswith("machine a, plan home: last backup failed: first second [2J")
    assert "\n" not in msg and "\x1b" not in msg and len(msg) < 300

    # A repairs: the next backup succeeds, and B goes back to ok.
    shutil.move(tmp_path / "gone", tmp_path / "repo")
    assert await backup(a, "home") == "success"
    await converge(a, b, ["ops"])
    assert (await health(b))["level"] == "ok"


async def test_peer_offline_longer_than_the_setting_needs_attention(make_node: MakeNode) -> None:
    a = await make_node("a")
    b = await make_node("b")
    await link(a, b, ["ops"])
    assert b.engine and a.peers
    await a.stop()
    # B notices (its link closes) and records when it last saw A.
    store = b.engine.store
    with b.bus.subscribe("link") as sub:
        async with asyncio.timeout(15):
            while (await store.get_peer("a")).state == "online":
                await sub.get()
    peer = await store.get_peer("a")
    assert peer.last_seen is not None
    assert (await health(b))["level"] == "ok"  # the default (2 days) is far away

    # A tiny setting: A has been away longer than that (its last sighting 10 s back).
    await store.update_peer("a", last_seen=utcnow() - timedelta(seconds=10))
    status, _ = await admin(b, "POST", "/v1/settings", {"key": "peer_offline_after", "value": 5})
    assert status == 200
    h = await health(b)
    assert reasons(h) == [("attention", "peer_offline", "a", None)]
    assert h["reasons"][0]["message"].startswith("machine a: not seen for 10 seconds")
    # A bad value is refused in words; nothing changes.
    status, err = await admin(b, "POST", "/v1/settings", {"key": "peer_offline_after", "value": -1})
    assert status == 400 and err["error"] == "peer_offline_after is a number of seconds above 0"
    assert await store.get_setting("peer_offline_after") == 5


async def test_skipped_share_needs_attention(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    assert a.engine and b.engine
    await a.engine.add_repo(
        "r1", str(tmp_path / "repo1"), PasswordSpec("secret", value=PASSWORD), init=True
    )
    await a.engine.share_repo("r1")
    # B already has that restic repository as its own, under another name.
    await b.engine.add_repo("mine", str(tmp_path / "repo1"), PasswordSpec("secret", value=PASSWORD))
    got = next_shares(b, "a")
    await link_b_gives_a(a, b, ["repos.receive"])
    assert list((await got).skipped) == ["r1@a"]
    h = await health(b)
    assert h["level"] == "attention"
    assert [(r["kind"], r["repo"]) for r in h["reasons"]] == [("share_skipped", "r1@a")]
    assert "repository mine (our own) is the same restic repository" in h["reasons"][0]["message"]


async def test_backup_now_twice_queues_one_and_plan_add_backs_up_first(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a = await make_node("a", restic_path=restic_bin)
    assert a.engine
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("once\n")
    await a.engine.add_repo(
        "r1", str(tmp_path / "repo"), PasswordSpec("secret", value=PASSWORD), init=True
    )
    # Admin API: a new plan's first backup starts unless asked not to.
    status, plan = await admin(
        a, "POST", "/v1/plans", {"id": "docs", "repo": "r1", "paths": [str(src)]}
    )
    # Its repository's queue is free: created running (one write), not pending then running.
    assert status == 201 and plan["first_backup"]["status"] == "running"
    first = plan["first_backup"]["id"]
    # Pressed again at once: the same operation is answered, nothing more is queued.
    status, again = await admin(a, "POST", "/v1/plans/docs/backup")
    assert status == 200 and again["id"] == first
    assert again["already"] in (
        f"plan docs is already queued (operation {first})",
        f"plan docs is already running (operation {first})",
    )
    (only,) = await a.engine.store.list_operations(OpFilter(plan_id="docs", kind="backup"))
    assert only.op_id == first and (await a.engine.wait(only.pk)).status == "success"
    # The engine refuses a second while one is unfinished, whoever asks (schedule, peer, tray).
    op = await a.engine.backup("docs")
    try:
        await a.engine.backup("docs")
        raise AssertionError("a second backup was queued")
    except BackupRunning as exc:
        assert exc.op.op_id == op.op_id
    await a.engine.wait(op.pk)

    status, plan = await admin(
        a,
        "POST",
        "/v1/plans",
        {"id": "later", "repo": "r1", "paths": [str(src)], "backup_now": False},
    )
    assert status == 201 and "first_backup" not in plan
    assert await a.engine.store.list_operations(OpFilter(plan_id="later")) == []
    status, err = await admin(
        a, "POST", "/v1/plans", {"id": "x", "repo": "r1", "paths": ["/x"], "backup_now": "yes"}
    )
    assert status == 400 and err["error"] == "field 'backup_now' must be true or false"


async def test_a_peer_asking_for_a_backup_already_running_is_told_so(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    """Across the link too: a peer's ``remote run`` during a backup of that plan starts nothing."""
    a = await make_node("alpha", restic_path=restic_bin)
    b = await make_node("bravo", restic_path=restic_bin)
    await link(a, b, ["run"])
    assert a.engine and b.rpc
    script, gate = gated_password(tmp_path, PASSWORD)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("held\n")
    gate.touch()
    await a.engine.add_repo(
        "r1", str(tmp_path / "repo"), PasswordSpec("command", ref=str(script)), init=True
    )
    gate.unlink()  # from here restic waits for the gate: the backup stays running
    await a.engine.add_plan("docs", repo_id="r1", paths=[str(src)])
    held = await a.engine.backup("docs")

    with pytest.raises(CallError) as err:
        await b.rpc.call("alpha", "remote.run", {"request_id": "busy-1", "plan": "docs"})
    assert err.value.message in (
        f"plan docs is already running (operation {held.op_id})",
        f"plan docs is already queued (operation {held.op_id})",
    )
    ops = await a.engine.store.list_operations(OpFilter(plan_id="docs", kind="backup"))
    assert [o.op_id for o in ops] == [held.op_id]

    gate.touch()
    assert (await a.engine.wait(held.pk)).status == "success"
    res = await b.rpc.call("alpha", "remote.run", {"request_id": "busy-2", "plan": "docs"})
    assert res["again"] is False and res["op_id"] != held.op_id
    ops = await a.engine.store.list_operations(OpFilter(plan_id="docs", kind="backup"))
    assert len(ops) == 2


async def test_refused_share_needs_attention(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    """A hostile (or confused) owner sends a repository our grant does not cover: B refuses it,
    stores nothing, and its health says so until the owner stops."""
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    assert a.engine and b.engine
    await a.engine.add_repo(
        "r1", str(tmp_path / "repo1"), PasswordSpec("secret", value=PASSWORD), init=True
    )
    got = next_shares(b, "a")
    await link_b_gives_a(a, b, ["repos.receive:repo:other"])
    assert (await got).offered == 0
    assert (await health(b))["level"] == "ok"
    await a.engine.store.update_peer("b", their_grants=["repos.receive:*"])  # A's wrong belief
    got = next_shares(b, "a")
    await a.engine.share_repo("r1")
    assert (await got).refused == ["r1"]
    assert await b.engine.list_repos() == []
    h = await health(b)
    assert [(r["level"], r["kind"], r.get("peer")) for r in h["reasons"]] == [
        ("attention", "share_refused", "a")
    ]
    assert PASSWORD not in str(h)
    # The owner stops sharing it: the next push holds nothing refused, and B is ok again.
    got = next_shares(b, "a")
    await a.engine.unshare_repo("r1")
    assert (await got).refused == []
    assert (await health(b))["level"] == "ok"
