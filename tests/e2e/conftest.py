"""Real ``peerstash --no-gui`` processes and the real CLI, as a person would run them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PEERSTASH = [sys.executable, "-m", "peerstash.desktop"]
READY_MARK = "Ctrl-C stops it"


@dataclass
class NodeProc:
    """One node process for one data dir, with its stderr collected for assertions."""

    data_dir: Path
    instance_id: str
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)
    _exited: threading.Event = field(default_factory=threading.Event)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEERSTASH_")}
        env.pop("DISPLAY", None)
        env.pop("WAYLAND_DISPLAY", None)
        env.update(self.extra_env)
        return env

    def start(self, *extra: str, wait: bool = True) -> NodeProc:
        if not any(e.startswith("--listen") for e in extra):
            extra = (*extra, "--listen", "127.0.0.1:0")  # never the network, never a fixed port
        if not any(e.startswith("--discovery-interface") for e in extra):
            extra = (*extra, "--no-discovery")  # mDNS only where a test asks for it, on loopback
        self._ready.clear()
        self._exited.clear()
        self.proc = subprocess.Popen(
            [
                *PEERSTASH,
                "--data-dir",
                str(self.data_dir),
                "--instance-id",
                self.instance_id,
                "--no-gui",
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env(),
        )
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        if wait:
            self.wait_ready()
        return self

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line.rstrip("\n"))
            if READY_MARK in line:
                self._ready.set()
        self._exited.set()

    def wait_ready(self, timeout: float = 30) -> None:
        # Wait for the node's own "ready" line (or its exit), not for a fixed time.
        for _ in range(int(timeout * 10)):
            if self._ready.wait(0.1):
                return
            if self._exited.is_set():
                raise AssertionError("node exited before ready:\n" + "\n".join(self.output))
        raise AssertionError("node not ready in time:\n" + "\n".join(self.output))

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._exited.wait(10)
        return code

    def cli(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [*PEERSTASH, "--data-dir", str(self.data_dir), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"peerstash {' '.join(args)} exited {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
            )
        return res


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    nodes: list[NodeProc] = []

    def make(name: str = "alpha", **env: str) -> NodeProc:
        node = NodeProc(tmp_path / f"{name}-data", name, extra_env=env)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(10)


@pytest.fixture
def node(node_factory: callable) -> NodeProc:  # type: ignore[valid-type]
    return node_factory("alpha").start()
