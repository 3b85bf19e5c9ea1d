"""Fleet features between two real in-process nodes over loopback (real stores, links, restic).

A peer's configuration read and written under ``config.read`` / ``config.write``, a remote
operation's log fetched from its owner on demand, garbage collection reaching receivers live,
and each peer's last backup per plan in status and the peer list (gc reaching receivers live is in test_sync.py). What is asserted is what a
person sees: the answer through the admin API (as the CLI prints it), or the words of a refusal.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import update

from peerstash.core.engine import PasswordSpec
from peerstash.core.events import ConfigChanged
from peerstash.core.models import Operation, OpStatus
from peerstash.core.records import LastBackupRecord, ListedPeerRecord, StatusRecord
from peerstash.core.store import NotFound, OpFilter, utcnow
from peerstash.peer.api.client import decode
from peerstash.peer.links.rpc import CallError, RpcService
from peerstash.peer.node import Node
from peerstash.peer.services import remote_config
from peerstash.peer.services.remote_logs import LogUnavailable
from tests.fixtures.nodes import MakeNode, admin, change, converge, link, store_of, wait_state

PASSWORD = "correct-horse-battery-staple-1234"
ENV_SECRET = "aws-secret-value-9876"


def rpc(node: Node) -> RpcService:
    assert node.rpc is not None
    return node.rpc


async def add_repo(node: Node, repo_id: str, where: Path, **kw: Any) -> None:
    assert node.engine
    password = kw.pop("password", PasswordSpec(source="secret", value=PASSWORD))
    await node.engine.add_repo(repo_id, str(where / repo_id), password, init=True, **kw)


# -- config.read -----------------------------------------------------------------------------


async def test_config_read_shows_the_scope_and_never_a_secret(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b")
    c = await make_node("c")
    await link(a, b, ["config.read:repo:r1,!plan:private"])
    await link(a, c, ["ops"])
    assert a.engine
    pw_file = tmp_path / "pw-file-location"
    pw_file.write_text(PASSWORD + "\n")
    await add_repo(
        a,
        "r1",
        tmp_path,
        env={"AWS_SECRET_ACCESS_KEY": ENV_SECRET},
        options=["sftp.command=ssh -i /keys/id-secret-key host"],
    )
    await add_repo(a, "r2", tmp_path, password=PasswordSpec(source="file", ref=str(pw_file)))
    await a.engine.add_plan("docs", repo_id="r1", paths=["/srv/docs"])
    await a.engine.add_plan("private", repo_id="r1", paths=["/srv/private"])
    await a.engine.add_plan("media", repo_id="r2", paths=["/srv/media"])

    status, got = await admin(b, "GET", "/v1/peers/a/config")
    assert status == 200
    assert [r["id"] for r in got["repos"]] == ["r1"]
    assert [p["id"] for p in got["plans"]] == ["docs"]
    assert got["plans"][0]["paths"] == ["/srv/docs"] and got["plans"][0]["repo"] == "r1"
    repo = got["repos"][0]
    assert repo["password_source"] == "secret"
    assert repo["env_keys"] == ["AWS_SECRET_ACCESS_KEY"]
    assert repo["option_keys"] == ["sftp.command"]
    whole = json.dumps(got)
    for secret in (PASSWORD, ENV_SECRET, "id-secret-key", str(pw_file)):
        assert secret not in whole
    # The list commands with --on show the same answer.
    assert (await remote_config.read(rpc(b), "a")) == got

    # A peer without config.read is refused by A, in A's words.
    status, err = await admin(c, "GET", "/v1/peers/a/config")
    assert status == 403
    assert err == {"error": "a: c has no 'config.read' grant here"}
    # Not a peer at all: said so without asking anyone.
    status, err = await admin(b, "GET", "/v1/peers/nobody/config")
    assert status == 404 and "'nobody' is not a paired peer" in err["error"]


# -- config.write ----------------------------------------------------------------------------


async def test_config_write_changes_plans_in_scope_only(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b")
    await link(a, b, ["config.write:repo:r1,!plan:locked"])
    assert a.engine
    await add_repo(a, "r1", tmp_path)
    await add_repo(a, "r2", tmp_path)
    await a.engine.add_plan("media", repo_id="r2", paths=["/srv/media"])
    await a.engine.add_plan("locked", repo_id="r1", paths=["/srv/locked"])

    with a.bus.subscribe("config") as sub:
        status, plan = await admin(
            b,
            "POST",
            "/v1/peers/a/plans",
            {"id": "docs", "repo": "r1", "paths": ["/srv/docs"], "every": "6h"},
        )
        assert status == 201, plan
        assert plan["id"] == "docs" and plan["every_seconds"] == 6 * 3600
        ev = await asyncio.wait_for(sub.get(), 5)
        assert ev == ConfigChanged(what="plan", id="docs")
    on_a = await a.engine.store.get_plan("docs")
    assert on_a.repo_id == "r1" and on_a.paths == ["/srv/docs"]

    status, plan = await admin(
        b, "PATCH", "/v1/peers/a/plans/docs", {"paths": ["/srv/docs", "/srv/notes"]}
    )
    assert status == 200 and plan["paths"] == ["/srv/docs", "/srv/notes"]
    assert (await a.engine.store.get_plan("docs")).paths == ["/srv/docs", "/srv/notes"]

    # The engine's validation on A, in its own words.
    status, err = await admin(
        b, "POST", "/v1/peers/a/plans", {"id": "rel", "repo": "r1", "paths": ["relative/dir"]}
    )
    assert status == 409 and err == {"error": "a: path 'relative/dir' must be absolute"}
    status, err = await admin(b, "PATCH", "/v1/peers/a/plans/docs", {"schedule": "not cron"})
    assert status == 409 and err["error"].startswith("a: ") and "cron" in err["error"]

    # Out of scope: another repo, an excluded plan, moving a plan out of the scope.
    status, err = await admin(
        b, "POST", "/v1/peers/a/plans", {"id": "x", "repo": "r2", "paths": ["/srv/x"]}
    )
    assert status == 403
    assert err == {"error": "a: b has no 'config.write' grant for repository 'r2' here"}
    status, err = await admin(
        b, "POST", "/v1/peers/a/plans", {"id": "locked2", "repo": "r1", "paths": ["/x"]}
    )
    assert status == 201  # an id not excluded is fine on r1
    status, err = await admin(b, "PATCH", "/v1/peers/a/plans/locked", {"every": "1h"})
    assert status == 403 and "no 'config.write' grant for plan 'locked'" in err["error"]
    status, err = await admin(b, "PATCH", "/v1/peers/a/plans/docs", {"repo": "r2"})
    assert status == 403 and "repository 'r2'" in err["error"]
    status, err = await admin(b, "DELETE", "/v1/peers/a/plans/media")
    assert status == 403
    assert (await a.engine.store.get_plan("media")).paths == ["/srv/media"]
    assert (await a.engine.store.get_plan("docs")).repo_id == "r1"

    status, res = await admin(b, "DELETE", "/v1/peers/a/plans/docs")
    assert status == 200 and res == {"deleted": "docs"}
    with pytest.raises(NotFound):
        await a.engine.store.get_plan("docs")
    # Without config.write at all, the handler never runs.
    c = await make_node("c")
    await link(a, c, ["config.read"])
    with pytest.raises(CallError) as exc:
        await remote_config.remove_plan(rpc(c), "a", "locked2")
    assert exc.value.message == "a: c has no 'config.write' grant here"
    assert (await a.engine.store.get_plan("locked2")).repo_id == "r1"


# -- config.write on repositories --------------------------------------------------------------

REMOTE_PW = "peer-sent-password-5551"
NEW_PW = "peer-changed-password-7772"


def new_repo(repo_id: str, where: Path, **over: Any) -> dict[str, Any]:
    """An admin API body for ``repo add --on``, as the CLI sends it with --password-stdin."""
    body: dict[str, Any] = {
        "id": repo_id,
        "uri": str(where / repo_id),
        "password": {"source": "secret", "value": REMOTE_PW},
        "env": {},
        "options": [],
        "init": True,
    }
    return body | over


async def test_config_write_adds_edits_and_removes_repos_in_scope_within_the_rules(
    make_node: MakeNode, restic_bin: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="peerstash")
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    await link(a, b, ["config.read:repo:r1,repo:r2", "config.write:repo:r1,repo:r2"])
    assert a.engine
    said: list[str] = []  # every refusal B was given, to look for the password in

    async def refused(method: str, path: str, body: Any, status: int, words: str) -> None:
        got_status, err = await admin(b, method, path, body)
        said.append(json.dumps(err))
        assert got_status == status, err
        assert words in err["error"], err

    # Added on A with --init: a real restic repository there, told as A's engine tells it.
    with a.bus.subscribe("config") as sub:
        status, res = await admin(b, "POST", "/v1/peers/a/repos", new_repo("r1", tmp_path))
        assert status == 201, res
        assert await asyncio.wait_for(sub.get(), 5) == ConfigChanged(what="repo", id="r1")
    assert res["message"] == "created a new repository"
    assert res["repo"]["id"] == "r1" and res["repo"]["password_source"] == "secret"
    assert (tmp_path / "r1" / "config").is_file()
    row = await a.engine.store.get_repo("r1")
    assert row.guid == res["repo"]["guid"] and row.password_source == "secret"
    # B lists it; a plan B adds on A backs up into it, with the password B gave.
    status, got = await admin(b, "GET", "/v1/peers/a/config")
    assert [r["id"] for r in got["repos"]] == ["r1"]
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("into a repository a peer added\n")
    status, plan = await admin(
        b, "POST", "/v1/peers/a/plans", {"id": "docs", "repo": "r1", "paths": [str(src)]}
    )
    assert status == 201, plan
    # The peer's user asked for the plan: A starts its first backup right away.
    assert plan["first_backup"]["status"] == "running"  # r1's queue is free: at once
    (first,) = await a.engine.store.list_operations(OpFilter(plan_id="docs", kind="backup"))
    assert first.op_id == plan["first_backup"]["id"]
    op = await a.engine.wait(first.pk)
    assert op.status == "success", op.error
    assert len(await a.engine.snapshots("r1")) == 1

    # Scope: another repository is refused by A; without config.write the handler never runs.
    await refused(
        "POST",
        "/v1/peers/a/repos",
        new_repo("other", tmp_path),
        403,
        "a: b has no 'config.write' grant for repository 'other' here",
    )
    c = await make_node("c")
    await link(a, c, ["config.read"])
    with pytest.raises(CallError) as exc:
        await remote_config.add_repo(rpc(c), "a", new_repo("r2", tmp_path))
    assert exc.value.message == "a: c has no 'config.write' grant here"
    assert not (tmp_path / "r2").exists()

    # The rules, each refused by A in words, nothing stored and nothing created.
    for source, ref in (("command", "echo hi"), ("file", "/etc/hostname"), ("env", "HOME")):
        await refused(
            "POST",
            "/v1/peers/a/repos",
            new_repo("r2", tmp_path, password={"source": source, "ref": ref}),
            403,
            "a: a peer may give a repository password only as a value",
        )
    await refused(
        "POST",
        "/v1/peers/a/repos",
        new_repo("r2", tmp_path, options=["sftp.command=sh -c evil"]),
        403,
        "a: a peer may not set restic -o options",
    )
    await refused(
        "POST",
        "/v1/peers/a/repos",
        new_repo("r2", tmp_path, env={"RESTIC_PASSWORD_COMMAND": "sh -c evil"}),
        403,
        "a: a peer may not set RESTIC_PASSWORD_COMMAND",
    )
    for key in ("LD_PRELOAD", "SSH_ASKPASS", "PATH"):
        await refused(
            "POST",
            "/v1/peers/a/repos",
            new_repo("r2", tmp_path, env={key: "/x"}),
            403,
            f"a: a peer may not set {key}",
        )
    await refused(
        "POST",
        "/v1/peers/a/repos",
        new_repo("r2", tmp_path, env={"BAD-NAME": "x"}),
        403,
        "does not look like a variable name",
    )
    await refused(
        "POST",
        "/v1/peers/a/repos",
        new_repo("r2", tmp_path, uri="rclone:remote:bucket"),
        403,
        "a: a peer may not add rclone: repositories",
    )
    await refused(
        "POST",
        "/v1/peers/a/repos",
        new_repo("r2", tmp_path, uri="sftp:-oProxyCommand=evil:/srv/r2"),
        403,
        "would pass options to ssh",
    )
    await refused(
        "POST",
        "/v1/peers/a/repos",
        new_repo("r2", tmp_path, uri="relative/r2"),
        403,
        "must be absolute",
    )
    with pytest.raises(NotFound):
        await a.engine.store.get_repo("r2")
    assert not (tmp_path / "r2").exists()

    # Edits in scope within the rules: the password and the environment (it must still open).
    status, res = await admin(
        b,
        "PATCH",
        "/v1/peers/a/repos/r1",
        {"password": {"source": "secret", "value": REMOTE_PW}, "env": {"B2_ACCOUNT_ID": "x"}},
    )
    assert status == 200, res
    assert res["env_keys"] == ["B2_ACCOUNT_ID"]
    await refused(
        "PATCH",
        "/v1/peers/a/repos/r1",
        {"password": {"source": "secret", "value": NEW_PW}},
        409,
        "a: ",  # restic cannot open it with a wrong password: refused, nothing replaced
    )
    assert (await a.engine.store.get_repo("r1")).password_source == "secret"
    await refused("PATCH", "/v1/peers/a/repos/r1", {"options": ["x=y"]}, 403, "-o options")
    await refused(
        "PATCH",
        "/v1/peers/a/repos/r1",
        {"password": {"source": "command", "ref": "sh -c evil"}},
        403,
        "only as a value",
    )
    await refused(
        "PATCH", "/v1/peers/a/repos/r1", {"uri": "rclone:x:y"}, 403, "rclone: repositories"
    )
    # A repository set up on A with a password command keeps it: a peer may not replace it.
    pw_file = tmp_path / "pw"
    pw_file.write_text(PASSWORD + "\n")
    await add_repo(a, "r2", tmp_path, password=PasswordSpec(source="command", ref=f"cat {pw_file}"))
    await refused(
        "PATCH",
        "/v1/peers/a/repos/r2",
        {"password": {"source": "secret", "value": PASSWORD}},
        403,
        "takes its password from a command set on this machine",
    )
    assert (await a.engine.store.get_repo("r2")).password_ref == f"cat {pw_file}"
    status, got = await admin(b, "GET", "/v1/peers/a/config")
    assert {r["id"]: r["password_source"] for r in got["repos"]} == {
        "r1": "secret",
        "r2": "command",
    }
    said.append(json.dumps(got))

    # Removal: refused while a plan uses it (the store's words), done once the plan is gone.
    await refused("DELETE", "/v1/peers/a/repos/r1", None, 409, "used by 1 plan(s)")
    status, _ = await admin(b, "DELETE", "/v1/peers/a/plans/docs")
    assert status == 200
    status, res = await admin(b, "DELETE", "/v1/peers/a/repos/r1")
    assert status == 200 and res == {"deleted": "r1"}
    with pytest.raises(NotFound):
        await a.engine.store.get_repo("r1")
    assert (tmp_path / "r1" / "config").is_file()  # its data stays
    await refused(
        "DELETE",
        "/v1/peers/a/repos/elsewhere",
        None,
        403,
        "no 'config.write' grant for repository 'elsewhere'",
    )

    # The passwords were never logged on either side, nor said back in any answer.
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    for secret in (REMOTE_PW, NEW_PW):
        assert secret not in logged
        assert not any(secret in text for text in said)
    assert REMOTE_PW not in repr(PasswordSpec(source="secret", value=REMOTE_PW))


# -- logs on demand, and the fleet view --------------------------------------------------------


async def test_a_remote_operation_log_is_fetched_from_its_owner_and_status_shows_the_fleet(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b")
    await link(a, b, ["ops"])
    assert a.engine and b.engine
    src = tmp_path / "src"
    src.mkdir()
    (src / "file.txt").write_text("hello fleet\n")
    await add_repo(a, "r1", tmp_path)
    await a.engine.add_plan("docs", repo_id="r1", paths=[str(src)])
    await a.engine.add_plan("never", repo_id="r1", paths=[str(src)])

    op = await a.engine.backup("docs")
    final = await a.engine.wait(op.pk)
    assert final.status == OpStatus.SUCCESS and final.snapshot_id
    await converge(a, b)
    on_a = await a.engine.store.get_log(op.pk)
    assert any("backup of plan docs" in line for line in on_a)
    # Logs are not synced: B holds the operation, not its lines.
    copy = await b.engine.store.find_operation(op.op_id, origin="a")
    assert await b.engine.store.get_log(copy.pk) == []

    status, res = await admin(b, "GET", f"/v1/ops/{op.op_id}/log")
    assert status == 200
    assert res == {"id": op.op_id, "origin": "a", "lines": on_a}
    # restic's own lines travel too: a check prints text (a backup in --json mode prints
    # little besides progress, which is not logged).
    check = await a.engine.wait((await a.engine.check("r1")).pk)
    assert check.status == OpStatus.SUCCESS
    await converge(a, b)
    status, res = await admin(b, "GET", f"/v1/ops/{check.op_id}/log")
    assert status == 200 and res["lines"] == await a.engine.store.get_log(check.pk)
    assert any("no errors were found" in line for line in res["lines"])

    # Each peer's last backup per plan, from the synced operations (no call to A).
    status, st = await admin(b, "GET", "/v1/status")
    assert status == 200
    assert [(p["id"], p["state"]) for p in st["peers"]] == [("a", "online")]
    (docs,) = st["peers"][0]["plans"]
    assert docs["plan"] == "docs" and docs["status"] == "success" and docs["op"] == op.op_id
    assert docs["snapshot_id"] == final.snapshot_id and docs["ended_at"]
    status, peers = await admin(b, "GET", "/v1/peers")
    assert peers[0]["id"] == "a" and peers[0]["plans"] == [docs]
    # The tray and the CLI read these answers as the records (every field, its type).
    record = decode(st, StatusRecord, "the node's status")
    assert record.peers[0].plans[0] == LastBackupRecord(**docs)
    assert record.instance_id == "b" and record.installed_version == record.version
    assert (
        decode(peers, list[ListedPeerRecord], "a list of peers")[0].plans == record.peers[0].plans
    )
    # A sees no history of B (none was granted the other way).
    status, st_a = await admin(a, "GET", "/v1/status")
    assert st_a["peers"] == [{**st_a["peers"][0], "plans": []}]

    # A goes away: the log cannot be fetched, and B says where it is.
    await a.stop()
    await wait_state(b, "a", "offline")
    with pytest.raises(LogUnavailable) as exc:
        assert b.logs is not None
        await b.logs.lines(copy)
    assert str(exc.value).startswith("the log of this operation is on a, which is offline now")
    status, err = await admin(b, "GET", f"/v1/ops/{op.op_id}/log?origin=a")
    assert status == 503 and err["error"] == str(exc.value)
    # The fleet view still shows what B last heard, with the link state (B keeps redialling
    # A, so the state moves between offline and connecting; never online).
    status, st = await admin(b, "GET", "/v1/status")
    assert st["peers"][0]["state"] in ("offline", "connecting")
    assert st["peers"][0]["plans"] == [docs]


async def test_a_log_outside_the_ops_scope_is_refused_by_its_owner(make_node: MakeNode) -> None:
    a, b = await make_node("a"), await make_node("b")
    await link(a, b, ["ops:repo:r1"])
    shared = await change(a, repo="r1")
    hidden = await change(a, repo="r2")
    await store_of(a).append_log(shared.pk, ["line one", "line two"])
    await store_of(a).append_log(hidden.pk, ["not for b"])
    await converge(a, b, ["ops:repo:r1"])
    assert b.logs is not None
    copy = await store_of(b).find_operation(shared.op_id, origin="a")
    assert await b.logs.lines(copy) == ["line one", "line two"]
    # B never got the other operation; asking for its log anyway is refused on A.
    with pytest.raises(CallError) as exc:
        await rpc(b).call("a", "ops.log", {"id": hidden.op_id})
    assert exc.value.message == "b has no 'ops' grant for repository 'r2' here"


async def test_gc_on_a_shows_in_the_event_stream_of_both_nodes(make_node: MakeNode) -> None:
    a, b = await make_node("a"), await make_node("b")
    await link(a, b, ["ops"])
    ops = [await change(a, plan="p1") for _ in range(3)]
    for op in ops:
        await change(a, op.pk, status=OpStatus.SUCCESS, ended_at=utcnow())
    await converge(a, b)
    async with store_of(a).session() as s, s.begin():
        await s.execute(
            update(Operation)
            .where(Operation.pk.in_([o.pk for o in ops[:2]]))
            .values(created_at=utcnow() - timedelta(days=400))
        )

    async def stream(node: Node) -> AsyncIterator[dict[str, Any]]:
        conn = aiohttp.UnixConnector(path=str(node.socket_path))
        async with (
            aiohttp.ClientSession(connector=conn) as s,
            s.get("http://node/v1/events") as r,
        ):
            while line := await r.content.readline():
                if line.strip() != b"{}":
                    yield json.loads(line)

    async def first_deletion(events: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
        async for ev in events:
            if ev["type"] == "ops_deleted":
                return ev
        raise AssertionError("the event stream ended")

    on_a, on_b = stream(a), stream(b)
    assert (await anext(on_a), await anext(on_b)) == ({"type": "ready"}, {"type": "ready"})
    assert a.engine and await a.engine.gc(older_than=timedelta(days=90), keep_min=0) == 2
    async with asyncio.timeout(5):
        assert await first_deletion(on_a) == {"type": "ops_deleted", "origin": "a", "count": 2}
        assert await first_deletion(on_b) == {"type": "ops_deleted", "origin": "a", "count": 2}
    await on_a.aclose()
    await on_b.aclose()
