"""Passwords written in repository URIs (``rest:http://user:pw@host/``) are sealed like every
other secret: the repos table holds the URI with ``***``, the secret store the password, and
restic gets the whole URI back only in its environment. Real nodes, a real REST server, real
restic; the checks read the SQLite files' bytes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerstash.core.engine import (
    Engine,
    EngineError,
    PasswordSpec,
    join_uri_password,
    split_uri_password,
)
from peerstash.core.events import EventBus, Notice
from peerstash.core.models import OpStatus
from peerstash.core.records import RepoRecord, to_json
from peerstash.core.secrets import SecretStore, load_or_create_key
from peerstash.core.store import Store, repo_record
from tests.fixtures.nodes import MakeNode, store_of
from tests.fixtures.servers import (
    LOCALHOST,
    RestServer,
    _find_pyrestserver,
    _http_ready,
    _launch,
    _stop_process,
    _unavailable,
)
from tests.fixtures.sharing import assert_no_secret_in_files, link_b_gives_a, next_shares, run_flow

PW = "repo-pw-Hh31-never-in-clear"
URI_PW = "uri-pw-Tt59-never-in-clear"
URI_PW2 = "uri-pw2-Vb06-never-in-clear"


@pytest.fixture
def rest_with_auth(tmp_path: Path) -> Iterator[RestServer]:
    """A REST server that demands HTTP basic auth as ``backup`` with :data:`URI_PW` (its
    ``.htpasswd`` holds the password in plain: pyrestserver compares it as it is)."""
    script = _find_pyrestserver()
    if script is None:
        _unavailable("pyrestserver not installed (pip: the project's 'test' extra)")
    data = tmp_path / "rest-auth"
    data.mkdir()
    (data / ".htpasswd").write_text(f"backup:{URI_PW}\n")
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}

    def argv(port: int) -> list[str]:
        listen = f"{LOCALHOST}:{port}"
        return [sys.executable, script, "serve", "--path", str(data), "--listen", listen]

    proc, port = _launch("pyrestserver", argv, _http_ready, tmp_path / "rest-auth.log", env=env)
    try:
        yield RestServer(
            host=LOCALHOST,
            port=port,
            url=f"http://{LOCALHOST}:{port}",
            data_dir=data,
            log_path=tmp_path / "rest-auth.log",
        )
    finally:
        _stop_process(proc)


def with_password(rest: RestServer, name: str, secret: str) -> str:
    return f"rest:http://backup:{secret}@{rest.host}:{rest.port}/{name}"


def masked(rest: RestServer, name: str) -> str:
    return f"rest:http://backup:***@{rest.host}:{rest.port}/{name}"


def test_split_and_join() -> None:
    uri = "rest:https://user:p@ss:w/rd@host:8000/r"
    shown, secret = split_uri_password("rest:https://user:p%40ss@host:8000/r")
    assert (shown, secret) == ("rest:https://user:***@host:8000/r", "p%40ss")
    assert join_uri_password(shown, secret) == "rest:https://user:p%40ss@host:8000/r"
    assert split_uri_password("/srv/r") == ("/srv/r", None)
    assert split_uri_password("rest:https://user@host/") == ("rest:https://user@host/", None)
    assert split_uri_password("rest:https://u:***@host/") == ("rest:https://u:***@host/", None)
    assert join_uri_password("/srv/r", "x") == "/srv/r"
    assert split_uri_password(uri)[0].startswith("rest:https://user:***@")


async def test_a_uri_password_is_sealed_and_backups_work(
    make_node: MakeNode,
    restic_bin: str,
    rest_server: RestServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    a = await make_node("a", restic_path=restic_bin)
    assert a.engine
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("data\n")
    name = "sealed1"
    row, _ = await a.engine.add_repo(
        "r", with_password(rest_server, name, URI_PW), PasswordSpec("secret", value=PW), init=True
    )
    assert row.uri == masked(rest_server, name)
    assert (rest_server.data_dir / name / "config").is_file()
    await a.engine.add_plan("p", repo_id="r", paths=[str(src)])
    flow = await run_flow(a, "p")
    assert flow[0].status == OpStatus.SUCCESS, flow[0].error
    assert len(await a.engine.snapshots("r")) == 1

    stored = await a.engine.store.get_repo("r")
    assert stored.uri == masked(rest_server, name)
    listed = json.dumps([to_json(RepoRecord.of(r)) for r in await a.engine.list_repos()])
    assert URI_PW not in listed and "backup:***@" in listed
    logs = "\n".join(await a.engine.store.get_log(flow[0].pk))
    assert URI_PW not in logs and URI_PW not in caplog.text
    assert_no_secret_in_files(a, URI_PW, PW)

    # A URI copied from the listing (with ***) keeps the sealed password.
    await a.engine.update_repo("r", uri=masked(rest_server, name), env={})
    assert len(await a.engine.snapshots("r")) == 1
    assert await a.engine.secrets.get("repo/r/uri-password") == URI_PW
    # Without a password in the new URI, none is kept.
    await a.engine.update_repo("r", uri=f"rest:{rest_server.url}/{name}")
    assert await a.engine.secrets.get("repo/r/uri-password") is None
    assert len(await a.engine.snapshots("r")) == 1


async def test_passwords_left_in_uris_are_sealed_when_the_node_starts(
    make_node: MakeNode, restic_bin: str, rest_server: RestServer, tmp_path: Path
) -> None:
    a = await make_node("a", restic_path=restic_bin)
    assert a.engine
    name = "legacy1"
    await a.engine.add_repo(
        "r", with_password(rest_server, name, URI_PW), PasswordSpec("secret", value=PW), init=True
    )
    # A row as an older version wrote it: the password in clear in the URI and client URI.
    await store_of(a).update_repo(
        "r",
        uri=with_password(rest_server, name, URI_PW),
        client_uri=with_password(rest_server, name, URI_PW2),
    )
    await a.engine.secrets.delete_prefix("repo/r/uri-password")
    await a.stop()
    a = await make_node("a", restic_path=restic_bin)
    assert a.engine
    row = await a.engine.store.get_repo("r")
    assert (row.uri, row.client_uri) == (masked(rest_server, name), masked(rest_server, name))
    assert await a.engine.secrets.get("repo/r/client-uri-password") == URI_PW2
    assert await a.engine.snapshots("r") == []
    assert_no_secret_in_files(a, URI_PW, URI_PW2)
    assert await a.engine.seal_uri_passwords() == []  # done once


async def test_a_shared_uri_password_reaches_the_receiver_sealed(
    make_node: MakeNode,
    restic_bin: str,
    rest_server: RestServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    assert a.engine and b.engine
    name = "shared1"
    await a.engine.add_repo(
        "r", with_password(rest_server, name, URI_PW), PasswordSpec("secret", value=PW), init=True
    )
    await a.engine.share_repo("r")
    got = next_shares(b, "a")
    await link_b_gives_a(a, b, ["repos.receive"])
    assert (await got).added == ["r@a"]
    on_b = await b.engine.store.get_repo("r@a")
    assert on_b.uri == masked(rest_server, name)
    assert await b.engine.secrets.get("repo/r@a/uri-password") == URI_PW
    assert await b.engine.snapshots("r@a") == []

    # The owner changes the password in the URI: the receiver takes it and says so.
    with b.bus.subscribe("notice") as notices:
        got = next_shares(b, "a")
        await a.engine.update_repo("r", uri=with_password(rest_server, name, URI_PW2))
        assert (await got).updated == ["r@a"]
        async with asyncio.timeout(5):
            notice = await notices.get()
    assert isinstance(notice, Notice)
    assert notice.message == "peer a changed the password in the location of r@a"
    assert await b.engine.secrets.get("repo/r@a/uri-password") == URI_PW2
    assert await b.engine.snapshots("r@a") == []
    for node in (a, b):
        assert_no_secret_in_files(node, URI_PW, URI_PW2, PW)
    assert URI_PW not in caplog.text and URI_PW2 not in caplog.text


async def test_sealing_old_rows_on_either_database(
    bare_store: Store, restic_bin: str, tmp_path: Path
) -> None:
    """The start-up sealing on SQLite and PostgreSQL alike (no restic run: rows only)."""
    secrets = SecretStore(bare_store, load_or_create_key(tmp_path / "secret.key"))
    engine = Engine(
        tmp_path, bare_store, secrets, EventBus(), instance_id="a", restic_path=restic_bin
    )
    row = repo_record("r", "rest:https://u:" + URI_PW + "@host/r", "secret")
    row.client_uri = "s3:https://key:" + URI_PW2 + "@minio.lan/bucket"
    await bare_store.add_repo(row)
    await bare_store.add_repo(repo_record("plain", "/srv/plain", "secret"))
    assert await engine.seal_uri_passwords() == ["r"]
    sealed = await bare_store.get_repo("r")
    assert sealed.uri == "rest:https://u:***@host/r"
    assert sealed.client_uri == "s3:https://key:***@minio.lan/bucket"
    assert await secrets.get("repo/r/uri-password") == URI_PW
    assert await secrets.get("repo/r/client-uri-password") == URI_PW2
    assert (await bare_store.get_repo("plain")).uri == "/srv/plain"
    assert await engine.seal_uri_passwords() == []


async def test_a_server_that_demands_the_uri_password_gets_it(
    make_node: MakeNode, restic_bin: str, rest_with_auth: RestServer, tmp_path: Path
) -> None:
    """The sealed password really reaches restic: the server refuses anything else."""
    a = await make_node("a", restic_path=restic_bin)
    assert a.engine
    with pytest.raises(EngineError) as refused:  # the server checks: a wrong one is refused
        await a.engine.add_repo(
            "bad",
            with_password(rest_with_auth, "auth1", "wrong-password"),
            PasswordSpec("secret", value=PW),
            init=True,
        )
    assert "wrong-password" not in str(refused.value)
    assert await a.engine.list_repos() == []
    row, _ = await a.engine.add_repo(
        "r",
        with_password(rest_with_auth, "auth1", URI_PW),
        PasswordSpec("secret", value=PW),
        init=True,
    )
    assert row.uri == masked(rest_with_auth, "auth1")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("data\n")
    await a.engine.add_plan("p", repo_id="r", paths=[str(src)])
    flow = await run_flow(a, "p")
    assert flow[0].status == OpStatus.SUCCESS, flow[0].error
    assert len(await a.engine.snapshots("r")) == 1
    assert_no_secret_in_files(a, URI_PW, PW)
