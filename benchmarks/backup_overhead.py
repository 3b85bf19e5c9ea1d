"""Backup through Peerstash vs. bare ``restic backup`` on the same data, plus the node's RSS.

Usage: .venv/bin/python benchmarks/backup_overhead.py [--files 3000] [--mb 300] [--rounds 3]

Each round backs the same generated tree up twice into two fresh repositories, once with bare
restic and once through a real ``peerstash --no-gui`` node driven by the CLI
(``peerstash backup PLAN --wait``), alternating which goes first so the page cache favours
neither. Both a first (everything new) and an unchanged (nothing new) run are timed. Figures are
ratios against the bare run measured in the same round, so the machine's speed cancels out.
The node's peak RSS (VmHWM of the node process alone; restic is a separate process) is read
from /proc after the backups.

On a loaded machine the wall-clock ratios swing with the load more than with Peerstash, so
every run also reports what the load does not inflate much: the CPU that Peerstash adds to
restic's own, as (restic CPU + ours) / restic CPU. restic's CPU is its rusage (bare: the
child of this process; in a node: the node's ``cutime + cstime`` from /proc, which restic
joins when the node reaps it); ours is the node's ``utime + stime`` over the operation, the
CLI process's rusage, or ``time.process_time`` of this process for the engine run in-process.
For the in-process engine it also reports the wall time our code adds around restic: from the
request to restic exec'd, the spawn itself, and from restic's exit (as the event loop sees it)
to the operation's end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

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
    return timed_cpu(cmd, env, stdin)[0]


def timed_cpu(cmd: list[str], env: dict[str, str], stdin: str | None = None) -> tuple[float, float]:
    """Run ``cmd`` to its end: (wall seconds, its CPU seconds, user + system, from wait4)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin.encode())
            proc.stdin.close()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}): {err.read()[-2000:]!r}")
    return wall, usage.ru_utime + usage.ru_stime


