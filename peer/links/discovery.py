"""LAN discovery with mDNS/DNS-SD (python-zeroconf): announce this node, list the others.

Discovery only *proposes addresses*. Nothing learned here is trusted: a peer is who its key says
it is, and that key comes from a pairing token or a pinned key, checked by the channel
handshake. So this module never decides anything about trust; it reports what the LAN claims,
including claims that contradict each other (:attr:`Discovery.duplicates`), and lets the node
judge.

What we advertise is the service type :data:`SERVICE_TYPE` with exactly three TXT keys, all
public (they are broadcast to everyone on the LAN, unauthenticated):

``id``
    the instance id (human readable, e.g. the hostname; see
    :func:`peerstash.peer.trust.tokens.validate_instance_id`);
``v``
    the protocol version (:data:`peerstash.peer.links.protocol.PROTOCOL_VERSION`);
``fp``
    the key id (:func:`peerstash.peer.trust.identity.key_id`), so a node can tell at a glance
    whether an announcement matches a pinned key before it even connects.

Never a token, a secret, or anything derived from one.

The service *instance name* is the node's display name, made unique on the LAN by mDNS probing
(``name``, ``name (2)``, ``name (3)``...). It is only a label for people: identity always comes
from the TXT ``id`` + ``fp`` pair. The SRV target host name is a random per-process label
(``ps-<random>.local.``) so that two nodes on one host never clash and the machine's own host
name is not broadcast a second time.

Design choices worth knowing before wiring this into the node:

* **Incompatible versions are listed, not dropped.** :func:`parse_txt` accepts any well-formed
  version number (1..65535); a peer whose version differs from ours is listed with
  :attr:`DiscoveredPeer.compatible` ``False``, so the UI can say "incompatible version" instead
  of showing nothing. Malformed versions (``"x"``, ``"0"``, ``"-1"``, ``"1.0"``) are ignored.
* **One entry per identity.** Peers are keyed by ``(instance_id, key_id)``, not by service
  name. The same node seen again under another name or via another interface (mDNS reflectors,
  a node that re-registered as ``name (2)`` while its old records were still cached) is one
  entry whose addresses are merged, freshest first.
* **Self is ignored** when both instance id and key id match ours (from the constructor or from
  the current :class:`Announcement`). The same instance id with *another* key is somebody else
  claiming our name: it is listed and recorded in :attr:`Discovery.duplicates`.
* **Hostile input is bounded and quiet.** TXT records are size-capped and parsed by a pure
  function that never raises; every ignored service name gets at most one DEBUG log line; the
  number of services tracked at once is capped, so a flood of announcements cannot grow memory
  without bound.
* **No threads, no blocking calls.** Everything runs on the caller's event loop: the
  synchronous ``ServiceInfo.request()`` is never used, only ``AsyncServiceInfo.async_request``,
  which answers from the cache at once when the announcement carried all records (the usual
  case) and asks the network otherwise.
* **IPv4 only** for now (``IPVersion.V4Only``): the peer server listens on IPv4, and IPv6
  link-local addresses would need scope ids all the way down to the link layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import ifaddr
from zeroconf import (
    BadTypeInNameException,
    DNSOutgoing,
    DNSQuestion,
    InterfaceChoice,
    IPVersion,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf
from zeroconf.const import _CLASS_IN, _FLAGS_AA, _FLAGS_QR_QUERY, _TYPE_PTR

from peerstash.peer.links.protocol import PROTOCOL_VERSION
from peerstash.peer.trust.identity import normalize_key_id
from peerstash.peer.trust.tokens import TokenFormatError, validate_instance_id

__all__ = [
    "MAX_TXT_RECORD_BYTES",
    "MAX_TXT_VALUE_BYTES",
    "SERVICE_TYPE",
    "Announcement",
    "DiscoveredPeer",
    "Discovery",
    "explain_txt",
    "instance_label",
    "parse_txt",
]

log = logging.getLogger(__name__)

SERVICE_TYPE = "_peerstash._tcp.local."

#: Largest value we accept for any one TXT key. A TXT string is at most 255 bytes including the
#: key and "=", and our longest legitimate value (an instance id of up to 100 characters, which
#: a hostname in a non-Latin script can make ~2-3 bytes per character) stays well under this.
MAX_TXT_VALUE_BYTES = 200
#: Largest whole TXT record we look at (sum of all strings plus their length bytes). Ours is
#: under 250 bytes; anything much bigger is not a Peerstash node, or is one trying to make us
#: do work.
MAX_TXT_RECORD_BYTES = 600
#: At most this many TXT strings; newer versions may add keys, but not dozens.
MAX_TXT_ENTRIES = 16

_MAX_VERSION_DIGITS = 5  # "65535"
_MAX_VERSION = 65535

#: How many service names we track at once (resolved or being resolved). A real LAN has a
#: handful; the cap only matters when someone floods the network with announcements.
MAX_TRACKED_SERVICES = 256
#: Bound for the diagnostic maps (:attr:`Discovery.ignored`, names already logged).
_MAX_DIAGNOSTICS = 1024
#: Bound for the keys remembered per instance id in :attr:`Discovery.duplicates`: past a
#: couple the conflict is already flagged, and a flood of fresh keys must not grow memory.
_MAX_KEYS_PER_INSTANCE = 16

#: How long one resolution may wait for SRV/TXT/A answers. Usually it needs no wait at all:
#: the announcement that made the browser fire carried every record and the cache answers.
_RESOLVE_TIMEOUT_MS = 3000

#: A DNS label is at most 63 bytes; the instance name is one label.
_MAX_LABEL_BYTES = 63
#: How many "name (n)" variants we try before giving up on a unique instance name.
_MAX_NAME_ATTEMPTS = 20
#: Name probing (RFC 6762 section 8.1): wait a random 150-250 ms, then send 3 probes 250 ms
#: apart, and claim the name if nobody answered 250 ms after the last one.
_PROBE_DELAY_MS = (150, 250)
_PROBE_COUNT = 3
_PROBE_INTERVAL_MS = 250

_TXT_ID = b"id"
_TXT_VERSION = b"v"
_TXT_KEY_ID = b"fp"
_TXT_KEYS = (_TXT_ID, _TXT_VERSION, _TXT_KEY_ID)

# -- what goes on the wire -----------------------------------------------------------------------


@dataclass(frozen=True)
class Announcement:
    """What this node advertises. Nothing here is secret: it is broadcast to the whole LAN.

    ``display_name`` becomes the DNS-SD instance name people see in service browsers; it is
    sanitised and, if another node already uses it, made unique as ``name (2)``.
    """

    instance_id: str
    key_id: str
    port: int
    display_name: str
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class DiscoveredPeer:
    """One other node as the LAN describes it. A *proposal* of where to connect, never trust.

    ``addresses`` are IPv4 addresses, freshest first, merged over every way we saw this node
    (several interfaces, reflectors, stale names). ``port``, ``version`` and ``service_name``
    come from the freshest sighting. ``last_seen`` is :class:`Discovery`'s clock when an
    announcement for this peer was last processed.
    """

    instance_id: str
    key_id: str
    version: int
    addresses: tuple[str, ...]
    port: int
    service_name: str
    last_seen: float

    @property
    def compatible(self) -> bool:
        """Whether this peer speaks our protocol version; if not, show it but don't dial it."""
        return self.version == PROTOCOL_VERSION


