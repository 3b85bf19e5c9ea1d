"""Real node processes, their event streams and a TCP forwarder we control, for network attacks.

Everything here is asyncio, so a test can flood a node, time its admin socket and watch its
link states in one loop. Nodes listen on 127.0.0.1 only and never run LAN discovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEERSTASH = [sys.executable, "-m", "peerstash.desktop"]
READY_MARK = "Ctrl-C stops it"
REPO_ROOT = str(Path(__file__).resolve().parents[2])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def open_file_limit(pid: int) -> tuple[str, str]:
    """The (soft, hard) open-file limit of a running process, from /proc."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError(f"no open-file limit for process {pid}")


def nofile_limit(soft: int, hard: int) -> Callable[[], None]:
    """A ``preexec_fn`` that gives the child process this open-file limit."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


@dataclass
class Node:
    """One ``peerstash --no-gui`` process; everything it prints goes to ``log_path``."""

    data_dir: Path
    instance_id: str
    timings: str = ""
    nofile: tuple[int, int] | None = None
    port: int = 0
    proc: asyncio.subprocess.Process | None = None
    log_path: Path = field(init=False)
    _pump: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.parent / f"{self.instance_id}.log"
        if not self.port:
            self.port = free_port()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEERSTASH_")}
        env.pop("DISPLAY", None)
        env.pop("WAYLAND_DISPLAY", None)
        if self.timings:
            env["PEERSTASH_LINK_TIMINGS"] = self.timings
        return env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, within: float = 60) -> Node:
        ready = asyncio.Event()
        self.proc = await asyncio.create_subprocess_exec(
            *PEERSTASH,
            "--data-dir",
            str(self.data_dir),
            "--instance-id",
            self.instance_id,
            "--no-gui",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--no-discovery",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env(),
            preexec_fn=nofile_limit(*self.nofile) if self.nofile else None,
        )
        self._pump = asyncio.create_task(self._copy_output(self.proc, ready))
        waiter = asyncio.create_task(self.proc.wait())
        readiness = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait(
            {waiter, readiness}, timeout=within, return_when=asyncio.FIRST_COMPLETED
        )
        readiness.cancel()
        if readiness not in done or not ready.is_set():
            waiter.cancel()
            raise AssertionError(f"node {self.instance_id} not ready:\n{self.log_text()}")
        waiter.cancel()
        return self

    async def _copy_output(self, proc: asyncio.subprocess.Process, ready: asyncio.Event) -> None:
        assert proc.stdout is not None
        with self.log_path.open("ab") as out:
            async for line in proc.stdout:
                out.write(line)
                out.flush()
                if READY_MARK.encode() in line:
                    ready.set()

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), 60)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pump, 10)
        self.proc = None

    async def cli(
        self, *args: str, within: float = 120, check: bool = True, input: str | None = None
    ) -> CliResult:
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *PEERSTASH,
            "--data-dir",
            str(self.data_dir),
            *args,
            stdin=asyncio.subprocess.DEVNULL if input is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env(),
        )
        try:
            stdin = None if input is None else input.encode()
            out, err = await asyncio.wait_for(proc.communicate(stdin), within)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(
                f"peerstash {' '.join(args)} did not answer in {within} s"
            ) from None
        res = CliResult(
            proc.returncode or 0, out.decode(), err.decode(), time.monotonic() - started
        )
        if check and res.code != 0:
            raise AssertionError(f"peerstash {' '.join(args)} exited {res.code}: {res.stderr}")
        return res

    async def cli_json(self, *args: str, within: float = 120) -> Any:
        return json.loads((await self.cli(*args, "--json", within=within)).stdout)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str
    seconds: float


async def pair(client: Node, server: Node, url: str | None = None) -> dict[str, Any]:
    """``client`` pairs with ``server`` by a fresh token (through ``url`` if given)."""
    tok = await server.cli_json("token", "create", "--label", client.instance_id)
    result: dict[str, Any] = await client.cli_json(
        "peer", "add", tok["token"], "--url", url or server.url
    )
    return result


class LinkWatch:
    """A node's ``events --json`` stream, kept open: every link state change, with its time
    (and every operation event, for :meth:`wait_op`)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.history: list[tuple[float, str, str, str | None]] = []
        self.ops: list[tuple[float, dict[str, Any]]] = []
        self.remote: list[dict[str, Any]] = []  # the requests' states, as ``remote`` events
        self._ready = asyncio.Event()
        self._changed = asyncio.Condition()
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LinkWatch:
        self._proc = await asyncio.create_subprocess_exec(
            *PEERSTASH,
            "--data-dir",
            str(self.node.data_dir),
            "events",
            "--json",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            env=self.node.env(),
        )
        self._task = asyncio.create_task(self._read())
        # The stream is subscribed once the node says ready: nothing after this is missed.
        try:
            async with asyncio.timeout(30):
                await self._ready.wait()
        except TimeoutError:
            await self.__aexit__()
            raise AssertionError(
                f"{self.node.instance_id}: events stream not ready in 30 s"
            ) from None
        return self

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for line in self._proc.stdout:
            if not line.strip():
                continue
            ev = json.loads(line)
            if ev.get("type") == "ready":
                self._ready.set()
            if ev.get("type") == "remote":
                async with self._changed:
                    self.remote.append(ev["request"])
                    self._changed.notify_all()
            if ev.get("type") == "operation":
                async with self._changed:
                    self.ops.append((time.monotonic(), ev["op"]))
                    self._changed.notify_all()
            if ev.get("type") == "link":
                async with self._changed:
                    self.history.append(
                        (time.monotonic(), ev["peer"], ev["state"], ev.get("reason"))
                    )
                    self._changed.notify_all()

    def state(self, peer: str) -> str | None:
        for _, who, state, _ in reversed(self.history):
            if who == peer:
                return state
        return None

    async def wait(
        self,
        peer: str,
        state: str,
        within: float,
        reason_has: str | None = None,
        after: float = 0.0,
    ) -> float:
        """Wait until ``peer`` is in ``state`` (a change at or after ``after``); return when."""

        def seen() -> float | None:
            for when, who, st, why in reversed(self.history):
                if who != peer:
                    continue
                if when < after:
                    return None
                if st == state and (reason_has is None or reason_has in (why or "")):
                    return when
                if after == 0.0:
                    return None  # only the latest state counts
            return None

        async with self._changed:
            try:
                async with asyncio.timeout(within):
                    while (when := seen()) is None:
                        await self._changed.wait()
            except TimeoutError:
                raise AssertionError(
                    f"{self.node.instance_id}: {peer} not {state!r} within {within} s; "
                    f"history: {self.history[-8:]}"
                ) from None
        return when

    async def wait_op(self, plan: str, status: str, within: float) -> tuple[float, dict[str, Any]]:
        """Wait for an operation event of ``plan`` in ``status``; return when and the op."""

        def seen() -> tuple[float, dict[str, Any]] | None:
            return next(
                ((t, op) for t, op in self.ops if op["plan"] == plan and op["status"] == status),
                None,
            )

        async with self._changed:
            try:
                async with asyncio.timeout(within):
                    while (found := seen()) is None:
                        await self._changed.wait()
            except TimeoutError:
                raise AssertionError(
                    f"{self.node.instance_id}: no {status} operation of plan {plan} within "
                    f"{within} s; operations: {[op['status'] for _, op in self.ops][-8:]}"
                ) from None
        return found

    async def wait_remote(self, state: str, within: float) -> dict[str, Any]:
        """Wait for a ``remote`` event of a request in ``state``; return the request."""
        async with self._changed:
            async with asyncio.timeout(within):
                while not (found := [r for r in self.remote if r["state"] == state]):
                    await self._changed.wait()
        return found[0]

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


