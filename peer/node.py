"""One Peerstash node: the engine plus the servers around it, for one data directory.

The headless daemon and the tray app both build a Node; they differ only in which event loop
runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import resource
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from aiohttp import web

from peerstash.core import __version__, installed_version
from peerstash.core.engine import DEFAULT_RETRY_LOCK, Engine, check_name
from peerstash.core.events import EventBus
from peerstash.core.records import HealthRecord, PlanStatusRecord, StatusRecord
from peerstash.core.runner import DEFAULT_STALL_AFTER
from peerstash.core.secrets import SecretStore, load_or_create_key
from peerstash.core.store import Store, StoreError
from peerstash.peer import logflood
from peerstash.peer.health import node_health
from peerstash.peer.links.guard import GuardedTCPSite, PeerPortGuard
from peerstash.peer.links.link import PeerManager, Timings
from peerstash.peer.links.protocol import MAX_DISPLAY_NAME, check_display_name
from peerstash.peer.links.rpc import RpcService
from peerstash.peer.paths import admin_socket_path, ensure_own_private_dir, ensure_private_dir
from peerstash.peer.server import make_peer_app, parse_listen
from peerstash.peer.services.fleet import fleet
from peerstash.peer.services.opsync import SyncService
from peerstash.peer.services.remote_commands import DEFAULT_TTL, RemoteService
from peerstash.peer.services.remote_config import RemoteConfig
from peerstash.peer.services.remote_logs import RemoteLogs
from peerstash.peer.services.shares import RepoShareService
from peerstash.peer.trust.identity import Identity

if TYPE_CHECKING:
    from peerstash.peer.links.discovery import Discovery

log = logging.getLogger(__name__)


class NodeError(Exception):
    """The node cannot start; worded for a person."""


class NodeAlreadyRunning(NodeError):
    def __init__(self, data_dir: Path, pid: int | None) -> None:
        who = f"process {pid}" if pid else "another process"
        super().__init__(
            f"a Peerstash node is already running for {data_dir} ({who}); "
            "talk to it with `peerstash status`, or stop it first"
        )
        self.pid = pid


@dataclass
class NodeOptions:
    instance_id: str | None = None
    db_url: str | None = None
    restic_path: str | None = None
    max_parallel: int = 2
    progress_interval: float = 1.0
    catch_up_grace: float = 60.0
    cancel_grace: float = 10.0
    schedule: bool = True
    #: Where the peer port listens; "" means the ``listen`` setting, else DEFAULT_LISTEN; port 0
    #: picks a free port (tests); None disables the peer port.
    listen: str | None = ""
    link_timings: Timings | None = None
    #: LAN discovery (zeroconf): on by default; ``discovery_interfaces`` limits it (e.g.
    #: ["127.0.0.1"] in tests, or an interface name like "eth0").
    discovery: bool = True
    discovery_interfaces: list[str] | None = None
    #: Only for tests of version negotiation: speak another peer protocol version.
    protocol_version: int | None = None
    #: Seconds a remote request (run, restore) waits for its offline peer before it is given
    #: up as ``timed out`` (``$PEERSTASH_REMOTE_TTL`` for the daemon).
    remote_ttl: float = DEFAULT_TTL


DEFAULT_LISTEN = "0.0.0.0:9797"

#: Seconds an idle keep-alive connection on the peer port stays open (aiohttp's default: an hour).
PEER_KEEPALIVE = 5.0

#: The open-file limit asked for when the hard limit is unlimited.
WANTED_NOFILE = 65536


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one; return the ``(soft, hard)`` in force.

    Distributions start services with a soft limit of 1,024 descriptors, which a few hundred
    peer connections and a running backup can exhaust; the hard limit (the shipped units set
    ``LimitNOFILE=65536``) is what this process may have, so it takes it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = WANTED_NOFILE if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, want, exc)
    return soft, hard


def hostname() -> str:
    """This machine's short host name, as the default display name (``peerstash`` if none)."""
    return socket.gethostname().split(".")[0] or "peerstash"


