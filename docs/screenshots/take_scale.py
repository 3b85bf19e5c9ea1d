"""The window on a 1366x768 screen at 100 % and 200 % scale, under Xvfb and openbox.

Usage (Debian: xvfb, openbox, imagemagick):
    .venv/bin/python docs/screenshots/take_scale.py [--out DIR] [--scale 2] [--save-readme]

Starts Xvfb (1366x768) and openbox, runs the tray app (node in-process, peer port on
loopback, no LAN discovery) on a throwaway data directory with a repository, two plans and a
backup of each, and captures the whole screen with every page and the add-plan dialog, as
``scale-<N>-<page>.png`` in ``--out``. ``--save-readme`` also writes the 200 % overview as
``docs/screenshots/scale-200.png`` (the README shows it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZE = (1366, 768)


def child(out: Path, scale: int, readme: bool) -> int:
    os.environ.setdefault("QT_API", "pyside6")
    from PySide6.QtWidgets import QApplication

    from peerstash.desktop.app import DesktopApp
    from peerstash.desktop.platform import qloop, qtfix
    from peerstash.peer.node import NodeOptions

    qapp = QApplication([sys.argv[0]])
    qtfix.apply()
    qapp.setApplicationName("Peerstash")
    tmp = Path(tempfile.mkdtemp(prefix="peerstash-scale-"))
    os.environ["XDG_CONFIG_HOME"] = str(tmp / "config")
    home = tmp / "home" / "ana"
    docs, photos = home / "Documents", home / "Pictures"
    for d in (docs, photos):
        d.mkdir(parents=True)
    (docs / "taxes-2025.pdf").write_bytes(os.urandom(1 << 20))
    for i in range(4):
        (photos / f"IMG_{2400 + i}.jpg").write_bytes(os.urandom(1 << 20))

    async def shoot() -> None:
        app = DesktopApp(
            tmp / "data",
            NodeOptions(instance_id="ana-laptop", listen="127.0.0.1:0", discovery=False),
            show_tray=False,
        )
        await app.start()
        w, b = app.window, app.backend
        assert w is not None and b is not None
        try:
            await b.call(
                "POST",
                "/v1/repos",
                {
                    "id": "nas",
                    "uri": str(tmp / "nas"),
                    "password": {"source": "secret", "value": "correct horse battery"},
                    "init": True,
                },
            )
            await b.refresh_config()
            for plan, path, every in (("documents", docs, "6h"), ("photos", photos, "1d")):
                await b.add_plan(
                    {
                        "id": plan,
                        "repo": "nas",
                        "paths": [str(path)],
                        "every": every,
                        "backup_now": False,
                    }
                )
                op = await b.backup(plan)
                deadline = time.monotonic() + 120
                while b.active.get((op["origin"], op["id"])) is not None:
                    assert time.monotonic() < deadline, "backup did not end"
                    await asyncio.sleep(0.1)
            await b.refresh_status()
            screen = qapp.primaryScreen()
            for page in w.pages:
                w.show_page(page)
                await page.tasks.idle()
                await asyncio.sleep(0.6)
                if page is w.operations and w.operations.model.rowCount():
                    w.operations.view.selectRow(0)
                    await asyncio.sleep(0.6)
                if page is w.snapshots and w.snapshots.snapshots.rowCount():
                    w.snapshots.snapshots.selectRow(0)
                    await asyncio.sleep(0.8)
                name = page.title.split()[0].lower()
                screen.grabWindow(0).save(str(out / f"scale-{scale}-{name}.png"))
                if readme and page is w.operations:
                    screen.grabWindow(0).save(str(HERE / "scale-200.png"))
            w.show_page(w.plans)
            dlg = w.plans.open_add_plan()
            await asyncio.sleep(0.8)
            screen.grabWindow(0).save(str(out / f"scale-{scale}-add-plan.png"))
            dlg.reject()
        finally:
            await app.stop()

    qloop.run(shoot(), qapp)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "peerstash-scale")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--save-readme", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        return child(args.out, args.scale, args.save_readme)
    display = f":{70 + args.scale}"
    xvfb = subprocess.Popen(
        ["Xvfb", display, "-screen", "0", f"{SIZE[0]}x{SIZE[1]}x24", "-nolisten", "tcp"]
    )
    procs = [xvfb]
    try:
        env = {**os.environ, "DISPLAY": display, "QT_SCALE_FACTOR": str(args.scale)}
        env.pop("WAYLAND_DISPLAY", None)
        env.pop("QT_QPA_PLATFORM", None)
        for _ in range(100):
            if (
                subprocess.run(["xdpyinfo", "-display", display], capture_output=True).returncode
                == 0
            ):
                break
            time.sleep(0.05)
        if shutil.which("xsetroot"):
            subprocess.run(["xsetroot", "-solid", "#5b7fa6"], env=env, check=False)
        if shutil.which("openbox"):
            procs.append(subprocess.Popen(["openbox"], env=env))
            time.sleep(0.5)
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--out",
            str(args.out),
            "--scale",
            str(args.scale),
        ]
        if args.save_readme:
            cmd.append("--save-readme")
        return subprocess.run(cmd, env=env, timeout=600).returncode
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(10)


if __name__ == "__main__":
    sys.exit(main())
