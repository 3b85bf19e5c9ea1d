"""An operation whose queue is free is created ``running`` (one store write at its start);
one that has to wait is ``pending`` and starts when its turn comes (core/runner.py
``claim_start``). Real node, real restic, real SQLite; a gated password holds a backup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from peerstash.core.engine import PasswordSpec
from peerstash.core.events import OperationChanged
from tests.fixtures.gate import gated_password
from tests.fixtures.nodes import MakeNode

PASSWORD = "correct-horse-battery-staple"


def statuses(events: list[Any], pk: int) -> list[str]:
    """The statuses one operation went through, as its events said them (repeats folded)."""
    out: list[str] = []
    for ev in events:
        if isinstance(ev, OperationChanged) and ev.op.pk == pk:
            if not out or out[-1] != ev.op.status:
                out.append(ev.op.status)
    return out


async def test_a_free_queue_starts_running_a_busy_one_waits_pending(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a = await make_node("a", restic_path=restic_bin, max_parallel=1)
    assert a.engine
    engine = a.engine
    script, gate = gated_password(tmp_path, PASSWORD)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("held\n")
    gate.touch()
    await engine.add_repo(
        "r1", str(tmp_path / "repo1"), PasswordSpec("command", ref=str(script)), init=True
    )
    await engine.add_repo(
        "r2", str(tmp_path / "repo2"), PasswordSpec("secret", value=PASSWORD), init=True
    )
    gate.unlink()  # from here restic on r1 waits for the gate: its backup stays running
    for plan, repo in (("p1", "r1"), ("p1b", "r1"), ("p2", "r2")):
        await engine.add_plan(plan, repo_id=repo, paths=[str(src)])

    events: list[Any] = []
    with a.bus.subscribe("operation") as sub:
        held = await engine.backup("p1")
        # Nothing queued, a slot free: created running, in the store as in the answer.
        assert held.status == "running" and held.started_at is not None
        assert (await engine.store.get_operation(held.pk)).status == "running"
        same_repo = await engine.backup("p1b")  # behind p1 in r1's queue
        no_slot = await engine.backup("p2")  # r2 is free, but max_parallel=1 is taken
        assert (same_repo.status, no_slot.status) == ("pending", "pending")
        assert same_repo.started_at is None and no_slot.started_at is None
        gate.touch()
        done = {op.pk: await engine.wait(op.pk) for op in (held, same_repo, no_slot)}
        while not sub.queue.empty():
            events.append(sub.queue.get_nowait())
        assert not sub.lagged
    assert all(op.status == "success" for op in done.values()), done
    assert statuses(events, held.pk) == ["running", "success"]
    assert statuses(events, same_repo.pk) == ["pending", "running", "success"]
    assert statuses(events, no_slot.pk) == ["pending", "running", "success"]
    first = done[held.pk]
    assert first.ended_at is not None
    for waited in (done[same_repo.pk], done[no_slot.pk]):
        assert waited.started_at is not None and waited.started_at >= first.ended_at

    # Every queue idle again: the next backup starts running at once (no claim was kept).
    again = await engine.backup("p2")
    assert again.status == "running"
    assert (await engine.wait(again.pk)).status == "success"
    # A peer's request (a flow id) is answered pending even so: the peer says "accepted" on
    # that answer before the synced operation says "running".
    asked = await engine.backup("p2", flow_id="request-1")
    assert asked.status == "pending" and asked.flow_id == "request-1"
    assert (await engine.wait(asked.pk)).status == "success"


async def test_a_claim_is_given_back_when_the_operation_cannot_be_created(
    make_node: MakeNode, restic_bin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await make_node("a", restic_path=restic_bin, max_parallel=1)
    assert a.engine
    engine = a.engine
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("x\n")
    await engine.add_repo(
        "r1", str(tmp_path / "repo1"), PasswordSpec("secret", value=PASSWORD), init=True
    )
    await engine.add_plan("p1", repo_id="r1", paths=[str(src)])
    real = engine.store.create_operation

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(engine.store, "create_operation", failing)
    with pytest.raises(OSError, match="disk full"):
        await engine.backup("p1")
    monkeypatch.setattr(engine.store, "create_operation", real)
    op = await engine.backup("p1")
    assert op.status == "running"
    assert (await engine.wait(op.pk)).status == "success"
