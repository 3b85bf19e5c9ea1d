"""The tray app on a real (virtual) X desktop: Xvfb, openbox, a tray host (trayer), a session
bus and a real notification daemon (dunst). A backup fails; the notification must arrive at
dunst over D-Bus, named by this machine.

The app runs as a person starts it (``python -m peerstash.desktop``, the node in-process, the
real restic), driven by the real CLI and, for the first-run assistant, by xdotool: keys typed
into the real window as a person would (the assistant's Alt+letter mnemonics, Enter on the
default button). Every tool comes from ``scripts/setup --test``; a missing one fails the test
with that hint, it never skips silently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.dbus import need, session_bus

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


@dataclass
class Desktop:
    """A running X desktop with its tools, the environment to run things in it, and a
    ``dbus-monitor`` on its session bus."""

    env: dict[str, str]
    tools: dict[str, str]
    monitor: Monitor
    tmp: Path

    def xdotool(self, *args: str, timeout: float = 20) -> str:
        return run([self.tools["xdotool"], *args], self.env, timeout=timeout)

    def window(self, name: str, timeout: float = 45) -> str:
        """The id of the window titled ``name`` (Qt may add " — Peerstash"), waited for."""
        pattern = f"^{name}( — Peerstash)?$"
        return self.xdotool("search", "--sync", "--name", pattern, timeout=timeout).split()[0]

    def window_closes(self, window: str, timeout: float = 20) -> None:
        """Poll until ``window`` is no longer mapped (xdotool has no wait for that)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = subprocess.run(
                [self.tools["xdotool"], "search", "--onlyvisible", "--name", "."],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.split()
            if window not in listed:
                return
            time.sleep(0.2)  # a poll interval of a check with a deadline
        raise AssertionError(f"window {window} still shown after {timeout}s")

    def keys(self, window: str, *keys: str) -> None:
        """Keys pressed on ``window`` made active (real X key events through XTEST)."""
        self.xdotool("windowactivate", "--sync", window, "key", "--clearmodifiers", *keys)

    def type(self, window: str, text: str) -> None:
        self.xdotool("windowactivate", "--sync", window, "type", "--delay", "5", text)

    def screenshot(self, name: str) -> Path:
        """The whole screen as a PNG next to the logs (kept for a failed run to look at)."""
        path = self.tmp / name
        tool = shutil.which("import")  # ImageMagick; only for looking at a failure afterwards
        if tool is not None:
            subprocess.run([tool, "-window", "root", str(path)], env=self.env, timeout=20)
        return path


@contextmanager
def x_desktop(tmp_path: Path) -> Iterator[Desktop]:
    """Xvfb, a session bus, openbox, trayer and dunst, each waited for until it is up."""
    tools = {t: need(t) for t in ("Xvfb", "openbox", "trayer", "dunst", "dunstctl", "xdotool")}
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
        # Qt's own file dialog (a person's desktop may give a GTK one; xdotool drives either).
        env.pop("QT_QPA_PLATFORMTHEME", None)
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
        yield Desktop(env=env, tools=tools, monitor=monitor, tmp=tmp_path)


def start_app(stack: ExitStack, desk: Desktop, data_dir: Path) -> subprocess.Popen[bytes]:
    """``python -m peerstash.desktop`` as a person starts it, the node in-process."""
    return stack.enter_context(
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
            desk.env,
            desk.tmp / "app.log",
        )
    )


def fail_a_backup_and_see_dunst_show_it(
    desk: Desktop, cli: list[str], plan: str, source: Path
) -> None:
    """``source`` vanishes, the backup of ``plan`` fails; dunst must have been told, by name."""
    shutil.rmtree(source)
    res = subprocess.run(
        [*cli, "backup", plan, "--wait"], env=desk.env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 1, res.stdout + res.stderr
    summary = f"{MACHINE}: the backup of {plan} failed"
    desk.monitor.wait_for_text(summary, timeout=20)
    # dunst took it: closing what it shows moves it to its history, which it reports.
    run([desk.tools["dunstctl"], "close-all"], desk.env)
    history = json.loads(run([desk.tools["dunstctl"], "history"], desk.env))
    shown = [n["summary"]["data"] for n in history["data"][0]]
    assert summary in shown, shown


def check_app_log(desk: Desktop, app: subprocess.Popen[bytes]) -> None:
    app_log = (desk.tmp / "app.log").read_text()
    assert "node xvfb ready" in app_log, app_log[-3000:]  # the node ran inside the app
    assert "no system tray available" not in app_log, app_log[-3000:]
    assert "desktop notification service not used" not in app_log, app_log[-3000:]
    assert app.poll() is None, app_log[-3000:]


def test_a_failed_backup_notifies_through_dunst_on_an_x_desktop(tmp_path: Path) -> None:
    data_dir, gone = tmp_path / "data", tmp_path / "gone"
    with ExitStack() as stack:
        desk = stack.enter_context(x_desktop(tmp_path))
        app = start_app(stack, desk, data_dir)
        # The window maps once the node runs in the app and answers.
        desk.window("Peerstash")
        cli = [*PEERSTASH, "--data-dir", str(data_dir)]
        run([*cli, "rename", MACHINE], desk.env)
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
            desk.env,
            input="xvfb-test-Pa55word\n",
        )
        gone.mkdir()
        run(
            [*cli, "plan", "add", "docs", "--repo", "main", "--path", str(gone), "--no-backup-now"],
            desk.env,
        )
        fail_a_backup_and_see_dunst_show_it(desk, cli, "docs", gone)
        check_app_log(desk, app)


