"""The operations view with 100,000 operations: first paint and scrolling.

Usage: .venv/bin/python benchmarks/ui.py [--ops 100000] [--data-dir DIR] [--steps 200]

Target (DESIGN.md, "Numbers"): the Operations page paints its first rows within 300 ms.

Two measurements, both offscreen (``QT_QPA_PLATFORM=offscreen`` unless a display is set):

1. **Real node.** A data directory holding ``--ops`` operations, written through the Store
   (``Store.create_operation``; about 1 ms each, so the directory is kept and reused when it
   already holds enough), a node started in-process exactly as the tray app does, and the main
   window. Timed: from switching to the Operations page to the first paint of its table with
   rows in it, which includes the admin API round trip for the first page. Then the view is
   scrolled to the end, which pulls the older pages in (``fetchMore``) as a person's scrolling
   would, and each scroll step's repaint is timed.
2. **Model alone.** ``--ops`` synthesized operation records put into the model at once (what a
   node with a paging API could stream), to show the view itself does not grow with the row
   count: reset-to-paint time and the cost of a scroll step anywhere in 100,000 rows.

Every figure is printed; nothing is compared against a stored baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_API", "pyside6")
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import msgspec
from PySide6.QtCore import QEvent, QObject
from PySide6.QtWidgets import QApplication

from peerstash.core.records import OpRecord

TARGET_MS = 300.0
STATUSES = ["success"] * 14 + ["warning", "error", "cancelled", "interrupted"]
PLANS = ["documents", "photos", "code", "mail", "system"]


async def fill_store(data_dir: Path, count: int) -> float:
    """Write operations through the Store until ``data_dir`` holds ``count``; return seconds."""
    from peerstash.core.store import OpFilter, Store

    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # noqa: ASYNC240 - before any I/O starts
    store = await Store.open(data_dir=data_dir)
    try:
        instance = await store.get_setting("instance_id")
        if instance is None:
            instance = "bench"
            await store.set_setting("instance_id", instance)
        store.local_origin = instance
        have = len(await store.list_operations(OpFilter(), count))
        if have >= count:
            return 0.0
        rng = random.Random(42)
        start = time.perf_counter()
        base = datetime.now(UTC) - timedelta(hours=count)
        for i in range(have, count):
            status = rng.choice(STATUSES)
            begun = base + timedelta(hours=i)
            await store.create_operation(
                "backup",
                status=status,
                plan_id=rng.choice(PLANS),
                repo_id="nas",
                started_at=begun,
                ended_at=begun + timedelta(seconds=rng.randint(5, 3000)),
                snapshot_id=f"{rng.getrandbits(256):064x}"
                if status in ("success", "warning")
                else None,
                error="repository is already locked by bench" if status == "error" else None,
            )
            if i % 10_000 == 0 and i:
                print(f"  ... {i} operations written", file=sys.stderr, flush=True)
        return time.perf_counter() - start
    finally:
        await store.close()


class PaintWatch(QObject):
    """Notes the time of the first paint of a widget after :meth:`arm`, if it has rows."""

    def __init__(self, ready: Any) -> None:
        super().__init__()
        self.ready = ready
        self.armed_at = 0.0
        self.first_paint: float | None = None
        self.painted = asyncio.Event()

    def arm(self) -> None:
        self.armed_at = time.perf_counter()
        self.first_paint = None
        self.painted.clear()

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Paint and self.first_paint is None and self.ready():
            # Measured after the paint itself: let the event through, then stamp.
            obj.removeEventFilter(self)
            result = obj.event(event)
            self.first_paint = time.perf_counter()
            obj.installEventFilter(self)
            self.painted.set()
            return result
        return False


def scroll_steps(view: Any, steps: int, rng: random.Random) -> list[float]:
    """Jump the scroll bar to random places and repaint synchronously; ms per step."""
    bar = view.verticalScrollBar()
    times = []
    for _ in range(steps):
        target = rng.randint(bar.minimum(), bar.maximum())
        t = time.perf_counter()
        bar.setValue(target)
        view.viewport().repaint()
        times.append((time.perf_counter() - t) * 1000)
    return times


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


async def real_node(data_dir: Path, count: int, steps: int) -> dict[str, float]:
    from peerstash.desktop.app import DesktopApp
    from peerstash.desktop.opsmodel import PAGE
    from peerstash.peer.node import NodeOptions

    kw: dict[str, Any] = {"schedule": False}
    have = {f.name for f in fields(NodeOptions)}
    if "listen" in have:
        kw["listen"] = None  # no peer port needed
    if "discovery" in have:
        kw["discovery"] = False  # and nothing announced on the network
    app = DesktopApp(data_dir, NodeOptions(**kw), show_tray=False)
    t0 = time.perf_counter()
    await app.start()
    started = time.perf_counter() - t0
    w = app.window
    assert w is not None
    w.resize(1200, 800)
    page = w.operations
    model = page.model
    watch = PaintWatch(lambda: model.rowCount() > 0)
    page.view.viewport().installEventFilter(watch)
    await asyncio.sleep(0.3)  # let the overview settle; the measurement starts below
    watch.arm()
    w.show_page(page)
    await asyncio.wait_for(watch.painted.wait(), 30)
    assert watch.first_paint is not None
    first_paint = (watch.first_paint - watch.armed_at) * 1000
    rows_at_paint = model.rowCount()

    # Scroll to the end like a person dragging the bar: each time the view nears the end it
    # asks the model for more, which asks the node for the next page.
    t = time.perf_counter()
    bar = page.view.verticalScrollBar()
    fetches: list[float] = []
    while model.canFetchMore():
        bar.setValue(bar.maximum())
        page.view.viewport().repaint()
        f = time.perf_counter()
        if model.canFetchMore():
            model.fetchMore()
        await model.tasks.idle()
        fetches.append((time.perf_counter() - f) * 1000)
    to_end = time.perf_counter() - t
    total_rows = model.rowCount()
    steps_ms = scroll_steps(page.view, steps, random.Random(1))
    await app.stop()
    return {
        "node start (s)": started,
        "first paint (ms)": first_paint,
        "rows in first paint": rows_at_paint,
        "page size": PAGE,
        "load all by scrolling (s)": to_end,
        "rows after scrolling": total_rows,
        "fetches while scrolling": len(fetches),
        "longest fetch (ms)": max(fetches, default=0.0),
        "scroll step p50 (ms)": statistics.median(steps_ms),
        "scroll step p95 (ms)": pct(steps_ms, 0.95),
        "scroll step max (ms)": max(steps_ms),
    }


def synthetic_ops(count: int) -> list[OpRecord]:
    """``count`` finished backups as the tray holds them (records, newest first)."""
    rng = random.Random(3)
    base = datetime.now(UTC) - timedelta(hours=count)
    ops = []
    for i in range(count, 0, -1):
        status = rng.choice(STATUSES)
        begun = base + timedelta(hours=i)
        ops.append(
            OpRecord(
                id=f"{i:026d}",
                pk=i,
                origin="bench",
                modno=i,
                flow_id=f"{i:026d}",
                kind="backup",
                status=status,
                plan=rng.choice(PLANS),
                repo="nas",
                created_at=begun.isoformat(),
                started_at=begun.isoformat(),
                ended_at=(begun + timedelta(seconds=90)).isoformat(),
                bytes_done=1 << 30,
                bytes_total=1 << 30,
                files_done=1000,
                files_total=1000,
                eta_seconds=None,
                summary={},
                snapshot_id="ab" * 32 if status == "success" else None,
                error="repository is already locked" if status == "error" else None,
            )
        )
    return ops


async def model_alone(count: int, steps: int) -> dict[str, float]:
    from PySide6.QtWidgets import QTableView

    from peerstash.desktop.opsmodel import COL_DETAIL, OpsModel, ProgressDelegate

    ops = synthetic_ops(count)
    # A running one at the top, so the progress delegate is part of every paint of the top.
    ops[0] = msgspec.structs.replace(ops[0], status="running", bytes_done=1 << 29, eta_seconds=120)
    model = OpsModel()
    view = QTableView()
    view.setModel(model)
    view.setItemDelegateForColumn(COL_DETAIL, ProgressDelegate(view))
    view.verticalHeader().setDefaultSectionSize(view.fontMetrics().height() + 10)
    view.verticalHeader().setSectionResizeMode(view.verticalHeader().ResizeMode.Fixed)
    view.resize(1200, 800)
    view.show()
    watch = PaintWatch(lambda: model.rowCount() > 0)
    view.viewport().installEventFilter(watch)
    watch.arm()
    model.set_ops(ops)
    await asyncio.wait_for(watch.painted.wait(), 30)
    assert watch.first_paint is not None
    reset_paint = (watch.first_paint - watch.armed_at) * 1000
    steps_ms = scroll_steps(view, steps, random.Random(2))
    # A live update while 100,000 rows are loaded: the bisect + one row repaint.
    t = time.perf_counter()
    for i in range(1000):
        model.apply(msgspec.structs.replace(ops[0], bytes_done=i, modno=ops[0].modno + i + 1))
    live_us = (time.perf_counter() - t) / 1000 * 1e6
    return {
        "rows": model.rowCount(),
        "reset to first paint (ms)": reset_paint,
        "scroll step p50 (ms)": statistics.median(steps_ms),
        "scroll step p95 (ms)": pct(steps_ms, 0.95),
        "scroll step max (ms)": max(steps_ms),
        "live update apply (µs)": live_us,
    }


def show(title: str, figures: dict[str, float]) -> None:
    print(f"\n{title}")
    for k, v in figures.items():
        print(f"  {k:<28} {v:>10.1f}" if isinstance(v, float) else f"  {k:<28} {v:>10}")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ops", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=200, help="scroll steps to time")
    ap.add_argument(
        "--data-dir",
        type=Path,
        help="data dir to fill (kept for reuse); default: a folder in the temp dir",
    )
    ap.add_argument("--skip-node", action="store_true", help="only the model-alone figures")
    args = ap.parse_args()
    # The window's preferences (its size, the page it was left on) in a folder of this run's
    # own: a saved "Operations" page would already be painted when the measurement starts
    # (and a benchmark has no business in the user's settings).
    config = tempfile.TemporaryDirectory(prefix="peerstash-bench-ui-config-")
    os.environ["XDG_CONFIG_HOME"] = config.name
    qapp = QApplication.instance() or QApplication([])
    from peerstash.desktop.platform import qloop, qtfix

    qtfix.apply()  # as the app does: PySide6 6.12 on Python 3.11 loses references to None
    # The admin API logs a traceback when it stops while a follow stream is open (a known
    # node-side issue); it says nothing about the figures here.
    logging.getLogger("peerstash.peer.api.server").setLevel(logging.CRITICAL)

    data_dir = args.data_dir or Path(tempfile.gettempdir()) / f"peerstash-bench-ui-{args.ops}"
    print(f"Peerstash operations view, {args.ops} operations, Qt platform {qapp.platformName()}")

    async def run() -> bool:
        ok = True
        if not args.skip_node:
            took = await fill_store(data_dir, args.ops)
            if took:
                print(
                    f"  wrote {args.ops} operations through the Store in {took:.0f} s ({data_dir})"
                )
            else:
                print(f"  reusing {data_dir}")
            real = await real_node(data_dir, args.ops, args.steps)
            show("Real node (admin API, in-process node):", real)
            ok = real["first paint (ms)"] <= TARGET_MS
        alone = await model_alone(args.ops, args.steps)
        show("Model alone (all rows at once):", alone)
        if args.skip_node:
            ok = alone["reset to first paint (ms)"] <= TARGET_MS
        print(f"\nfirst paint target ≤ {TARGET_MS:.0f} ms: {'met' if ok else 'NOT met'}")
        return ok

    with config:
        ok = qloop.run(run(), qapp)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
