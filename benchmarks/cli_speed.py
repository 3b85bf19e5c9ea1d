"""How long ``peerstash --version`` and ``peerstash status`` take, against starting Python.

Usage: .venv/bin/python benchmarks/cli_speed.py [--runs 10] [--data-dir DIR]

A real ``peerstash --no-gui`` node is started for ``status`` (or, with ``--data-dir``, the
node already running there is asked). Each command is run ``--runs`` times after one warm-up,
the commands taking turns (A B C A B C ...) so that the machine's drift hits all of them alike,
and the median wall time and CPU time (user + system, from the kernel's accounting of the
finished child) are printed, with their ratio to ``python -c pass`` measured in the same run.
``python -I -S -c pass`` (no site, no ``.pth`` files) shows what the interpreter alone costs.

The commands are run the ways users run them: the console script (``.venv/bin/peerstash``,
pip's launcher) and the packaged app's launcher (``python -m peerstash``, from
``packaging/launcher``). The package's bytecode is compiled first, as an installation has it.
Targets (issue 13, "Quick CLI"): ``--version`` <= 50 ms and ``status`` <= 80 ms wall.
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nodeproc import start_node

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
LAUNCHER_DIR = ROOT / "packaging" / "launcher"


def run_once(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``cmd`` (which must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def measure(
    commands: dict[str, list[str]], envs: dict[str, dict[str, str]], runs: int
) -> dict[str, tuple[list[float], list[float]]]:
    out: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in commands}
    for i in range(runs + 1):
        for name, cmd in commands.items():
            wall, cpu = run_once(cmd, envs[name])
            if i:  # the first round warms the page cache
                out[name][0].append(wall)
                out[name][1].append(cpu)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--data-dir", help="ask the node already running for this data directory")
    args = ap.parse_args()

    for part in ("core", "peer", "desktop"):
        compileall.compile_dir(ROOT / part, quiet=1)
    compileall.compile_dir(LAUNCHER_DIR, quiet=1)
    script = Path(PY).with_name("peerstash")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEERSTASH_")}
    launcher_env = {**env, "PYTHONPATH": str(LAUNCHER_DIR)}

    with tempfile.TemporaryDirectory(prefix="ps-cli-bench-") as tmp:
        node = None
        data = Path(args.data_dir) if args.data_dir else Path(tmp) / "node"
        if not args.data_dir:
            node = start_node(data, "bench")
        try:
            dd = ["--data-dir", str(data)]
            commands = {
                "python -c pass": [PY, "-c", "pass"],
                "python -I -S -c pass": [PY, "-I", "-S", "-c", "pass"],
                "peerstash --version": [str(script), "--version"],
                "peerstash status": [str(script), *dd, "status"],
                "python -m peerstash --version": [PY, "-m", "peerstash", "--version"],
                "python -m peerstash status": [PY, "-m", "peerstash", *dd, "status"],
            }
            envs = {
                name: launcher_env if name.startswith("python -m peerstash") else env
                for name in commands
            }
            res = measure(commands, envs, args.runs)
        finally:
            if node is not None:
                node.send_signal(2)
                node.wait(60)

    med = statistics.median
    base_wall, base_cpu = med(res["python -c pass"][0]), med(res["python -c pass"][1])
    print(
        f"{args.runs} runs each, medians; {os.cpu_count()} cores; load average "
        f"{os.getloadavg()[0]:.1f}; python {sys.version.split()[0]}"
    )
    print(f"{'command':32} {'wall ms':>8} {'x pass':>7} {'cpu ms':>7} {'x pass':>7}")
    for name, (walls, cpus) in res.items():
        w, c = med(walls), med(cpus)
        print(
            f"{name:32} {w * 1000:8.1f} {w / base_wall:6.2f}x {c * 1000:7.1f} {c / base_cpu:6.2f}x"
        )
    print("targets: peerstash --version <= 50 ms wall, peerstash status <= 80 ms wall")


if __name__ == "__main__":
    main()
