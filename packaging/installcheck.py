"""The install test of the .deb, run against a fresh tree of a release (standard library only).

One copy of the checks, used by ``tests/packaging/test_deb.py`` (pytest, Debian 12 in CI) and by
``packaging/test-releases`` (every release in its own tree, results for docs/install.md). Both
run as root on the host and reach into the tree with ``chroot`` (/proc, /dev, /dev/pts mounted).

- :func:`install_and_check`: ``apt-get install ./peerstash_*.deb`` pulls restic and the Qt
  runtime libraries from the release's own archive; ``peerstash --no-gui`` starts, the CLI
  creates a repository and a plan, backs a folder up and restores it with the packaged restic
  (bytes compared); the tray app starts offscreen and quits cleanly on SIGTERM. It leaves a
  populated data dir (``NODE``: a repository, a plan, one snapshot) for the upgrade.
- :func:`upgrade_remove_purge`: the newer package over it with ``apt-get install``, the node
  starts again on the same data dir and still sees its plan and snapshot and backs up again;
  then the maintainer scripts: remove disables ``peerstash@`` instances and keeps
  ``/etc/peerstash``, purge removes it and keeps ``/var/lib/peerstash``.

No systemd runs in a chroot, so the restarts postinst asks of systemd are not observable here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
}
NODE = "/root/node"
SRC = "/root/src"
PASSWORD = "correct horse battery staple"


def say(msg: str) -> None:
    print(f"[deb] {msg}", flush=True)


def timed(
    label: str, timings: dict[str, float], fn: Callable[..., Any], *args: Any, **kw: Any
) -> Any:
    t0 = time.monotonic()
    try:
        return fn(*args, **kw)
    finally:
        timings[label] = round(time.monotonic() - t0, 1)
        say(f"{label}: {timings[label]} s")


class Tree:
    """A chroot with /proc, /dev and /dev/pts mounted (``mount``/``unmount``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounts: list[Path] = []

    def mount(self) -> None:
        shutil.copy2("/etc/resolv.conf", self.path / "etc" / "resolv.conf")
        self.trust_host_cas()
        for what, args in (("proc", ["-t", "proc", "proc"]), ("dev", ["--bind", "/dev"])):
            target = self.path / what
            target.mkdir(exist_ok=True)
            subprocess.run(["mount", *args, str(target)], check=True)
            self.mounts.append(target)
        pts = self.path / "dev" / "pts"
        if pts.is_dir():
            subprocess.run(["mount", "--bind", "/dev/pts", str(pts)], check=True)
            self.mounts.append(pts)

    def trust_host_cas(self) -> None:
        """This machine's own CA certificates (``/usr/local/share/ca-certificates``) and
        ``/etc/pip.conf`` into the tree: behind a TLS-inspecting proxy, pip in the tree must trust
        what the host trusts. The tree's ca-certificates picks them up when it is installed (or
        at once, if it is already there). Nothing to do on an ordinary network."""
        local = Path("/usr/local/share/ca-certificates")
        certs = sorted(local.glob("*.crt")) if local.is_dir() else []
        if certs:
            dest = self.path / local.relative_to("/")
            dest.mkdir(parents=True, exist_ok=True)
            for cert in certs:
                shutil.copy2(cert, dest / cert.name)
            if (self.path / "usr/sbin/update-ca-certificates").exists():
                subprocess.run(
                    ["chroot", str(self.path), "update-ca-certificates"],
                    capture_output=True,
                    check=False,
                )
        if Path("/etc/pip.conf").is_file():
            shutil.copy2("/etc/pip.conf", self.path / "etc" / "pip.conf")

    def unmount(self) -> None:
        for target in reversed(self.mounts):
            subprocess.run(["umount", "--lazy", str(target)], check=False)
        self.mounts.clear()

    def cmd(self, *argv: str, env: dict[str, str] | None = None) -> list[str]:
        full = {**CHROOT_ENV, **(env or {})}
        return [
            "chroot",
            str(self.path),
            "env",
            "-i",
            *(f"{k}={v}" for k, v in full.items()),
            *argv,
        ]

    def run(
        self,
        *argv: str,
        env: dict[str, str] | None = None,
        input: str | None = None,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.cmd(*argv, env=env), input=input, capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def peerstash(
        self, *argv: str, data_dir: str = NODE, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        return self.run("peerstash", "--data-dir", data_dir, *argv, **kw)

    def apt_install(self, deb: Path) -> subprocess.CompletedProcess[str]:
        """``apt-get install ./deb`` in the tree (the .deb is copied to its /tmp first)."""
        shutil.copy2(deb, self.path / "tmp" / deb.name)
        return self.run(
            "apt-get", "install", "-y", "--no-install-recommends", f"/tmp/{deb.name}", timeout=1800
        )

    def installed_version(self) -> str:
        return self.run("dpkg-query", "-W", "-f=${Version} ${Status}", "peerstash").stdout


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stop(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"did not stop within {timeout} s:\n{err}") from None
    return proc.returncode, err


def start_node(
    tree: Tree, log_name: str, timings: dict[str, float], label: str
) -> subprocess.Popen[str]:
    """``peerstash --no-gui`` on ``NODE`` in the tree; returns once the CLI reaches it."""
    log_path = tree.path / "root" / log_name
    with log_path.open("w") as log:
        node = subprocess.Popen(
            tree.cmd(
                "peerstash",
                "--data-dir",
                NODE,
                "--no-gui",
                "--no-discovery",
                "--listen",
                "127.0.0.1:0",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    t0 = time.monotonic()

    def running() -> bool:
        assert node.poll() is None, f"the node exited ({node.returncode}):\n{log_path.read_text()}"
        return "running for" in log_path.read_text()

    try:
        wait_for(running, 120, "the node to start")
        timings[label] = round(time.monotonic() - t0, 1)
        status = json.loads(tree.peerstash("status", "--json").stdout)
        assert status["pid"] == node.pid, status
    except BaseException:
        stop(node)
        raise
    return node


def stop_node(node: subprocess.Popen[str], tree: Tree, log_name: str) -> None:
    code, _ = stop(node)
    assert code == 0, (tree.path / "root" / log_name).read_text()


def snapshot_ids(tree: Tree) -> list[str]:
    snaps = json.loads(tree.peerstash("snapshots", "local", "--json").stdout)
    return [s.get("short_id") or s["id"] for s in snaps]


def install_and_check(
    tree: Tree, deb: Path, version_prefix: str = "peerstash 0."
) -> dict[str, float]:
    """Install ``deb`` in a fresh ``tree`` and use it: node, CLI, backup, restore, tray app.

    Returns the timings (seconds) by step; raises AssertionError on the first failure."""
    timings: dict[str, float] = {}
    timed("apt-get update", timings, tree.run, "apt-get", "update")
    installed = timed("apt-get install ./peerstash.deb", timings, tree.apt_install, deb)
    disk = [line for line in installed.stdout.splitlines() if "disk space" in line]
    say(f"apt: {disk[0] if disk else '?'}")

    # What the package put on the system.
    for rel in (
        "usr/bin/peerstash",
        "usr/bin/restic",
        "usr/share/applications/peerstash.desktop",
        "usr/share/icons/hicolor/scalable/apps/peerstash.svg",
        "usr/lib/systemd/system/peerstash@.service",
        "usr/share/man/man1/peerstash.1.gz",
    ):
        assert (tree.path / rel).exists(), rel
    assert version_prefix in tree.run("peerstash", "--version").stdout
    say(tree.run("restic", "version").stdout.strip())

    # The headless node: a repository, a plan, a backup and a restore with the packaged restic.
    node = start_node(tree, "node.log", timings, "node start")
    try:
        src = tree.path / SRC.lstrip("/")
        (src / "sub").mkdir(parents=True)
        (src / "random.bin").write_bytes(os.urandom(3 * 1024 * 1024))
        (src / "sub" / "hello.txt").write_text("hello from the packaged restic\n")
        t0 = time.monotonic()
        tree.peerstash(
            "repo",
            "add",
            "local",
            "--uri",
            "/root/repo",
            "--init",
            "--password-stdin",
            input=PASSWORD + "\n",
        )
        # An older Peerstash (say, the package an upgrade starts from) has no --no-backup-now
        # (its `plan add` does not back up at once).
        older = "--no-backup-now" not in tree.peerstash("plan", "add", "--help").stdout
        tree.peerstash(
            "plan",
            "add",
            "home",
            *([] if older else ["--no-backup-now"]),
            "--repo",
            "local",
            "--path",
            SRC,
            "--every",
            "1d",
        )
        tree.peerstash("backup", "home", "--wait", timeout=300)
        snaps = snapshot_ids(tree)
        assert len(snaps) == 1, snaps
        tree.peerstash(
            "restore", "local", snaps[0], "--target", "/root/restored", "--wait", timeout=300
        )
        timings["backup + restore"] = round(time.monotonic() - t0, 1)
        restored = tree.path / "root" / "restored" / SRC.lstrip("/")
        for rel in ("random.bin", "sub/hello.txt"):
            assert (restored / rel).read_bytes() == (src / rel).read_bytes(), rel
    finally:
        stop_node(node, tree, "node.log")

    timings.update(check_tray_app(tree))
    du = subprocess.run(
        ["du", "-sk", str(tree.path / "usr" / "lib" / "peerstash")], capture_output=True, text=True
    )
    say(
        f"{deb.name}: {deb.stat().st_size / 1e6:.1f} MB; /usr/lib/peerstash "
        f"{int(du.stdout.split()[0]) / 1024:.0f} MiB; timings {timings}"
    )
    return timings


def check_tray_app(tree: Tree) -> dict[str, float]:
    """The tray app, offscreen: it starts its own node in-process and quits on SIGTERM."""
    timings: dict[str, float] = {}
    gui_dir = "/root/gui"
    gui_log = tree.path / "root" / "gui.log"
    t0 = time.monotonic()
    with gui_log.open("w") as log:
        gui = subprocess.Popen(
            tree.cmd(
                "peerstash",
                "--data-dir",
                gui_dir,
                "--no-discovery",
                "--listen",
                "127.0.0.1:0",
                env={"QT_QPA_PLATFORM": "offscreen", "PEERSTASH_START_HIDDEN": "1"},
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def gui_answers() -> bool:
        assert gui.poll() is None, f"the tray app exited ({gui.returncode}): {gui_log.read_text()}"
        proc = subprocess.run(
            tree.cmd("peerstash", "--data-dir", gui_dir, "status", "--json"),
            capture_output=True,
            text=True,
            check=False,
        )
        return proc.returncode == 0 and json.loads(proc.stdout)["pid"] == gui.pid

    started = ""
    try:
        wait_for(gui_answers, 120, "the tray app's node")
        timings["tray app start"] = round(time.monotonic() - t0, 1)
        time.sleep(3)  # the window (offscreen: no tray icon) is built right after the node
        assert gui.poll() is None, gui_log.read_text()
        started = gui_log.read_text()
        assert "no system tray available here" in started, started
        assert "Traceback" not in started, started
    finally:
        t0 = time.monotonic()
        code, _ = stop(gui)
        timings["tray app stop"] = round(time.monotonic() - t0, 1)
    shutdown = gui_log.read_text()[len(started) :]
    assert code == 0, shutdown
    if "Traceback" in shutdown:
        # Not packaging's business, but nobody should miss it.
        say(f"WARNING: the tray app logged a traceback while quitting:\n{shutdown}")
    return timings


def bumped_revision(deb: Path, workdir: Path) -> Path:
    """A copy of ``deb`` whose Debian revision is one higher (packaging/build's finish_deb):
    the smallest upgrade apt accepts, when no older package is at hand."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "peerstash_build", Path(__file__).with_name("build.py")
    )
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    # finish_deb unpacks into OUT/deb-root: a directory of this package's own, so that runs
    # for several releases at once do not share it (and the checkout stays clean).
    out = workdir / f"{deb.stem}.bump"
    out.mkdir(parents=True, exist_ok=True)
    build.__dict__["OUT"] = out
    version = subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    upstream, revision = version.rsplit("-", 1)
    bumped = workdir / f"{deb.stem}.bumped-{upstream}-{int(revision) + 1}.deb"
    shutil.copy2(deb, bumped)
    build.finish_deb(bumped, int(revision) + 1)
    shutil.rmtree(out, ignore_errors=True)
    return bumped


def upgrade_remove_purge(tree: Tree, newer: Path) -> dict[str, float]:
    """Upgrade the installed package to ``newer`` over a populated data dir, then remove, purge.

    Needs :func:`install_and_check` (or any older package and a node's data in ``NODE``) before
    it when the tree's data dir is to be checked; alone it installs nothing but ``newer``."""
    timings: dict[str, float] = {}
    newer_version = subprocess.run(
        ["dpkg-deb", "--field", str(newer), "Version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    populated = (tree.path / NODE.lstrip("/")).is_dir()
    before: list[str] = []
    if populated:  # what the older package's node shows, to compare after the upgrade
        node = start_node(tree, "node-before-upgrade.log", timings, "node start before upgrade")
        try:
            before = snapshot_ids(tree)
            assert before, "the data dir to upgrade has no snapshot"
        finally:
            stop_node(node, tree, "node-before-upgrade.log")

    # A system instance enabled and configured, with data, as an admin would have it.
    wants = tree.path / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "peerstash@main.service"
    link.unlink(missing_ok=True)
    link.symlink_to("/usr/lib/systemd/system/peerstash@.service")
    (tree.path / "etc/peerstash").mkdir(exist_ok=True)
    (tree.path / "etc/peerstash/main.env").write_text("RESTIC_PASSWORD_NAS=x\n")
    data = tree.path / "var/lib/peerstash/main"
    data.mkdir(parents=True, exist_ok=True)
    (data / "keep-me").write_text("node data\n")

    upgraded = timed("apt-get install ./newer.deb (upgrade)", timings, tree.apt_install, newer)
    assert "Preparing to unpack" in upgraded.stdout, upgraded.stdout
    assert tree.installed_version() == f"{newer_version} install ok installed"
    assert tree.run("dpkg", "--verify", "peerstash").stdout == ""  # md5sums match

    if populated:
        # The node starts again on the data the older package left, and still works.
        node = start_node(tree, "node-upgraded.log", timings, "node start after upgrade")
        try:
            assert snapshot_ids(tree) == before, before
            plans = tree.peerstash("plan", "list").stdout
            assert "home" in plans, plans
            timed(
                "backup after upgrade",
                timings,
                tree.peerstash,
                "backup",
                "home",
                "--wait",
                timeout=300,
            )
            assert len(snapshot_ids(tree)) == len(before) + 1
        finally:
            stop_node(node, tree, "node-upgraded.log")

    tree.run("dpkg", "--remove", "peerstash")
    assert not link.is_symlink(), "prerm remove left peerstash@main enabled"
    assert (tree.path / "etc/peerstash/main.env").exists()  # remove keeps configuration
    assert not (tree.path / "usr/bin/peerstash").exists()

    tree.run("dpkg", "--purge", "peerstash")
    assert not (tree.path / "etc/peerstash").exists()
    assert (data / "keep-me").read_text() == "node data\n"
    if populated:
        assert (tree.path / NODE.lstrip("/")).is_dir()  # a user's data dir: never touched
    say(f"upgrade to {newer_version}, remove, purge: ok; timings {timings}")
    return timings
