"""The restore preview over the admin API: what a restore would overwrite, computed from the
snapshot's real listing and the real file system, with real restic (0.14 and 0.18), and a
selection that is not the snapshot's refused before any file is looked at."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from peerstash.core.engine import PasswordSpec
from peerstash.core.models import OpStatus
from peerstash.peer.node import Node, NodeOptions
from tests.fixtures.servers import resolve_restic

PW = "preview-Pa55-never-shown"


@pytest.fixture(params=["system", "0.18"])
def restic_bin(request: pytest.FixtureRequest) -> str:
    return resolve_restic(request.param)


@pytest.fixture
async def node(tmp_path: Path, restic_bin: str) -> AsyncIterator[Node]:
    n = Node(
        tmp_path / "d",
        NodeOptions(
            instance_id="prev",
            listen=None,
            discovery=False,
            schedule=False,
            restic_path=restic_bin,
        ),
    )
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


async def post(node: Node, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    conn = aiohttp.UnixConnector(path=str(node.socket_path))
    async with (
        aiohttp.ClientSession(connector=conn) as s,
        s.post(f"http://n{path}", json=body) as r,
    ):
        return r.status, await r.json()


async def backed_up(node: Node, tmp_path: Path) -> tuple[Path, str]:
    """A source tree and the id of its snapshot in repository ``main``."""
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("a\n")
    (src / "docs" / "b.txt").write_text("b\n")
    (src / "top.txt").write_text("top\n")
    engine = node.engine
    assert engine
    await engine.add_repo(
        "main", str(tmp_path / "repo"), PasswordSpec("secret", value=PW), init=True
    )
    await engine.add_plan("p", repo_id="main", paths=[str(src)])
    op = await engine.wait((await engine.backup("p")).pk)
    assert op.status == OpStatus.SUCCESS, op.error
    assert op.snapshot_id
    return src, op.snapshot_id


async def test_preview_names_what_a_restore_would_overwrite(node: Node, tmp_path: Path) -> None:
    src, snap = await backed_up(node, tmp_path)
    # Over the original location: every file is still there.
    status, res = await post(
        node, "/v1/repos/main/restore/preview", {"snapshot": snap, "target": "/"}
    )
    assert status == 200, res
    assert res["files"] == 3 and res["overwrite_count"] == 3
    assert sorted(res["overwrite"]) == sorted(
        str(p) for p in (src / "docs" / "a.txt", src / "docs" / "b.txt", src / "top.txt")
    )
    assert res["truncated"] is False and res["target_exists"] is True
    # One file gone from the original place: only the others would be overwritten.
    (src / "top.txt").unlink()
    status, res = await post(
        node,
        "/v1/repos/main/restore/preview",
        {"snapshot": snap[:8], "target": "/", "include": [str(src)]},
    )
    assert status == 200, res
    assert (res["files"], res["overwrite_count"]) == (3, 2)
    assert str(src / "top.txt") not in res["overwrite"]
    # A selection of one folder counts only that folder.
    status, res = await post(
        node,
        "/v1/repos/main/restore/preview",
        {"snapshot": snap, "target": "/", "include": [str(src / "docs")]},
    )
    assert (status, res["files"], res["overwrite_count"]) == (200, 2, 2)
    # A fresh folder: nothing would be overwritten, and it says the folder does not exist.
    fresh = tmp_path / "Restored" / "p-1"
    status, res = await post(
        node, "/v1/repos/main/restore/preview", {"snapshot": snap, "target": str(fresh)}
    )
    assert status == 200, res
    assert (res["files"], res["overwrite_count"], res["overwrite"]) == (3, 0, [])
    assert (res["target_exists"], res["target_empty"]) == (False, True)
    # A folder that already holds one restored file: that one is named, at its new place.
    clash = fresh / str(src / "docs" / "a.txt").lstrip("/")
    clash.parent.mkdir(parents=True)
    clash.write_text("older restore\n")
    status, res = await post(
        node, "/v1/repos/main/restore/preview", {"snapshot": snap, "target": str(fresh)}
    )
    assert (res["overwrite_count"], res["overwrite"]) == (1, [str(clash)])
    assert res["target_empty"] is False
    assert clash.read_text() == "older restore\n"  # a preview changes nothing


@pytest.mark.parametrize(
    ("include", "target", "message"),
    [
        (
            ["../../etc"],
            "/",
            "'../../etc' is not a path in the snapshot: snapshot paths are absolute",
        ),
        (["{src}/../../etc"], "/", "may not contain '..'"),
        (["/etc"], "/", "/etc is not in the snapshot (it holds {src})"),
        (["/etc/passwd"], "/", "/etc/passwd is not in the snapshot"),
        ([], "../../etc", "restore target '../../etc' must be an absolute path"),
    ],
)
async def test_preview_refuses_a_selection_outside_the_snapshot(
    node: Node, tmp_path: Path, include: list[str], target: str, message: str
) -> None:
    src, snap = await backed_up(node, tmp_path)
    body = {"snapshot": snap, "target": target, "include": [i.format(src=src) for i in include]}
    status, res = await post(node, "/v1/repos/main/restore/preview", body)
    assert status == 409, res
    assert set(res) == {"error"}
    assert message.format(src=src) in res["error"]
    assert "\n" not in res["error"]
    # Nothing was queued or written.
    assert node.engine
    ops = await node.engine.list_operations()
    assert [o.kind for o in ops] == ["backup"]


async def test_preview_refuses_garbage_bodies(node: Node, tmp_path: Path) -> None:
    _, snap = await backed_up(node, tmp_path)
    for body, want in (
        ({"snapshot": snap, "target": "/", "include": "/x"}, "field 'include' must be a list"),
        ({"snapshot": snap, "target": "/", "steal": 1}, "unknown field(s) for a restore preview"),
        ({"target": "/"}, "missing field 'snapshot'"),
    ):
        status, res = await post(node, "/v1/repos/main/restore/preview", body)
        assert status == 400 and want in res["error"], res
    status, res = await post(
        node, "/v1/repos/main/restore/preview", {"snapshot": "deadbeef", "target": "/"}
    )
    assert status == 409 and res["error"] == "no snapshot 'deadbeef' in repository 'main'"
