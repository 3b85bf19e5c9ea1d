"""Peer link costs: handshakes per second, and a hub holding many idle links.

Usage: .venv/bin/python benchmarks/links.py [--handshakes 200] [--links 1000] [--idle 30]

1. Handshakes: a real ``peerstash --no-gui`` hub on 127.0.0.1; this process dials it again and
   again as a paired peer (WebSocket + hybrid handshake + Hello/Welcome, then close). The
   baseline, measured in the same run, is a bare WebSocket connect/close to the same hub, so the
   ratio is what our handshake adds.
2. Idle links: ``--links`` peers (each its own identity, paired through one multi-use token)
   hold links to the hub with the default timings (heartbeat 15 s). After they are all online,
   the hub's CPU over ``--idle`` seconds and its RSS are read from /proc. The same is measured
   with 10 links (the design's target for an ordinary node).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
from nodeproc import PEERSTASH, start_node

from peerstash.peer.links import channel as ch
from peerstash.peer.links import protocol as proto
from peerstash.peer.trust.identity import Identity
from peerstash.peer.trust.tokens import parse_token


def cli(data: Path, *args: str) -> dict:
    out = subprocess.run(
        [*PEERSTASH, "--data-dir", str(data), *args, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def start_hub(data: Path) -> subprocess.Popen[str]:
    return start_node(data, "hub")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Client:
    """A minimal peer: pairs once, then holds a link and answers with heartbeats."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.identity = Identity.generate()
        self.hub_key: bytes | None = None

    async def connect(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        secret: bytes | None = None,
        key_id: str | None = None,
    ) -> tuple[aiohttp.ClientWebSocketResponse, ch.SecureChannel]:
        ws = await session.ws_connect(url + "/v1/sync", max_msg_size=ch.WS_MAX_MSG_SIZE)
        send, recv = ch.websocket_transport(ws)
        chan = await ch.initiate(
            self.identity, send, recv, expected_key_id=key_id, expected_public_key=self.hub_key
        )
        await chan.send_msg(proto.Hello(instance_id=self.name, pairing_secret=secret))
        reply = await chan.recv_msg()
        if not isinstance(reply, proto.Welcome):
            raise RuntimeError(f"{self.name}: refused: {reply}")
        self.hub_key = chan.peer_public_key
        return ws, chan

    async def hold(
        self,
        session: aiohttp.ClientSession,
        url: str,
        online: asyncio.Event,
        counter: list[int],
        total: int,
    ) -> None:
        ws, chan = await self.connect(session, url)
        counter[0] += 1
        if counter[0] == total:
            online.set()

        async def beat() -> None:
            while True:
                await asyncio.sleep(15)
                await chan.send_msg(proto.Heartbeat())

        hb = asyncio.create_task(beat())
        try:
            while True:
                await chan.recv_msg()
        except (ch.ChannelError, proto.ProtocolError):
            pass
        finally:
            hb.cancel()
            await ws.close()


async def pair_all(clients: list[Client], url: str, token: str) -> None:
    parsed = parse_token(token)
    async with aiohttp.ClientSession() as session:
        for c in clients:
            ws, chan = await c.connect(session, url, secret=parsed.secret, key_id=parsed.key_id)
            await chan.send_msg(proto.Close(reason="paired"))
            await ws.close()


async def handshake_rate(url: str, client: Client, n: int) -> tuple[float, float]:
    async with aiohttp.ClientSession() as session:
        t0 = time.perf_counter()
        for _ in range(n):
            ws = await session.ws_connect(url + "/v1/sync", max_msg_size=ch.WS_MAX_MSG_SIZE)
            await ws.close()
        bare = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(n):
            ws, chan = await client.connect(session, url)
            await chan.send_msg(proto.Close(reason="bench"))
            await ws.close()
        ours = n / (time.perf_counter() - t0)
    return bare, ours


async def idle_links(
    hub: subprocess.Popen[str], url: str, clients: list[Client], idle: float
) -> tuple[float, float, float]:
    online = asyncio.Event()
    counter = [0]
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        t0 = time.perf_counter()
        tasks = [
            asyncio.create_task(c.hold(session, url, online, counter, len(clients)))
            for c in clients
        ]
        await asyncio.wait_for(online.wait(), 600)
        connect_time = time.perf_counter() - t0
        await asyncio.sleep(3)  # let the hub finish recording the links before measuring rest
        c0, w0 = cpu_seconds(hub.pid), time.perf_counter()
        await asyncio.sleep(idle)  # the measurement window itself
        cpu = (cpu_seconds(hub.pid) - c0) / (time.perf_counter() - w0) * 100
        rss = rss_mb(hub.pid)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return connect_time, cpu, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--handshakes", type=int, default=200)
    ap.add_argument("--links", type=int, default=1000)
    ap.add_argument("--idle", type=float, default=30)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.links + 256)), hard))
    with tempfile.TemporaryDirectory(prefix="ps-links-") as tmp:
        for count in (10, args.links):
            data = Path(tmp) / f"hub{count}"
            hub = start_hub(data)
            try:
                url = cli(data, "status")["peer_url"]
                token = cli(data, "token", "create", "--max-uses", str(count))["token"]
                clients = [Client(f"peer{i}") for i in range(count)]
                asyncio.run(pair_all(clients, url, token))
                if count == 10:
                    bare, ours = asyncio.run(handshake_rate(url, clients[0], args.handshakes))
                    print(
                        f"handshakes: {ours:.0f}/s (bare WebSocket connect {bare:.0f}/s; ours take {bare / ours:.1f}x as long)"
                    )
                base_rss = rss_mb(hub.pid)
                connect_time, cpu, rss = asyncio.run(idle_links(hub, url, clients, args.idle))
                print(
                    f"{count} idle links: all online in {connect_time:.1f}s; hub CPU at rest {cpu:.2f}% of one core; "
                    f"hub RSS {rss:.0f} MB (before links {base_rss:.0f} MB)"
                )
            finally:
                hub.send_signal(2)
                hub.wait(60)


if __name__ == "__main__":
    main()