def default_instance_id(key_id: str | None = None) -> str:
    """The instance id of a new data directory: the host name, then the identity key's first
    characters (``raspberrypi-k3xq``).

    The key part is why two machines with the same host name (every Raspberry Pi is called
    ``raspberrypi``), or two nodes on one machine, can pair without anyone choosing an id: the
    id is the origin of the node's history and the peer's key on every other node, so it must
    differ between machines. People see the display name (the host name) instead.
    """
    # ASCII only: an instance id is a restic --host and a snapshot tag (see check_name).
    clean = "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "-" for c in hostname())
    base = clean.strip("-") or "peerstash"
    if not key_id:
        return base
    return f"{base[:90]}-{key_id.replace('-', '')[:4]}"


class NodeNotRunning(NodeError):
    """The node's services were asked for before :meth:`Node.start` or after
    :meth:`Node.stop`."""


@dataclass(frozen=True)
class PeerPort:
    """The peer port, listening: what peers connect to."""

    #: Limits what unauthenticated clients hold on it (see ``guard.py``).
    guard: PeerPortGuard
    #: The bound port (port 0 resolved).
    port: int
    #: The HOST:PORT it is bound to, as ``status`` reports it.
    address: str
    #: The URL this node gives out for it (the host name when bound to every interface).
    url: str


@dataclass(frozen=True)
class NodeServices:
    """The parts of a running node, each started and each stopped by :class:`Node` (none is
    ``None`` while the node runs; only what is switched off by option or setting is)."""

    store: Store
    identity: Identity
    engine: Engine
    peers: PeerManager
    rpc: RpcService
    sync: SyncService
    repos: RepoShareService
    #: Operation logs, ours or fetched from the peer that owns the operation.
    logs: RemoteLogs
    remote: RemoteService
    #: None when the node runs without a peer port (``listen=None``).
    peer_port: PeerPort | None
    #: None when LAN discovery is off (option, setting, or no usable interface).
    discovery: Discovery | None