class Forwarder:
    """A TCP forwarder on 127.0.0.1 whose behaviour the test switches.

    ``forward``: pipe both ways to the target. ``silent``: accept and never answer (a frozen
    process behind docker-proxy or ``ssh -L``). ``refuse``: accept and close at once.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "forward"
        self.accepted = 0
        self._accepted_cond = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> Forwarder:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._accepted_cond:
            self.accepted += 1
            self._accepted_cond.notify_all()
        mode = self.mode
        if mode == "refuse":
            writer.close()
            return
        self._open.add(writer)
        try:
            if mode == "silent":
                await writer.wait_closed()  # never read, never write
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._open.add(up_writer)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                self._open.discard(up_writer)
                up_writer.close()
        except (ConnectionError, OSError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    async def wait_accepted(self, more_than: int, within: float) -> int:
        async with self._accepted_cond:
            async with asyncio.timeout(within):
                while self.accepted <= more_than:
                    await self._accepted_cond.wait()
        return self.accepted

    def cut(self) -> None:
        """Drop every connection now (the path breaks); new ones follow ``mode``."""
        for w in list(self._open):
            if w.transport is not None:
                w.transport.abort()
        self._open.clear()

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


class Flood:
    """``count`` hostile connections to a peer port, each reopened when the node closes it.

    ``kind`` is ``"half-request"`` (a request line and one header, never finished) or
    ``"idle-ws"`` (a WebSocket upgrade to ``/v1/sync`` that never sends a handshake frame).
    Connections come from ``sources`` (127.0.0.x addresses) in turn. Each slot reopens at most
    once per ``respawn`` seconds and all slots together at most ``max_attempts`` times, so the
    loop is bounded whatever the node does.
    """

    def __init__(
        self,
        port: int,
        sources: list[str],
        count: int,
        kind: str = "half-request",
        *,
        respawn: float = 1.0,
        max_attempts: int = 40_000,
    ) -> None:
        self.port = port
        self.sources = sources
        self.count = count
        self.kind = kind
        self.respawn = respawn
        self.max_attempts = max_attempts
        self.attempts = 0
        self.held = 0  # connections open right now that the node accepted and has not closed
        self.max_held = 0
        self.refused = 0  # closed by the node before the attack got going
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Flood:
        for i in range(self.count):
            src = self.sources[i % len(self.sources)]
            self._tasks.append(asyncio.create_task(self._slot(src)))
        return self

    async def _slot(self, src: str) -> None:
        while not self._stop.is_set() and self.attempts < self.max_attempts:
            self.attempts += 1
            started = time.monotonic()
            try:
                if self.kind == "idle-ws":
                    await self._idle_ws(src)
                else:
                    await self._half_request(src)
            except (OSError, asyncio.IncompleteReadError):
                self.refused += 1
            rest = self.respawn - (time.monotonic() - started)
            if rest > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), rest)

    def _hold(self, delta: int) -> None:
        self.held += delta
        self.max_held = max(self.max_held, self.held)
        self._changed.set()

    async def _half_request(self, src: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(src, 0))
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            await writer.drain()
            # The kernel completes connections the node never accepts (the listen backlog):
            # one counts as held once it has stayed open for a second.
            eof = asyncio.create_task(_until_closed(reader))
            done, _ = await asyncio.wait({eof}, timeout=1.0)
            if done:
                raise ConnectionResetError("closed by the node at once")
            self._hold(1)
            try:
                stop = asyncio.create_task(self._stop.wait())
                await asyncio.wait({stop, eof}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                eof.cancel()
            finally:
                self._hold(-1)
        finally:
            writer.transport.abort()

    async def _idle_ws(self, src: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(src, 0))
        try:
            writer.write(
                b"GET /v1/sync HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            await writer.drain()
            status = await reader.readline()
            if b" 101 " not in status:
                raise ConnectionRefusedError(status.decode(errors="replace"))
            self._hold(1)
            try:
                stop = asyncio.create_task(self._stop.wait())
                eof = asyncio.create_task(_until_closed(reader))
                await asyncio.wait({stop, eof}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                eof.cancel()
            finally:
                self._hold(-1)
        finally:
            writer.transport.abort()

    async def wait_held(self, at_least: int, within: float) -> None:
        async with asyncio.timeout(within):
            while self.held < at_least:
                self._changed.clear()
                await self._changed.wait()

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _until_closed(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(OSError):
        await reader.read()


class FloodProcess:
    """A :class:`Flood` in a child process (see ``tests/adversarial/flood.py``)."""

    def __init__(
        self, port: int, sources: list[str], count: int, kind: str, respawn: float = 1.0
    ) -> None:
        self.args = [str(port), kind, str(count), str(respawn), *sources]
        self.held = 0
        self.stats: dict[str, int] = {}
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> FloodProcess:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.adversarial.flood",
            *self.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO_ROOT,
        )
        return self

    async def wait_held(self, at_least: int, within: float) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async with asyncio.timeout(within):
            while self.held < at_least:
                line = await self._proc.stdout.readline()
                if not line:
                    raise AssertionError("the flood process ended early")
                self.held = json.loads(line).get("held", self.held)

    async def finish(self) -> dict[str, int]:
        """Stop the flood; its totals (attempts, max_held, refused)."""
        assert self._proc is not None and self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._proc.stdin.close()
        async with asyncio.timeout(60):
            async for line in self._proc.stdout:
                data = json.loads(line)
                if "attempts" in data:
                    self.stats = data
            await self._proc.wait()
        return self.stats

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
