"""Retention in a repository several machines write to: each node trims only its own snapshots.

Real nodes in one process (real stores, real restic 0.14 and 0.18, one real repository on
disk), plus snapshots made by bare ``restic`` the way a person would: another host with our
plan's tag, our host with only the plan tag, no tags at all. After every forget we count the
snapshots per (host, tags), so a forget that reaches one snapshot too many shows up as a wrong
count.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from peerstash.core.engine import EngineError, PasswordSpec
from peerstash.core.models import OpStatus
from peerstash.core.store import OpFilter
from peerstash.peer.node import Node
from tests.fixtures.nodes import MakeNode
from tests.fixtures.servers import RESTIC_BUILDS, resolve_restic
from tests.fixtures.sharing import link_b_gives_a, next_shares, run_flow

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=RESTIC_BUILDS)
def restic_bin(request: pytest.FixtureRequest) -> str:
    """Every test here on restic 0.14 and on 0.18: both select by ``--host`` and ``--tag``
    and group alike, and a forget that reaches another host's snapshots on either is a bug."""
    return resolve_restic(request.param)


PW = "retention-Hx7pQ2-never-in-clear"
#: The snapshots every test plants with bare restic, by (host, tags) as :func:`census` counts.
PLANTED = {
    ("other", "plan:home"): 2,  # another machine's plan of the same name
    ("a", "plan:home"): 1,  # made by hand on "a" with the plan tag only
    ("a", ""): 1,  # made by hand, untagged
}
A_OWN = ("a", "host:a,plan:home")
B_OWN = ("b", "host:b,plan:home")