_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> tuple[float, float]:
    """(CPU of process ``pid`` itself, CPU of its reaped children), seconds, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime) / _TICK, (cutime + cstime) / _TICK


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (restic run by an in-process engine)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class SpawnClock:
    """Timestamps of every child the event loop starts: before the spawn, once exec'd, and
    when the loop sees it exit. Patched over ``asyncio.create_subprocess_exec``, the call the
    restic wrapper makes wherever it lives, for the engine running in this process."""

    def __init__(self) -> None:
        self.spawns: list[tuple[float, float]] = []
        self.exits: list[float] = []
        self._orig: Any = None

    def __enter__(self) -> SpawnClock:
        import asyncio

        self._orig = orig = asyncio.create_subprocess_exec

        async def clocked(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            proc = await orig(*args, **kwargs)
            self.spawns.append((t0, time.perf_counter()))
            waiter = asyncio.ensure_future(proc.wait())
            waiter.add_done_callback(lambda _f: self.exits.append(time.perf_counter()))
            return proc

        asyncio.create_subprocess_exec = clocked  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        import asyncio

        asyncio.create_subprocess_exec = self._orig

    def reset(self) -> None:
        self.spawns.clear()
        self.exits.clear()


def bare_restic(repo: Path, src: Path) -> tuple[float, float, float, float]:
    """(first wall, unchanged wall, first restic CPU, unchanged restic CPU)."""
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(repo) + "-cache"}
    subprocess.run(["restic", "init", "-r", str(repo)], env=env, check=True, capture_output=True)
    cmd = ["restic", "-r", str(repo), "backup", "--json", str(src)]
    (w1, c1), (w2, c2) = timed_cpu(cmd, env), timed_cpu(cmd, env)
    return w1, w2, c1, c2


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


@dataclass
class Side:
    """One way of backing up, first and unchanged run: wall seconds, restic's CPU seconds and
    the CPU seconds our code added (node, CLI or this process; 0 for bare restic)."""

    wall: tuple[float, float]
    restic_cpu: tuple[float, float]
    our_cpu: tuple[float, float] = (0.0, 0.0)
    #: For a node: the operation's own time (request reached the node → op ended).
    inside: tuple[float, float] = (0.0, 0.0)
    #: For a node driven by the CLI: the node's own CPU alone (without the CLI's).
    node_cpu: tuple[float, float] = (0.0, 0.0)


def through_peerstash(work: Path, repo: Path, src: Path) -> tuple[Side, float]:
    data = work / "node"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEERSTASH_")}
    node = start_node(data, "bench")
    try:
        cli = [*PEERSTASH, "--data-dir", str(data)]
        add_repo_and_plan(cli, repo, src, env)
        walls, restic_cpu, node_cpu, cli_cpu = [], [], [], []
        for _ in range(2):
            own0, kids0 = proc_cpu(node.pid)
            wall, cpu = timed_cpu([*cli, "backup", "p", "--wait"], env)
            own1, kids1 = proc_cpu(node.pid)
            walls.append(wall)
            cli_cpu.append(cpu)
            node_cpu.append(own1 - own0)
            restic_cpu.append(kids1 - kids0)
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
    side = Side(
        wall=(walls[0], walls[1]),
        restic_cpu=(restic_cpu[0], restic_cpu[1]),
        our_cpu=(node_cpu[0] + cli_cpu[0], node_cpu[1] + cli_cpu[1]),
        inside=(inside[0], inside[1]),
        node_cpu=(node_cpu[0], node_cpu[1]),
    )
    return side, rss


@dataclass
class InProcRun:
    """One backup through the engine in this process, with where its wall time went."""

    wall: float
    our_cpu: float
    restic_cpu: float
    to_exec: float  # request → the (last) restic exec'd
    spawn: float  # of that: the spawn call itself (fork/vfork + exec)
    after_exit: float  # the last restic's exit seen by the loop → the operation ended


async def inproc_backup(engine: Any, clock: SpawnClock) -> InProcRun:
    """One backup of plan ``p`` through ``engine``, timed and its CPU split."""
    clock.reset()
    c0, k0 = time.process_time(), children_cpu()
    t0 = time.perf_counter()
    op = await engine.backup("p")
    await engine.wait(op.pk)
    end = time.perf_counter()
    c1, k1 = time.process_time(), children_cpu()
    started, execd = clock.spawns[-1] if clock.spawns else (end, end)
    exited = clock.exits[-1] if clock.exits else end
    return InProcRun(end - t0, c1 - c0, k1 - k0, execd - t0, execd - started, end - exited)


def in_process(work: Path, repo: Path, src: Path) -> tuple[InProcRun, InProcRun]:
    """The same two backups through a Node running in this process (no CLI, no admin socket)."""
    import asyncio

    from peerstash.core.engine import PasswordSpec
    from peerstash.peer.node import Node, NodeOptions

    async def go() -> tuple[InProcRun, InProcRun]:
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
            with SpawnClock() as clock:
                first = await inproc_backup(engine, clock)
                again = await inproc_backup(engine, clock)
            return first, again
        finally:
            await node.stop()

    return asyncio.run(go())


@dataclass
class Interleaved:
    bare: list[float] = field(default_factory=list)
    bare_cpu: list[float] = field(default_factory=list)
    inside: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    node_cpu: list[float] = field(default_factory=list)
    node_restic_cpu: list[float] = field(default_factory=list)
    inproc: list[InProcRun] = field(default_factory=list)


def unchanged_interleaved(work: Path, src: Path, runs: int) -> Interleaved:
    """Unchanged-data backups: bare, through one node, and through an engine in this process,
    taking turns ``runs`` times each (the order rotates, so drift hits every side).

    An unchanged backup takes under a second, so a single pair of them says little: the
    machine's jitter is as large as the difference sought. Here every repository is backed
    up once, then the sides take turns on the same warm page cache, and the medians are
    compared. The node is asked through its admin socket from this (warm) process, the way
    the scheduler or the tray asks it: a ``peerstash backup --wait`` started for each run
    would spend most of a CPU starting Python while restic runs, and on two cores that slows
    restic itself.
    """
    import asyncio

    from peerstash.core.engine import PasswordSpec
    from peerstash.peer.cli import AdminClient
    from peerstash.peer.node import Node, NodeOptions

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
    out = Interleaved()

    async def node_backup(client: AdminClient) -> None:
        own0, kids0 = proc_cpu(node.pid)
        t0 = time.perf_counter()
        op = await client.call("POST", "/v1/plans/p/backup")
        last = op
        async for update in client.stream(f"/v1/ops/{op['id']}/wait?flow=1"):
            if update.get("id") == op["id"]:
                last = update
        out.wall.append(time.perf_counter() - t0)
        own1, kids1 = proc_cpu(node.pid)
        inside = datetime.fromisoformat(last["ended_at"]) - datetime.fromisoformat(
            last["created_at"]
        )
        out.inside.append(inside.total_seconds())
        out.node_cpu.append(own1 - own0)
        out.node_restic_cpu.append(kids1 - kids0)

    async def bare() -> None:
        wall, cpu = await asyncio.to_thread(timed_cpu, bare_cmd, env)
        out.bare.append(wall)
        out.bare_cpu.append(cpu)

    async def alternate() -> None:
        inproc = Node(
            work / "again-inproc",
            NodeOptions(instance_id="bench", listen=None, discovery=False, schedule=False),
        )
        await inproc.start()
        try:
            engine = inproc.engine
            assert engine is not None
            await engine.add_repo(
                "r",
                str(work / "again-inproc-repo"),
                PasswordSpec("secret", value=PASSWORD),
                init=True,
            )
            await engine.add_plan("p", repo_id="r", paths=[str(src)])
            with SpawnClock() as clock:

                async def engine_backup() -> None:
                    out.inproc.append(await inproc_backup(engine, clock))

                async with AdminClient(data) as client:
                    sides = [bare, lambda: node_backup(client), engine_backup]
                    await node_backup(client)  # the first backups: everything new
                    await engine_backup()
                    out.wall.clear(), out.inside.clear(), out.node_cpu.clear()
                    out.node_restic_cpu.clear(), out.inproc.clear()
                    for i in range(runs):
                        for k in range(3):  # A B C, B C A, C A B, ...
                            await sides[(i + k) % 3]()
        finally:
            await inproc.stop()

    try:
        add_repo_and_plan(cli, node_repo, src, node_env)
        asyncio.run(alternate())
        return out
    finally:
        node.send_signal(2)
        node.wait(60)


def cpu_ratio(restic: float, ours: float) -> str:
    """(restic + ours) / restic, or 'n/a' when restic's CPU was not measured."""
    return f"{(restic + ours) / restic:.3f}x" if restic > 0 else "n/a"


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms"


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
    med = statistics.median
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
        print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        ratios_first, ratios_again, rss_all = [], [], []
        node_first, node_again = [], []
        eng_first: list[float] = []
        eng_again: list[float] = []
        # CPU sums over the rounds: [first, unchanged] for restic and for what we added.
        cpu: dict[str, list[float]] = {
            k: [0.0, 0.0]
            for k in ("bare", "cli_restic", "cli_ours", "node_ours", "eng_restic", "eng_ours")
        }
        for rnd in range(args.rounds):
            order = (
                ["bare", "peerstash", "inproc"] if rnd % 2 == 0 else ["inproc", "peerstash", "bare"]
            )
            bare_res: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
            ps: Side | None = None
            rss = 0.0
            eng: tuple[InProcRun, InProcRun] | None = None
            for which in order:
                rdir = work / f"round{rnd}-{which}"
                rdir.mkdir()
                if which == "bare":
                    bare_res = bare_restic(rdir / "repo", src)
                elif which == "inproc":
                    eng = in_process(rdir, rdir / "repo", src)
                else:
                    ps, rss = through_peerstash(rdir, rdir / "repo", src)
                shutil.rmtree(rdir)
            assert ps is not None and eng is not None
            bf, ba, bcf, bca = bare_res
            pf, pa = ps.wall
            nf, na = ps.inside
            ef, ea = eng[0].wall, eng[1].wall
            for i in range(2):
                cpu["bare"][i] += (bcf, bca)[i]
                cpu["cli_restic"][i] += ps.restic_cpu[i]
                cpu["cli_ours"][i] += ps.our_cpu[i]
                cpu["node_ours"][i] += ps.node_cpu[i]
                cpu["eng_restic"][i] += eng[i].restic_cpu
                cpu["eng_ours"][i] += eng[i].our_cpu
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
            print(
                f"  CPU s first/unchanged: bare restic {bcf:.2f}/{bca:.2f}; CLI run: restic "
                f"{ps.restic_cpu[0]:.2f}/{ps.restic_cpu[1]:.2f}, node {ps.node_cpu[0]:.3f}/"
                f"{ps.node_cpu[1]:.3f}, CLI {ps.our_cpu[0] - ps.node_cpu[0]:.3f}/"
                f"{ps.our_cpu[1] - ps.node_cpu[1]:.3f}; in-process: restic "
                f"{eng[0].restic_cpu:.2f}/{eng[1].restic_cpu:.2f}, ours "
                f"{eng[0].our_cpu:.3f}/{eng[1].our_cpu:.3f}"
            )
        print("median wall ratios vs bare restic:")
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
        print("CPU ratios, (restic CPU + ours) / restic CPU, summed over the rounds:")
        for i, name in enumerate(("first backup", "unchanged backup")):
            print(
                f"  {name + ',':17} in node: {cpu_ratio(cpu['cli_restic'][i], cpu['node_ours'][i])}"
                f"   whole CLI call: {cpu_ratio(cpu['cli_restic'][i], cpu['cli_ours'][i])}"
                f"   engine in-process: {cpu_ratio(cpu['eng_restic'][i], cpu['eng_ours'][i])}"
                f"   (restic CPU: bare {cpu['bare'][i]:.2f}s, in node {cpu['cli_restic'][i]:.2f}s)"
            )
        print(f"node peak RSS:                  {max(rss_all):.0f} MB  (target <= 120 MB)")
        if args.again:
            r = unchanged_interleaved(work, src, args.again)
            eng_walls = [x.wall for x in r.inproc]
            print(
                f"unchanged data, {args.again} interleaved runs each (node asked over its "
                f"admin socket): bare median {med(r.bare):.3f}s, in node {med(r.inside):.3f}s "
                f"({med(r.inside) / med(r.bare):.3f}x), request to end {med(r.wall):.3f}s "
                f"({med(r.wall) / med(r.bare):.3f}x); engine in-process {med(eng_walls):.3f}s "
                f"({med(eng_walls) / med(r.bare):.3f}x)"
            )
            print(f"  bare: {' '.join(f'{t:.2f}' for t in r.bare)}")
            print(f"  node: {' '.join(f'{t:.2f}' for t in r.inside)}")
            print(f"  eng:  {' '.join(f'{t:.2f}' for t in eng_walls)}")
            node_restic, node_ours = sum(r.node_restic_cpu), sum(r.node_cpu)
            eng_restic = sum(x.restic_cpu for x in r.inproc)
            eng_ours = sum(x.our_cpu for x in r.inproc)
            print(
                f"  CPU: restic bare {ms(r.bare_cpu)}, in node {ms(r.node_restic_cpu)}, "
                f"in-process {ms([x.restic_cpu for x in r.inproc])} (medians); ours: node "
                f"{ms(r.node_cpu)}, in-process {ms([x.our_cpu for x in r.inproc])} per backup"
            )
            print(
                f"  CPU ratio (restic + ours) / restic, summed: in node "
                f"{cpu_ratio(node_restic, node_ours)}, in-process {cpu_ratio(eng_restic, eng_ours)}"
            )
            print(
                f"  wall added around restic (in-process, medians): request -> restic exec'd "
                f"{ms([x.to_exec for x in r.inproc])} (the spawn itself "
                f"{ms([x.spawn for x in r.inproc])}), restic exit -> op ended "
                f"{ms([x.after_exit for x in r.inproc])}; sum "
                f"{ms([x.to_exec + x.after_exit for x in r.inproc])} of "
                f"{med(eng_walls):.3f}s"
            )
        print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
