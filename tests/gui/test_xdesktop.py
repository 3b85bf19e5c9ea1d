"""The tray app on a real (virtual) X desktop: Xvfb, openbox, a tray host (trayer), a session
bus and a real notification daemon (dunst). A backup fails; the notification must arrive at
dunst over D-Bus, named by this machine.

The app runs as a person starts it (``python -m peerstash.desktop``, the node in-process, the
real restic), driven by the real CLI. Every tool comes from ``scripts/setup --test``; a missing
one fails the test with that hint, it never skips silently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.gui.dbus_helpers import need, session_bus

pytestmark = pytest.mark.xdesktop

PEERSTASH = [sys.executable, "-m", "peerstash.desktop"]
MACHINE = "xvfb-laptop"


@contextmanager
def running(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@contextmanager
def xvfb(tmp: Path) -> Iterator[str]:
    """A virtual X server on a free display (it writes the number it took to ``-displayfd``)."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [
            need("Xvfb"),
            "-displayfd",
            str(write_fd),
            "-screen",
            "0",
            "1280x800x24",
            "-nolisten",
            "tcp",
        ],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "xvfb.log").open("wb"),
    )
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as r:
            number = r.readline().decode().strip()  # ends when Xvfb is ready or has exited
        if not number.isdigit():
            pytest.fail("Xvfb did not start: " + (tmp / "xvfb.log").read_text()[-2000:])
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(15)


def run(argv: list[str], env: dict[str, str], timeout: float = 60, **kw: object) -> str:
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    assert res.returncode == 0, f"{argv} exited {res.returncode}: {res.stdout}{res.stderr}"
    return str(res.stdout)


class Monitor:
    """``dbus-monitor`` on the session bus, watching calls of ``Notify``; lines kept in order."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.proc = subprocess.Popen(
            [
                need("dbus-monitor"),
                "--session",
                "type='method_call',interface='org.freedesktop.Notifications',member='Notify'",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.log = log
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("w") as out:
            for line in self.proc.stdout:
                out.write(line)
                out.flush()
                with self.cond:
                    self.lines.append(line.rstrip("\n"))
                    self.cond.notify_all()

    def wait_for_text(self, text: str, timeout: float) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: any(text in ln for ln in self.lines), timeout):
                raise AssertionError(f"no Notify call with {text!r} in {timeout}s: {self.lines}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def test_a_failed_backup_notifies_through_dunst_on_an_x_desktop(tmp_path: Path) -> None:
    tools = {t: need(t) for t in ("Xvfb", "openbox", "trayer", "dunst", "dunstctl", "xdotool")}
    data_dir, gone = tmp_path / "data", tmp_path / "gone"
    with ExitStack() as stack:
        display = stack.enter_context(xvfb(tmp_path))
        address = stack.enter_context(session_bus())
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEERSTASH_")}
        env.update(
            DISPLAY=display,
            DBUS_SESSION_BUS_ADDRESS=address,
            QT_QPA_PLATFORM="xcb",
            XDG_CONFIG_HOME=str(tmp_path / "config"),
            XDG_RUNTIME_DIR=str(tmp_path / "runtime"),
        )
        (tmp_path / "runtime").mkdir(mode=0o700)
        env.pop("WAYLAND_DISPLAY", None)
        stack.enter_context(
            running([tools["openbox"], "--sm-disable"], env, tmp_path / "openbox.log")
        )
        stack.enter_context(
            running(
                [
                    tools["trayer"],
                    "--edge",
                    "top",
                    "--align",
                    "right",
                    "--height",
                    "24",
                    "--widthtype",
                    "request",
                    "--SetDockType",
                    "true",
                ],
                env,
                tmp_path / "trayer.log",
            )
        )
        stack.enter_context(running([tools["dunst"]], env, tmp_path / "dunst.log"))
        # Each is up when its window (trayer) or bus name (dunst) is: waited for, not slept.
        run([tools["xdotool"], "search", "--sync", "--classname", "trayer"], env, timeout=20)
        run(
            [
                need("gdbus"),
                "wait",
                "--session",
                "--timeout",
                "20",
                "org.freedesktop.Notifications",
            ],
            env,
            timeout=25,
        )
        monitor = Monitor(env, tmp_path / "monitor.log")
        stack.callback(monitor.stop)

        app = stack.enter_context(
            running(
                [
                    *PEERSTASH,
                    "--data-dir",
                    str(data_dir),
                    "--instance-id",
                    "xvfb",
                    "--listen",
                    "127.0.0.1:0",
                    "--no-discovery",
                ],
                env,
                tmp_path / "app.log",
            )
        )
        # The window maps once the node runs in the app and answers.
        run([tools["xdotool"], "search", "--sync", "--name", "^Peerstash$"], env, timeout=45)
        cli = [*PEERSTASH, "--data-dir", str(data_dir)]
        run([*cli, "rename", MACHINE], env)
        run(
            [
                *cli,
                "repo",
                "add",
                "main",
                "--uri",
                str(tmp_path / "repo"),
                "--password-stdin",
                "--init",
            ],
            env,
            input="xvfb-test-Pa55word\n",
        )
        gone.mkdir()
        run(
            [*cli, "plan", "add", "docs", "--repo", "main", "--path", str(gone), "--no-backup-now"],
            env,
        )
        gone.rmdir()
        res = subprocess.run(
            [*cli, "backup", "docs", "--wait"], env=env, capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 1, res.stdout + res.stderr

        summary = f"{MACHINE}: the backup of docs failed"
        monitor.wait_for_text(summary, timeout=20)
        # dunst took it: closing what it shows moves it to its history, which it reports.
        run([tools["dunstctl"], "close-all"], env)
        history = json.loads(run([tools["dunstctl"], "history"], env))
        shown = [n["summary"]["data"] for n in history["data"][0]]
        assert summary in shown, shown
        app_log = (tmp_path / "app.log").read_text()
        assert "node xvfb ready" in app_log, app_log[-3000:]  # the node ran inside the app
        assert "no system tray available" not in app_log, app_log[-3000:]
        assert "desktop notification service not used" not in app_log, app_log[-3000:]
        assert app.poll() is None, app_log[-3000:]
