"""The store against both backends: SQLite in a data dir, and a real PostgreSQL."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from peerstash.core.models import OpKind, OpStatus, Plan
from peerstash.core.secrets import SecretError, SecretStore, load_or_create_key
from peerstash.core.store import (
    LOG_HEAD,
    LOG_TAIL,
    AlreadyExists,
    NotFound,
    OpFilter,
    Store,
    StoreError,
    repo_record,
    utcnow,
)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s = await Store.open(data_dir=tmp_path / "data")
    else:
        url = request.getfixturevalue("fresh_pg_url")
        s = await Store.open(url)
    s.local_origin = "laptop"
    try:
        yield s
    finally:
        await s.close()


async def test_sqlite_files_are_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    s = await Store.open(data_dir=data)
    s.local_origin = "x"
    await s.create_operation(OpKind.BACKUP)
    try:
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        files = [p for p in data.iterdir() if p.name.startswith("peerstash.db")]
        assert {p.name for p in files} >= {"peerstash.db", "peerstash.db-wal"}
        for p in files:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        async with s.engine.connect() as conn:
            mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
        assert mode == "wal"
    finally:
        await s.close()


async def test_modno_is_monotonic_per_origin_and_survives_reopen(tmp_path: Path) -> None:
    s = await Store.open(data_dir=tmp_path)
    s.local_origin = "laptop"
    a = await s.create_operation(OpKind.BACKUP, plan_id="p")
    b = await s.create_operation(OpKind.BACKUP, plan_id="p")
    a2 = await s.update_operation(a.pk, status=OpStatus.RUNNING)
    assert [a.modno, b.modno, a2.modno] == [1, 2, 3]
    await s.close()
    s = await Store.open(data_dir=tmp_path)
    s.local_origin = "laptop"
    c = await s.create_operation(OpKind.CHECK)
    assert c.modno == 4
    assert a.op_id < b.op_id < c.op_id  # ULIDs sort by creation
    await s.close()


async def test_operations_roundtrip_and_filters(store: Store) -> None:
    await store.add_repo(repo_record("r1", "/srv/r1", "secret"))
    op = await store.create_operation(OpKind.BACKUP, plan_id="p1", repo_id="r1")
    assert op.status == OpStatus.PENDING
    assert op.origin == "laptop"
    started = datetime.now(UTC)
    op = await store.update_operation(
        op.pk, status=OpStatus.SUCCESS, started_at=started, snapshot_id="abc", summary={"n": 1}
    )
    again = await store.find_operation(op.op_id)
    assert again.status == "success"
    assert again.started_at == started
    assert again.started_at.tzinfo is not None
    assert again.summary == {"n": 1}
    await store.create_operation(OpKind.CHECK, repo_id="r1")
    assert [o.kind for o in await store.list_operations(OpFilter(kind="check"))] == ["check"]
    assert len(await store.list_operations(OpFilter(plan_id="p1"))) == 1
    newest_first = await store.list_operations()
    assert newest_first[0].kind == "check"
    with pytest.raises(ValueError, match="unknown operation fields"):
        await store.update_operation(op.pk, modno=99)


async def test_remote_operations_are_read_only(store: Store) -> None:
    op = await store.create_operation(OpKind.BACKUP)
    store.local_origin = "someone-else"
    with pytest.raises(StoreError, match="read-only"):
        await store.update_operation(op.pk, status=OpStatus.ERROR)


async def test_interrupt_unfinished_leaves_no_running_rows(store: Store) -> None:
    running = await store.create_operation(OpKind.BACKUP, status=OpStatus.RUNNING)
    pending = await store.create_operation(OpKind.FORGET)
    done = await store.create_operation(OpKind.CHECK, status=OpStatus.SUCCESS)
    changed = await store.interrupt_unfinished("node died")
    assert {o.pk for o in changed} == {running.pk, pending.pk}
    for pk in (running.pk, pending.pk):
        op = await store.get_operation(pk)
        assert op.status == OpStatus.INTERRUPTED
        assert op.error == "node died"
        assert op.ended_at is not None
    assert (await store.get_operation(done.pk)).status == OpStatus.SUCCESS


async def test_gc_never_deletes_latest_result_of_a_plan(store: Store) -> None:
    old = datetime.now(UTC) - timedelta(days=400)
    ops = []
    for plan in ("a", "a", "a", "b"):
        op = await store.create_operation(OpKind.BACKUP, plan_id=plan, status=OpStatus.SUCCESS)
        ops.append(op)
    # Two old operations that came from a peer: its owner trims them, not us.
    store.local_origin = "peer"
    theirs = [await store.create_operation(OpKind.CHECK, status=OpStatus.SUCCESS) for _ in "xy"]
    store.local_origin = "laptop"
    # Age them all; GC works on created_at.
    async with store.session() as s, s.begin():
        await s.execute(text("UPDATE operations SET created_at = :t"), {"t": old})
    removed = await store.trim_operations(older_than=timedelta(days=30), keep_min=0)
    left = {o.pk for o in await store.list_operations(limit=10)}
    assert sorted(d.op_id for d in removed) == sorted(o.op_id for o in ops[:2])
    # newest of plan a, the only one of plan b, and the peer's untouched
    assert left == {ops[2].pk, ops[3].pk, *(o.pk for o in theirs)}


async def test_logs_are_bounded_head_and_tail(store: Store) -> None:
    op = await store.create_operation(OpKind.BACKUP)
    total = LOG_HEAD + LOG_TAIL + 500
    for start in range(0, total, 700):
        await store.append_log(op.pk, [f"line {i}" for i in range(start, min(total, start + 700))])
    lines = await store.get_log(op.pk)
    assert lines[0] == "line 0"
    assert lines[LOG_HEAD - 1] == f"line {LOG_HEAD - 1}"
    assert lines[LOG_HEAD] == "[... 500 lines not kept ...]"
    assert lines[-1] == f"line {total - 1}"
    assert len(lines) == LOG_HEAD + LOG_TAIL + 1


async def test_end_operation_writes_the_last_lines_and_the_end_at_once(store: Store) -> None:
    op = await store.create_operation(OpKind.BACKUP, status=OpStatus.RUNNING)
    await store.append_log(op.pk, ["first"])
    before = (await store.get_operation(op.pk)).modno
    ended = await store.end_operation(
        op.pk, ["last one", "x" * 10_000], status=OpStatus.SUCCESS, ended_at=utcnow(), error=None
    )
    assert ended.status == "success" and ended.ended_at is not None and ended.modno > before
    row = await store.get_operation(op.pk)
    assert (row.status, row.modno) == ("success", ended.modno)
    lines = await store.get_log(op.pk)
    assert lines[:2] == ["first", "last one"] and 0 < len(lines[2]) < 10_000  # cut as appended
    # Nothing is written when the end cannot be: no lines without the final state.
    with pytest.raises(ValueError, match="unknown operation fields"):
        await store.end_operation(op.pk, ["orphan"], colour="red")
    with pytest.raises(NotFound):
        await store.end_operation(op.pk + 1000, ["orphan"], status=OpStatus.ERROR)
    store.local_origin = "someone-else"
    with pytest.raises(StoreError):
        await store.end_operation(op.pk, ["orphan"], status=OpStatus.ERROR)
    store.local_origin = "laptop"
    assert await store.get_log(op.pk) == lines
    assert (await store.get_operation(op.pk)).modno == ended.modno


async def test_repos_and_plans(store: Store) -> None:
    await store.add_repo(repo_record("r1", "/srv/r1", "file", "/etc/pw"))
    with pytest.raises(AlreadyExists):
        await store.add_repo(repo_record("r1", "/srv/other", "secret"))
    with pytest.raises(NotFound):
        await store.get_repo("nope")
    now = datetime.now(UTC)
    await store.add_plan(
        Plan(
            id="p",
            repo_id="r1",
            paths=["/home"],
            excludes=[],
            retention={},
            enabled=True,
            created_at=now,
            updated_at=now,
        )
    )
    with pytest.raises(NotFound, match="no repository named 'r2'"):
        await store.add_plan(
            Plan(
                id="q",
                repo_id="r2",
                paths=["/"],
                excludes=[],
                retention={},
                enabled=True,
                created_at=now,
                updated_at=now,
            )
        )
    with pytest.raises(StoreError, match="used by 1 plan"):
        await store.delete_repo("r1")
    await store.set_next_due("p", now)
    assert (await store.get_plan("p")).next_due_at == now


async def test_unshared_repo_goes_and_its_plans_stay_disabled(store: Store) -> None:
    """Both backends: the plan outlives its repository (no foreign key since 0003)."""
    own = repo_record("mine", "/srv/mine", "secret")
    await store.add_repo(own)
    got = repo_record("photos@nas", "/srv/photos", "secret")
    got.origin = "nas"
    await store.add_repo(got)
    assert (await store.get_repo("mine")).shared is False
    now = datetime.now(UTC)
    for plan_id, repo_id in (("p", "photos@nas"), ("q", "mine")):
        await store.add_plan(
            Plan(
                id=plan_id,
                repo_id=repo_id,
                paths=["/home"],
                excludes=[],
                retention={},
                enabled=True,
                created_at=now,
                updated_at=now,
            )
        )
    with pytest.raises(StoreError, match="our own"):
        await store.remove_unshared_repo("mine", "no")
    reason = "repository photos@nas was unshared by nas"
    assert await store.remove_unshared_repo("photos@nas", reason) == ["p"]
    assert [r.id for r in await store.list_repos()] == ["mine"]
    p, q = await store.get_plan("p"), await store.get_plan("q")
    assert (p.enabled, p.disabled_reason, p.repo_id) == (False, reason, "photos@nas")
    assert (q.enabled, q.disabled_reason) == (True, None)
    await store.update_repo("mine", shared=True, client_uri="sftp:nas:/srv/mine")
    mine = await store.get_repo("mine")
    assert (mine.shared, mine.client_uri) == (True, "sftp:nas:/srv/mine")


async def test_secrets_are_sealed_at_rest(store: Store, tmp_path: Path) -> None:
    key_path = tmp_path / "keys" / "secret.key"
    secrets = SecretStore(store, load_or_create_key(key_path))
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    await secrets.put("repo/r1/password", "correct horse battery staple")
    assert await secrets.get("repo/r1/password") == "correct horse battery staple"
    raw = await store.get_secret("repo/r1/password")
    assert raw is not None and b"correct horse" not in raw
    other = SecretStore(store, load_or_create_key(tmp_path / "other.key"))
    with pytest.raises(SecretError, match="does not match") as info:
        await other.get("repo/r1/password")
    assert "correct horse" not in str(info.value)
    await secrets.delete_prefix("repo/r1/")
    assert await secrets.get("repo/r1/password") is None


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    load_or_create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(SecretError, match="readable by other users"):
        load_or_create_key(path)


async def test_remote_requests_roundtrip_and_filters(store: Store) -> None:
    from peerstash.core.models import RemoteRequest

    first = await store.add_request(
        RemoteRequest(id="01REQ1", peer="nas", kind="run", args={"plan": "docs"}, state="queued")
    )
    await store.add_request(
        RemoteRequest(
            id="01REQ2",
            peer="nas",
            kind="restore",
            args={"repo": "r", "snapshot": "abc", "target": "/srv/x", "include": []},
            state="queued",
        )
    )
    await store.add_request(
        RemoteRequest(id="01REQ3", peer="hub", kind="run", args={"plan": "p"}, state="done")
    )
    with pytest.raises(AlreadyExists):
        await store.add_request(
            RemoteRequest(id="01REQ1", peer="nas", kind="run", args={}, state="queued")
        )
    assert first.created_at.tzinfo is not None
    queued = await store.list_requests(peer="nas", states=["queued"])
    assert [r.id for r in queued] == ["01REQ1", "01REQ2"]
    assert queued[1].args["target"] == "/srv/x"
    moved = await store.update_request("01REQ1", state="accepted", remote_op_id="01OP")
    assert moved.state == "accepted" and moved.updated_at >= first.updated_at
    assert [r.id for r in await store.list_requests(states=["accepted", "done"])] == [
        "01REQ1",
        "01REQ3",
    ]
    assert (await store.get_request("01REQ1")).remote_op_id == "01OP"
    with pytest.raises(NotFound, match="no remote request named 'nope'"):
        await store.get_request("nope")


async def test_gc_removes_old_ended_requests_and_keeps_open_ones(store: Store) -> None:
    from datetime import timedelta

    from peerstash.core.models import RemoteRequest

    states = {"old-done": "done", "old-failed": "failed", "old-timed": "timed out"}
    states |= {"old-queued": "queued", "old-running": "running", "new-done": "done"}
    for rid, state in states.items():
        await store.add_request(RemoteRequest(id=rid, peer="nas", kind="run", args={}, state=state))
    from sqlalchemy import update

    long_ago = utcnow() - timedelta(days=100)
    old = [rid for rid in states if rid.startswith("old-")]
    async with store.session() as s, s.begin():  # test data: the store always stamps "now"
        await s.execute(
            update(RemoteRequest).where(RemoteRequest.id.in_(old)).values(updated_at=long_ago)
        )
    assert await store.trim_requests(older_than=timedelta(days=90)) == 3
    left = {r.id for r in await store.list_requests()}
    # Open requests stay however old (a laptop away for months still gets its request, or
    # times it out); recently ended ones stay to be looked at.
    assert left == {"old-queued", "old-running", "new-done"}


async def test_latest_per_plan_among_statuses(store: Store) -> None:
    """Health asks for the newest finished and the newest successful backup per plan: a run in
    progress must not hide the failure before it, nor a failure the success before it."""
    ok = await store.create_operation(OpKind.BACKUP, plan_id="p", status=OpStatus.SUCCESS)
    bad = await store.create_operation(OpKind.BACKUP, plan_id="p", status=OpStatus.ERROR)
    running = await store.create_operation(OpKind.BACKUP, plan_id="p", status=OpStatus.RUNNING)
    await store.create_operation(OpKind.FORGET, plan_id="p", status=OpStatus.SUCCESS)
    key = ("laptop", "p")
    assert (await store.latest_per_plan())[key].pk == running.pk
    finished = [s.value for s in OpStatus if s.finished]
    assert (await store.latest_per_plan(statuses=finished))[key].pk == bad.pk
    good = await store.latest_per_plan(statuses=[OpStatus.SUCCESS, OpStatus.WARNING])
    assert good[key].pk == ok.pk
    assert await store.latest_per_plan(statuses=[OpStatus.CANCELLED]) == {}
