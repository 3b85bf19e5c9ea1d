"""A pairing token never has to be on a command line, where every local user can read it.

Real ``peerstash --no-gui`` node processes and the real CLI. While ``peer add -`` waits for the
token on stdin, its ``/proc/PID/cmdline`` (what ``ps`` shows other users) is read and must not
hold it; the token then pairs. Without an argument on a terminal (a real pseudo-terminal) the
CLI asks for it without echo. A token given as an argument still works, with a warning.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.processes import PEERSTASH, NodeProc, node_factory

__all__ = ["node_factory"]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def make_token(issuer: NodeProc) -> tuple[str, str]:
    tok = json.loads(issuer.cli("token", "create", "--json").stdout)
    url = json.loads(issuer.cli("status", "--json").stdout)["peer_url"]
    return tok["token"], url


def cli_argv(node: NodeProc, *args: str) -> list[str]:
    return [*PEERSTASH, "--data-dir", str(node.data_dir), *args]


def wait_reading_stdin(pid: int, timeout: float = 30) -> None:
    """Until process ``pid`` is blocked in a read of its stdin (x86_64: syscall 0 on fd 0)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            wchan = Path(f"/proc/{pid}/wchan").read_text()
            syscall = Path(f"/proc/{pid}/syscall").read_text()
        except OSError:
            wchan = syscall = ""
        if "pipe_read" in wchan or syscall.startswith("0 0x0 "):
            return
        time.sleep(0.05)  # polling /proc: there is no event for "blocked in read"
    raise AssertionError(f"process {pid} never waited on stdin")


def paired(node: NodeProc) -> dict[str, Any]:
    return {p["id"]: p for p in json.loads(node.cli("peer", "list", "--json").stdout)}


def test_peer_add_dash_reads_the_token_from_stdin_and_never_shows_it(
    node_factory: Any,
) -> None:
    a = node_factory("alpha").start()
    b = node_factory("bravo").start()
    token, url = make_token(a)
    secret = token.split(":", 1)[1].split("#", 1)[0]
    proc = subprocess.Popen(
        cli_argv(b, "peer", "add", "-", "--url", url, "--json"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=b.env(),
    )
    try:
        wait_reading_stdin(proc.pid)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        ps = subprocess.run(
            ["ps", "-ww", "-o", "args=", "-p", str(proc.pid)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        out, err = proc.communicate(token + "\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "peer\x00add\x00-\x00" in cmdline
    assert secret not in cmdline and token not in cmdline
    assert "peer add -" in ps and secret not in ps
    assert proc.returncode == 0, err
    assert json.loads(out)["id"] == "alpha"
    assert "warning" not in err
    assert paired(b)["alpha"]["role"] == "known_host"


def test_peer_add_without_a_token_asks_on_the_terminal_without_echo(
    node_factory: Any,
) -> None:
    a = node_factory("alpha").start()
    b = node_factory("bravo").start()
    token, url = make_token(a)
    master, slave = pty.openpty()

    def controlling_tty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        cli_argv(b, "peer", "add", "--url", url),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=b.env(),
        start_new_session=True,
        preexec_fn=controlling_tty,
    )
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"Pairing token:" not in seen:
            assert time.monotonic() < deadline, seen
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                seen += os.read(master, 4096)
        os.write(master, token.encode() + b"\n")
        while proc.poll() is None or ready:
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
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    text = seen.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "paired with alpha" in text
    assert token not in text  # not echoed
    assert paired(b)["alpha"]["role"] == "known_host"


def test_a_token_on_the_command_line_still_works_with_a_warning(node_factory: Any) -> None:
    a = node_factory("alpha").start()
    b = node_factory("bravo").start()
    token, url = make_token(a)
    res = b.cli("peer", "add", token, "--url", url)
    assert "paired with alpha" in res.stdout
    assert "visible to other users of this machine" in res.stderr
    assert "peerstash peer add -" in res.stderr
    # Without a terminal and without '-', nothing is guessed: a clear error, nothing paired.
    c = node_factory("charlie").start()
    res = c.cli("peer", "add", "--url", url, input="", check=False)
    assert res.returncode == 1
    assert "peerstash peer add -" in res.stderr
    assert paired(c) == {}


def test_secret_environment_values_come_from_a_file_not_the_command_line(
    node_factory: Any, tmp_path: Path
) -> None:
    """``--env K=V`` (S3 keys...) would sit on the command line too: ``--env-file`` does not."""
    a = node_factory("alpha").start()
    env_file = tmp_path / "nas.env"
    env_file.write_text("# S3 credentials\nAWS_SECRET_ACCESS_KEY=s3cr3t-value\n\nFOO=bar\n")
    env_file.chmod(0o600)
    repo = tmp_path / "repo"
    res = a.cli(
        "repo", "add", "nas", "--uri", str(repo), "--init", "--password-stdin",
        "--env-file", str(env_file), input="repo-password\n",
    )  # fmt: skip
    assert "warning" not in res.stderr
    (listed,) = json.loads(a.cli("repo", "list", "--json").stdout)
    assert sorted(listed["env_keys"]) == ["AWS_SECRET_ACCESS_KEY", "FOO"]
    assert "s3cr3t-value" not in json.dumps(listed)
    res = a.cli("repo", "edit", "nas", "--env-file", str(env_file), "--env", "FOO=baz")
    assert "--env values on the command line are visible to other users" in res.stderr
    assert "--env-file FILE" in res.stderr
    res = a.cli("repo", "edit", "nas", "--env-file", str(tmp_path / "missing.env"), check=False)
    assert res.returncode == 1 and "--env-file" in res.stderr and len(res.stderr.splitlines()) == 1
