"""The command contract, end to end: a real node, the real CLI, real restic, real repositories."""

from __future__ import annotations

import filecmp
import json
import os
import random
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.cli import PASSWORD, add_repo, jcli, make_tree
from tests.fixtures.processes import PEERSTASH, NodeProc


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(same_tree(a / d, b / d) for d in cmp.common_dirs)


@pytest.fixture(params=["local", "sftp", "rest"])
def repo_uri_and_options(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, list[str]]:
    if request.param == "local":
        return str(tmp_path / "repo"), []
    if request.param == "sftp":
        server = request.getfixturevalue("sftp_server")
        opts = [f"--option={o}" for o in server.restic_options()]
        return server.repo_uri(str(tmp_path / "sftp-repo")), opts
    server = request.getfixturevalue("rest_server")
    return server.repo_uri(f"r{random.randrange(10**9)}"), []


def test_backup_list_forget_restore_roundtrip(
    node: NodeProc, tmp_path: Path, repo_uri_and_options: tuple[str, list[str]]
) -> None:
    uri, options = repo_uri_and_options
    src = make_tree(tmp_path / "src")
    add_repo(node, "main", uri, *options)
    repos = jcli(node, "repo", "list")
    assert [r["id"] for r in repos] == ["main"]
    assert repos[0]["guid"] and len(repos[0]["guid"]) == 64

    plan = jcli(
        node,
        "plan",
        "add",
        "--no-backup-now",
        "docs",
        "--repo",
        "main",
        "--path",
        str(src),
        "--keep-last",
        "2",
    )
    assert plan["retention"] == {"keep_last": 2}
    for i in range(3):
        if i:
            (src / "notes.txt").write_text(f"changed {i}\n")
        res = node.cli("backup", "docs", "--wait")
        assert "backup" in res.stdout and "success, snapshot" in res.stdout
        assert "forget" in res.stdout  # --wait follows the retention that comes after

    ops = jcli(node, "ops")
    backups = [o for o in ops if o["kind"] == "backup"]
    assert len(backups) == 3
    for o in backups:
        assert o["status"] == "success", o
        assert o["origin"] == "alpha" and o["plan"] == "docs" and o["repo"] == "main"
        assert o["snapshot_id"] and o["started_at"] and o["ended_at"] and o["error"] is None
    # Retention ran after each backup, in the same flow.
    forgets = [o for o in ops if o["kind"] == "forget"]
    assert len(forgets) == 3 and all(o["status"] == "success" for o in forgets)

    snaps = jcli(node, "snapshots", "main")
    assert len(snaps) == 2
    newest = max(snaps, key=lambda s: s["time"])
    assert newest["id"].startswith(backups[0]["snapshot_id"][:8])
    assert {"plan:docs", "host:alpha"} <= set(newest["tags"])
    assert newest["hostname"] == "alpha"

    target = tmp_path / "restored"
    node.cli("restore", "main", newest["id"], "--target", str(target), "--wait")
    assert same_tree(src, target / src.relative_to("/"))
    assert not same_tree(src, target / src.relative_to("/") / "dir0")  # the check can fail


def test_repo_add_wrong_password_is_refused_and_nothing_stored(
    node: NodeProc, tmp_path: Path
) -> None:
    uri = str(tmp_path / "repo")
    subprocess.run(
        ["restic", "init", "-r", uri],
        env={**os.environ, "RESTIC_PASSWORD": "right"},
        check=True,
        capture_output=True,
    )
    res = node.cli(
        "repo", "add", "r", "--uri", uri, "--password-stdin", input=PASSWORD + "\n", check=False
    )
    assert res.returncode == 1
    assert "wrong password" in res.stderr.lower()
    assert PASSWORD not in res.stderr + res.stdout
    assert len(res.stderr.strip().splitlines()) == 1
    assert jcli(node, "repo", "list") == []


def test_repo_add_missing_repo_says_to_init(node: NodeProc, tmp_path: Path) -> None:
    res = node.cli(
        "repo",
        "add",
        "r",
        "--uri",
        str(tmp_path / "nothing"),
        "--password-stdin",
        input=PASSWORD + "\n",
        check=False,
    )
    assert res.returncode == 1
    assert "--init" in res.stderr
    assert jcli(node, "repo", "list") == []


