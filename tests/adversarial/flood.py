"""``python -m tests.adversarial.flood PORT KIND COUNT SOURCES...``: a flood in its own process.

Run apart from the test so that the test's own event loop, which times the node's admin
socket, is not the one busy with a thousand hostile connections. Prints one JSON line each
time the number of held connections reaches another 50, and a final line with the totals when
its standard input closes.
"""

from __future__ import annotations

import asyncio
import json
import sys

from tests.adversarial.netnodes import Flood


async def main(port: int, kind: str, count: int, sources: list[str], respawn: float) -> None:
    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.Event()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch_stdin() -> None:
        await reader.read()
        stdin_closed.set()

    watcher = asyncio.create_task(watch_stdin())
    async with Flood(port, sources, count, kind, respawn=respawn) as flood:
        reported = 0
        while not stdin_closed.is_set():
            flood._changed.clear()
            if flood.held // 50 > reported:
                reported = flood.held // 50
                print(json.dumps({"held": flood.held}), flush=True)
            changed = asyncio.create_task(flood._changed.wait())
            closed = asyncio.create_task(stdin_closed.wait())
            await asyncio.wait({changed, closed}, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            closed.cancel()
        stats = {"attempts": flood.attempts, "max_held": flood.max_held, "refused": flood.refused}
    watcher.cancel()
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    port, kind, count, respawn, *sources = sys.argv[1:]
    asyncio.run(main(int(port), kind, int(count), sources, float(respawn)))
