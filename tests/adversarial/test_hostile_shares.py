"""A peer that shares a repository rigged to run a program on the receiver (issue 11).

The attack: B pairs with A, A grants B ``repos.receive``, and B shares a repository whose
settings make restic run B's command as A's user (``-o sftp.command=...`` with an ``sftp:``
client URI, ``LD_PRELOAD``...). Real in-process nodes, real links, real restic; B's honest
engine refuses to share such a repository, so B turns hostile by writing its own database,
as a modified node would. The marker file is what B's command would write: it must never
appear, whatever A is asked to do with the repository.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
from pathlib import Path

import pytest

from peerstash.core.engine import EngineError, PasswordSpec
from peerstash.core.events import ConfigChanged, Notice
from peerstash.core.models import OpStatus
from peerstash.core.records import RepoRecord, to_json
from peerstash.core.restic import PasswordValue, RepoAccess, Restic, ResticError
from peerstash.core.store import NotFound, repo_record
from peerstash.peer.node import Node
from tests.fixtures.nodes import MakeNode, store_of, token_for, wait_state
from tests.fixtures.sharing import REFUSED_ENV, assert_no_secret_in_files, next_shares, run_flow

PW = "pw-photos-Kx81-never-in-clear"
ENV_SECRET = "env-value-Qq72-never-in-clear"
HOSTILE_URI = "sftp:backup@host:/srv/photos"


def hostile_option(marker: Path) -> str:
    return f"sftp.command=sh -c {shlex.quote(f'id > {marker}')}"


async def pair_a_receives_from_b(a: Node, b: Node) -> None:
    """A makes a token granting ``repos.receive``; B pairs with it (grants A nothing)."""
    assert b.peers and a.peer_url
    await b.peers.pair(await token_for(a, grants=["repos.receive"]), a.peer_url, [])
    await wait_state(a, b.instance_id, "online")
    await wait_state(b, a.instance_id, "online")


async def rig_and_push(b: Node, repo_id: str, **fields: object) -> None:
    """B writes its own database as a hostile node would, and pushes its set."""
    await store_of(b).update_repo(repo_id, **fields)
    b.bus.publish(ConfigChanged(what="repo", id=repo_id))


async def secret_names(node: Node, prefix: str) -> list[str]:
    """Names of the sealed secrets under ``prefix`` in the node's store."""
    from sqlalchemy import select

    from peerstash.core.models import Secret

    async with store_of(node).session() as s:
        rows = await s.execute(select(Secret.name).where(Secret.name.startswith(prefix)))
        return sorted(rows.scalars())