ChangeKind = Literal["added", "updated", "removed"]
#: ``on_change(peer, kind)``; ``kind`` is a :data:`ChangeKind`.
OnChange = Callable[[DiscoveredPeer | None, str], None]


# -- parsing (pure) ------------------------------------------------------------------------------


def parse_txt(properties: dict[bytes, bytes | None]) -> tuple[str, int, str] | None:
    """``(instance_id, version, key_id)`` from a TXT record, or ``None`` if it is not usable.

    Pure and total: whatever the LAN sends, this returns instead of raising, so one hostile
    announcement can never break browsing. See :func:`explain_txt` for the reason a record is
    rejected. The key id is returned in canonical form (``abcd-efgh-...``).
    """
    result, _reason = explain_txt(properties)
    return result


def explain_txt(
    properties: object,
) -> tuple[tuple[str, int, str] | None, str]:
    """Like :func:`parse_txt`, plus a short reason (``"ok"`` when accepted) for the debug log.

    Rules, and why:

    * the record as a whole is capped (:data:`MAX_TXT_RECORD_BYTES`, :data:`MAX_TXT_ENTRIES`)
      before anything is decoded, so the cost of a hostile record is bounded;
    * keys compare case-insensitively (RFC 6763 §6.4); a key given twice in different case is
      ambiguous and rejects the record rather than letting order pick a winner;
    * ``id``, ``v`` and ``fp`` must all be present with a value (``key`` without ``=`` has
      none), each at most :data:`MAX_TXT_VALUE_BYTES`; unknown keys are ignored, so a newer
      node can add some;
    * ``id`` is strict UTF-8 and a valid instance id (printable, no whitespace, <= 100 chars);
    * ``v`` is 1-5 ASCII digits, 1..65535 (any *well-formed* version is accepted; whether we
      can talk to it is :attr:`DiscoveredPeer.compatible`);
    * ``fp`` is a key id (a-z, 2-7, optional dashes), normalised.
    """
    try:
        return _explain_txt(properties)
    except Exception as exc:  # pragma: no cover - defence in depth; _explain_txt is total
        return None, f"unparseable TXT record ({type(exc).__name__})"


