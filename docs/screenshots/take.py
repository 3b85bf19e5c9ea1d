"""Take the screenshots in this folder: a real node, real restic, Xvfb and a tray host.

Usage (Debian: xvfb, openbox, trayer, xdotool, imagemagick):
    .venv/bin/python docs/screenshots/take.py [--out docs/screenshots]

It starts Xvfb and trayer, runs the tray app (node in-process) on a throwaway data directory,
captures the first-run assistant that opens by itself, then sets up two repositories and three
plans, makes some history, pairs two more machines (one of them, "office-desktop", a separate
``peerstash --no-gui`` process whose backup fails) and captures: the overview with that machine
failing, the operations page while a backup runs, the peers page, the restore preview over
changed files, and the tray menu opened by a right click on the tray icon (xdotool). Nothing
here is faked: every row comes from the nodes. LAN discovery is off on every node.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SIZE = "1280x800"


def start_x() -> tuple[str, list[subprocess.Popen[bytes]]]:
    """Xvfb on a free display (it writes the number it took to ``-displayfd`` once it is
    ready: never another session's display), and a tray host."""
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{SIZE}x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
    )
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as r:
        number = r.readline().decode().strip()
    if not number.isdigit():
        raise SystemExit("Xvfb did not start")
    display = f":{number}"
    procs = [xvfb]
    env = {**os.environ, "DISPLAY": display}
    # A light background like a desktop, and a panel with a tray at the top right.
    if shutil.which("openbox"):  # window frames and titles, as on a desktop
        procs.append(subprocess.Popen(["openbox", "--sm-disable"], env=env))
    if shutil.which("xsetroot"):
        subprocess.run(["xsetroot", "-solid", "#d9dee5"], env=env, check=False)
    procs.append(
        subprocess.Popen(
            [
                "trayer",
                "--edge",
                "top",
                "--align",
                "right",
                "--widthtype",
                "request",
                "--height",
                "28",
                "--SetDockType",
                "true",
                "--transparent",
                "true",
                "--alpha",
                "0",
                "--tint",
                "0x30343b",
                "--padding",
                "6",
                "--iconspacing",
                "4",
            ],
            env=env,
        )
    )
    return display, procs


def _wallpaper_class() -> type:
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QColor, QLinearGradient, QPainter
    from PySide6.QtWidgets import QWidget

    class _Wallpaper(QWidget):
        """A calm desktop background (Xvfb's root window has none)."""

        def __init__(self) -> None:
            super().__init__(
                None, Qt.WindowType.FramelessWindowHint | Qt.WindowType.WindowStaysOnBottomHint
            )

        def paintEvent(self, _event: object) -> None:
            p = QPainter(self)
            g = QLinearGradient(0, 0, self.width(), self.height())
            g.setColorAt(0, QColor("#5b7fa6"))
            g.setColorAt(1, QColor("#9fb6cc"))
            p.fillRect(self.rect(), g)
            p.end()

    return _Wallpaper


def Wallpaper() -> Any:
    return _wallpaper_class()()


