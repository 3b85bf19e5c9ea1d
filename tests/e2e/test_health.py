"""Green means protected: health, ``status --check``, first backup on plan add, no double backup.

A real node process, the real CLI, real restic and real repositories.
"""

from __future__ import annotations

import json
import select
import shutil
import subprocess
from pathlib import Path

from tests.fixtures.cli import PASSWORD, add_repo, jcli, make_tree
from tests.fixtures.gate import gated_password
from tests.fixtures.processes import PEERSTASH, NodeProc


def check(node: NodeProc) -> tuple[int, str]:
    res = node.cli("status", "--check", check=False)
    assert res.stdout.count("\n") == 1, res.stdout  # one line, as a monitoring system wants
    return res.returncode, res.stdout.strip()


def test_health_never_succeeded_then_ok_then_failing_then_unknown(
    node: NodeProc, tmp_path: Path
) -> None:
    assert check(node) == (0, "PEERSTASH OK - ok")  # nothing promised yet, nothing broken
    src = make_tree(tmp_path / "src", files=5)
    repo = tmp_path / "repo"
    add_repo(node, "main", str(repo))
    node.cli("plan", "add", "docs", "--repo", "main", "--path", str(src), "--no-backup-now")

    # Before the first backup: not protected, so not green.
    out = node.cli("status").stdout.splitlines()
    assert out[:2] == [
        "health: attention — 1 thing needs a look",
        "  - plan docs has never succeeded",
    ]
    health = jcli(node, "status")["health"]
    assert health["level"] == "attention"
    assert [(r["kind"], r["plan"]) for r in health["reasons"]] == [("never_succeeded", "docs")]
    assert check(node) == (
        1,
        "PEERSTASH WARNING - attention — 1 thing needs a look: plan docs has never succeeded",
    )

    node.cli("backup", "docs", "--wait")
    assert node.cli("status").stdout.splitlines()[0] == "health: ok"
    assert check(node) == (0, "PEERSTASH OK - ok")

    # The repository disappears: the next backup fails, and health says failing (exit 2).
    shutil.move(repo, tmp_path / "moved-away")
    res = node.cli("backup", "docs", "--wait", check=False)
    assert res.returncode == 1
    code, line = check(node)
    assert code == 2
    assert line.startswith(
        "PEERSTASH CRITICAL - failing — 1 thing needs a look: plan docs: last backup failed"
    )
    health = jcli(node, "status")["health"]
    assert [(r["level"], r["kind"], r["plan"]) for r in health["reasons"]] == [
        ("failing", "backup_failed", "docs")
    ]
    assert PASSWORD not in json.dumps(health)

    # A node that does not answer is UNKNOWN (3), the Nagios convention.
    assert node.stop() == 0
    code, line = check(node)
    assert code == 3
    assert line.startswith("PEERSTASH UNKNOWN - no Peerstash node is running for ")


def follow_already(node: NodeProc, plan: str, op_id: str) -> subprocess.Popen[str]:
    """``backup PLAN --wait`` while ``op_id`` is unfinished: it says so, then follows that one."""
    proc = subprocess.Popen(
        [*PEERSTASH, "--data-dir", str(node.data_dir), "backup", plan, "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=node.env(),
    )
    assert proc.stderr is not None
    ready, _, _ = select.select([proc.stderr], [], [], 60)
    if not ready:
        proc.kill()
        raise AssertionError(f"backup {plan} --wait said nothing in 60 s")
    said = proc.stderr.readline().strip()
    assert said.startswith(f"plan {plan} is already ") and said.endswith(f"(operation {op_id})")
    return proc


def test_plan_add_backs_up_now_and_backup_now_does_not_queue_twice(
    node: NodeProc, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", files=5)
    script, gate = gated_password(tmp_path, PASSWORD)
    gate.touch()
    node.cli(
        "repo",
        "add",
        "main",
        "--uri",
        str(tmp_path / "repo"),
        "--password-command",
        str(script),
        "--init",
    )
    gate.unlink()  # from here each restic run of "main" waits for the gate

    # plan add starts the first backup (it runs, held at the gate).
    out = node.cli("plan", "add", "docs", "--repo", "main", "--path", str(src)).stdout
    assert "first backup queued as operation " in out
    first = out.rsplit("operation ", 1)[1].strip()
    # A second plan on the same repository: its first backup waits its turn, shown as queued.
    added = jcli(node, "plan", "add", "other", "--repo", "main", "--path", str(src))
    queued = added["first_backup"]["id"]
    rows = {line.split()[0]: line for line in node.cli("ops").stdout.splitlines()[1:]}
    assert " queued " in rows[queued] and "pending" not in rows[queued]

    # "Back up now" on the plan whose backup is already under way says so and queues nothing.
    res = node.cli("backup", "docs")
    assert res.returncode == 0
    assert res.stdout.strip() in (
        f"plan docs is already running (operation {first})",
        f"plan docs is already queued (operation {first})",
    )
    res = node.cli("backup", "other")
    assert res.stdout.strip() == f"plan other is already queued (operation {queued})"
    health = jcli(node, "status")["health"]
    assert health["level"] == "attention"  # not protected until a first backup succeeded
    assert {r["plan"] for r in health["reasons"]} == {"docs", "other"}

    # --wait follows the backup already under way, to its end: asked while it is held.
    followers = [follow_already(node, "docs", first), follow_already(node, "other", queued)]
    gate.touch()
    for proc, op_id in zip(followers, (first, queued), strict=True):
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert proc.returncode == 0, err
        assert f"backup {op_id}: success, snapshot" in out
    backups = [o["id"] for o in jcli(node, "ops") if o["kind"] == "backup"]
    assert sorted(backups) == sorted([first, queued])  # one backup per plan, nothing stacked
    assert len(jcli(node, "snapshots", "main")) == 2
    assert check(node) == (0, "PEERSTASH OK - ok")


def test_health_settings_from_the_cli(node: NodeProc) -> None:
    res = node.cli("settings", "set", "peer_offline_after", "36h")
    assert res.stdout.strip() == "peer_offline_after set; it takes effect now"
    node.cli("settings", "set", "peer_stale_after", "604800")
    got = jcli(node, "settings")
    assert (got["peer_offline_after"], got["peer_stale_after"]) == (36 * 3600, 604800)
    res = node.cli("settings", "set", "peer_offline_after", "soon", check=False)
    assert res.returncode == 1
    assert res.stderr.strip() == (
        "peerstash: peer_offline_after: give seconds or a duration such as 2d, 36h or 90m, "
        "not 'soon'"
    )
    assert jcli(node, "settings")["peer_offline_after"] == 36 * 3600
    node.cli("settings", "set", "peer_offline_after", "")  # back to the default
    assert jcli(node, "settings")["peer_offline_after"] is None


def test_plan_add_no_backup_now_starts_nothing(node: NodeProc, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", files=3)
    add_repo(node, "main", str(tmp_path / "repo"))
    res = jcli(node, "plan", "add", "docs", "--repo", "main", "--path", str(src), "--no-backup-now")
    assert "first_backup" not in res
    assert [o for o in jcli(node, "ops") if o["kind"] == "backup"] == []
    assert jcli(node, "snapshots", "main") == []