def _explain_txt(properties: object) -> tuple[tuple[str, int, str] | None, str]:
    if not isinstance(properties, dict):
        return None, "TXT record is not a mapping"
    if len(properties) > MAX_TXT_ENTRIES:
        return None, f"TXT record has {len(properties)} entries (max {MAX_TXT_ENTRIES})"
    total = 0
    fields: dict[bytes, bytes | None] = {}
    for key, value in properties.items():
        if not isinstance(key, bytes) or not (value is None or isinstance(value, bytes)):
            return None, "TXT record holds non-bytes data"
        total += 1 + len(key) + (0 if value is None else 1 + len(value))
        if total > MAX_TXT_RECORD_BYTES:
            return None, f"TXT record is over {MAX_TXT_RECORD_BYTES} bytes"
        folded = key.lower()
        if folded in _TXT_KEYS:
            if folded in fields:
                return None, f"TXT key {folded.decode()!r} appears twice"
            fields[folded] = value
    values: dict[bytes, bytes] = {}
    for wanted in _TXT_KEYS:
        value = fields.get(wanted)
        if value is None:
            return None, f"TXT key {wanted.decode()!r} is missing or has no value"
        if len(value) > MAX_TXT_VALUE_BYTES:
            return None, f"TXT value for {wanted.decode()!r} is over {MAX_TXT_VALUE_BYTES} bytes"
        values[wanted] = value

    try:
        instance_id = validate_instance_id(values[_TXT_ID].decode("utf-8"))
    except UnicodeDecodeError:
        return None, "TXT 'id' is not valid UTF-8"
    except TokenFormatError:
        return None, "TXT 'id' is not a valid instance id"

    raw_version = values[_TXT_VERSION]
    if not (0 < len(raw_version) <= _MAX_VERSION_DIGITS and raw_version.isdigit()):
        return None, "TXT 'v' is not a version number"
    version = int(raw_version)
    if not 1 <= version <= _MAX_VERSION:
        return None, "TXT 'v' is out of range"

    try:
        key_id = normalize_key_id(values[_TXT_KEY_ID].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None, "TXT 'fp' is not a key id"

    return (instance_id, version, key_id), "ok"


def _txt_for(announcement: Announcement) -> dict[bytes, bytes | None]:
    """Our TXT record; refuses an announcement the other side's :func:`parse_txt` would drop."""
    props: dict[bytes, bytes | None] = {
        _TXT_ID: announcement.instance_id.encode("utf-8"),
        _TXT_VERSION: str(announcement.version).encode("ascii"),
        _TXT_KEY_ID: announcement.key_id.encode("utf-8"),
    }
    parsed, reason = explain_txt(props)
    if parsed is None:
        raise ValueError(f"cannot announce this: {reason}")
    if parsed != (announcement.instance_id, announcement.version, announcement.key_id):
        raise ValueError("announce the key id in canonical form (as key_id() prints it)")
    return props


def instance_label(display_name: str, number: int = 1) -> str:
    """The DNS-SD instance name for ``display_name``: ``name``, or ``name (n)`` when n > 1.

    Why sanitise: the label is shown by other tools (avahi-browse, macOS Finder) and must be one
    DNS label of at most 63 bytes. We drop control characters, replace dots (python-zeroconf
    would split the label there and other implementations would escape them) and cut at a
    character boundary so that the ``(n)`` suffix always fits.
    """
    cleaned = "".join("-" if ch == "." else ch if ch.isprintable() else " " for ch in display_name)
    base = " ".join(cleaned.split()) or "peerstash"
    suffix = "" if number <= 1 else f" ({number})"
    room = _MAX_LABEL_BYTES - len(suffix.encode("utf-8"))
    base = base.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip() or "peerstash"
    return base + suffix


# -- the component -------------------------------------------------------------------------------


@dataclass
class _Sighting:
    """One service name that resolved to a valid, non-self Peerstash announcement."""

    instance_id: str
    key_id: str
    version: int
    addresses: tuple[str, ...]
    port: int
    seen: float
    seq: int  # global arrival order: freshness that a coarse or fake clock cannot tie

    @property
    def identity(self) -> tuple[str, str]:
        return (self.instance_id, self.key_id)


@dataclass
class _Bounded:
    """An insertion-ordered map that forgets its oldest entries beyond ``limit``."""

    limit: int
    data: OrderedDict[str, str] = field(default_factory=OrderedDict)

    def put(self, key: str, value: str) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.limit:
            self.data.popitem(last=False)


class Discovery:
    """Announce this node on the LAN and keep a live list of the other Peerstash nodes.

    One :class:`~zeroconf.asyncio.AsyncZeroconf` per object (the node owns one object, so one
    per process). Lifecycle: :meth:`start`, then :meth:`announce` (again whenever port or name
    change), :meth:`withdraw` to go quiet, :meth:`close` at the end. A closed object cannot be
    started again; make a new one.

    ``interfaces``: IPv4 addresses (``["127.0.0.1"]`` in tests) or interface names
    (``"eth0"``) to use; ``None`` means all. Both the mDNS sockets and the addresses we announce
    are limited to these, so tests on loopback send nothing anywhere else.

    ``on_change(peer, kind)`` is called on the event loop with ``kind`` one of ``"added"``,
    ``"updated"``, ``"removed"``; ``peer`` is the new state (the last state for "removed").
    When a second key announces an instance id, :attr:`duplicates` is updated *before* the
    callback runs, so the node can flag "key mismatch" right there. Exceptions from the
    callback are logged and swallowed: a UI bug must not stop discovery.
    """

    def __init__(
        self,
        *,
        interfaces: list[str] | None = None,
        on_change: OnChange | None = None,
        self_instance_id: str | None = None,
        self_key_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._on_change = on_change
        # Who "self" is: from the constructor, then from the latest announcement. It is kept
        # after withdraw(), so our own records still in caches never show up as a peer.
        self._self: tuple[str | None, str | None] = (
            self_instance_id,
            normalize_key_id(self_key_id) if self_key_id else None,
        )
        self._clock = clock

        #: instance id -> every key id seen announcing it since :meth:`start` (ours included
        #: when someone else claims our instance id). More than one key = conflict. Entries
        #: with a single key are dropped when that peer goes away; conflicts are remembered for
        #: the life of this object, because an impostor that left is still worth a warning.
        self.duplicates: dict[str, set[str]] = {}

        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._closed = False
        self._host = f"ps-{secrets.token_hex(6)}.local."
        self._addresses: list[str] = []

        self._announce_lock = asyncio.Lock()
        self._announcement: Announcement | None = None
        self._info: AsyncServiceInfo | None = None

        self._sightings: dict[str, _Sighting] = {}  # service name -> sighting
        self._peers: dict[tuple[str, str], DiscoveredPeer] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}  # service name -> resolution
        self._stale: set[str] = set()  # names that changed while being resolved
        self._seq = 0
        self._ignored = _Bounded(_MAX_DIAGNOSTICS)
        self._logged = _Bounded(_MAX_DIAGNOSTICS)
        self._changed = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the mDNS sockets and start browsing. Idempotent."""
        if self._closed:
            raise RuntimeError("this Discovery is closed; create a new one")
        if self._aiozc is not None:
            return
        addresses = _resolve_interfaces(self._interfaces)
        aiozc = AsyncZeroconf(
            interfaces=addresses if self._interfaces is not None else InterfaceChoice.All,
            ip_version=IPVersion.V4Only,
        )
        self._aiozc = aiozc
        try:
            await aiozc.zeroconf.async_wait_for_start()
            self._addresses = addresses if self._interfaces is not None else _lan_addresses()
            self._browser = AsyncServiceBrowser(
                aiozc.zeroconf, [SERVICE_TYPE], handlers=[self._on_service_state_change]
            )
        except BaseException:
            self._aiozc = None
            await aiozc.async_close()
            raise

    async def announce(self, announcement: Announcement) -> None:
        """Advertise ``announcement``; if already announced, update it in place.

        Same display name: the records are updated (new port, version, addresses) under the
        name we already hold. New display name: the old name is withdrawn and the new one
        probed. Probing makes the name unique: if another responder answers for ``name``, we
        try ``name (2)``, ``name (3)``... Returns once the announcement has been sent.
        Raises ``ValueError`` for an announcement other nodes would ignore.
        """
        if not 0 < announcement.port < 65536:
            raise ValueError(f"port out of range: {announcement.port}")
        props = _txt_for(announcement)
        aiozc = self._require_started()
        async with self._announce_lock:
            if self._interfaces is None:
                # Re-read on every announce: the node re-announces after a network change.
                self._addresses = _lan_addresses()
            previous, info = self._announcement, self._info
            self._announcement = announcement
            self._self = (announcement.instance_id, announcement.key_id)
            self._forget_self_sightings()
            if info is not None and previous is not None:
                if previous.display_name == announcement.display_name:
                    if previous == announcement and list(info.parsed_addresses()) == list(
                        self._addresses
                    ):
                        return
                    updated = self._service_info(info.name, announcement, props)
                    task = await aiozc.async_update_service(updated)
                    self._info = updated
                    await task
                    return
                self._info = None
                task = await aiozc.async_unregister_service(info)
                await task
            await self._register_unique(aiozc, announcement, props)

    async def withdraw(self) -> None:
        """Stop announcing: goodbye packets (TTL 0) so peers drop us at once."""
        async with self._announce_lock:
            info, self._info = self._info, None
            self._announcement = None
            if info is None or self._aiozc is None:
                return
            task = await self._aiozc.async_unregister_service(info)
            await task

    async def close(self) -> None:
        """Withdraw (goodbyes), stop browsing and close the sockets. Idempotent.

        Cancellation-safe: if the goodbyes are interrupted, the teardown still runs (zeroconf's
        own close sends goodbyes for anything still registered), so no socket or task leaks.
        """
        if self._closed:
            return
        self._closed = True
        aiozc = self._aiozc
        try:
            if aiozc is not None:
                with contextlib.suppress(Exception):
                    await self.withdraw()
        finally:
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            self._tasks.clear()
            if self._browser is not None:
                browser, self._browser = self._browser, None
                await browser.async_cancel()
            self._aiozc = None
            if aiozc is not None:
                await aiozc.async_close()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            self._notify()

    # -- queries ---------------------------------------------------------------------------

    def peers(self) -> list[DiscoveredPeer]:
        """The live list, self and reflections excluded, sorted by instance id then key id."""
        return [self._peers[k] for k in sorted(self._peers)]

    def find(self, instance_id: str, key_id: str | None = None) -> DiscoveredPeer | None:
        """The peer announcing ``instance_id`` (with ``key_id``, if given).

        Without ``key_id`` this returns ``None`` when more than one key announces the instance
        id: guessing would hand a caller an impostor's address half the time. Callers that
        will connect should always pass the pinned key id.
        """
        if key_id is not None:
            try:
                key_id = normalize_key_id(key_id)
            except ValueError:
                return None
            return self._peers.get((instance_id, key_id))
        matches = [p for (iid, _), p in self._peers.items() if iid == instance_id]
        return matches[0] if len(matches) == 1 else None

    @property
    def ignored(self) -> Mapping[str, str]:
        """Service names we saw but do not list, with why ("self", a TXT problem, ...).

        Diagnostic only (``peerstash discover --verbose``, tests); bounded to the most recent
        :data:`_MAX_DIAGNOSTICS` names.
        """
        return dict(self._ignored.data)

    @property
    def service_name(self) -> str | None:
        """The full service name we hold on the LAN (after uniqueness), or ``None``."""
        return self._info.name if self._info is not None else None

    async def wait_until(
        self,
        condition: Callable[[], bool],
        timeout: float,  # noqa: ASYNC109 (part of the API: every caller wants a bound)
    ) -> None:
        """Return once ``condition()`` holds; it is re-checked after every processed change.

        Raises ``TimeoutError`` after ``timeout`` seconds. Event driven, never polls.
        """
        async with asyncio.timeout(timeout):
            while not condition():
                await self._changed.wait()

    async def wait_for(
        self,
        predicate: Callable[[DiscoveredPeer], bool],
        timeout: float,  # noqa: ASYNC109 (part of the API; see wait_until)
    ) -> DiscoveredPeer:
        """The first listed peer matching ``predicate``, waiting up to ``timeout`` seconds.

        Raises ``TimeoutError`` if none shows up in time.
        """
        found: list[DiscoveredPeer] = []

        def match() -> bool:
            found[:] = [p for p in self.peers() if predicate(p)][:1]
            return bool(found)

        await self.wait_until(match, timeout)
        return found[0]

    # -- registration ----------------------------------------------------------------------

    def _require_started(self) -> AsyncZeroconf:
        if self._aiozc is None or self._closed:
            raise RuntimeError("Discovery is not started")
        return self._aiozc

    def _service_info(
        self, name: str, announcement: Announcement, props: dict[bytes, bytes | None]
    ) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            SERVICE_TYPE,
            name,
            port=announcement.port,
            properties=props,
            server=self._host,
            parsed_addresses=list(self._addresses),
        )

    async def _register_unique(
        self, aiozc: AsyncZeroconf, announcement: Announcement, props: dict[bytes, bytes | None]
    ) -> None:
        """Probe ``name``, ``name (2)``, ... and register the first one nobody answers for.

        We do our own renaming instead of zeroconf's ``allow_name_change`` because its
        ``name-2`` style is not what people expect to read (DNS-SD convention is ``name (2)``),
        and our own probing (:meth:`_name_taken`) because zeroconf's misses a holder on the
        same host. The name is registered with ``cooperating_responders=True`` so zeroconf
        does not probe a second time. ``self._info`` is set as soon as the record is in
        zeroconf's registry, before the announcement task is awaited, so a cancellation there
        still leaves withdraw() able to send the goodbyes.
        """
        for number in range(1, _MAX_NAME_ATTEMPTS + 1):
            name = f"{instance_label(announcement.display_name, number)}.{SERVICE_TYPE}"
            info = self._service_info(name, announcement, props)
            if await _name_taken(aiozc.zeroconf, info):
                log.debug("service name %r is taken on the LAN, trying the next", name)
                continue
            try:
                task = await aiozc.async_register_service(info, cooperating_responders=True)
            except BadTypeInNameException as exc:  # pragma: no cover - label is sanitised
                raise ValueError(f"unusable display name {announcement.display_name!r}") from exc
            self._info = info
            await task
            return
        raise RuntimeError(
            f"no free service name for {announcement.display_name!r} "
            f"after {_MAX_NAME_ATTEMPTS} attempts"
        )

    # -- browsing --------------------------------------------------------------------------

    def _on_service_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """Browser callback (on the loop). Must not block: it only schedules resolution."""
        if self._closed or service_type != SERVICE_TYPE:
            return
        if state_change is ServiceStateChange.Removed:
            task = self._tasks.pop(name, None)
            if task is not None:
                task.cancel()
            self._stale.discard(name)
            self._drop(name)
            self._notify()
            return
        if name in self._tasks:
            # Resolution in flight: note that it must run again with the newer records.
            self._stale.add(name)
            return
        if name not in self._sightings and len(self._sightings) + len(self._tasks) >= (
            MAX_TRACKED_SERVICES
        ):
            self._ignore(name, f"more than {MAX_TRACKED_SERVICES} services on the LAN")
            return
        self._tasks[name] = asyncio.create_task(self._resolve(name), name=f"discovery:{name}")

    async def _resolve(self, name: str) -> None:
        """Fetch SRV/TXT/A for ``name`` (cache first) and fold the result into the list."""
        try:
            aiozc = self._aiozc
            if aiozc is None:
                return
            while True:
                self._stale.discard(name)
                info = AsyncServiceInfo(SERVICE_TYPE, name)
                complete = await info.async_request(aiozc.zeroconf, _RESOLVE_TIMEOUT_MS)
                if name not in self._stale:
                    break
            self._apply(name, info if complete else None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # zeroconf raising on one odd service must not end browsing or spam the log.
            self._ignore(name, f"resolution failed: {type(exc).__name__}: {exc}")
        finally:
            if self._tasks.get(name) is asyncio.current_task():
                del self._tasks[name]
            self._notify()

    def _apply(self, name: str, info: AsyncServiceInfo | None) -> None:
        """Turn one resolved service into a sighting, or ignore it, and publish the result."""
        if info is None:
            # Keep what we had: a failed refresh is not proof the node left (goodbyes and TTL
            # expiry arrive as "Removed"); a never-resolved name stays unlisted.
            if name not in self._sightings:
                self._ignore(name, "no SRV/TXT/address answer")
            return
        parsed, reason = explain_txt(info.properties)
        if parsed is None:
            self._ignore(name, reason)
            self._drop(name)
            return
        instance_id, version, key_id = parsed
        if self._is_self(instance_id, key_id):
            self._ignored.put(name, "self")
            self._drop(name)
            return
        port = info.port
        addresses = tuple(info.parsed_addresses(IPVersion.V4Only))
        if not port or not addresses:
            if name not in self._sightings:
                self._ignore(name, "no port or IPv4 address")
            return

        self._seq += 1
        sighting = _Sighting(
            instance_id, key_id, version, addresses, port, seen=self._clock(), seq=self._seq
        )
        old = self._sightings.get(name)
        self._sightings[name] = sighting
        self._ignored.data.pop(name, None)
        self._note_key(instance_id, key_id)
        if old is not None and old.identity != sighting.identity:
            self._publish(old.identity)
        self._publish(sighting.identity)

    def _drop(self, name: str) -> None:
        old = self._sightings.pop(name, None)
        if old is not None:
            self._publish(old.identity)

    def _publish(self, identity: tuple[str, str]) -> None:
        """Recompute one identity's merged entry from its sightings and emit what changed."""
        mine = sorted(
            ((n, s) for n, s in self._sightings.items() if s.identity == identity),
            key=lambda item: item[1].seq,
            reverse=True,
        )
        before = self._peers.get(identity)
        if not mine:
            if before is not None:
                del self._peers[identity]
                self._forget_key(identity)
                self._emit(before, "removed")
            return
        name, fresh = mine[0]
        addresses = tuple(dict.fromkeys(a for _, s in mine for a in s.addresses))
        after = DiscoveredPeer(
            instance_id=fresh.instance_id,
            key_id=fresh.key_id,
            version=fresh.version,
            addresses=addresses,
            port=fresh.port,
            service_name=name,
            last_seen=fresh.seen,
        )
        self._peers[identity] = after
        if before is None:
            self._emit(after, "added")
        elif _essence(before) != _essence(after):
            self._emit(after, "updated")

    def _emit(self, peer: DiscoveredPeer, kind: ChangeKind) -> None:
        log.debug(
            "discovery: %s %s (%s) at %s:%s",
            kind,
            peer.instance_id,
            peer.key_id,
            ",".join(peer.addresses),
            peer.port,
        )
        try:
            if self._on_change is not None:
                self._on_change(peer, kind)
        except Exception:
            log.exception("discovery on_change callback failed for %s", kind)
        finally:
            self._notify()

    def _notify(self) -> None:
        """Wake every :meth:`wait_until` so it re-checks its condition."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _ignore(self, name: str, reason: str) -> None:
        """Remember why ``name`` is not listed; log it once per name, at DEBUG, ever."""
        self._ignored.put(name, reason)
        if name not in self._logged.data:
            self._logged.put(name, reason)
            log.debug("discovery: ignoring %r: %s", name, reason)

    # -- identity bookkeeping --------------------------------------------------------------

    def _self_identity(self) -> tuple[str | None, str | None]:
        return self._self

    def _is_self(self, instance_id: str, key_id: str) -> bool:
        return self._self_identity() == (instance_id, key_id)

    def _forget_self_sightings(self) -> None:
        """After our identity changed, drop sightings that are now ourselves."""
        for name in [n for n, s in self._sightings.items() if self._is_self(*s.identity)]:
            self._ignored.put(name, "self")
            self._drop(name)

    def _note_key(self, instance_id: str, key_id: str) -> None:
        keys = self.duplicates.setdefault(instance_id, set())
        if len(keys) < _MAX_KEYS_PER_INSTANCE:
            keys.add(key_id)
        self_id, self_key = self._self_identity()
        if instance_id == self_id and self_key is not None and key_id != self_key:
            keys.add(self_key)

    def _forget_key(self, identity: tuple[str, str]) -> None:
        instance_id, _ = identity
        keys = self.duplicates.get(instance_id)
        if keys is not None and len(keys) <= 1:
            del self.duplicates[instance_id]


def _essence(peer: DiscoveredPeer) -> tuple[object, ...]:
    """Everything about a peer except ``last_seen``: a change here is worth an "updated"."""
    return (peer.version, peer.addresses, peer.port, peer.service_name)


async def _name_taken(zc: Zeroconf, info: AsyncServiceInfo) -> bool:
    """Probe the LAN for ``info.name``; ``True`` if another responder holds it.

    Why not zeroconf's own probe (``async_register_service`` without
    ``cooperating_responders``): it asks with the "QU" bit, and a responder that multicast its
    records recently (any node that announced in the last ~19 minutes) then answers a probe
    *only by unicast* to our address and port 5353. Every mDNS stack on a host shares port
    5353 with SO_REUSEPORT, and Linux hands a unicast datagram to exactly one socket of that
    group, picked by a hash of the addresses and ports: when two nodes (or a node and any
    other zeroconf user) run on one host, the answer usually lands in somebody else's socket
    and the name is silently taken twice. RFC 6762 section 15.1 says a querier that cannot be
    sure to receive unicast replies must not set the QU bit. So our probes ask "QM": the
    holder answers a probe by multicast at once, every socket in the group receives it, and
    the answer lands in this instance's cache, where zeroconf's own check looks too.

    Timing follows RFC 6762 section 8.1 (see :data:`_PROBE_COUNT`); the whole probe takes
    about a second, like zeroconf's. Every wait is bounded: the function returns after at
    most ``max(_PROBE_DELAY_MS) + _PROBE_COUNT * _PROBE_INTERVAL_MS`` milliseconds.
    """
    loop = asyncio.get_running_loop()

    def taken() -> bool:
        return zc.cache.current_entry_with_name_and_alias(info.type, info.name) is not None

    async def wait_ms(ms: float) -> bool:
        """Wait ``ms`` (waking early on cache updates); ``True`` as soon as the name is taken."""
        deadline = loop.time() + ms / 1000
        while (remaining := deadline - loop.time()) > 0:
            if taken():
                return True
            await zc.async_wait(remaining * 1000)
        return taken()

    # Spread simultaneous starts apart (RFC 6762 section 8.1); not a secret, just jitter.
    if await wait_ms(random.randint(*_PROBE_DELAY_MS)):
        return True
    probe = DNSOutgoing(_FLAGS_QR_QUERY | _FLAGS_AA)
    probe.add_question(DNSQuestion(info.type, _TYPE_PTR, _CLASS_IN))  # QM: no unicast bit
    # The authority section makes it a probe: responders answer it immediately.
    probe.add_authorative_answer(info.dns_pointer())
    for _ in range(_PROBE_COUNT):
        zc.async_send(probe)
        if await wait_ms(_PROBE_INTERVAL_MS):
            return True
    return False


def _resolve_interfaces(interfaces: list[str] | None) -> list[str]:
    """IPv4 addresses for the configured interfaces (addresses as-is, names looked up).

    Raises ``ValueError`` for a name that is not an interface or has no IPv4 address, rather
    than silently falling back to all interfaces: the user limited discovery for a reason.
    """
    if interfaces is None:
        return []
    result: list[str] = []
    adapters = None
    for entry in interfaces:
        try:
            result.append(str(ipaddress.IPv4Address(entry)))
            continue
        except ValueError:
            pass
        if adapters is None:
            adapters = ifaddr.get_adapters()
        found = [
            ip.ip
            for adapter in adapters
            if entry in (adapter.name, adapter.nice_name)
            for ip in adapter.ips
            if isinstance(ip.ip, str)
        ]
        if not found:
            raise ValueError(f"no IPv4 address on interface {entry!r}")
        result.extend(found)
    if not result:
        raise ValueError("interfaces is empty; pass None for all interfaces")
    return list(dict.fromkeys(result))


def _lan_addresses() -> list[str]:
    """The IPv4 addresses to announce when using every interface.

    Loopback and link-local (169.254/16) addresses are left out: a peer on another machine
    cannot use them. If there is nothing else, loopback is announced so that peers on this
    machine still work.
    """
    usable: list[str] = []
    loopback: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):
                continue
            addr = ipaddress.IPv4Address(ip.ip)
            if addr.is_loopback:
                loopback.append(ip.ip)
            elif not addr.is_link_local and not addr.is_unspecified:
                usable.append(ip.ip)
    return list(dict.fromkeys(usable or loopback or ["127.0.0.1"]))