def test_password_sources_resolved_by_node(node_factory: Any, tmp_path: Path) -> None:
    node = node_factory("alpha", REPO_PW="env-password").start()
    pw_file = tmp_path / "pw"
    pw_file.write_text("file-password\n")
    pw_file.chmod(0o600)
    src = make_tree(tmp_path / "src", files=3)
    node.cli(
        "repo", "add", "f", "--uri", str(tmp_path / "rf"), "--password-file", str(pw_file), "--init"
    )
    node.cli(
        "repo", "add", "e", "--uri", str(tmp_path / "re"), "--password-env", "REPO_PW", "--init"
    )
    node.cli(
        "repo",
        "add",
        "c",
        "--uri",
        str(tmp_path / "rc"),
        "--password-command",
        "echo cmd-password",
        "--init",
    )
    for name, pw in (("f", "file-password"), ("e", "env-password"), ("c", "cmd-password")):
        node.cli("plan", "add", "--no-backup-now", f"p{name}", "--repo", name, "--path", str(src))
        node.cli("backup", f"p{name}", "--wait")
        # The repository really uses that password: bare restic opens it with it.
        out = subprocess.run(
            ["restic", "-r", str(tmp_path / f"r{name}"), "snapshots", "--json"],
            env={**os.environ, "RESTIC_PASSWORD": pw},
            capture_output=True,
            text=True,
            check=True,
        )
        assert len(json.loads(out.stdout)) == 1
    repos = {r["id"]: r for r in jcli(node, "repo", "list")}
    assert repos["e"]["password_source"] == "env" and repos["e"]["password_ref"] == "REPO_PW"


