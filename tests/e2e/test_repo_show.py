"""``peerstash repo show NAME [--reveal-password] [--recovery-sheet FILE]``, end to end.

A real node process, the real CLI (on a pipe and on a pseudo-terminal), real restic: the
password is printed only when confirmed, never lands in the node's output, and the recovery
sheet's own command opens the repository with restic alone.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import select
import shlex
import stat
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from peerstash.core.recovery import password_from_sheet
from peerstash.peer.cli import AdminClient, CliError
from tests.fixtures.processes import PEERSTASH, NodeProc

PASSWORD = "s3cret-Pa55word-for-show"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses a pty")


def setup_repo(node: NodeProc, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    node.cli(
        "repo",
        "add",
        "main",
        "--uri",
        str(repo),
        "--password-stdin",
        "--init",
        input=PASSWORD + "\n",
    )
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("remember me\n")
    node.cli("plan", "add", "docs", "--repo", "main", "--path", str(src), "--no-backup-now")
    node.cli("backup", "docs", "--wait")
    return repo


def on_a_terminal(node: NodeProc, args: list[str], answer: str) -> tuple[int, str]:
    """Run the CLI with a pty as its terminal, answer its question, return (code, all output)."""
    master, slave = pty.openpty()

    def controlling_tty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [*PEERSTASH, "--data-dir", str(node.data_dir), *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=node.env(),
        start_new_session=True,
        preexec_fn=controlling_tty,
    )
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"to show its password:" not in seen:
            assert time.monotonic() < deadline, seen
            assert proc.poll() is None or select.select([master], [], [], 0)[0], seen
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                seen += os.read(master, 4096)
        os.write(master, answer.encode() + b"\n")
        while True:
            assert time.monotonic() < deadline, seen
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the pty is gone with the process
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    return proc.returncode, seen.decode(errors="replace")


def test_repo_show_masks_and_reveals_only_when_confirmed(node: NodeProc, tmp_path: Path) -> None:
    setup_repo(node, tmp_path)

    shown = node.cli("repo", "show", "main", input="")
    assert f"location:  {tmp_path / 'repo'}" in shown.stdout
    assert "password:  secret" in shown.stdout
    assert f"restic -r {tmp_path / 'repo'} snapshots" in shown.stdout
    assert PASSWORD not in shown.stdout + shown.stderr

    # No terminal, no --yes: refused, and the password is nowhere.
    res = node.cli("repo", "show", "main", "--reveal-password", input="", check=False)
    assert res.returncode == 1
    assert "without a terminal" in res.stderr and "--yes" in res.stderr
    assert PASSWORD not in res.stdout + res.stderr

    # --yes: printed.
    res = node.cli("repo", "show", "main", "--reveal-password", "--yes", input="")
    assert f"password value: {PASSWORD}" in res.stdout
    as_json = json.loads(
        node.cli("repo", "show", "main", "--reveal-password", "--yes", "--json", input="").stdout
    )
    assert as_json["password"] == PASSWORD and as_json["id"] == "main"

    # On a terminal: the wrong name refuses, the right one shows it.
    code, out = on_a_terminal(node, ["repo", "show", "main", "--reveal-password"], "mian")
    assert code == 1, out
    assert "not confirmed" in out and PASSWORD not in out
    code, out = on_a_terminal(node, ["repo", "show", "main", "--reveal-password"], "main")
    assert code == 0, out
    assert f"password value: {PASSWORD}" in out

    # A repository that does not exist: one clear line.
    res = node.cli("repo", "show", "nope", "--reveal-password", "--yes", input="", check=False)
    assert res.returncode == 1
    assert "no repository named 'nope'" in res.stderr

    # The node never wrote the password anywhere it logs.
    assert all(PASSWORD not in line for line in node.output)


def test_recovery_sheet_opens_the_repository_with_restic_alone(
    node: NodeProc, tmp_path: Path
) -> None:
    repo = setup_repo(node, tmp_path)
    sheet = tmp_path / "sheet.txt"
    sheet.write_text("an older sheet, readable by all\n")
    sheet.chmod(0o644)
    res = node.cli("repo", "show", "main", "--recovery-sheet", str(sheet), "--yes", input="")
    assert "mode 0600" in res.stdout
    assert PASSWORD not in res.stdout
    assert stat.S_IMODE(sheet.stat().st_mode) == 0o600
    text = sheet.read_text()
    assert password_from_sheet(text) == PASSWORD
    assert f"Repository location: {repo}" in text
    assert "an older sheet" not in text
    command = next(ln.strip() for ln in text.splitlines() if ln.strip().startswith("restic -r"))
    assert command == f"restic -r {repo} snapshots"
    # restic alone, the sheet's command and the sheet's password: the backup is there.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "PEERSTASH_"))}
    env["RESTIC_PASSWORD"] = password_from_sheet(text) or ""
    out = subprocess.run(
        [*shlex.split(command), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    ).stdout
    snaps = json.loads(out)
    assert len(snaps) == 1 and snaps[0]["paths"] == [str(tmp_path / "src")]


def test_reveal_route_refuses_what_it_must(node: NodeProc, tmp_path: Path) -> None:
    """The admin route: no such repository, and a password Peerstash does not hold."""
    pwfile = tmp_path / "pw"
    pwfile.write_text(PASSWORD + "\n")
    pwfile.chmod(0o600)
    node.cli(
        "repo",
        "add",
        "byfile",
        "--uri",
        str(tmp_path / "r2"),
        "--password-file",
        str(pwfile),
        "--init",
    )

    async def ask(repo: str) -> Any:
        async with AdminClient(node.data_dir) as client:
            return await client.call("POST", f"/v1/repos/{repo}/reveal-password")

    with pytest.raises(CliError, match="no repository named 'ghost'"):
        asyncio.run(ask("ghost"))
    said = asyncio.run(ask("byfile"))
    assert said["password"] is None and said["source"] == "file"
    assert str(pwfile) in said["where"]
    assert PASSWORD not in json.dumps(said)

    res = node.cli("repo", "show", "byfile", "--reveal-password", "--yes", input="", check=False)
    assert res.returncode == 1
    assert "does not store the password" in res.stderr and str(pwfile) in res.stderr
    assert PASSWORD not in res.stdout + res.stderr