def child(out: Path) -> int:
    """Runs under the X display: the app, the data, the captures."""
    os.environ.setdefault("QT_API", "pyside6")
    import qasync
    from PySide6.QtCore import QPoint
    from PySide6.QtWidgets import QApplication

    from peerstash.desktop.app import DesktopApp
    from peerstash.desktop.platform import qtfix
    from peerstash.peer.api import schema
    from peerstash.peer.cli import AdminClient
    from peerstash.peer.node import NodeOptions

    qapp = QApplication([])
    qtfix.apply()
    wallpaper = Wallpaper()
    wallpaper.setGeometry(qapp.primaryScreen().geometry())
    wallpaper.show()
    wallpaper.lower()
    qapp.setApplicationName("Peerstash")
    tmp = Path(tempfile.mkdtemp(prefix="peerstash-shots-"))
    home = tmp / "home" / "ana"
    docs, photos, code = home / "Documents", home / "Pictures", home / "src"
    for d in (docs, photos, code):
        d.mkdir(parents=True)
    (docs / "taxes-2025.pdf").write_bytes(os.urandom(3 << 20))
    (docs / "letters").mkdir()
    for i in range(20):
        (docs / "letters" / f"letter-{i:02d}.odt").write_bytes(os.urandom(40_000))
    (code / "peerstash").mkdir()
    (code / "peerstash" / "README.md").write_text("# hello\n")
    for i in range(6):
        (photos / f"IMG_{2400 + i}.jpg").write_bytes(os.urandom(2 << 20))

    async def shoot() -> None:
        kw = {"instance_id": "ana-laptop", "progress_interval": 0.3, "catch_up_grace": 3600}
        from dataclasses import fields

        have = {f.name for f in fields(NodeOptions)}
        if "listen" in have:
            kw["listen"] = "127.0.0.1:0"
        kw["discovery"] = False  # pairing is by token and address; nothing on the LAN
        app = DesktopApp(tmp / "data", NodeOptions(**kw), show_tray=True)
        await app.start()
        w, b, tray = app.window, app.backend, app.tray
        assert w is not None and b is not None and tray is not None

        # A fresh start opens the first-run assistant by itself: filled in up to its page
        # about keeping the password elsewhere.
        a = w.assistant
        assert a is not None and a.isVisible(), "the first-run assistant did not open"
        a.fields["path"].setText("/media/ana/backup-disk/peerstash")
        a.go_to("password")
        a.next()
        a.add_folder(str(docs))
        a.add_folder(str(photos))
        a.next()
        a.next()
        assert a.page == "keep", a.page
        a.adjustSize()
        await asyncio.sleep(0.8)
        frame = a.frameGeometry()  # with its title bar (openbox)
        qapp.primaryScreen().grabWindow(0).copy(frame).save(str(out / "assistant.png"))
        a.reject()
        async with AdminClient(tmp / "data") as c:
            for name in ("nas", "usb-disk"):
                await c.call(
                    "POST",
                    "/v1/repos",
                    {
                        "id": name,
                        "uri": str(tmp / name),
                        "password": {"source": "secret", "value": "correct horse battery"},
                        "init": True,
                    },
                )
        await b.refresh_config()
        await b.add_plan(
            schema.AddPlan(
                id="documents",
                repo="nas",
                paths=[str(docs)],
                every="6h",
                retention={"keep_daily": 7, "keep_weekly": 4},
            )
        )
        await b.add_plan(
            schema.AddPlan(
                id="photos",
                repo="usb-disk",
                paths=[str(photos)],
                schedule="0 3 * * *",
                retention={"keep_last": 10},
            )
        )
        await b.add_plan(schema.AddPlan(id="code", repo="nas", paths=[str(code)], every="1h"))

        async def until(cond: Any) -> None:
            """Wait (on the backend's op changes) until ``cond()`` holds."""
            changed = asyncio.Event()
            b.opChanged.connect(changed.set)
            try:
                while not cond():
                    changed.clear()
                    await asyncio.wait_for(changed.wait(), 120)
            finally:
                b.opChanged.disconnect(changed.set)

        async def run(plan: str) -> None:
            await b.backup(plan)
            await until(lambda: not b.active)

        for plan in ("documents", "photos", "code", "documents"):
            await run(plan)
        # A failing run for realism: the source of "code" vanished.
        shutil.rmtree(code)
        await run("code")
        code.mkdir()
        (code / "peerstash").mkdir()
        (code / "peerstash" / "README.md").write_text("# hello again\n")
        await run("code")
        await b.refresh_status()

        # Two more machines: one this laptop connects to, one that connects to this laptop.
        from peerstash.peer.node import Node

        nas = Node(tmp / "nas-server", NodeOptions(**{**kw, "instance_id": "nas-server"}))
        await nas.start()
        others = [nas]
        # office-desktop is a node of its own, as on another machine: `peerstash --no-gui`.
        office_dir = tmp / "office-desktop"
        office_cli = [sys.executable, "-m", "peerstash.desktop", "--data-dir", str(office_dir)]
        office = await asyncio.create_subprocess_exec(
            *office_cli,
            "--no-gui",
            "--instance-id",
            "office-desktop",
            "--listen",
            "127.0.0.1:0",
            "--no-discovery",
            stdin=subprocess.DEVNULL,
            stdout=(tmp / "office.log").open("wb"),
            stderr=subprocess.STDOUT,
        )

        async def office_run(*args: str, stdin: str | None = None, ok: bool = True) -> str:
            proc = await asyncio.create_subprocess_exec(
                *office_cli,
                *args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            got, _ = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else b""), 120)
            if ok and proc.returncode != 0:
                raise RuntimeError(f"office-desktop {args[0]} failed: {got.decode()}")
            return got.decode()

        for _ in range(200):  # its admin socket answers once the node is up (20 s at most)
            if office.returncode is not None:
                raise RuntimeError((tmp / "office.log").read_text())
            try:
                await office_run("status", "--json")
                break
            except RuntimeError:
                await asyncio.sleep(0.1)
        else:
            raise RuntimeError("office-desktop did not start: " + (tmp / "office.log").read_text())
        async with AdminClient(tmp / "nas-server") as c:
            made = await c.call(
                "POST",
                "/v1/tokens",
                {"label": "ana-laptop", "ttl": "1h", "grants": ["ops", "config.read"]},
            )
        await b.peers.pair(made["token"], str(nas.peer_url), ["ops", "run"])
        mine = await b.peers.create_token("office", "1d", 1, ["ops", "config.read", "run"])
        # office-desktop pairs with this laptop and lets it see its operations (`ops`).
        await office_run(
            "peer", "add", mine["token"], "--url", b.status["peer_url"], "--grant", "ops"
        )
        await b.peers.create_token("phone", "1d", 1, ["ops"])
        # nas-server backs something up; its operations sync to this laptop.
        src = tmp / "nas-server-src"
        src.mkdir()
        (src / "data.bin").write_bytes(os.urandom(1 << 20))
        async with AdminClient(tmp / "nas-server") as c:
            await c.call(
                "POST",
                "/v1/repos",
                {
                    "id": "local",
                    "uri": str(tmp / "nas-server-repo"),
                    "password": {"source": "secret", "value": "another password"},
                    "init": True,
                },
            )
            await c.call(
                "POST",
                "/v1/plans",
                {"id": "system", "repo": "local", "paths": [str(src)], "every": "1d"},
            )
            op = await c.call("POST", "/v1/plans/system/backup")
            async for _ in c.stream(f"/v1/ops/{op['id']}/wait"):
                pass
        # office-desktop: its first backup of "home" works, the next fails (the disk with
        # the folder was unplugged).
        home_src = tmp / "office-home"
        home_src.mkdir()
        (home_src / "data.bin").write_bytes(os.urandom(1 << 20))
        await office_run(
            "repo",
            "add",
            "local",
            "--uri",
            str(tmp / "office-repo"),
            "--password-stdin",
            "--init",
            stdin="another password\n",
        )
        await office_run(
            "plan", "add", "home", "--repo", "local", "--path", str(home_src), "--no-backup-now"
        )
        await office_run("backup", "home", "--wait")
        shutil.rmtree(home_src)
        await office_run("backup", "home", "--wait", ok=False)
        for _ in range(100):  # the failure syncs to this laptop over the link (20 s at most)
            await b.refresh_peers()
            failed = [
                r
                for p in b.peer_list
                for r in p.get("plans") or []
                if r.get("plan") == "home" and r.get("status") == "error"
            ]
            online = b.peer_list and all(p.get("state") == "online" for p in b.peer_list)
            if online and failed:
                break
            await asyncio.sleep(0.2)
        else:
            print(
                f"office-desktop's failure did not reach the laptop: {b.peer_list}", file=sys.stderr
            )
        await w.overview.load_remote()
        await asyncio.sleep(1.0)

        w.resize(1180, 720)
        w.move(50, 50)
        w.show_page(w.overview)
        w.bring_up()
        await asyncio.sleep(1.0)
        w.grab().save(str(out / "overview.png"))

        w.show_page(w.peers)
        await w.peers.tasks.idle()
        await asyncio.sleep(0.5)
        w.grab().save(str(out / "peers.png"))

        # A big backup, captured while it runs.
        big = photos / "2026-summer"
        big.mkdir()
        for i in range(24):
            (big / f"DSC_{i:04d}.raw").write_bytes(os.urandom(40 << 20))
        w.show_page(w.operations)
        await w.operations.model.tasks.idle()
        op = await b.backup("photos")
        key = (op["origin"], op["id"])
        while True:
            cur = b.active.get(key)
            if cur is None:
                break
            if (
                cur.get("bytes_total")
                and 0.25 < (cur.get("bytes_done") or 0) / cur["bytes_total"] < 0.8
            ):
                break
            await asyncio.sleep(0.05)
        w.operations.select_op(op["id"])
        await asyncio.sleep(0.4)
        w.grab().save(str(out / "operations-running.png"))
        await until(lambda: key not in b.active)

        # The restore preview: three letters changed since their backup; putting the
        # documents back where they came from asks first, listing what would be overwritten.
        for i in (3, 7, 12):
            (docs / "letters" / f"letter-{i:02d}.odt").write_bytes(os.urandom(41_000))
        page = w.snapshots
        w.show_page(page)
        page.select_repo("nas")
        await page.tasks.idle()
        for row in range(page.snapshots.rowCount()):
            page.snapshots.clearSelection()
            page.snapshots.selectRow(row)
            if (page.snapshot() or {}).get("paths") == [str(docs)]:
                break
        await page.tasks.idle()
        node = page.find_item(str(docs))
        assert node is not None, "the documents folder is not listed"
        sm = page.tree.selectionModel()
        sm.select(node.index(), sm.SelectionFlag.ClearAndSelect | sm.SelectionFlag.Rows)
        page.to_original.setChecked(True)
        page.restore_button.click()
        await page.tasks.idle()
        dlg = page.confirm_dialog
        assert dlg is not None and dlg.isVisible(), page.restore_status.text()
        await asyncio.sleep(0.8)
        area = w.frameGeometry().united(dlg.frameGeometry()).adjusted(-8, -8, 8, 8)
        qapp.primaryScreen().grabWindow(0).copy(area).save(str(out / "restore-preview.png"))
        dlg.cancel_button.click()

        # The tray menu, opened as a person would: a right click on the icon (window behind).
        w.show_page(w.overview)
        w.move(420, 120)
        await asyncio.sleep(0.5)
        if tray.icon is not None and tray.icon.geometry().isValid():
            g = tray.icon.geometry()
            x, y = g.center().x(), g.center().y()
            click = await asyncio.create_subprocess_exec(
                "xdotool", "mousemove", str(x), str(y), "click", "3"
            )
            await click.wait()
            await asyncio.sleep(0.8)
            if not tray.menu.isVisible():
                tray.menu.popup(QPoint(g.left(), g.bottom() + 2))
                await asyncio.sleep(0.5)
        else:
            print("no tray icon geometry; showing the menu by hand", file=sys.stderr)
            tray.menu.popup(QPoint(900, 30))
            await asyncio.sleep(0.5)
        # Hover "Peers" so its submenu (the paired machines and their state) opens too.
        peers_at = tray.menu.mapToGlobal(
            tray.menu.actionGeometry(tray.peers_menu.menuAction()).center()
        )
        hover = await asyncio.create_subprocess_exec(
            "xdotool", "mousemove", str(peers_at.x()), str(peers_at.y())
        )
        await hover.wait()
        await asyncio.sleep(1.0)
        if not tray.peers_menu.isVisible():
            tray.menu.setActiveAction(tray.peers_menu.menuAction())
            await asyncio.sleep(0.8)
        screen = qapp.primaryScreen()
        shot = screen.grabWindow(0)
        menu = tray.menu.geometry()
        if tray.peers_menu.isVisible():
            menu = menu.united(tray.peers_menu.geometry())
        left = max(0, menu.left() - 420)
        crop = shot.copy(left, 0, shot.width() - left, menu.bottom() + 180)
        crop.save(str(out / "tray-menu.png"))
        tray.menu.hide()
        app.quit()
        await app.stop()
        for other in others:
            await other.stop()
        office.terminate()
        await asyncio.wait_for(office.wait(), 20)

    qasync.run(shoot())
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        return child(args.out)
    display, procs = start_x()
    try:
        env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
        env.pop("WAYLAND_DISPLAY", None)
        return subprocess.run(
            [sys.executable, __file__, "--child", "--out", str(args.out)], env=env, check=False
        ).returncode
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(10)


if __name__ == "__main__":
    sys.exit(main())
