"""Machines are told apart by key, not by host name: real nodes in one process.

Every Raspberry Pi is called ``raspberrypi``; two nodes on one machine share its host name. Here
the host name is the same for every node (``socket.gethostname`` is patched, as a second
machine would report it), and they must still pair, be told apart in every listing, rename
themselves, and never be replaced silently by another key under the same id.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from peerstash.core.events import OperationsDeleted
from peerstash.core.models import PairingTokenRow, Peer
from peerstash.core.store import KeyConflict, Store, utcnow
from peerstash.peer.cli import COMMANDS, AdminClient, CliError, build_parser
from peerstash.peer.links import channel as ch
from peerstash.peer.links import protocol as proto
from peerstash.peer.links.link import (
    LinkStateChanged,
    PairingError,
    archive_origin,
    describe_remote_error,
)
from peerstash.peer.node import Node, NodeOptions, default_instance_id
from peerstash.peer.services.fleet import labels
from peerstash.peer.trust.identity import Identity
from peerstash.peer.trust.tokens import PairingToken, parse_token
from tests.fixtures.nodes import (
    FAST,
    as_row,
    change,
    converge,
    held,
    record,
    seed,
    store_of,
    token_for,
    wait_state,
)

HOST = "raspberrypi"

MakeNode = Callable[..., Awaitable[Node]]


@pytest.fixture
def same_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every node here runs on a machine called ``raspberrypi``."""
    monkeypatch.setattr(socket, "gethostname", lambda: f"{HOST}.local")


@pytest.fixture
async def make(tmp_path: Path, same_host: None) -> AsyncIterator[MakeNode]:
    """Start a node in its own data dir; no instance id unless given (the default applies)."""
    nodes: list[Node] = []

    async def start(directory: str, **opts: Any) -> Node:
        settings: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "link_timings": FAST,
            "schedule": False,
            "discovery": False,
            **opts,
        }
        node = Node(tmp_path / directory, NodeOptions(**settings))
        await node.start()
        nodes.append(node)
        return node

    yield start
    for node in reversed(nodes):
        await node.stop()


