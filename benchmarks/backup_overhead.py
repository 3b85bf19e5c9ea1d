"""Backup through Peerstash vs. bare ``restic backup`` on the same data, plus the node's RSS.

Usage: .venv/bin/python benchmarks/backup_overhead.py [--files 3000] [--mb 300] [--rounds 3]

Each round backs the same generated tree up twice into two fresh repositories, once with bare
restic and once through a real ``peerstash --no-gui`` node driven by the CLI
(``peerstash backup PLAN --wait``), alternating which goes first so the page cache favours
neither. Both a first (everything new) and an unchanged (nothing new) run are timed. Figures are
ratios against the bare run measured in the same round, so the machine's speed cancels out.
The node's peak RSS (VmHWM of the node process alone; restic is a separate process) is read
from /proc after the backups.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

from nodeproc import PEERSTASH, start_node

PASSWORD = "benchmark-password"


def generate(root: Path, files: int, total_mb: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    avg = total_mb * 1024 * 1024 // files
    for i in range(files):
        d = root / f"d{i % 50:02d}" / f"s{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        size = max(0, int(rng.expovariate(1 / avg))) if i % 10 else avg
        (d / f"f{i:05d}.bin").write_bytes(os.urandom(size))


def timed(cmd: list[str], env: dict[str, str], stdin: str | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, input=stdin, text=True, check=True, capture_output=True)
    return time.perf_counter() - t0


def bare_restic(repo: Path, src: Path) -> tuple[float, float]:
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(repo) + "-cache"}
    subprocess.run(["restic", "init", "-r", str(repo)], env=env, check=True, capture_output=True)
    cmd = ["restic", "-r", str(repo), "backup", "--json", str(src)]
    return timed(cmd, env), timed(cmd, env)


def node_rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def add_repo_and_plan(cli: list[str], repo: Path, src: Path, env: dict[str, str]) -> None:
    """Repository ``r`` (created at ``repo``) and plan ``p`` backing ``src`` up into it."""
    subprocess.run(
        [*cli, "repo", "add", "r", "--uri", str(repo), "--password-stdin", "--init"],
        input=PASSWORD + "\n",
        text=True,
        check=True,
        capture_output=True,
        env=env,
    )
    subprocess.run(
        # --no-backup-now: a plan's first backup otherwise starts at once, before the timer.
        [*cli, "plan", "add", "p", "--repo", "r", "--path", str(src), "--no-backup-now"],
        check=True,
        capture_output=True,
        env=env,
    )


def through_peerstash(
    work: Path, repo: Path, src: Path
) -> tuple[float, float, float, float, float]:
    data = work / "node"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEERSTASH_")}
    node = start_node(data, "bench")
    try:
        cli = [*PEERSTASH, "--data-dir", str(data)]
        add_repo_and_plan(cli, repo, src, env)
        first = timed([*cli, "backup", "p", "--wait"], env)
        again = timed([*cli, "backup", "p", "--wait"], env)
        rss = node_rss_peak_mb(node.pid)
        ops = json.loads(
            subprocess.run(
                [*cli, "ops", "--json"], check=True, capture_output=True, text=True, env=env
            ).stdout
        )
        # Node-side time of each backup: from the request reaching the node to the op ending.
        inside = [
            (
                datetime.fromisoformat(o["ended_at"]) - datetime.fromisoformat(o["created_at"])
            ).total_seconds()
            for o in reversed(ops)
            if o["kind"] == "backup"
        ]
    finally:
        node.send_signal(2)
        node.wait(60)
    return first, again, rss, inside[0], inside[1]


def in_process(work: Path, repo: Path, src: Path) -> tuple[float, float]:
    """The same two backups through a Node running in this process (no CLI, no admin socket)."""
    import asyncio

    from peerstash.core.engine import PasswordSpec
    from peerstash.peer.node import Node, NodeOptions

    async def go() -> tuple[float, float]:
        node = Node(
            work / "inproc",
            NodeOptions(instance_id="bench", listen=None, discovery=False, schedule=False),
        )
        await node.start()
        try:
            engine = node.engine
            assert engine is not None
            await engine.add_repo("r", str(repo), PasswordSpec("secret", value=PASSWORD), init=True)
            await engine.add_plan("p", repo_id="r", paths=[str(src)])
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                op = await engine.backup("p")
                await engine.wait(op.pk)
                times.append(time.perf_counter() - t0)
            return times[0], times[1]
        finally:
            await node.stop()

    return asyncio.run(go())


def unchanged_interleaved(
    work: Path, src: Path, runs: int
) -> tuple[list[float], list[float], list[float]]:
    """Unchanged-data backups, bare and through one node, alternating ``runs`` times each.

    An unchanged backup takes under a second, so a single pair of them says little: the
    machine's jitter is as large as the difference sought. Here both repositories are backed
    up once, then the two sides take turns on the same warm page cache, and the medians are
    compared. The node is asked through its admin socket from this (warm) process, the way
    the scheduler or the tray asks it: a ``peerstash backup --wait`` started for each run
    would spend most of a CPU starting Python while restic runs, and on two cores that slows
    restic itself. Returns (bare wall times, node-side times, request-to-end wall times).
    """
    import asyncio

    from peerstash.peer.cli import AdminClient

    bare_repo, node_repo = work / "again-bare", work / "again-node"
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(bare_repo) + "-c"}
    subprocess.run(
        ["restic", "init", "-r", str(bare_repo)], env=env, check=True, capture_output=True
    )
    bare_cmd = ["restic", "-r", str(bare_repo), "backup", "--json", str(src)]
    timed(bare_cmd, env)
    data = work / "again-node-data"
    node_env = {k: v for k, v in os.environ.items() if not k.startswith("PEERSTASH_")}
    node = start_node(data, "bench")
    cli = [*PEERSTASH, "--data-dir", str(data)]

    async def node_backup(client: AdminClient) -> tuple[float, float]:
        t0 = time.perf_counter()
        op = await client.call("POST", "/v1/plans/p/backup")
        last = op
        async for update in client.stream(f"/v1/ops/{op['id']}/wait?flow=1"):
            if update.get("id") == op["id"]:
                last = update
        wall = time.perf_counter() - t0
        inside = datetime.fromisoformat(last["ended_at"]) - datetime.fromisoformat(
            last["created_at"]
        )
        return inside.total_seconds(), wall

    async def alternate() -> tuple[list[float], list[float], list[float]]:
        bare_t: list[float] = []
        inside_t: list[float] = []
        wall_t: list[float] = []
        async with AdminClient(data) as client:
            await node_backup(client)  # the node's first backup: everything new
            for i in range(runs):
                if i % 2:
                    bare_t.append(await asyncio.to_thread(timed, bare_cmd, env))
                    inside, wall = await node_backup(client)
                else:
                    inside, wall = await node_backup(client)
                    bare_t.append(await asyncio.to_thread(timed, bare_cmd, env))
                inside_t.append(inside)
                wall_t.append(wall)
        return bare_t, inside_t, wall_t

    try:
        add_repo_and_plan(cli, node_repo, src, node_env)
        return asyncio.run(alternate())
    finally:
        node.send_signal(2)
        node.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--mb", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--again", type=int, default=11, help="interleaved unchanged backups on each side"
    )
    args = ap.parse_args()
    restic_version = subprocess.run(
        ["restic", "version"], capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="ps-bench-") as tmp:
        work = Path(tmp)
        # The nodes' restic cache in a folder of this run, as bare restic's is: the user's
        # shared ~/.cache/peerstash/restic may hold hundreds of repositories' caches (every test
        # node's), which restic looks through at each start (+0.08 s measured on 0.9 s runs).
        os.environ["XDG_CACHE_HOME"] = str(work / "xdg-cache")
        os.environ.pop("CACHE_DIRECTORY", None)
        src = work / "src"
        generate(src, args.files, args.mb)
        print(f"data: {args.files} files, {args.mb} MB; {restic_version}; {os.cpu_count()} cores")
        ratios_first, ratios_again, rss_all = [], [], []
        node_first, node_again = [], []
        eng_first: list[float] = []
        eng_again: list[float] = []
        for rnd in range(args.rounds):
            order = (
                ["bare", "peerstash", "inproc"] if rnd % 2 == 0 else ["inproc", "peerstash", "bare"]
            )
            res: dict[str, tuple[float, ...]] = {}
            for which in order:
                rdir = work / f"round{rnd}-{which}"
                rdir.mkdir()
                if which == "bare":
                    res[which] = bare_restic(rdir / "repo", src)
                elif which == "inproc":
                    res[which] = in_process(rdir, rdir / "repo", src)
                else:
                    res[which] = through_peerstash(rdir, rdir / "repo", src)
                shutil.rmtree(rdir)
            bf, ba = res["bare"]
            pf, pa, rss, nf, na = res["peerstash"]
            ef, ea = res["inproc"]
            eng_first.append(ef / bf)
            eng_again.append(ea / ba)
            ratios_first.append(pf / bf)
            ratios_again.append(pa / ba)
            node_first.append(nf / bf)
            node_again.append(na / ba)
            rss_all.append(rss)
            print(
                f"round {rnd + 1}: first: bare {bf:.2f}s, CLI {pf:.2f}s ({pf / bf:.3f}x), "
                f"in node {nf:.2f}s ({nf / bf:.3f}x); unchanged: bare {ba:.2f}s, CLI {pa:.2f}s "
                f"({pa / ba:.3f}x), in node {na:.2f}s ({na / ba:.3f}x); engine in-process first {ef:.2f}s "
                f"({ef / bf:.3f}x) unchanged {ea:.2f}s ({ea / ba:.3f}x); node peak RSS {rss:.0f} MB"
            )
        med = statistics.median
        print("median ratios vs bare restic (target <= 1.03x):")
        print(
            f"  first backup,     in node: {med(node_first):.3f}x   whole CLI call: {med(ratios_first):.3f}x"
        )
        print(
            f"  unchanged backup, in node: {med(node_again):.3f}x   whole CLI call: {med(ratios_again):.3f}x"
        )
        print(
            f"  engine in-process (no CLI, no socket): first {med(eng_first):.3f}x, "
            f"unchanged {med(eng_again):.3f}x"
        )
        print(f"node peak RSS:                  {max(rss_all):.0f} MB  (target <= 120 MB)")
        if args.again:
            bare_t, inside, wall_t = unchanged_interleaved(work, src, args.again)
            print(
                f"unchanged data, {args.again} interleaved runs each (node asked over its "
                f"admin socket): bare median {med(bare_t):.3f}s, in node {med(inside):.3f}s "
                f"({med(inside) / med(bare_t):.3f}x), request to end {med(wall_t):.3f}s "
                f"({med(wall_t) / med(bare_t):.3f}x)"
            )
            print(f"  bare: {' '.join(f'{t:.2f}' for t in bare_t)}")
            print(f"  node: {' '.join(f'{t:.2f}' for t in inside)}")


if __name__ == "__main__":
    main()
