"""A real ``peerstash --no-gui`` node in its own process, for the benchmarks.

On loopback with a free port and no LAN discovery; its log is drained in a thread, because a
full pipe would block the node and skew every figure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

PEERSTASH = [sys.executable, "-m", "peerstash.desktop"]


def start_node(data: Path, instance_id: str) -> subprocess.Popen[str]:
    """Start a node for ``data`` and return once it says it is ready."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEERSTASH_")}
    proc = subprocess.Popen(
        [
            *PEERSTASH,
            "--data-dir",
            str(data),
            "--instance-id",
            instance_id,
            "--no-gui",
            "--listen",
            "127.0.0.1:0",
            "--no-discovery",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "Ctrl-C stops it" in line:
            break
    else:
        raise RuntimeError(f"the node for {data} exited before it was ready")
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc
