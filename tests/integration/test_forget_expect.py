"""Retention confirmed from a list removes nothing beyond that list: ``POST
/v1/repos/ID/forget {"expect": [...]}`` with real restic (0.14 and 0.18) and a real repository."""

from __future__ import annotations

from pathlib import Path

from peerstash.core.models import OpStatus
from peerstash.peer.node import Node
from tests.fixtures.nodes import admin, backed_up


async def snapshot_ids(restic_node: Node) -> set[str]:
    assert restic_node.engine
    return {s.id for s in await restic_node.engine.snapshots("main")}


async def test_forget_removes_only_what_was_confirmed(restic_node: Node, tmp_path: Path) -> None:
    engine = restic_node.engine
    assert engine
    await backed_up(restic_node, tmp_path)
    for _ in range(2):
        op = await engine.wait((await engine.backup("p")).pk)
        assert op.status == OpStatus.SUCCESS, op.error
    await engine.update_plan("p", retention={"keep_last": 1})
    before = await snapshot_ids(restic_node)
    assert len(before) == 3
    status, dry = await admin(restic_node, "POST", "/v1/repos/main/forget", {"dry_run": True})
    assert status == 200
    shown = [s["id"] for s in dry["remove"]]
    assert len(shown) == 2

    # Confirmed only one of the two (the list the person saw was older): nothing is removed.
    status, res = await admin(restic_node, "POST", "/v1/repos/main/forget", {"expect": shown[:1]})
    assert status == 202, res
    op = await engine.wait(res["pk"])
    assert op.status == OpStatus.ERROR
    assert op.error and op.error.startswith("nothing was removed: retention would now also")
    assert shown[1][:8] in op.error
    assert await snapshot_ids(restic_node) == before

    # A body that is not a list of ids: refused, nothing queued.
    status, res = await admin(restic_node, "POST", "/v1/repos/main/forget", {"expect": "all"})
    assert (status, res) == (
        400,
        {"error": "field 'expect' must be a list of strings", "field": "expect"},
    )

    # Confirmed both: exactly those go.
    status, res = await admin(restic_node, "POST", "/v1/repos/main/forget", {"expect": shown})
    op = await engine.wait(res["pk"])
    assert op.status == OpStatus.SUCCESS, op.error
    assert before - await snapshot_ids(restic_node) == set(shown)
