"""The restore preview over the admin API: what a restore would overwrite, computed from the
snapshot's real listing and the real file system, with real restic (0.14 and 0.18), and a
selection that is not the snapshot's refused before any file is looked at."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerstash.peer.node import Node
from tests.fixtures.nodes import admin, backed_up


async def test_preview_names_what_a_restore_would_overwrite(
    restic_node: Node, tmp_path: Path
) -> None:
    src, snap = await backed_up(restic_node, tmp_path)
    # Over the original location: every file is still there.
    status, res = await admin(
        restic_node, "POST", "/v1/repos/main/restore/preview", {"snapshot": snap, "target": "/"}
    )
    assert status == 200, res
    assert res["files"] == 3 and res["overwrite_count"] == 3
    assert sorted(res["overwrite"]) == sorted(
        str(p) for p in (src / "docs" / "a.txt", src / "docs" / "b.txt", src / "top.txt")
    )
    assert res["truncated"] is False and res["target_exists"] is True
    # One file gone from the original place: only the others would be overwritten.
    (src / "top.txt").unlink()
    status, res = await admin(
        restic_node,
        "POST",
        "/v1/repos/main/restore/preview",
        {"snapshot": snap[:8], "target": "/", "include": [str(src)]},
    )
    assert status == 200, res
    assert (res["files"], res["overwrite_count"]) == (3, 2)
    assert str(src / "top.txt") not in res["overwrite"]
    # A selection of one folder counts only that folder.
    status, res = await admin(
        restic_node,
        "POST",
        "/v1/repos/main/restore/preview",
        {"snapshot": snap, "target": "/", "include": [str(src / "docs")]},
    )
    assert (status, res["files"], res["overwrite_count"]) == (200, 2, 2)
    # A fresh folder: nothing would be overwritten, and it says the folder does not exist.
    fresh = tmp_path / "Restored" / "p-1"
    status, res = await admin(
        restic_node,
        "POST",
        "/v1/repos/main/restore/preview",
        {"snapshot": snap, "target": str(fresh)},
    )
    assert status == 200, res
    assert (res["files"], res["overwrite_count"], res["overwrite"]) == (3, 0, [])
    assert (res["target_exists"], res["target_empty"]) == (False, True)
    # A folder that already holds one restored file: that one is named, at its new place.
    clash = fresh / str(src / "docs" / "a.txt").lstrip("/")
    clash.parent.mkdir(parents=True)
    clash.write_text("older restore\n")
    status, res = await admin(
        restic_node,
        "POST",
        "/v1/repos/main/restore/preview",
        {"snapshot": snap, "target": str(fresh)},
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
    restic_node: Node, tmp_path: Path, include: list[str], target: str, message: str
) -> None:
    src, snap = await backed_up(restic_node, tmp_path)
    body = {"snapshot": snap, "target": target, "include": [i.format(src=src) for i in include]}
    status, res = await admin(restic_node, "POST", "/v1/repos/main/restore/preview", body)
    assert status == 409, res
    assert set(res) == {"error"}
    assert message.format(src=src) in res["error"]
    assert "\n" not in res["error"]
    # Nothing was queued or written.
    assert restic_node.engine
    ops = await restic_node.engine.list_operations()
    assert [o.kind for o in ops] == ["backup"]


async def test_preview_refuses_garbage_bodies(restic_node: Node, tmp_path: Path) -> None:
    _, snap = await backed_up(restic_node, tmp_path)
    for body, want in (
        ({"snapshot": snap, "target": "/", "include": "/x"}, "field 'include' must be a list"),
        ({"snapshot": snap, "target": "/", "steal": 1}, "unknown field(s) for a restore preview"),
        ({"target": "/"}, "missing field 'snapshot'"),
    ):
        status, res = await admin(restic_node, "POST", "/v1/repos/main/restore/preview", body)
        assert status == 400 and want in res["error"], res
    status, res = await admin(
        restic_node,
        "POST",
        "/v1/repos/main/restore/preview",
        {"snapshot": "deadbeef", "target": "/"},
    )
    assert status == 409 and res["error"] == "no snapshot 'deadbeef' in repository 'main'"