async def test_the_reported_attack_is_refused_and_runs_nothing(
    make_node: MakeNode, restic_bin: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    marker = tmp_path / "marker"
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    assert a.engine and b.engine and a.peers
    got = next_shares(a, "b")
    await pair_a_receives_from_b(a, b)
    assert (await got).offered == 0

    # On B: `repo edit photos --option "sftp.command=sh -c 'id > marker'" --env LD_PRELOAD=...`
    # (restic ignores sftp options for a local repository, so B's own checks pass).
    await b.engine.add_repo(
        "photos", str(tmp_path / "photos"), PasswordSpec("secret", value=PW), init=True
    )
    await b.engine.update_repo(
        "photos", options=[hostile_option(marker)], env={"LD_PRELOAD": "/x.so"}
    )
    # `repo share photos --client-uri sftp:...`: an honest node already says receivers refuse.
    with pytest.raises(EngineError, match="receivers would refuse repository 'photos'"):
        await b.engine.share_repo("photos", client_uri=HOSTILE_URI)
    with pytest.raises(EngineError, match="may not set restic -o options") as refused_here:
        await b.engine.share_repo("photos")
    assert "--client-uri" not in str(refused_here.value)  # the URI is not what is wrong

    # A hostile B shares it anyway.
    with a.bus.subscribe("notice") as notices:
        got = next_shares(a, "b")
        await rig_and_push(b, "photos", shared=True, client_uri=HOSTILE_URI)
        refused = await got
        assert refused.offered == 1 and not refused.changed
        why = refused.skipped["photos@b"]
        assert why.startswith("b sent settings a peer may not set here: ")
        assert "a peer may not set restic -o options" in why
        async with asyncio.timeout(5):
            notice = await notices.get()
        assert isinstance(notice, Notice) and notice.level == "warning"
        assert notice.message == f"shared repository photos@b not taken: {why}"

    # Nothing stored: no row, no secret; what a person sees says why.
    assert [r.id for r in await a.engine.list_repos()] == []
    assert await secret_names(a, "repo/photos@b/") == []
    assert (await a.status()).shared_skipped == {"photos@b": why}
    with pytest.raises(NotFound):
        await a.engine.snapshots("photos@b")  # `peerstash snapshots photos@b`
    with pytest.raises(EngineError, match="no repository named 'photos@b'") as no_plan:
        await a.engine.add_plan("pa", repo_id="photos@b", paths=[str(tmp_path)])
    assert no_plan.value.field == "repo"

    # Every reconnect re-sends the set: the refusal is logged once, not per reconnect.
    got = next_shares(a, "b")
    await a.peers.set_grants("b", ["repos.receive"])
    assert (await got).skipped == {"photos@b": why}
    assert caplog.text.count("shared repository photos@b not taken") == 1
    assert not marker.exists()
    assert PW not in caplog.text
    assert_no_secret_in_files(a, PW)


async def test_each_refused_environment_name(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    assert a.engine and b.engine
    await b.engine.add_repo(
        "base", str(tmp_path / "r"), PasswordSpec("secret", value=PW), init=True
    )
    guid = (await b.engine.store.get_repo("base")).guid
    # Hostile B: one shared repository per refused name, written straight into its store.
    for n, name in enumerate(REFUSED_ENV):
        row = repo_record(f"r{n}", str(tmp_path / "r"), "secret", "", [name])
        row.guid, row.shared = guid, True
        await store_of(b).add_repo(row)
        await b.engine.secrets.put(f"repo/r{n}/password", PW)
        await b.engine.secrets.put(f"repo/r{n}/env/{name}", ENV_SECRET)
    got = next_shares(a, "b")
    await pair_a_receives_from_b(a, b)
    result = await got
    assert result.offered == len(REFUSED_ENV) and result.added == []
    for n, name in enumerate(REFUSED_ENV):
        assert f"a peer may not set {name}: " in result.skipped[f"r{n}@b"], name
    assert await a.engine.list_repos() == []
    assert await secret_names(a, "repo/") == []
    assert_no_secret_in_files(a, PW, ENV_SECRET)


async def test_an_accepted_share_changed_hostilely_keeps_what_was_accepted(
    make_node: MakeNode, restic_bin: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    marker = tmp_path / "marker"
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    assert a.engine and b.engine
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("data\n")
    await b.engine.add_repo(
        "photos", str(tmp_path / "photos"), PasswordSpec("secret", value=PW), init=True
    )
    await b.engine.share_repo("photos")
    got = next_shares(a, "b")
    await pair_a_receives_from_b(a, b)
    assert (await got).added == ["photos@b"]
    accepted = await a.engine.store.get_repo("photos@b")
    await a.engine.add_plan("pa", repo_id="photos@b", paths=[str(src)])
    assert (await run_flow(a, "pa"))[0].status == OpStatus.SUCCESS

    # B turns hostile: same repository, now reached through sftp with B's command.
    with a.bus.subscribe("notice") as notices:
        got = next_shares(a, "b")
        await rig_and_push(b, "photos", client_uri=HOSTILE_URI, options=[hostile_option(marker)])
        changed = await got
        assert not changed.changed and changed.removed == []
        why = changed.skipped["photos@b"]
        assert "a peer may not set restic -o options" in why
        assert why.endswith("the change is refused and the version accepted before is kept")
        async with asyncio.timeout(5):
            notice = await notices.get()
        assert isinstance(notice, Notice) and "photos@b not taken" in notice.message
    kept = await a.engine.store.get_repo("photos@b")
    assert (kept.uri, kept.options, kept.updated_at) == (
        accepted.uri,
        [],
        accepted.updated_at,
    )
    assert (await a.status()).shared_skipped == {"photos@b": why}
    # The accepted version still works, and B's command never ran.
    flow = await run_flow(a, "pa")
    assert flow[0].status == OpStatus.SUCCESS, flow[0].error
    assert len(await a.engine.snapshots("photos@b")) == 2
    assert not marker.exists()

    # B is honest again: the refusal clears.
    got = next_shares(a, "b")
    await rig_and_push(b, "photos", client_uri=None, options=[])
    assert (await got).skipped == {}
    assert (await a.status()).shared_skipped == {}


async def test_a_moved_share_is_announced_without_secrets(
    make_node: MakeNode, restic_bin: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    assert a.engine and b.engine
    repo = tmp_path / "photos"
    await b.engine.add_repo("photos", str(repo), PasswordSpec("secret", value=PW), init=True)
    await b.engine.share_repo("photos")
    got = next_shares(a, "b")
    await pair_a_receives_from_b(a, b)
    assert (await got).added == ["photos@b"]

    (tmp_path / "other-view").symlink_to(repo)
    moved_to = str(tmp_path / "other-view")
    with a.bus.subscribe("notice") as notices:
        got = next_shares(a, "b")
        await b.engine.share_repo("photos", client_uri=moved_to)
        assert (await got).updated == ["photos@b"]
        async with asyncio.timeout(5):
            notice = await notices.get()
    assert isinstance(notice, Notice) and notice.level == "warning"
    assert notice.message == f"peer b changed the location of photos@b from {repo} to {moved_to}"
    assert (await a.status()).shared_changes["photos@b"].endswith(notice.message)
    assert (await a.engine.store.get_repo("photos@b")).uri == moved_to
    assert PW not in caplog.text


async def test_a_received_row_breaking_the_rules_is_never_opened(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    """A row stored before these rules existed (or by any other path) opens no program."""
    marker = tmp_path / "marker"
    a = await make_node("a", restic_path=restic_bin)
    assert a.engine
    # The control: restic itself really runs the command for such a repository.
    access = RepoAccess(
        uri=HOSTILE_URI,
        password=PasswordValue(PW),
        options=(hostile_option(marker),),
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(ResticError):
        await Restic(restic_bin).snapshots(access)
    assert marker.exists(), "the attack this test guards against did not run: test is void"
    marker.unlink()

    row = repo_record("photos@b", HOSTILE_URI, "secret", "", [], [hostile_option(marker)])
    row.origin, row.guid = "b", "ab" * 32
    await store_of(a).add_repo(row)
    await a.engine.secrets.put("repo/photos@b/password", PW)
    with pytest.raises(
        EngineError, match="shared by b is not opened: a peer may not set restic -o"
    ):
        await a.engine.snapshots("photos@b")
    await a.engine.add_plan("pa", repo_id="photos@b", paths=[str(tmp_path)])
    op = await a.engine.wait((await a.engine.backup("pa")).pk)
    assert op.status == OpStatus.ERROR and "is not opened" in (op.error or "")
    assert not marker.exists()
    listed = json.dumps(to_json(RepoRecord.of(await a.engine.store.get_repo("photos@b"))))
    assert PW not in listed


#: URIs a peer may not share with us, each with the words of the rule the receiver says.
REFUSED_SHARE_URIS = (
    ("rclone:remote:bucket", "restic runs the rclone program"),
    ("sftp:-oProxyCommand=sh:/p", "would pass options to ssh"),
    ("sftp://-oX@host//p", "would pass options to ssh"),
    ("ftp://host/p", "may not use the ftp: backend"),
    ("relative/dir", "must be absolute"),
    ("/srv/\x1b[2Jx", "not a usable"),
)


async def test_each_refused_uri_form_in_a_share(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    """The receiver checks the URI's backend and form itself (B's own checks are skipped)."""
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    assert a.engine and b.engine
    await b.engine.add_repo(
        "base", str(tmp_path / "r"), PasswordSpec("secret", value=PW), init=True
    )
    guid = (await b.engine.store.get_repo("base")).guid
    for n, (uri, _) in enumerate(REFUSED_SHARE_URIS):
        row = repo_record(f"u{n}", str(tmp_path / "r"), "secret", "", [])
        row.guid, row.shared, row.client_uri = guid, True, uri
        await store_of(b).add_repo(row)
        await b.engine.secrets.put(f"repo/u{n}/password", PW)
    got = next_shares(a, "b")
    await pair_a_receives_from_b(a, b)
    result = await got
    assert result.offered == len(REFUSED_SHARE_URIS) and result.added == []
    for n, (_, words) in enumerate(REFUSED_SHARE_URIS):
        why = result.skipped[f"u{n}@b"]
        assert why.startswith("b sent settings a peer may not set here: ") and words in why, why
    assert await a.engine.list_repos() == []
    assert await secret_names(a, "repo/") == []
    assert_no_secret_in_files(a, PW)


async def test_changed_credentials_of_an_accepted_share_are_announced_without_values(
    make_node: MakeNode, restic_bin: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An owner re-keying a repository we back up into is told, naming what changed only."""
    caplog.set_level(logging.INFO)
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    assert a.engine and b.engine
    await b.engine.add_repo(
        "photos",
        str(tmp_path / "photos"),
        PasswordSpec("secret", value=PW),
        init=True,
        env={"B2_ACCOUNT_ID": "first-id"},
    )
    await b.engine.share_repo("photos")
    got = next_shares(a, "b")
    await pair_a_receives_from_b(a, b)
    assert (await got).added == ["photos@b"]

    new_pw, new_env = "pw-photos-new-Zt55-never-in-clear", ENV_SECRET
    with a.bus.subscribe("notice") as notices:
        got = next_shares(a, "b")
        await b.engine.secrets.put("repo/photos/env/B2_ACCOUNT_ID", new_env)
        await b.engine.secrets.put("repo/photos/password", new_pw)
        b.bus.publish(ConfigChanged(what="repo", id="photos"))
        assert (await got).updated == ["photos@b"]
        async with asyncio.timeout(5):
            notice = await notices.get()
    assert isinstance(notice, Notice) and notice.level == "warning"
    assert notice.message == (
        "peer b changed the password of photos@b; the credentials of photos@b (B2_ACCOUNT_ID)"
    )
    assert (await a.status()).shared_changes["photos@b"].endswith(notice.message)
    for secret in (PW, new_pw, new_env, "first-id"):
        assert secret not in caplog.text
    assert_no_secret_in_files(a, PW, new_pw, new_env)