class Node:
    """One data directory's node: :meth:`start` builds its parts in order and pushes each
    one's teardown onto an :class:`contextlib.AsyncExitStack` as soon as it exists, so a
    start that fails half-way tears down exactly what was started, in reverse, and
    :meth:`stop` is closing that stack."""

    def __init__(self, data_dir: Path, options: NodeOptions | None = None) -> None:
        self.data_dir = data_dir
        self.options = options or NodeOptions()
        self.bus = EventBus()
        self.instance_id = ""
        #: What people read for this node: the ``display_name`` setting, else the instance id,
        #: else (for an id made by default_instance_id) the host name. Peers learn it over the
        #: link. The instance id never changes; this may.
        self.name = ""
        self.socket_path = admin_socket_path(data_dir)
        self._services: NodeServices | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._open_file_limit = 1024

    # -- the running parts -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the services are up (false before start, during teardown and after stop)."""
        return self._services is not None

    @property
    def services(self) -> NodeServices:
        if self._services is None:
            raise NodeNotRunning(f"the node for {self.data_dir} is not running")
        return self._services

    # Thin views of the services, for the admin API, tests and benchmarks.
    @property
    def store(self) -> Store:
        return self.services.store

    @property
    def engine(self) -> Engine:
        return self.services.engine

    @property
    def identity(self) -> Identity:
        return self.services.identity

    @property
    def peers(self) -> PeerManager:
        return self.services.peers

    @property
    def rpc(self) -> RpcService:
        return self.services.rpc

    @property
    def sync(self) -> SyncService:
        return self.services.sync

    @property
    def repos(self) -> RepoShareService:
        return self.services.repos

    @property
    def logs(self) -> RemoteLogs:
        return self.services.logs

    @property
    def remote(self) -> RemoteService:
        return self.services.remote

    @property
    def discovery(self) -> Discovery | None:
        return self.services.discovery

    @property
    def peer_url(self) -> str | None:
        """The URL peers reach this node at; None when the peer port is off."""
        port = self.services.peer_port
        return port.url if port else None

    @property
    def listen_address(self) -> str | None:
        """The HOST:PORT the peer port is bound to (port 0 resolved); None when it is off."""
        port = self.services.peer_port
        return port.address if port else None

    # -- single instance ---------------------------------------------------------------------

    def _acquire_lock(self) -> IO[str]:
        path = self.data_dir / "node.lock"
        fh = open(path, "a+")
        os.chmod(path, 0o600)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            text = fh.read().strip()
            fh.close()
            raise NodeAlreadyRunning(self.data_dir, int(text) if text.isdigit() else None) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        return fh

    @staticmethod
    def _release_lock(fh: IO[str]) -> None:
        with contextlib.suppress(OSError):
            fh.truncate(0)
        fh.close()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every part, or none: a failure tears down what was started, in reverse."""
        if self._stack is not None:
            raise NodeError(f"the node for {self.data_dir} is already started")
        ensure_private_dir(self.data_dir)
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self._release_lock, self._acquire_lock())
            # A flood of connections must cost counted log lines, not gigabytes of them.
            logflood.install()
            soft, hard = raise_open_file_limit()
            self._open_file_limit = WANTED_NOFILE if soft == resource.RLIM_INFINITY else soft
            log.debug("open-file limit: %s (hard %s)", soft, hard)
            self._services = await self._start_services(stack)
            # Torn down before the services: the admin API (stopped first) is the one user of
            # them that a request can reach, and nothing may find a half-stopped service.
            stack.callback(self._forget_services)
            await self._start_admin(stack)
            log.info("node %s ready (data dir %s)", self.instance_id, self.data_dir)
            self._stack = stack.pop_all()

    def _forget_services(self) -> None:
        self._services = None

    async def stop(self) -> None:
        """Stop cleanly, in the reverse order of start: no operation is left ``running``
        afterwards. Stopping a node that is not running does nothing."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def _start_services(self, stack: contextlib.AsyncExitStack) -> NodeServices:
        """Build the parts in order, each one's stop pushed onto ``stack`` before it starts
        (every ``stop`` here copes with a start that failed half-way)."""
        opts = self.options
        try:
            store = await Store.open(opts.db_url, data_dir=self.data_dir)
        except StoreError as exc:
            # e.g. a failed upgrade: one worded line (what failed, where the copy is) for the
            # daemon and the tray; the traceback is in the log at debug level.
            raise NodeError(str(exc)) from None
        stack.push_async_callback(store.close)
        # The identity first: a new data directory's default instance id includes its key id.
        identity = Identity.load_or_create(self.data_dir / "identity.key")
        instance_id = await store.get_setting("instance_id")
        if instance_id is None:
            instance_id = opts.instance_id or default_instance_id(identity.key_id)
            check_name("instance", instance_id)
            await store.set_setting("instance_id", instance_id)
        elif opts.instance_id and opts.instance_id != instance_id:
            raise NodeError(
                f"this data directory belongs to instance {instance_id!r}, not "
                f"{opts.instance_id!r}; use another --data-dir for another instance"
            )
        self.instance_id = instance_id
        store.local_origin = instance_id
        key = load_or_create_key(self.data_dir / "secret.key")
        restic_path = opts.restic_path or await store.get_setting("restic_path")
        retry_lock = await store.get_setting("restic_retry_lock")
        stall_after = await store.get_setting("restic_stall_seconds")
        engine = Engine(
            self.data_dir,
            store,
            SecretStore(store, key),
            self.bus,
            instance_id=instance_id,
            restic_path=restic_path,
            max_parallel=opts.max_parallel,
            progress_interval=opts.progress_interval,
            catch_up_grace=opts.catch_up_grace,
            cancel_grace=opts.cancel_grace,
            retry_lock=DEFAULT_RETRY_LOCK if retry_lock is None else float(retry_lock),
            stall_after=DEFAULT_STALL_AFTER if stall_after is None else float(stall_after),
        )
        stack.push_async_callback(engine.stop)
        await engine.start(schedule=opts.schedule)
        self.name = await self._display_name(store, identity)

        # The links and what runs over them. Each service takes its messages, link-ups and
        # methods from the PeerManager (or the RpcService) when it is built, and must be
        # started before the links come up (peers.start), so that it sees every link-up.
        peers = PeerManager(
            store,
            self.bus,
            identity,
            instance_id,
            name=self.name,
            timings=opts.link_timings,
            **({"protocol_version": opts.protocol_version} if opts.protocol_version else {}),
        )
        rpc = RpcService(peers)
        stack.push_async_callback(rpc.stop)
        sync = SyncService(store, self.bus, peers, instance_id)
        RemoteConfig(engine, rpc)  # answers config calls: its methods live on rpc from here
        logs = RemoteLogs(store, rpc, instance_id)
        remote = RemoteService(
            store, self.bus, engine, peers, rpc, instance_id, ttl=opts.remote_ttl
        )
        repos = RepoShareService(engine, self.bus, peers, instance_id)
        stack.push_async_callback(sync.stop)
        await sync.start()
        stack.push_async_callback(remote.stop)
        await remote.start()
        stack.push_async_callback(repos.stop)
        await repos.start()
        peer_port = await self._start_peer_server(stack, peers, store)
        stack.push_async_callback(peers.stop)
        await peers.start()
        # Remote requests in flight end before the links do (so a call cut by our own
        # shutdown is not recorded as "peer offline"): remote stops again here, first.
        # Stopping it twice is harmless.
        stack.push_async_callback(remote.stop)
        discovery = await self._start_discovery(stack, peers, identity, peer_port, store)
        return NodeServices(
            store=store,
            identity=identity,
            engine=engine,
            peers=peers,
            rpc=rpc,
            sync=sync,
            repos=repos,
            logs=logs,
            remote=remote,
            peer_port=peer_port,
            discovery=discovery,
        )

    async def _start_peer_server(
        self, stack: contextlib.AsyncExitStack, peers: PeerManager, store: Store
    ) -> PeerPort | None:
        if self.options.listen is None:
            return None
        listen = self.options.listen or await store.get_setting("listen", None) or DEFAULT_LISTEN
        try:
            host, port = parse_listen(listen)
        except ValueError as exc:
            raise NodeError(str(exc)) from None
        # A short shutdown timeout: by the time the runner stops, PeerManager.stop has ended
        # every link, and aiohttp would otherwise wait its full 60 s for a connection a peer
        # opened in that very moment (it ignores the request once shutting down).
        # keepalive_timeout: an idle keep-alive connection costs a descriptor; 5 s, not an hour.
        runner = web.AppRunner(
            make_peer_app(peers),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=2.0,
            keepalive_timeout=PEER_KEEPALIVE,
        )
        stack.push_async_callback(runner.cleanup)
        await runner.setup()
        # Strangers get at most a quarter of our descriptors: the admin socket, the store and
        # restic must find one free even when the cap is full.
        cap = min(256, max(8, self._open_file_limit // 4))
        guard = PeerPortGuard(max_unauthenticated=cap, reserve=min(64, cap // 4))
        site = GuardedTCPSite(runner, host, port, guard, backlog=min(128, max(16, cap // 2)))
        try:
            await site.start()
        except OSError as exc:
            raise NodeError(
                f"cannot listen for peers on {host}:{port}: {exc.strerror or exc}; "
                "choose another address with --listen HOST:PORT"
            ) from None
        bound_port = int(runner.addresses[0][1] if runner.addresses else port)
        shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        return PeerPort(
            guard=guard,
            port=bound_port,
            address=f"{'[' + host + ']' if ':' in host else host}:{bound_port}",
            url=f"http://{'[' + shown + ']' if ':' in shown else shown}:{bound_port}",
        )

    async def _start_discovery(
        self,
        stack: contextlib.AsyncExitStack,
        peers: PeerManager,
        identity: Identity,
        peer_port: PeerPort | None,
        store: Store,
    ) -> Discovery | None:
        """Announce ourselves and watch the LAN, once the peer port really listens."""
        enabled = self.options.discovery and await store.get_setting("discovery", True)
        if not enabled or peer_port is None:
            return None
        from peerstash.peer.links.discovery import Announcement, Discovery

        interfaces = self.options.discovery_interfaces or await store.get_setting(
            "discovery_interfaces", None
        )
        discovery = Discovery(
            interfaces=interfaces,
            on_change=peers.on_discovered,
            self_instance_id=self.instance_id,
            self_key_id=identity.key_id,
        )
        try:
            await discovery.start()
            await discovery.announce(
                Announcement(
                    instance_id=self.instance_id,
                    key_id=identity.key_id,
                    port=peer_port.port,
                    display_name=await store.get_setting("display_name", None) or self.instance_id,
                )
            )
        except OSError as exc:
            # No usable network interface is not a reason to refuse to back up.
            log.warning("LAN discovery is off: %s", exc)
            await discovery.close()
            return None
        except BaseException:
            await discovery.close()
            raise
        # Chicken and egg: discovery reports to the PeerManager, and pairing by name asks
        # discovery; so the manager learns of it once both exist, and forgets it first.
        peers.discovery = discovery
        stack.push_async_callback(discovery.close)  # goodbye packets: peers drop us
        stack.callback(setattr, peers, "discovery", None)
        return discovery

    async def _display_name(self, store: Store, identity: Identity) -> str:
        stored = await store.get_setting("display_name", None)
        if isinstance(stored, str):
            try:
                return check_display_name(stored)
            except ValueError:
                log.warning("the display_name setting is not usable; using the host name")
        # An id someone chose is also the name they chose; an id made by default_instance_id
        # (host name + start of our key id) shows as the bare host name, as it is now.
        made = self.instance_id.endswith("-" + identity.key_id.replace("-", "")[:4])
        try:
            return check_display_name(hostname() if made else self.instance_id)
        except ValueError:
            return self.instance_id[:MAX_DISPLAY_NAME]

    async def rename(self, name: str | None) -> str:
        """Go by ``name`` (``None``: the default again); peers learn it at once.

        The instance id stays: it is the origin of this node's history everywhere.
        """
        if name is not None:
            check_display_name(name)
        services = self.services
        await services.store.set_setting("display_name", name)
        self.name = await self._display_name(services.store, services.identity)
        await services.peers.rename(self.name)
        log.info("this node is now called %r", self.name)
        return self.name

    async def _start_admin(self, stack: contextlib.AsyncExitStack) -> None:
        from peerstash.peer.api.server import make_admin_app

        sock = self.socket_path
        if sock.parent != self.data_dir:
            # A shared place such as /tmp: never adopt (or chmod) a directory someone else made.
            try:
                ensure_own_private_dir(sock.parent)
            except PermissionError as exc:
                raise NodeError(f"cannot put the admin socket in {sock.parent}: {exc}") from None
        # We hold the data dir lock, so a socket file left here is from a dead node. Anything
        # else in its place (a directory, a file we may not remove) is the person's to look at:
        # one line that names it, not a traceback.
        try:
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
        except OSError as exc:
            raise NodeError(
                f"cannot open the admin socket {sock}: {exc.strerror or exc} "
                "(something else is in its place; move it away)"
            ) from None
        # handler_cancellation: a client that goes away (CLI Ctrl-C, the tray quitting) ends its
        # streaming request at once instead of at the next keep-alive write.
        runner = web.AppRunner(
            make_admin_app(self), access_log=None, handle_signals=False, handler_cancellation=True
        )
        stack.callback(self._unlink_socket)
        stack.push_async_callback(runner.cleanup)
        await runner.setup()
        site = web.UnixSite(runner, str(sock))
        old = os.umask(0o177)
        try:
            await site.start()
        except OSError as exc:
            raise NodeError(f"cannot open the admin socket {sock}: {exc.strerror or exc}") from None
        finally:
            os.umask(old)
        os.chmod(sock, 0o600)

    def _unlink_socket(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def status(self) -> StatusRecord:
        """What ``/v1/status`` answers: this running node, its health verdict on the whole
        fleet, its plans with their last run, and each peer with its last backups."""
        services = self.services
        engine, port = services.engine, services.peer_port
        latest = await engine.store.latest_per_plan()
        plans = [
            PlanStatusRecord.of(
                plan, plan.id in engine.stale_plans, latest.get((engine.instance_id, plan.id))
            )
            for plan in await engine.list_plans()
        ]
        return StatusRecord(
            instance_id=self.instance_id,
            name=self.name,
            version=__version__,
            data_dir=str(self.data_dir),
            pid=os.getpid(),
            admin_socket=str(self.socket_path),
            paused=engine.scheduler.paused,
            key_id=services.identity.key_id,
            peer_url=port.url if port else None,
            listen=port.address if port else None,
            discovery=services.discovery is not None,
            shared_skipped=dict(engine.skipped_shares),
            shared_changes=dict(engine.share_changes),
            # Read off the loop: it asks the installed package's metadata on disk.
            installed_version=await asyncio.to_thread(installed_version),
            health=HealthRecord.of(await node_health(engine)),
            plans=plans,
            peers=await fleet(engine.store, engine.instance_id, self.name),
        )
