"""A peer with ``config.write`` that sends, on the wire, repositories rigged to run programs here.

The same rules as for shared repositories (core/peer_rules.py) must hold on the receiving side
for ``config.write``: B calls A's ``config.repo.add`` / ``config.repo.edit`` directly over the
real link (no admin API, no CLI of B's in between, so nothing on B's side can have checked
anything), with every environment name of issue 11, each refused URI form, ``-o`` options and
password sources other than a value. A refuses each with ``forbidden`` in words naming the rule;
nothing is stored, created or changed, the repository accepted before still works, and the
command never runs. Real in-process nodes, real link, real restic.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from peerstash.core.engine import PasswordSpec
from peerstash.core.models import Secret
from peerstash.core.store import NotFound
from peerstash.peer.links import protocol as proto
from peerstash.peer.links.rpc import CallError, RpcService
from peerstash.peer.node import Node
from tests.fixtures.nodes import MakeNode, link, store_of
from tests.fixtures.sharing import REFUSED_ENV, assert_no_secret_in_files

PW = "pw-config-write-Hq41-never-in-clear"
ENV_SECRET = "env-value-Wm93-never-in-clear"

#: URIs a peer may not place here, with the words of the rule A must say.
REFUSED_URIS = (
    ("rclone:remote:bucket", "restic runs the rclone program"),
    ("sftp:-oProxyCommand=sh:/p", "would pass options to ssh"),
    ("sftp://-oX@host//p", "would pass options to ssh"),
    ("sftp://host -oX=y//p", "holds spaces"),
    ("ftp://host/p", "may not use the ftp: backend"),
    ("relative/dir", "must be absolute"),
    ("/srv/\x1b[2Jx", "not a usable"),
)


def rpc(node: Node) -> RpcService:
    assert node.rpc is not None
    return node.rpc


async def secret_names(node: Node, prefix: str) -> list[str]:
    async with store_of(node).session() as s:
        rows = await s.execute(select(Secret.name).where(Secret.name.startswith(prefix)))
        return sorted(rows.scalars())


async def refused(b: Node, method: str, args: dict[str, Any], words: str) -> str:
    """B's raw call to A; A must answer ``forbidden`` naming the rule, never a secret."""
    with pytest.raises(CallError) as err:
        await rpc(b).call("a", method, args)
    assert err.value.code == proto.ErrorCode.FORBIDDEN, err.value.message
    assert words in err.value.message, err.value.message
    assert PW not in err.value.message and ENV_SECRET not in err.value.message
    return err.value.message


def wire_repo(where: Path, **over: Any) -> dict[str, Any]:
    """``config.repo.add`` arguments as they cross the link."""
    return {
        "id": "r2",
        "uri": str(where / "r2"),
        "password": {"source": "secret", "value": PW},
        "env": {},
        "options": [],
        "init": True,
    } | over


async def test_config_write_from_a_hostile_peer_is_refused_on_the_receiving_side(
    make_node: MakeNode, restic_bin: str, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    command = f"sftp.command=sh -c {shlex.quote(f'id > {marker}')}"
    a = await make_node("a", restic_path=restic_bin)
    b = await make_node("b", restic_path=restic_bin)
    assert a.engine
    await link(a, b, ["config.read:repo:r1,repo:r2", "config.write:repo:r1,repo:r2"])
    await a.engine.add_repo("r1", str(tmp_path / "r1"), PasswordSpec("secret", value=PW), init=True)
    accepted = await a.engine.store.get_repo("r1")

    # -- config.repo.add: each rule, nothing stored or created --------------------------------
    for name in REFUSED_ENV:
        await refused(
            b,
            "config.repo.add",
            wire_repo(tmp_path, env={name: ENV_SECRET}),
            f"a peer may not set {name}: ",
        )
    for uri, words in REFUSED_URIS:
        await refused(b, "config.repo.add", wire_repo(tmp_path, uri=uri), words)
    await refused(
        b,
        "config.repo.add",
        wire_repo(tmp_path, uri="sftp:backup@host:/srv/photos", options=[command]),
        "a peer may not set restic -o options",
    )
    for source, ref in (("command", f"sh -c 'id > {marker}'"), ("file", "/etc/hostname")):
        await refused(
            b,
            "config.repo.add",
            wire_repo(tmp_path, password={"source": source, "ref": ref}),
            "a peer may give a repository password only as a value",
        )
    with pytest.raises(NotFound):
        await a.engine.store.get_repo("r2")
    assert await secret_names(a, "repo/r2/") == []
    assert not (tmp_path / "r2").exists()

    # -- config.repo.edit of the repository accepted before: refused whole, kept as it was ----
    for name in REFUSED_ENV:
        await refused(
            b,
            "config.repo.edit",
            {"id": "r1", "changes": {"env": {name: ENV_SECRET}}},
            f"a peer may not set {name}: ",
        )
    for uri, words in REFUSED_URIS:
        await refused(b, "config.repo.edit", {"id": "r1", "changes": {"uri": uri}}, words)
    await refused(
        b,
        "config.repo.edit",
        {"id": "r1", "changes": {"uri": "sftp:backup@host:/srv/r1", "options": [command]}},
        "a peer may not set restic -o options",
    )
    await refused(
        b,
        "config.repo.edit",
        {"id": "r1", "changes": {"password": {"source": "command", "ref": "cat /pw"}}},
        "a peer may give a repository password only as a value",
    )
    kept = await a.engine.store.get_repo("r1")
    assert (kept.uri, kept.env_keys, kept.options, kept.password_source, kept.updated_at) == (
        accepted.uri,
        [],
        [],
        "secret",
        accepted.updated_at,
    )
    assert await secret_names(a, "repo/r1/") == ["repo/r1/password"]
    assert await a.engine.snapshots("r1") == []  # still opens with the password it had
    assert not marker.exists()
    assert_no_secret_in_files(a, PW, ENV_SECRET)
