"""``peerstash --no-gui``: the node in the foreground on a plain asyncio loop.

SIGINT and SIGTERM stop it cleanly: running restic processes get SIGINT (so they remove their
locks), and no operation is left ``running``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from peerstash.peer.node import Node, NodeError, NodeOptions
from peerstash.peer.paths import resolve_data_dir


def node_options(args: argparse.Namespace) -> NodeOptions:
    return NodeOptions(instance_id=args.instance_id, db_url=args.db_url, restic_path=args.restic)


async def serve(data_dir: Path, options: NodeOptions, stop: asyncio.Event) -> None:
    node = Node(data_dir, options)
    await node.start()
    try:
        print(
            f"peerstash: node {node.instance_id} running for {data_dir} "
            f"(admin socket {node.socket_path}); Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
        print("peerstash: stopping...", file=sys.stderr, flush=True)
    finally:
        await node.stop()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    data_dir = resolve_data_dir(args.data_dir)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(data_dir, node_options(args), stop)

    try:
        asyncio.run(main())
    except NodeError as exc:
        print(f"peerstash: {exc}", file=sys.stderr)
        return 1
    return 0
