"""Shared repositories between two real nodes in one process: real stores, real links over
loopback aiohttp, real restic repositories on disk.

A is the owner; B dials A (``link``) and grants A ``repos.receive`` (or not). Every wait is on
an event (``SharesReceived``, ``SnapshotsChanged``, an operation's end); nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from peerstash.core.engine import EngineError, PasswordSpec
from peerstash.core.events import Notice, SnapshotsChanged
from peerstash.core.models import OpStatus
from peerstash.core.records import RepoRecord, to_json
from peerstash.peer.links import protocol as proto
from peerstash.peer.node import Node
from tests.fixtures.nodes import MakeNode, store_of
from tests.fixtures.sharing import (
    PW1,
    assert_no_secret_in_files,
    link_b_gives_a,
    next_shares,
    run_flow,
)

PW2 = "pw2-Lm4rTy9-never-in-clear"


# -- helpers -------------------------------------------------------------------------------


async def snapshot_ids(node: Node, repo: str) -> set[str]:
    """Short ids (restic 0.14 reports a backup's snapshot by its short id)."""
    assert node.engine
    return {s.id[:8] for s in await node.engine.snapshots(repo)}


# -- the whole life of a shared repository -------------------------------------------------


async def test_share_use_forget_delete_unshare(
    make_node: MakeNode, restic_bin: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    assert a.engine and b.engine
    got = next_shares(b, "a")
    await link_b_gives_a(a, b, ["repos.receive"])
    assert (await got).offered == 0  # the link-up set: nothing shared yet
    src = tmp_path / "src"
    src.mkdir()
    (src / "file.txt").write_text("shared data\n")
    # A reaches r1 through a path only it has; receivers use the client URI.
    (tmp_path / "repo1").mkdir()
    (tmp_path / "owner-view").symlink_to(tmp_path / "repo1")
    await a.engine.add_repo(
        "r1", str(tmp_path / "owner-view" / "r"), PasswordSpec("secret", value=PW1), init=True
    )
    client_uri = str(tmp_path / "repo1" / "r")
    await a.engine.add_repo(
        "r2", str(tmp_path / "repo2"), PasswordSpec("secret", value=PW2), init=True
    )
    await a.engine.add_plan("pa", repo_id="r1", paths=[str(src)], retention={"keep_last": 1})

    got = next_shares(b, "a")
    await a.engine.share_repo("r1", client_uri=client_uri)
    first = await got
    assert first.added == ["r1@a"]
    got = next_shares(b, "a")
    await a.engine.share_repo("r2")
    assert (await got).added == ["r2@a"]

    # B lists them with their origin, read-only, reachable by the client URI.
    on_b = {r.id: r for r in await b.engine.list_repos()}
    r1 = on_b["r1@a"]
    owner_r1 = await a.engine.store.get_repo("r1")
    assert (r1.origin, r1.uri, r1.guid, r1.password_source) == (
        "a",
        client_uri,
        owner_r1.guid,
        "secret",
    )
    listed = {r.id: to_json(RepoRecord.of(r)) for r in on_b.values()}
    assert listed["r1@a"]["read_only"] is True and listed["r1@a"]["origin"] == "a"
    assert listed["r1@a"]["shared"] is False
    owner_listed = to_json(RepoRecord.of(await a.engine.store.get_repo("r1")))
    assert owner_listed["shared"] is True and owner_listed["client_uri"] == client_uri
    assert owner_listed["origin"] is None and owner_listed["read_only"] is False

    # A backs up; B sees the snapshot and backs its own plan up into the same repository.
    first_flow = await run_flow(a, "pa")
    assert [o.status for o in first_flow] == [OpStatus.SUCCESS, OpStatus.SUCCESS]
    s1 = (first_flow[0].snapshot_id or "")[:8]
    assert s1 and s1 in await snapshot_ids(b, "r1@a")
    await b.engine.add_plan("pb", repo_id="r1@a", paths=[str(src)], retention={"keep_last": 1})
    b_flow = await run_flow(b, "pb")
    # B's retention runs on its own snapshots only (host b, plan pb): A's s1 stays.
    assert [(o.kind, o.status) for o in b_flow] == [
        ("backup", OpStatus.SUCCESS),
        ("forget", OpStatus.SUCCESS),
    ], b_flow[0].error
    assert b_flow[1].summary["removed"] == []
    b_snap = (b_flow[0].snapshot_id or "")[:8]
    assert s1 in await snapshot_ids(b, "r1@a")
    assert b_snap and b_snap in await snapshot_ids(a, "r1")

    # Read-only on B: edits, prune and check refused, naming the owner.
    with pytest.raises(EngineError, match=r"shared by a and read-only here") as edit_err:
        await b.engine.update_repo("r1@a", uri=str(tmp_path / "elsewhere"))
    for what, call in (("prune", b.engine.prune), ("check", b.engine.check)):
        with pytest.raises(EngineError, match=rf"shared by a; {what} is done by its owner"):
            await call("r1@a")
    with pytest.raises(EngineError, match="only its owner can share it"):
        await b.engine.share_repo("r1@a")
    assert PW1 not in str(edit_err.value)

    # A's retention forgets s1: B is told, and B's listing no longer shows it.
    with b.bus.subscribe("snapshots") as sub:
        second = await run_flow(a, "pa")
        s2 = (second[0].snapshot_id or "")[:8]
        assert second[1].kind == "forget"
        assert s1 in {i[:8] for i in second[1].summary["removed"]}
        async with asyncio.timeout(15):
            while True:
                ev = await sub.get()
                if isinstance(ev, SnapshotsChanged) and ev.repo_id == "r1@a":
                    assert ev.origin == "a" and ev.reason == "forget"
                    have = await snapshot_ids(b, "r1@a")
                    if s1 not in have:
                        break
    assert s2 in have and b_snap in have

    # Deleting a received repository is allowed, and the owner's next push does not bring
    # it back.
    await b.engine.delete_repo("r2@a")
    assert "r2@a" not in {r.id for r in await b.engine.list_repos()}

    # A unshares r1: B removes it, and B's plan on it is disabled saying why.
    got = next_shares(b, "a")
    await a.engine.unshare_repo("r1")
    gone = await got
    assert gone.removed == ["r1@a"] and gone.disabled_plans == ["pb"]
    assert gone.added == []  # r2 is still offered, but B removed it: not taken again
    assert {r.id for r in await b.engine.list_repos()} == set()
    pb = await b.engine.store.get_plan("pb")
    assert not pb.enabled and pb.disabled_reason == "repository r1@a was unshared by a"
    with pytest.raises(EngineError, match="unshared by a"):
        await b.engine.backup("pb")
    assert await store_of(b).get_secret("repo/r1@a/password") is None

    # The passwords never appear in logs, in listings or in the database files.
    text = caplog.text + json.dumps(
        [to_json(RepoRecord.of(r)) for r in await a.engine.list_repos()]
    )
    assert PW1 not in text and PW2 not in text
    assert_no_secret_in_files(a, PW1, PW2)
    assert_no_secret_in_files(b, PW1, PW2)


async def test_guid_conflict_skips_one_repo_and_repush_changes_nothing(
    make_node: MakeNode, restic_bin: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    assert a.engine and b.engine
    # r1 has its password in our secret store; r2 reads it from a file (the owner resolves it).
    pwfile = tmp_path / "pw2"
    pwfile.write_text(PW2 + "\n")
    await a.engine.add_repo(
        "r1", str(tmp_path / "repo1"), PasswordSpec("secret", value=PW1), init=True
    )
    await a.engine.add_repo(
        "r2", str(tmp_path / "repo2"), PasswordSpec("file", ref=str(pwfile)), init=True
    )
    await a.engine.share_repo("r1")
    await a.engine.share_repo("r2")
    # B already has r1's repository as its own, under another name.
    await b.engine.add_repo("mine", str(tmp_path / "repo1"), PasswordSpec("secret", value=PW1))

    with b.bus.subscribe("notice") as notices:
        got = next_shares(b, "a")
        await link_b_gives_a(a, b, ["repos.receive"])  # the set goes out when the link comes up
        first = await got
        assert first.added == ["r2@a"]
        assert list(first.skipped) == ["r1@a"]
        assert "repository mine (our own) is the same restic repository" in first.skipped["r1@a"]
        warning = await asyncio.wait_for(notices.get(), 5)
        assert isinstance(warning, Notice) and warning.level == "warning"
        assert "r1@a not taken" in warning.message
    assert b.engine.skipped_shares == first.skipped
    assert "r1@a not taken" in caplog.text
    assert await snapshot_ids(b, "r2@a") == set()  # opens with the password from A's file
    r2 = await b.engine.store.get_repo("r2@a")

    # A new link (same grants) makes A send the same set again: nothing changes on B.
    assert b.peers
    got = next_shares(b, "a")
    await b.peers.set_grants("a", ["repos.receive"])
    again = await got
    assert not again.changed and again.added == [] and list(again.skipped) == ["r1@a"]
    assert (await b.engine.store.get_repo("r2@a")).updated_at == r2.updated_at

    # A changes a shared repository (here its client URI): B is brought up to date.
    got = next_shares(b, "a")
    await a.engine.share_repo("r2", client_uri=f"{tmp_path}/repo2/")
    moved = await got
    assert moved.updated == ["r2@a"] and moved.added == moved.removed == []
    assert (await b.engine.store.get_repo("r2@a")).uri == f"{tmp_path}/repo2/"
    assert PW1 not in caplog.text and PW2 not in caplog.text


async def test_without_the_grant_nothing_arrives(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    c = await make_node("c", restic_path=restic_bin)
    assert a.engine and b.engine and c.engine
    pwcmd = tmp_path / "pw2"
    pwcmd.write_text(PW2)
    await a.engine.add_repo(
        "r1", str(tmp_path / "repo1"), PasswordSpec("secret", value=PW1), init=True
    )
    await a.engine.add_repo(
        "r2", str(tmp_path / "repo2"), PasswordSpec("command", ref=f"cat {pwcmd}"), init=True
    )
    await a.engine.share_repo("r1")
    await a.engine.share_repo("r2")

    # B grants A nothing about repositories: A sends an empty set, B stores nothing.
    got = next_shares(b, "a")
    await link_b_gives_a(a, b, ["ops"])
    none = await got
    assert none.offered == 0 and not none.changed
    assert await b.engine.list_repos() == []
    # C grants A only r2: r1 (and its password) never leaves A for C.
    got = next_shares(c, "a")
    await link_b_gives_a(a, c, ["repos.receive:repo:r2"])
    scoped = await got
    assert scoped.offered == 1 and scoped.added == ["r2@a"] and scoped.refused == []
    assert await snapshot_ids(c, "r2@a") == set()  # the command's output opens it
    assert_no_secret_in_files(b, PW1, PW2)
    assert_no_secret_in_files(c, PW1, PW2)
    assert await store_of(b).get_secret("repo/r1@a/password") is None


async def test_receiver_refuses_what_its_grant_does_not_allow(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    """Enforced where the data lives: even an owner that believes it may send is refused."""
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    assert a.engine and b.engine
    await a.engine.add_repo(
        "r1", str(tmp_path / "repo1"), PasswordSpec("secret", value=PW1), init=True
    )
    got = next_shares(b, "a")
    await link_b_gives_a(a, b, ["repos.receive:repo:other"])
    assert (await got).offered == 0  # the link-up set: nothing shared yet
    # A's record of what B grants it is wrong (a buggy or hostile owner): it sends r1.
    await store_of(a).update_peer("b", their_grants=["repos.receive:*"])
    with b.bus.subscribe("notice") as notices:
        got = next_shares(b, "a")
        await a.engine.share_repo("r1")
        refused = await got
        assert refused.refused == ["r1"] and not refused.changed
        warning = await asyncio.wait_for(notices.get(), 5)
        assert isinstance(warning, Notice) and "refused repositories r1 from a" in warning.message
    assert await b.engine.list_repos() == []
    assert await store_of(b).get_secret("repo/r1@a/password") is None
    assert_no_secret_in_files(b, PW1)


def test_shared_repo_messages_never_show_secrets() -> None:
    repo = proto.SharedRepo(
        name="r1", uri="/srv/r1", guid="ab" * 32, password=PW1, env={"AWS_SECRET": PW2}
    )
    msg = proto.ReposShared(repos=(repo,))
    for text in (repr(repo), str(repo), repr(msg), f"{msg}"):
        assert PW1 not in text and PW2 not in text
    back = proto.decode(proto.encode(msg))
    assert isinstance(back, proto.ReposShared) and back.repos[0].password == PW1
    with pytest.raises(proto.ProtocolError):
        proto.decode(
            proto.encode(
                proto.ReposShared(
                    repos=(
                        proto.SharedRepo(name="r1", uri="/srv/r1", guid="not-hex!", password=PW1),
                    )
                )
            )
        )


async def test_same_repository_from_two_owners_is_taken_once(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    c = await make_node("c", restic_path=restic_bin)
    assert a.engine and b.engine and c.engine
    repo = str(tmp_path / "repo")
    await a.engine.add_repo("r", repo, PasswordSpec("secret", value=PW1), init=True)
    await c.engine.add_repo("same", repo, PasswordSpec("secret", value=PW1))
    await c.engine.add_repo(
        "other", str(tmp_path / "o"), PasswordSpec("secret", value=PW2), init=True
    )
    for owner, names in ((a, ("r",)), (c, ("same", "other"))):
        for name in names:
            await owner.engine.share_repo(name)  # type: ignore[union-attr]
    got = next_shares(b, "a")
    await link_b_gives_a(a, b, ["repos.receive"])
    assert (await got).added == ["r@a"]
    got = next_shares(b, "c")
    await link_b_gives_a(c, b, ["repos.receive"])
    from_c = await got
    assert from_c.added == ["other@c"]
    assert "repository r@a (shared by a) is the same restic repository" in from_c.skipped["same@c"]
    assert sorted(r.id for r in await b.engine.list_repos()) == ["other@c", "r@a"]