def test_secret_never_in_outputs_or_database(node: NodeProc, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", files=3)
    add_repo(node, "main", str(tmp_path / "repo"), "--env", "EXTRA_TOKEN=tok-123456789")
    node.cli("plan", "add", "--no-backup-now", "p", "--repo", "main", "--path", str(src))
    node.cli("backup", "p", "--wait")
    outputs = [
        node.cli("repo", "list", "--json").stdout,
        node.cli("ops", "--json").stdout,
        node.cli("status", "--json").stdout,
        "\n".join(node.output),
    ]
    op_id = json.loads(outputs[1])[0]["id"]
    outputs.append(node.cli("log", op_id).stdout)
    blob = b"".join(p.read_bytes() for p in node.data_dir.rglob("*") if p.is_file())
    for secret in (PASSWORD, "tok-123456789"):
        assert all(secret not in text for text in outputs)
        assert secret.encode() not in blob


def test_failures_are_clear(node: NodeProc, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", files=3)
    repo = tmp_path / "repo"
    add_repo(node, "main", str(repo))
    node.cli("plan", "add", "--no-backup-now", "p", "--repo", "main", "--path", str(src))

    res = node.cli("backup", "nope", check=False)
    assert res.returncode == 1 and res.stderr.strip() == "peerstash: no plan named 'nope'"

    res = node.cli(
        "plan",
        "add",
        "q",
        "--repo",
        "main",
        "--path",
        str(src),
        "--schedule",
        "61 * * * *",
        check=False,
    )
    assert res.returncode == 1 and "cron" in res.stderr.lower()

    # The repository vanishes: the backup fails with a sentence, and the node keeps going.
    repo.rename(tmp_path / "moved")
    res = node.cli("backup", "p", "--wait", check=False)
    assert res.returncode == 1
    assert "there is no restic repository at main" in res.stderr
    (tmp_path / "moved").rename(repo)
    node.cli("backup", "p", "--wait")


def release_lock(holder: subprocess.Popen[str]) -> None:
    """End a lock-holding ``restic backup --stdin`` without a snapshot: SIGINT makes restic
    drop its lock and exit. (Closing its input would save a snapshot of empty stdin, which
    restic 0.18 does, and the tests count snapshots.)"""
    holder.send_signal(signal.SIGINT)
    holder.communicate(timeout=60)


def test_locked_repository_names_the_holder(node: NodeProc, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", files=3)
    repo = tmp_path / "repo"
    add_repo(node, "main", str(repo))
    node.cli(
        "plan",
        "add",
        "--no-backup-now",
        "p",
        "--repo",
        "main",
        "--path",
        str(src),
        "--keep-last",
        "1",
    )
    node.cli("backup", "p", "--wait")
    # A bare restic backup reading stdin holds a lock until interrupted; its -v output
    # says when the lock is taken.
    holder = subprocess.Popen(
        ["restic", "-r", str(repo), "backup", "-v", "--stdin", "--stdin-filename", "x"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "RESTIC_PASSWORD": PASSWORD},
    )
    try:
        assert holder.stdout is not None
        for line in holder.stdout:
            if "read data from stdin" in line:
                break
        assert any((repo / "locks").iterdir())
        res = node.cli("forget", "main", "--wait", check=False)
        assert res.returncode == 1
        assert "locked" in res.stderr.lower()
        assert str(holder.pid) in res.stderr
    finally:
        release_lock(holder)
    node.cli("forget", "main", "--wait")


def test_backup_saved_but_retention_failed_exits_0_and_says_so(
    node: NodeProc, tmp_path: Path
) -> None:
    """``backup --wait`` whose snapshot was saved but whose retention (forget) failed: exit 0,
    the snapshot reported, and a warning line naming the retention failure."""
    src = make_tree(tmp_path / "src", files=3)
    repo = tmp_path / "repo"
    add_repo(node, "main", str(repo))
    node.cli(
        "plan",
        "add",
        "p",
        "--repo",
        "main",
        "--path",
        str(src),
        "--keep-last",
        "1",
        "--no-backup-now",
    )
    # Another restic's backup holds a shared lock: our backup (shared lock) runs, our forget
    # (exclusive lock) is refused.
    holder = subprocess.Popen(
        ["restic", "-r", str(repo), "backup", "-v", "--stdin", "--stdin-filename", "x"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "RESTIC_PASSWORD": PASSWORD},
    )
    try:
        assert holder.stdout is not None
        for line in holder.stdout:
            if "read data from stdin" in line:
                break
        res = node.cli("backup", "p", "--wait", check=False)
    finally:
        release_lock(holder)
    assert res.returncode == 0, res.stderr
    assert "success, snapshot" in res.stdout
    warning = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1, res.stderr
    assert "snapshot was saved, but its retention (forget" in warning[0]
    assert "locked" in warning[0]
    ops = jcli(node, "ops")
    assert [o["status"] for o in ops if o["kind"] == "backup"] == ["success"]
    assert [o["status"] for o in ops if o["kind"] == "forget"] == ["error"]
    assert len(jcli(node, "snapshots", "main")) == 1


def test_forget_dry_run_lists_what_goes_and_changes_nothing(node: NodeProc, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", files=3)
    repo = tmp_path / "repo"
    add_repo(node, "main", str(repo))
    node.cli("plan", "add", "--no-backup-now", "p", "--repo", "main", "--path", str(src))
    for i in range(3):
        (src / "notes.txt").write_text(f"version {i}\n")
        node.cli("backup", "p", "--wait")
    made = [s["short_id"] for s in sorted(jcli(node, "snapshots", "main"), key=lambda s: s["time"])]
    assert len(made) == 3
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD}
    # Another machine's snapshot with our plan's tag: never ours to forget.
    subprocess.run(
        ["restic", "-r", str(repo), "backup", "-q", "--host", "other", "--tag", "plan:p", str(src)],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    node.cli("plan", "edit", "p", "--keep-last", "1")
    ops_before = jcli(node, "ops")

    # A bare restic backup holds the repository's lock: a dry run does not need it.
    holder = subprocess.Popen(
        ["restic", "-r", str(repo), "backup", "-v", "--stdin", "--stdin-filename", "x"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout is not None
        for line in holder.stdout:
            if "read data from stdin" in line:
                break
        res = node.cli("forget", "main", "--dry-run")
        preview = jcli(node, "forget", "main", "--dry-run", "--plan", "p")
    finally:
        release_lock(holder)
    assert "dry run: nothing was removed" in res.stdout and "(host alpha)" in res.stdout
    assert "would remove 2:" in res.stdout and "would keep 1:" in res.stdout
    assert all(short in res.stdout for short in made) and "other" not in res.stdout
    assert sorted(s["short_id"] for s in preview["remove"]) == sorted(made[:2])
    assert [s["short_id"] for s in preview["keep"]] == [made[2]]
    assert {(s["hostname"], s["plan"]) for s in preview["remove"]} == {("alpha", "p")}
    assert len(jcli(node, "snapshots", "main")) == 4  # nothing removed
    assert jcli(node, "ops") == ops_before  # and no operation made

    bad = node.cli("forget", "main", "--dry-run", "--wait", check=False)
    assert bad.returncode == 1 and "nothing to wait for" in bad.stderr
    node.cli("forget", "main", "--plan", "p", "--wait")
    left = {(s["short_id"], s["hostname"]) for s in jcli(node, "snapshots", "main")}
    assert {short for short, host in left if host == "alpha"} == {made[2]}
    assert [host for _, host in left].count("other") == 1


def unreadable_path(tmp_path: Path) -> str:
    if os.geteuid() == 0:
        # root reads any file mode; a read of /proc/self/mem at offset 0 fails with EIO instead.
        return "/proc/self/mem"
    bad = tmp_path / "src" / "secret.bin"
    bad.write_bytes(b"x" * 100)
    bad.chmod(0)
    return str(bad)


def test_unreadable_file_gives_warning_with_snapshot(node: NodeProc, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", files=3)
    bad = unreadable_path(tmp_path)
    add_repo(node, "main", str(tmp_path / "repo"))
    paths = ["--path", str(src)] + (["--path", bad] if not bad.startswith(str(src)) else [])
    node.cli("plan", "add", "--no-backup-now", "p", "--repo", "main", *paths)
    res = node.cli("backup", "p", "--wait", check=False)
    assert res.returncode == 3, res.stderr
    assert "could not be read" in res.stderr
    op = jcli(node, "ops")[0]
    assert op["status"] == "warning" and op["snapshot_id"]
    assert len(jcli(node, "snapshots", "main")) == 1


def test_cli_without_node_says_how_to_start(node_factory: Any) -> None:
    idle = node_factory("idle")
    res = idle.cli("status", check=False)
    assert res.returncode == 1
    assert "no Peerstash node is running" in res.stderr and "--no-gui" in res.stderr


def test_second_node_refuses_and_names_the_first(node: NodeProc) -> None:
    again = NodeProc(node.data_dir, node.instance_id)
    again.start(wait=False)
    assert again.proc is not None
    code = again.proc.wait(30)
    again._exited.wait(10)
    assert code == 1
    text = "\n".join(again.output)
    assert "already running" in text and str(node.proc.pid if node.proc else "") in text
    assert node.cli("status", "--json").returncode == 0


def test_status_json_contract(node: NodeProc) -> None:
    st = jcli(node, "status")
    assert st["instance_id"] == "alpha"
    assert st["version"]
    assert st["data_dir"] == str(node.data_dir)


def test_ctrl_c_leaves_no_running_operation(node: NodeProc, tmp_path: Path) -> None:
    src = big_tree(tmp_path / "big")
    add_repo(node, "main", str(tmp_path / "repo"))
    node.cli("plan", "add", "--no-backup-now", "p", "--repo", "main", "--path", str(src))
    # Stop the node while restic is really running.
    for update in start_and_follow(node, "p"):
        if update["status"] == "running":
            op_id = update["id"]
            break
    else:
        raise AssertionError("the backup ended before it was seen running")
    assert node.stop(signal.SIGINT) == 0
    node.start()
    ops = jcli(node, "ops")
    final = next(o for o in ops if o["id"] == op_id)
    assert final["status"] in ("interrupted", "success")
    assert not [o for o in ops if o["status"] in ("running", "pending") and o["kind"] != "unlock"]
    node.cli("backup", "p", "--wait")
    node.cli("check", "main", "--wait")


def start_and_follow(node: NodeProc, plan: str) -> Any:
    """Start a backup of ``plan`` and yield its states from the very first one.

    The node's event stream is opened (and confirmed live) before the backup is asked for, so
    no state can slip by however fast the backup runs.
    """
    proc = subprocess.Popen(
        [*PEERSTASH, "--data-dir", str(node.data_dir), "events", "--json"],
        stdout=subprocess.PIPE,
        text=True,
        env=node.env(),
    )
    try:
        assert proc.stdout is not None
        lines = iter(proc.stdout)
        assert json.loads(next(lines)) == {"type": "ready"}
        op = jcli(node, "backup", plan)
        for line in lines:
            ev = json.loads(line)
            if ev.get("type") == "operation" and ev["op"]["id"] == op["id"]:
                yield ev["op"]
                if ev["op"]["status"] not in ("pending", "running"):
                    return
    finally:
        proc.kill()
        proc.wait()


def big_tree(root: Path) -> Path:
    root.mkdir()
    for i in range(8):
        (root / f"f{i}").write_bytes(os.urandom(32 * 1024 * 1024))
    return root


def test_sigkill_mid_backup_recovers(node: NodeProc, tmp_path: Path) -> None:
    src = big_tree(tmp_path / "big")
    repo = tmp_path / "repo"
    add_repo(node, "main", str(repo))
    node.cli("plan", "add", "--no-backup-now", "p", "--repo", "main", "--path", str(src))
    for update in start_and_follow(node, "p"):
        if update["status"] == "running" and update["bytes_done"] > 0:
            op_id = update["id"]
            break
    else:
        raise AssertionError("the backup ended before it made progress")
    assert node.proc is not None
    node.proc.kill()
    node.proc.wait(10)
    node.start()
    ops = jcli(node, "ops")
    killed = next(o for o in ops if o["id"] == op_id)
    assert killed["status"] == "interrupted"
    assert "stopped" in killed["error"].lower()
    res = node.cli("backup", "p", "--wait")
    assert "success" in res.stdout
    node.cli("check", "main", "--wait")
    check = subprocess.run(
        ["restic", "-r", str(repo), "check"],
        capture_output=True,
        text=True,
        env={**os.environ, "RESTIC_PASSWORD": PASSWORD},
    )
    assert check.returncode == 0, check.stderr


def test_gc_keeps_recent_history(node: NodeProc, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", files=2)
    add_repo(node, "main", str(tmp_path / "repo"))
    node.cli("plan", "add", "--no-backup-now", "p", "--repo", "main", "--path", str(src))
    node.cli("backup", "p", "--wait")
    assert jcli(node, "gc", "--older-than-days", "1") == {"removed": 0}
    assert [o["kind"] for o in jcli(node, "ops")] == ["backup"]
    res = node.cli("gc", "--older-than-days", "0", check=False)
    assert res.returncode == 1 and "positive whole number" in res.stderr


def test_edit_plan_and_repo_validated_and_nothing_lost(node: NodeProc, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", files=3)
    add_repo(node, "main", str(tmp_path / "repo"))
    node.cli(
        "plan",
        "add",
        "--no-backup-now",
        "p",
        "--repo",
        "main",
        "--path",
        str(src),
        "--schedule",
        "0 3 * * *",
    )
    plan = jcli(node, "plan", "edit", "p", "--every", "2h", "--keep-last", "1")
    assert plan["schedule"] is None and plan["every_seconds"] == 7200
    assert plan["retention"] == {"keep_last": 1} and plan["next_due_at"]
    res = node.cli("plan", "edit", "p", "--schedule", "99 * * * *", check=False)
    assert res.returncode == 1 and "cron" in res.stderr.lower()
    assert jcli(node, "plan", "list")[0]["every_seconds"] == 7200  # unchanged by the bad edit
    node.cli("plan", "edit", "p", "--disable")
    res = node.cli("backup", "p", check=False)
    assert res.returncode == 1 and "disabled" in res.stderr
    node.cli("plan", "edit", "p", "--enable", "--manual")
    assert jcli(node, "plan", "list")[0]["next_due_at"] is None

    # The password moves to a file: checked against the repository before it is kept.
    wrong = tmp_path / "wrong-pw"
    wrong.write_text("not it\n")
    res = node.cli("repo", "edit", "main", "--password-file", str(wrong), check=False)
    assert res.returncode == 1 and "wrong password" in res.stderr.lower()
    node.cli("backup", "p", "--wait")  # the old password still works
    right = tmp_path / "pw"
    right.write_text(PASSWORD + "\n")
    repo = jcli(node, "repo", "edit", "main", "--password-file", str(right))
    assert repo["password_source"] == "file" and repo["password_ref"] == str(right)
    node.cli("backup", "p", "--wait")

    # Pointing it at another repository is refused: that would mix two histories.
    other = tmp_path / "other"
    subprocess.run(
        ["restic", "init", "-r", str(other)],
        env={**os.environ, "RESTIC_PASSWORD": PASSWORD},
        check=True,
        capture_output=True,
    )
    res = node.cli("repo", "edit", "main", "--uri", str(other), check=False)
    assert res.returncode == 1 and "another repository" in res.stderr
    assert jcli(node, "repo", "list")[0]["uri"] == str(tmp_path / "repo")

    # What people read (`repo ... --on PEER` says the same of a peer's, tests/e2e/test_peers.py).
    res = node.cli("repo", "edit", "main", "--uri", str(tmp_path / "repo"))
    assert res.stdout == "repository main changed; it opens with the new settings\n"
    res = node.cli("repo", "edit", "main", check=False)
    assert (res.returncode, res.stderr) == (
        1,
        "peerstash: nothing to change: give --uri, a password option, --env or --option\n",
    )
    res = node.cli(
        "repo",
        "add",
        "spare",
        "--uri",
        str(tmp_path / "spare"),
        "--password-stdin",
        "--init",
        input=PASSWORD + "\n",
    )
    assert re.fullmatch(
        r"repository spare: created a new repository[^\n]* \(id [0-9a-f]{8}\)\n", res.stdout
    )
    res = node.cli("repo", "remove", "spare")
    assert res.stdout == "repository spare removed from Peerstash (its data is untouched)\n"
    assert [r["id"] for r in jcli(node, "repo", "list")] == ["main"]
