"""``peerstash --no-gui``: the node in the foreground on a plain asyncio loop.

SIGINT and SIGTERM stop it cleanly: running restic processes get SIGINT (so they remove their
locks), and no operation is left ``running``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from peerstash.core.logformat import use_printable_log_lines
from peerstash.peer.links.link import Timings
from peerstash.peer.node import Node, NodeError, NodeOptions
from peerstash.peer.paths import resolve_data_dir
from peerstash.peer.services.remote_commands import DEFAULT_TTL


def node_options(args: argparse.Namespace) -> NodeOptions:
    timings_text = os.environ.get("PEERSTASH_LINK_TIMINGS", "")
    try:
        timings = Timings.parse(timings_text) if timings_text else None
    except ValueError as exc:
        raise NodeError(f"PEERSTASH_LINK_TIMINGS: {exc}") from None
    ttl_text = os.environ.get("PEERSTASH_REMOTE_TTL", "")
    try:
        remote_ttl = float(ttl_text) if ttl_text else DEFAULT_TTL
    except ValueError:
        raise NodeError(f"PEERSTASH_REMOTE_TTL is seconds, not {ttl_text!r}") from None
    if remote_ttl <= 0:
        raise NodeError("PEERSTASH_REMOTE_TTL must be more than 0 seconds")
    return NodeOptions(
        instance_id=args.instance_id,
        db_url=args.db_url,
        restic_path=args.restic,
        listen=args.listen or "",
        link_timings=timings,
        discovery=not args.no_discovery,
        discovery_interfaces=args.discovery_interface,
        remote_ttl=remote_ttl,
    )


async def serve(data_dir: Path, options: NodeOptions, stop: asyncio.Event) -> None:
    node = Node(data_dir, options)
    await node.start()
    try:
        print(
            f"peerstash: node {node.instance_id} running for {data_dir} "
            f"(admin socket {node.socket_path}, peers at {node.peer_url or 'disabled'}); "
            "Ctrl-C stops it",
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
    use_printable_log_lines()
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    data_dir = resolve_data_dir(args.data_dir)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(data_dir, options, stop)

    try:
        options = node_options(args)
        asyncio.run(main())
    except NodeError as exc:
        print(f"peerstash: {exc}", file=sys.stderr)
        return 1
    return 0