async def api(node: Node, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """The real admin API over the node's Unix socket."""
    conn = aiohttp.UnixConnector(path=str(node.socket_path))
    async with (
        aiohttp.ClientSession(connector=conn) as s,
        s.request(method, f"http://n{path}", json=body) as r,
    ):
        return r.status, await r.json()


async def cli(node: Node, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a ``peerstash`` subcommand against the node (the real parser, client and output)."""
    args = build_parser().parse_args(["--data-dir", str(node.data_dir), *argv])
    capsys.readouterr()
    async with AdminClient(node.data_dir) as client:
        assert await COMMANDS[args.command](client, args) == 0
    return capsys.readouterr().out


async def pair(dialer: Node, issuer: Node, gives: list[str] | None = None) -> None:
    """``dialer`` runs ``peer add`` with a token ``issuer`` made; both sides come online."""
    assert dialer.peers and issuer.peer_url
    await dialer.peers.pair(await token_for(issuer), issuer.peer_url, gives or [])
    await wait_state(dialer, issuer.instance_id, "online")
    await wait_state(issuer, dialer.instance_id, "online")


async def name_on(node: Node, peer_id: str, name: str, within: float = 10) -> None:
    """Wait until ``node`` knows ``peer_id`` by ``name`` (re-checked on every link event)."""
    with node.bus.subscribe("link") as sub:
        async with asyncio.timeout(within):
            while (await store_of(node).get_peer(peer_id)).name != name:
                await sub.get()


# -- three machines called raspberrypi -------------------------------------------------------


async def test_three_same_named_machines_pair_and_are_told_apart(
    make: MakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = await make("hub", instance_id="hub")
    pis = [await make(f"pi{i}") for i in (1, 2, 3)]
    ids = [p.instance_id for p in pis]
    # Unique without anyone choosing: the host name and the start of the key id.
    for pi in pis:
        assert pi.identity
        assert pi.instance_id == f"{HOST}-{pi.identity.key_id[:4]}"
        assert pi.name == HOST
    assert len(set(ids)) == 3
    # Each pairs with the hub (giving it their history) and with each other.
    for pi in pis:
        await seed(pi, 1)
        await pair(pi, hub, ["ops"])
    await pair(pis[0], pis[1])
    await pair(pis[1], pis[2])
    await pair(pis[2], pis[0])
    for pi in pis:
        await converge(pi, hub, ["ops"])
        assert sorted(p.id for p in await store_of(pi).list_peers()) == sorted(
            [hub.instance_id, *(i for i in ids if i != pi.instance_id)]
        )

    # peer list (API and CLI): every one by name, told apart by its id.
    status, listed = await api(hub, "GET", "/v1/peers")
    assert status == 200
    assert {p["id"]: (p["name"], p["label"]) for p in listed} == {
        i: (HOST, f"{HOST} ({i})") for i in ids
    }
    out = await cli(hub, capsys, "peer", "list")
    rows = [line for line in out.splitlines() if line.startswith(HOST + "  ")]  # table rows
    assert len(rows) == 3 and {r.split()[1] for r in rows} == set(ids)
    for i in ids:
        assert f"{HOST} ({i}):" in out  # the history heading of each
    # status: the hub's own line and one line per machine.
    out = await cli(hub, capsys, "status")
    for i in ids:
        assert f"peer {HOST} ({i}): online" in out
    # ops: the origin column tells the three apart.
    out = await cli(hub, capsys, "ops")
    assert {m for i in ids for m in re.findall(re.escape(f"{HOST} ({i})"), out)} == {
        f"{HOST} ({i})" for i in ids
    }
    # On a pi, the other two share its own name: they are told apart from it too.
    out = await cli(pis[0], capsys, "status")
    assert f"instance  {HOST} (id {ids[0]})" in out
    for i in ids[1:]:
        assert f"peer {HOST} ({i}): online" in out


async def test_an_existing_data_dir_keeps_its_instance_id(make: MakeNode, tmp_path: Path) -> None:
    # A data dir made before unique defaults: its id is the bare host name, and stays so
    # (it is the origin of its history everywhere).
    old = await make("old", instance_id=HOST)
    await seed(old, 2)
    await old.stop()
    again = await make("old")
    assert again.instance_id == HOST
    assert len(await held(again, HOST)) == 2
    assert default_instance_id() == HOST  # without a key: the host name alone


def test_default_instance_id_is_a_valid_id_for_any_host_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from peerstash.core.engine import check_name

    for host, want in (
        ("Küche.fritz.box", "K-che-abcd"),
        ("", "peerstash-abcd"),
        ("-x-", "x-abcd"),
    ):
        monkeypatch.setattr(socket, "gethostname", lambda h=host: h)
        made = default_instance_id("abcd-efgh-ijkl-mnop-qrst")
        check_name("instance", made)
        assert made == want


# -- renaming --------------------------------------------------------------------------------


async def test_rename_reaches_peers_live_and_history_keeps_its_origin(
    make: MakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = await make("hub", instance_id="hub")
    pi = await make("pi")
    await seed(pi, 3)
    await pair(pi, hub, ["ops"])  # the pi dials; the hub answers
    assert hub.name == "hub"  # a chosen id is the name too
    before = await converge(pi, hub, ["ops"])
    assert (await store_of(hub).get_peer(pi.instance_id)).name == HOST

    # The dialing side renames: the hub learns it over the link, without a restart.
    out = await cli(pi, capsys, "rename", "garage pi")
    assert f"now called garage pi (its id stays {pi.instance_id})" in out
    await name_on(hub, pi.instance_id, "garage pi")
    # The answering side renames (desktop Settings saves display_name): the pi learns it.
    status, _ = await api(hub, "POST", "/v1/settings", {"key": "display_name", "value": "attic"})
    assert status == 200
    await name_on(pi, "hub", "attic")
    await wait_state(pi, "hub", "online")
    await wait_state(hub, pi.instance_id, "online")

    # The history stays the pi's own, under the same origin, and new history joins it.
    assert pi.instance_id == (await api(pi, "GET", "/v1/status"))[1]["instance_id"]
    await change(pi, status="success")  # pushed live, as the runner does
    after = await converge(pi, hub, ["ops"])
    assert set(before) < set(after) and len(after) == 4
    _, listed = await api(hub, "GET", "/v1/peers")
    assert [(p["id"], p["name"], p["label"]) for p in listed] == [
        (pi.instance_id, "garage pi", "garage pi")
    ]
    out = await cli(hub, capsys, "ops")
    assert out.count("garage pi") == 4

    # The name survives a restart of the renamed node, and peers still know it after theirs.
    await pi.stop()
    pi2 = await make("pi")
    assert pi2.name == "garage pi" and pi2.instance_id == pi.instance_id
    await wait_state(hub, pi.instance_id, "online")
    assert (await store_of(hub).get_peer(pi.instance_id)).name == "garage pi"

    # Back to the host name.
    out = await cli(pi2, capsys, "rename", "--reset")
    assert f"now called {HOST}" in out
    await name_on(hub, pi.instance_id, HOST)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("two\nlines", "control or invisible"),
        ("\x1b[31mred", "control or invisible"),
        ("evil\u202etxt.exe", "control or invisible"),
        (" padded", "start or end with a space"),
        ("x" * 64, "at most 63"),
        ("", "cannot be empty"),
    ],
)
async def test_rename_refuses_unusable_names(make: MakeNode, name: str, words: str) -> None:
    node = await make("n", listen=None)
    status, body = await api(node, "POST", "/v1/rename", {"name": name})
    assert status == 400 and words in body["error"]
    assert node.name == HOST
    assert (await api(node, "GET", "/v1/settings"))[1]["display_name"] is None


# -- never replaced silently -----------------------------------------------------------------


async def test_a_second_key_under_a_paired_id_is_refused_unless_replace(
    make: MakeNode, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="peerstash.peer.links.link")
    hub = await make("hub", instance_id="hub")
    x1 = await make("x1", instance_id="x")  # a machine set up with --instance-id x
    x2 = await make("x2", instance_id="x")  # another one, same id, its own key
    assert hub.peers and x1.identity and x2.identity and x1.peer_url and x2.peer_url
    k1, k2 = x1.identity.key_id, x2.identity.key_id
    # The hub runs `peer add` with X1's token; X1 gives it its history.
    await seed(x1, 3)
    await seed(x2, 2)
    await hub.peers.pair(await token_for(x1, grants=["ops"]), x1.peer_url, [])
    await wait_state(hub, "x", "online")
    old_history = await converge(x1, hub, ["ops"])

    # Then with X2's token: refused, in exactly these words, and logged.
    token2 = await token_for(x2, grants=["ops"])
    words = (
        f"instance 'x' is already paired with key {k1}; this token is from key {k2}; "
        "use `peer add --replace` if x was reinstalled"
    )
    with pytest.raises(CliError) as refused:
        await cli(hub, capsys, "peer", "add", token2, "--url", x2.peer_url)
    assert str(refused.value) == words
    assert any(words in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    peer = await store_of(hub).get_peer("x")
    assert peer.key_id == k1
    assert await held(hub, "x") == old_history
    assert await store_of(x2).list_tokens() != []  # not even used

    # With --replace: X2 is pinned, X1's history is kept apart, X2's own arrives.
    caplog.clear()
    out = await cli(hub, capsys, "peer", "add", token2, "--url", x2.peer_url, "--replace")
    assert f"paired with x, key {k2}; connecting" in out
    assert any("replacing peer x" in r.getMessage() for r in caplog.records)
    assert (await store_of(hub).get_peer("x")).key_id == k2
    new_history = await converge(x2, hub, ["ops"])
    assert len(new_history) == 2 and not set(new_history) & set(old_history)
    archive = archive_origin("x", k1)
    assert archive.startswith("x~key-")
    kept = await held(hub, archive)
    assert set(kept) == set(old_history)
    # And the old key no longer gets in under that id.
    assert (await store_of(hub).get_peer("x")).public_key != x1.identity.public_key

    # The kept history stays until the person removes it, by the name it is kept under;
    # X2's own history and pairing are untouched.
    # Views showing those rows are told at once (the tray reloads on ops_deleted).
    assert hub.engine is not None
    with hub.engine.bus.subscribe("operations-deleted") as sub:
        out = await cli(hub, capsys, "peer", "remove", archive)
        told = await asyncio.wait_for(sub.get(), 10)
    assert isinstance(told, OperationsDeleted) and told.origin == archive
    assert {d.op_id for d in told.ops} == set(old_history)
    assert f"history kept under {archive} deleted ({len(old_history)} operations)" in out
    assert not await held(hub, archive)
    assert set(await held(hub, "x")) == set(new_history)
    assert (await store_of(hub).get_peer("x")).key_id == k2
    with pytest.raises(CliError) as gone:
        await cli(hub, capsys, "peer", "remove", archive)
    assert str(gone.value) == f"no history kept under {archive!r} (see `peerstash ops --json`)"


async def test_the_answering_side_refuses_another_key_under_a_paired_id_with_the_reason(
    make: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="peerstash.peer.links.link")
    hub = await make("hub", instance_id="hub")
    x1 = await make("x1", instance_id="x")
    x2 = await make("x2", instance_id="x")
    assert x1.identity and x2.identity and x2.peers and hub.peer_url
    await pair(x1, hub)
    token = await token_for(hub)
    with pytest.raises(PairingError) as refused:
        await x2.peers.pair(token, hub.peer_url, [])
    said = str(refused.value)
    assert said.startswith("the peer refused: ")
    assert f"instance 'x' is already paired there with key {x1.identity.key_id}" in said
    assert f"this node's key is {x2.identity.key_id}" in said
    assert "the peer refused the request" not in said
    assert any("refused pairing" in r.getMessage() for r in caplog.records)
    assert (await store_of(hub).get_peer("x")).key_id == x1.identity.key_id
    assert len(await store_of(hub).list_tokens()) == 1  # the token was not used up
    assert await store_of(x2).list_peers() == []


async def test_own_token_and_a_namesakes_token_are_told_apart(make: MakeNode) -> None:
    a1 = await make("a1", instance_id="same")
    a2 = await make("a2", instance_id="same")
    assert a1.peers and a2.peer_url and a1.peer_url
    with pytest.raises(PairingError, match="that token was made by this instance"):
        await a1.peers.pair(await token_for(a1), a1.peer_url, [])
    with pytest.raises(PairingError) as refused:
        await a1.peers.pair(await token_for(a2), a2.peer_url, [])
    assert "that token's instance id 'same' is also this instance's id" in str(refused.value)
    assert "made by this instance" not in str(refused.value)
    assert await store_of(a1).list_peers() == [] and await store_of(a2).list_peers() == []


# -- hostile peers ---------------------------------------------------------------------------


async def hello_with(node: Node, hello: proto.Hello) -> proto.Message | None:
    """A stranger's real handshake, then ``hello``; the answer (None if the link just ends)."""
    assert node.peer_url and node.identity
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(node.peer_url + "/v1/sync", max_msg_size=ch.WS_MAX_MSG_SIZE) as ws,
    ):
        send, recv = ch.websocket_transport(ws)
        chan = await ch.initiate(
            Identity.generate(), send, recv, expected_public_key=node.identity.public_key
        )
        # Sent raw, so fields the real encoder's types would catch reach the node as they are.
        fields = {f: getattr(hello, f) for f in hello.__struct_fields__}
        await chan.send_msg(proto.Hello(**fields))
        try:
            return await asyncio.wait_for(chan.recv_msg(), 5)
        except (ch.ChannelError, proto.ProtocolError):
            return None


@pytest.mark.parametrize(
    "name",
    [
        "\x1b]0;owned\x07",
        "line\nbreak",
        "bidi\u202eexe.txt",
        "zero\u200bwidth",
        " lead",
        "x" * 64,
        "x" * 300,  # over the wire bound: not even decoded
    ],
)
async def test_a_hello_with_an_unusable_name_is_refused_and_stores_nothing(
    make: MakeNode, name: str
) -> None:
    node = await make("n", instance_id="n")
    token = parse_token(await token_for(node))
    reply = await hello_with(
        node, proto.Hello(instance_id="stranger", pairing_secret=token.secret, name=name)
    )
    if reply is not None:
        assert isinstance(reply, proto.Error) and reply.code == proto.ErrorCode.PROTOCOL
        assert reply.message.startswith("your name is refused: ")
        assert name not in reply.message  # the text is ours, not an echo of theirs
    assert await store_of(node).list_peers() == []
    assert [t.uses for t in await store_of(node).list_tokens()] == [0]


async def test_a_dialer_with_our_own_instance_id_is_refused_with_the_reason(
    make: MakeNode,
) -> None:
    node = await make("n", instance_id="n")
    token = parse_token(await token_for(node))
    reply = await hello_with(node, proto.Hello(instance_id="n", pairing_secret=token.secret))
    assert isinstance(reply, proto.Error) and reply.code == proto.ErrorCode.FORBIDDEN
    assert "your instance id 'n' is also this node's id" in describe_remote_error(reply)
    assert await store_of(node).list_peers() == []
    assert [t.uses for t in await store_of(node).list_tokens()] == [0]


async def test_a_peer_that_turns_hostile_with_its_name_is_refused_both_ways(
    make: MakeNode,
) -> None:
    """A node whose own code sends a bad name (set behind check_display_name's back)."""
    hub = await make("hub", instance_id="hub")
    pi = await make("pi", instance_id="pi")
    assert hub.peers and pi.peers and hub.peer_url
    # As the answering side, in Welcome: pairing stops, nothing is pinned.
    hub.peers.name = "hub\x1b[8m"
    with pytest.raises(PairingError, match="gave an unusable name"):
        await pi.peers.pair(await token_for(hub), hub.peer_url, [])
    assert await store_of(pi).list_peers() == []
    # Paired, then the answering side sends a bad name on a later Welcome: the link is refused.
    hub.peers.name = "hub"
    await pair(pi, hub)
    hub.peers.name = "x" * 64
    await hub.peers.links["pi"].close("test: reconnect")
    await wait_state(pi, "hub", "auth failed")
    peer = await store_of(pi).get_peer("hub")
    assert peer.name == "hub" and peer.state_reason == "answered with an unusable name"
    # The dialing side sends a bad name in Hello: refused with the reason, its stored name kept.
    hub.peers.name = "hub"
    pi.peers.name = "pi\u202e"
    with pi.bus.subscribe("link") as sub:
        pi.peers.check_now("hub")
        async with asyncio.timeout(10):
            while True:
                ev = await sub.get()
                if isinstance(ev, LinkStateChanged) and ev.state == "auth failed":
                    if ev.reason != "answered with an unusable name":
                        break
    reason = (await store_of(pi).get_peer("hub")).state_reason or ""
    assert "your name is refused: " in reason and "control or invisible" in reason
    assert (await store_of(hub).get_peer("pi")).name == "pi"


# -- small pieces ----------------------------------------------------------------------------


def test_a_refusal_keeps_its_reason_without_control_characters() -> None:
    err = proto.Error(code="forbidden", message="\x1b[2Jno way\r\n" + "y" * 1900)
    text = describe_remote_error(err)
    assert text.startswith("the peer refused: ?[2Jno way??")
    assert len(text) <= len("the peer refused: ") + proto.MAX_ERROR_MESSAGE
    assert text.isprintable()
    assert describe_remote_error(proto.Error(code="forbidden")) == "the peer refused (forbidden)"
    assert describe_remote_error(proto.Error(code="bad_token")).startswith(
        "the pairing token was refused"
    )


def test_check_display_name() -> None:
    for good in ("raspberrypi", "Garage Pi", "Küche", "nas-01 (old)", "x" * 63):
        assert proto.check_display_name(good) == good
    for bad in ("", " x", "x ", "a\tb", "a\x00b", "a\u2028b", "\u202e", "x" * 64, 5, None):
        with pytest.raises(ValueError):
            proto.check_display_name(bad)


def test_labels_tell_same_names_apart() -> None:
    def peer(ident: str, name: str | None) -> Peer:
        return Peer(id=ident, name=name)

    shown = labels(
        [peer("pi-aaaa", "pi"), peer("pi-bbbb", "pi"), peer("nas", "nas"), peer("old", None)],
        "me",
        "laptop",
    )
    assert shown == {
        "pi-aaaa": "pi (pi-aaaa)",
        "pi-bbbb": "pi (pi-bbbb)",
        "nas": "nas",
        "old": "old",
        "me": "laptop",
    }
    # A peer named like us, or like another peer's id, is never mistaken for it.
    shown = labels([peer("b", "me"), peer("c", "b")], "me", "me")
    assert shown == {"b": "me (b)", "c": "b (c)", "me": "me (me)"}


async def test_store_replace_peer_and_key_conflict_on_both_backends(bare_store: Store) -> None:
    """The store's part, on SQLite and PostgreSQL: a name column, an atomic replace that keeps
    the old history apart, and a token redeemed under a pinned id with another key refused."""
    store = bare_store
    old_key, new_key = Identity.generate(), Identity.generate()

    def pinned(ident: Identity, name: str | None) -> Peer:
        return Peer(
            id="x",
            public_key=ident.public_key,
            key_id=ident.key_id,
            role="known_host",
            url="http://x:1",
            grants=[],
            their_grants=[],
            state="offline",
            name=name,
        )

    await store.put_peer(pinned(old_key, "Küche pi"))
    await store.upsert_remote_ops("x", [as_row(record(modno=1)), as_row(record(modno=2))])
    assert (await store.get_peer("x")).name == "Küche pi"
    archive = archive_origin("x", old_key.key_id)
    assert await store.replace_peer(pinned(new_key, None), archive) == 2
    peer = await store.get_peer("x")
    assert peer.key_id == new_key.key_id and peer.name is None
    assert await store.ops_since("x", 0, 10) == []
    assert len(await store.ops_since(archive, 0, 10)) == 2
    # The old key comes back (replaced again), syncs the same operations, and is replaced
    # once more: its archive holds each operation once, the newest copy.
    first = await store.ops_since(archive, 0, 10)
    await store.replace_peer(pinned(old_key, None), archive_origin("x", new_key.key_id))
    await store.upsert_remote_ops("x", [(*r[:1], r[1] + 10, *r[2:]) for r in first])
    assert await store.replace_peer(pinned(new_key, None), archive) == 2
    assert sorted(r[1] for r in await store.ops_since(archive, 0, 10)) == [11, 12]

    token = PairingToken.generate(new_key.key_id, "me")
    row = PairingTokenRow(
        id=token.token_id,
        secret_hash=token.secret_hash,
        label="",
        grants=[],
        max_uses=1,
        expires_at=utcnow() + timedelta(hours=1),
    )
    await store.add_token(row)
    stranger = pinned(old_key, "old")
    stranger.role = "authorized_client"
    with pytest.raises(KeyConflict, match=f"already paired there with key {new_key.key_id}"):
        await store.redeem_token(token.token_id, lambda h: h == token.secret_hash, stranger)
    assert (await store.get_peer("x")).key_id == new_key.key_id
    assert [t.uses for t in await store.list_tokens()] == [0]