def test_the_first_run_assistant_driven_by_keyboard_to_a_first_backup(tmp_path: Path) -> None:
    """A fresh start: the assistant opens by itself, a person fills it in with the keyboard
    (a folder repository, the generated password, a folder chosen in the file dialog, every
    hour, "kept elsewhere" ticked), and the first backup is in the repository."""
    data_dir, repo, files = tmp_path / "data", tmp_path / "usb" / "backup", tmp_path / "Documents"
    files.mkdir()
    for i in range(5):
        (files / f"note-{i}.txt").write_text(f"note {i}\n" * 100)
    (tmp_path / "usb").mkdir()
    cli = [*PEERSTASH, "--data-dir", str(data_dir)]
    with ExitStack() as stack:
        desk = stack.enter_context(x_desktop(tmp_path))
        app = start_app(stack, desk, data_dir)
        try:
            setup = desk.window("Set up a backup")  # by itself: nothing is set up yet
            run([*cli, "rename", MACHINE], desk.env)
            # Enter presses Next (the default button); each new page takes the focus on its
            # first field. A button's Alt+letter clicks it 100 ms later (Qt's animateClick), so
            # only label mnemonics (which focus at once) and keys are used before an Enter.
            # 1. Where: a folder (the default kind); the name "backup" is proposed. Alt+F is
            # the Folder field's mnemonic.
            desk.keys(setup, "alt+f")
            desk.type(setup, str(repo))
            desk.keys(setup, "Return")
            # 2. The password: the generated one (the default, focused) is taken.
            desk.keys(setup, "Return")
            # 3. What: "Add folder…" (Alt+A) opens the file dialog; the path is typed, Enter
            # chooses it; back in the assistant the focus is on the list again.
            desk.keys(setup, "alt+a")
            chooser = desk.window("Choose a folder to back up")
            desk.type(chooser, str(files))
            desk.keys(chooser, "Return")
            desk.keys(setup, "Return")
            # 4. When: "Back up" (Alt+U) every hour, the next preset down; the name proposed.
            desk.keys(setup, "alt+u", "Down", "Return")
            # 5. Kept elsewhere: Tab past the password, Show, Copy and "Save recovery sheet…"
            # (optional) to the box, Space ticks it.
            desk.keys(setup, "Tab", "Tab", "Tab", "Tab", "space", "Return")
            # 6. Create: Enter on "Create and back up now".
            desk.keys(setup, "Return")
            snapshots = wait_for_snapshots(desk, cli, "backup", timeout=60)
        except BaseException:
            desk.screenshot("failed.png")
            raise
        assert len(snapshots) == 1, snapshots
        assert sorted(snapshots[0]["paths"]) == [str(files)], snapshots
        plans = json.loads(run([*cli, "plan", "list", "--json"], desk.env))
        [plan] = plans
        assert plan["id"] == "my-files" and plan["repo"] == "backup", plan
        assert plan["paths"] == [str(files)] and plan["every_seconds"] == 3600, plan
        # Finish closes the assistant (Enter on the same button).
        desk.keys(setup, "Return")
        desk.window_closes(setup)
        fail_a_backup_and_see_dunst_show_it(desk, cli, "my-files", files)
        check_app_log(desk, app)
        assert "opening the first-run assistant" in (tmp_path / "app.log").read_text()


def wait_for_snapshots(
    desk: Desktop, cli: list[str], repo: str, timeout: float
) -> list[dict[str, object]]:
    """Poll ``peerstash snapshots REPO --json`` until it lists one, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        res = subprocess.run(
            [*cli, "snapshots", repo, "--json"],
            env=desk.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        last = res.stdout + res.stderr
        if res.returncode == 0 and json.loads(res.stdout):
            return list(json.loads(res.stdout))
        time.sleep(0.5)  # a poll interval, not a wait for an event: the CLI is asked again
    raise AssertionError(f"no snapshot in {repo} within {timeout}s: {last}")