async def bare_backup(restic_bin: str, repo: Path, src: Path, *args: str) -> None:
    """``restic backup`` run by hand, outside Peerstash."""
    proc = await asyncio.create_subprocess_exec(
        restic_bin,
        "-r",
        str(repo),
        "backup",
        "-q",
        *args,
        str(src),
        env={**os.environ, "RESTIC_PASSWORD": PW, "RESTIC_CACHE_DIR": str(repo) + "-cache"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()


async def plant(restic_bin: str, repo: Path, src: Path) -> None:
    for _ in range(2):
        await bare_backup(restic_bin, repo, src, "--host", "other", "--tag", "plan:home")
    await bare_backup(restic_bin, repo, src, "--host", "a", "--tag", "plan:home")
    await bare_backup(restic_bin, repo, src, "--host", "a")


async def census(node: Node, repo_id: str) -> dict[tuple[str, str], int]:
    """How many snapshots each (host, sorted tags) has in the repository."""
    assert node.engine
    snaps = await node.engine.snapshots(repo_id)
    return dict(Counter((s.hostname, ",".join(sorted(s.tags))) for s in snaps))


async def forget_and_wait(node: Node, repo_id: str, plan_id: str | None = None) -> list[str]:
    """Run ``forget`` as an operation; the ids it removed."""
    assert node.engine
    op = await node.engine.wait((await node.engine.forget(repo_id, plan_id=plan_id)).pk)
    assert op.status == OpStatus.SUCCESS, op.error
    return list(op.summary["removed"])


async def two_nodes_one_repo(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> tuple[Node, Node, Path, Path]:
    """Nodes a and b, each with repository ``store`` (the same one, added directly on both)
    and a plan ``home`` on it without a retention policy."""
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    assert a.engine and b.engine
    repo, src = tmp_path / "repo", tmp_path / "src"
    src.mkdir()
    (src / "file.txt").write_text("data\n")
    await a.engine.add_repo("store", str(repo), PasswordSpec("secret", value=PW), init=True)
    await b.engine.add_repo("store", str(repo), PasswordSpec("secret", value=PW))
    for node in (a, b):
        assert node.engine
        await node.engine.add_plan("home", repo_id="store", paths=[str(src)])
    return a, b, repo, src


async def test_each_node_trims_only_its_own_snapshots(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a, b, repo, src = await two_nodes_one_repo(make_node, restic_bin, tmp_path)
    assert a.engine and b.engine
    await a.engine.update_plan("home", retention={"keep_last": 1})
    for _ in range(3):
        flow = await run_flow(b, "home")  # b keeps everything: no retention step
        assert [(o.kind, o.status) for o in flow] == [("backup", OpStatus.SUCCESS)]
    await plant(restic_bin, repo, src)
    assert await census(a, "store") == {B_OWN: 3, **PLANTED}

    # a backs up twice with keep-last 1: its retention trims a's snapshots, nobody else's.
    first = await run_flow(a, "home")
    assert [(o.kind, o.status) for o in first] == [
        ("backup", OpStatus.SUCCESS),
        ("forget", OpStatus.SUCCESS),
    ]
    assert first[1].summary["removed"] == []
    assert await census(b, "store") == {A_OWN: 1, B_OWN: 3, **PLANTED}
    second = await run_flow(a, "home")
    assert [o.kind for o in second] == ["backup", "forget"]
    removed = second[1].summary["removed"]
    assert [i[:8] for i in removed] == [(first[0].snapshot_id or "")[:8]]
    assert await census(b, "store") == {A_OWN: 1, B_OWN: 3, **PLANTED}

    # a's forget on its own: nothing left of a's to trim, nothing of anyone else's touched.
    assert await forget_and_wait(a, "store") == []
    assert await census(a, "store") == {A_OWN: 1, B_OWN: 3, **PLANTED}

    # b gets a policy too: its forget trims b's three to two and leaves a's alone.
    await b.engine.update_plan("home", retention={"keep_last": 2})
    assert len(await forget_and_wait(b, "store", "home")) == 1
    assert await census(a, "store") == {A_OWN: 1, B_OWN: 2, **PLANTED}
    flow = await run_flow(b, "home")
    assert [o.kind for o in flow] == ["backup", "forget"]
    assert len(flow[1].summary["removed"]) == 1
    assert await census(a, "store") == {A_OWN: 1, B_OWN: 2, **PLANTED}

    # The forget log says which snapshots it selects.
    log = "\n".join(await a.engine.store.get_log(second[1].pk))
    assert "snapshots of host a tagged plan:home and host:a" in log


async def test_dry_run_lists_what_forget_then_removes(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a, b, repo, src = await two_nodes_one_repo(make_node, restic_bin, tmp_path)
    assert a.engine and b.engine
    made: list[str] = []
    for node in (a, b, a, b, a):
        flow = await run_flow(node, "home")
        made.append(flow[0].snapshot_id or "")
    await plant(restic_bin, repo, src)
    await a.engine.update_plan("home", retention={"keep_last": 1})
    before = await census(a, "store")
    assert before == {A_OWN: 3, B_OWN: 2, **PLANTED}
    ops_before = await a.engine.list_operations(OpFilter(origin="a"))

    url = "http://node/v1/repos/store/forget"
    conn = aiohttp.UnixConnector(path=str(a.socket_path))
    async with aiohttp.ClientSession(connector=conn) as s:
        async with s.post(url, json={"dry_run": True}) as r:
            assert r.status == 200, await r.text()
            preview = await r.json()
        # The same with --plan: one plan, the same answer.
        async with s.post(url, json={"dry_run": True, "plan": "home"}) as r:
            assert r.status == 200 and await r.json() == preview
        # Bad requests: one clear sentence, nothing run.
        for body, message, field in (
            ({"dry_run": "yes"}, "dry_run is true or false", "dry_run"),
            ({"dry_run": True, "prune": True}, "unknown field(s) for forget: prune", None),
            ({"dry_run": True, "plan": 7}, "field 'plan' must be a string", "plan"),
            ({"dry_run": True, "plan": "nope"}, "no plan named 'nope'", None),
        ):
            async with s.post(url, json=body) as r:
                expected = {"error": message} | ({"field": field} if field else {})
                assert r.status in (400, 404) and await r.json() == expected

    assert preview["repo"] == "store" and preview["dry_run"] is True
    assert preview["plans"] == [
        {
            "plan": "home",
            "retention": {"keep_last": 1},
            "host": "a",
            "tags": ["plan:home", "host:a"],
        }
    ]
    # Exactly a's two older snapshots would go; its newest would stay; nothing else is listed.
    assert sorted(s["short_id"] for s in preview["remove"]) == sorted(made[i][:8] for i in (0, 2))
    assert [s["short_id"] for s in preview["keep"]] == [made[4][:8]]
    for snap in preview["remove"] + preview["keep"]:
        assert snap["hostname"] == "a" and snap["plan"] == "home"
        assert snap["paths"] == [str(src)] and snap["time"]
    # It changed nothing and made no operation.
    assert await census(b, "store") == before
    assert [o.pk for o in await a.engine.list_operations(OpFilter(origin="a"))] == [
        o.pk for o in ops_before
    ]

    # The real forget removes exactly what the dry run listed.
    removed = await forget_and_wait(a, "store")
    assert sorted(removed) == sorted(s["id"] for s in preview["remove"])
    assert await census(b, "store") == {A_OWN: 1, B_OWN: 2, **PLANTED}

    # A plan of another repository, or one without a policy, is refused with a reason.
    await a.engine.add_repo(
        "second", str(tmp_path / "r2"), PasswordSpec("secret", value=PW), init=True
    )
    await a.engine.add_plan("elsewhere", repo_id="second", paths=[str(src)])
    with pytest.raises(EngineError, match="backs up to repository 'second', not 'store'"):
        await a.engine.forget_preview("store", plan_id="elsewhere")
    with pytest.raises(EngineError, match="plan 'elsewhere' has no retention policy"):
        await a.engine.forget("second", plan_id="elsewhere")
    assert await census(a, "store") == {A_OWN: 1, B_OWN: 2, **PLANTED}


def data_files(repo: Path) -> set[str]:
    return {str(p.relative_to(repo)) for p in (repo / "data").rglob("*") if p.is_file()}


async def test_shared_repository_each_side_trims_its_own(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    assert a.engine and b.engine
    await link_b_gives_a(a, b, ["repos.receive"])
    repo, src = tmp_path / "repo", tmp_path / "src"
    src.mkdir()
    (src / "file.txt").write_text("data\n")
    await a.engine.add_repo("r", str(repo), PasswordSpec("secret", value=PW), init=True)
    got = next_shares(b, "a")
    await a.engine.share_repo("r")
    assert (await got).added == ["r@a"]
    await a.engine.add_plan("home", repo_id="r", paths=[str(src)], retention={"keep_last": 1})
    await b.engine.add_plan("home", repo_id="r@a", paths=[str(src)])
    for _ in range(3):
        assert [o.kind for o in await run_flow(b, "home")] == ["backup"]
    for _ in range(2):
        assert [o.kind for o in await run_flow(a, "home")] == ["backup", "forget"]
    await plant(restic_bin, repo, src)
    assert await census(a, "r") == {A_OWN: 1, B_OWN: 3, **PLANTED}

    # b, the receiver, may forget its own snapshots there; it never prunes (only the owner
    # does): the repository's data files stay exactly as they were.
    await b.engine.update_plan("home", retention={"keep_last": 1})
    data_before = data_files(repo)
    assert len(await forget_and_wait(b, "r@a")) == 2
    assert data_files(repo) == data_before
    assert await census(a, "r") == {A_OWN: 1, B_OWN: 1, **PLANTED}
    # And after b's own backups, with the retention step that follows them.
    flow = await run_flow(b, "home")
    assert [(o.kind, o.status) for o in flow] == [
        ("backup", OpStatus.SUCCESS),
        ("forget", OpStatus.SUCCESS),
    ]
    assert len(flow[1].summary["removed"]) == 1
    assert await census(b, "r@a") == {A_OWN: 1, B_OWN: 1, **PLANTED}
    # Prune and check stay with the owner.
    for what, call in (("prune", b.engine.prune), ("check", b.engine.check)):
        with pytest.raises(EngineError, match=rf"shared by a; {what} is done by its owner"):
            await call("r@a")

    # The owner's forget, prune and check never take b's snapshots away.
    assert [o.kind for o in await run_flow(a, "home")] == ["backup", "forget"]
    assert await forget_and_wait(a, "r") == []
    for op in (await a.engine.prune("r"), await a.engine.check("r")):
        done = await a.engine.wait(op.pk)
        assert done.status == OpStatus.SUCCESS, done.error
    assert await census(b, "r@a") == {A_OWN: 1, B_OWN: 1, **PLANTED}
