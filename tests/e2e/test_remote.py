"""Remote commands between two real `peerstash --no-gui` processes, through the real CLI."""

from __future__ import annotations

import json
from typing import Any

from tests.fixtures.cli import FAST, pair, wait_link


def test_remote_run_wait_and_remote_snapshots_through_the_cli(
    node_factory: Any, tmp_path: Any
) -> None:
    hub = node_factory("alpha", PEERSTASH_LINK_TIMINGS=FAST).start()
    laptop = node_factory("bravo", PEERSTASH_LINK_TIMINGS=FAST).start()
    # The hub lets the laptop run its plans and browse its repository "r" (but not run plan
    # "other": exclusions win), and see its history.
    pair(laptop, hub, "run:plan:docs", "run:repo:r", "run:!plan:other", "ops")
    wait_link(laptop, "alpha", "online")
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("asked for from another machine\n")
    hub.cli(
        "repo",
        "add",
        "r",
        "--uri",
        str(tmp_path / "repo"),
        "--password-stdin",
        "--init",
        input="pw-for-remote-test\n",
    )
    hub.cli("plan", "add", "--no-backup-now", "docs", "--repo", "r", "--path", str(src))
    hub.cli("plan", "add", "--no-backup-now", "other", "--repo", "r", "--path", str(src))

    res = laptop.cli("remote", "run", "alpha", "docs", "--wait")
    mine = json.loads(hub.cli("ops", "--json").stdout)
    (backup,) = [o for o in mine if o["kind"] == "backup"]
    assert backup["status"] == "success" and backup["snapshot_id"]
    assert res.stdout.strip() == (
        f"done on alpha: operation {backup['id']}, snapshot {backup['snapshot_id'][:8]}"
    )
    # Each state is said as it comes (accepted may already be past when the answer arrives).
    assert f"running on alpha as operation {backup['id']}" in res.stderr

    (req,) = json.loads(laptop.cli("remote", "list", "--json").stdout)
    assert req["state"] == "done" and req["remote_op_id"] == backup["id"]
    assert req["args"] == {"plan": "docs"} and backup["flow_id"] == req["id"]
    theirs = json.loads(laptop.cli("ops", "--origin", "alpha", "--json").stdout)
    assert [(o["id"], o["snapshot_id"]) for o in theirs] == [(backup["id"], backup["snapshot_id"])]

    snaps = json.loads(laptop.cli("remote", "snapshots", "alpha", "r", "--json").stdout)
    local = json.loads(hub.cli("snapshots", "r", "--json").stdout)
    assert snaps == local and len(snaps) == 1
    assert snaps[0]["short_id"] == backup["snapshot_id"][:8]
    listing = laptop.cli("remote", "ls", "alpha", "r", snaps[0]["short_id"], "--json").stdout
    paths = [json.loads(line)["path"] for line in listing.splitlines()]
    assert str(src / "notes.txt") in paths

    # Refusals and mistakes are one sentence and a non-zero exit.
    res = laptop.cli("remote", "run", "alpha", "other", "--wait", check=False)
    assert res.returncode == 1
    assert res.stderr.strip() == (
        "peerstash: alpha refused: bravo has no 'run' grant for plan 'other' here"
    )
    res = laptop.cli(
        "remote", "restore", "alpha", "r", snaps[0]["short_id"], "--target", "rel", check=False
    )
    assert res.returncode == 1
    assert "restore target 'rel' is relative; give an absolute path on alpha" in res.stderr
    res = laptop.cli("remote", "snapshots", "alpha", "elsewhere", check=False)
    assert res.returncode == 1
    assert res.stderr.strip() == (
        "peerstash: alpha refused: bravo has no 'run' grant for repository 'elsewhere' here"
    )
