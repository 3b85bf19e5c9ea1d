"""Discovery's socket-free parts: the TXT parser (table + fuzz), the instance-name sanitiser,
and the bookkeeping of the peer list fed with resolved records directly.

The TXT record arrives unauthenticated from anyone on the LAN, so the parser is the first line of
defence: it must accept exactly what a Peerstash node announces, reject everything else with a
reason, and never raise, whatever bytes it is given.
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zeroconf.asyncio import AsyncServiceInfo

from peerstash.peer.links.discovery import (
    MAX_TXT_RECORD_BYTES,
    MAX_TXT_VALUE_BYTES,
    SERVICE_TYPE,
    Announcement,
    DiscoveredPeer,
    Discovery,
    _txt_for,
    explain_txt,
    instance_label,
    parse_txt,
)
from peerstash.peer.links.protocol import PROTOCOL_VERSION
from peerstash.peer.trust.identity import Identity

KEY = Identity.from_seed(bytes(range(32))).key_id
V = str(PROTOCOL_VERSION).encode()


def txt(**fields: object) -> dict[bytes, bytes | None]:
    """A TXT properties dict starting from a valid record; ``field=None`` means "key, no value",
    and a field passed as ``...`` is removed."""
    base: dict[bytes, bytes | None] = {b"id": b"nas", b"v": V, b"fp": KEY.encode()}
    for key, value in fields.items():
        if value is ...:
            base.pop(key.encode(), None)
        else:
            base[key.encode()] = value  # type: ignore[assignment]
    return base


# -- accepted ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        pytest.param(txt(), ("nas", PROTOCOL_VERSION, KEY), id="ours"),
        pytest.param(
            txt(id="bürorechner-ö".encode()), ("bürorechner-ö", PROTOCOL_VERSION, KEY), id="utf8-id"
        ),
        pytest.param(txt(v=b"2"), ("nas", 2, KEY), id="other-version-listed"),
        pytest.param(txt(v=b"65535"), ("nas", 65535, KEY), id="max-version"),
        pytest.param(txt(fp=KEY.upper().encode()), ("nas", PROTOCOL_VERSION, KEY), id="fp-upper"),
        pytest.param(
            txt(fp=KEY.replace("-", "").encode()), ("nas", PROTOCOL_VERSION, KEY), id="fp-no-dash"
        ),
        pytest.param(
            {b"ID": b"nas", b"V": V, b"Fp": KEY.encode()},
            ("nas", PROTOCOL_VERSION, KEY),
            id="keys-case-insensitive",
        ),
        pytest.param(
            {**txt(), b"future": b"x" * 50, b"flag": None},
            ("nas", PROTOCOL_VERSION, KEY),
            id="unknown-keys-ignored",
        ),
        pytest.param(
            txt(id=b"x" * 100), ("x" * 100, PROTOCOL_VERSION, KEY), id="longest-instance-id"
        ),
    ],
)
def test_parse_accepts(props: dict[bytes, bytes | None], expected: tuple[str, int, str]) -> None:
    assert parse_txt(props) == expected
    assert explain_txt(props) == (expected, "ok")


# -- rejected ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("props", "reason"),
    [
        pytest.param({}, "missing", id="empty"),
        pytest.param(txt(id=...), "'id' is missing", id="no-id"),
        pytest.param(txt(v=...), "'v' is missing", id="no-v"),
        pytest.param(txt(fp=...), "'fp' is missing", id="no-fp"),
        pytest.param(txt(id=None), "'id' is missing or has no value", id="id-without-value"),
        pytest.param(txt(id=b""), "not a valid instance id", id="id-empty"),
        pytest.param(txt(id=b"\xff\xfe"), "UTF-8", id="id-bad-utf8"),
        pytest.param(txt(id=b"na\xc3"), "UTF-8", id="id-truncated-utf8"),
        pytest.param(txt(id=b"my nas"), "instance id", id="id-space"),
        pytest.param(txt(id=b"nas\x00"), "instance id", id="id-nul"),
        pytest.param(txt(id=b"nas\x1b[31m"), "instance id", id="id-ansi-escape"),
        pytest.param(txt(id="a\u202eb".encode()), "instance id", id="id-bidi-override"),
        pytest.param(txt(id=b"x" * 101), "instance id", id="id-101-chars"),
        pytest.param(txt(id=b"x" * (MAX_TXT_VALUE_BYTES + 1)), "over", id="id-over-cap"),
        pytest.param(txt(v=b""), "version", id="v-empty"),
        pytest.param(txt(v=b"x"), "version", id="v-letters"),
        pytest.param(txt(v=b"1.0"), "version", id="v-dotted"),
        pytest.param(txt(v=b"-1"), "version", id="v-negative"),
        pytest.param(txt(v=b"+1"), "version", id="v-plus"),
        pytest.param(txt(v=b" 1"), "version", id="v-space"),
        pytest.param(txt(v=b"0"), "range", id="v-zero"),
        pytest.param(txt(v=b"65536"), "range", id="v-too-big"),
        pytest.param(txt(v=b"123456"), "version", id="v-too-long"),
        pytest.param(txt(v="\u0661".encode()), "version", id="v-arabic-digit"),
        pytest.param(txt(fp=b""), "key id", id="fp-empty"),
        pytest.param(txt(fp=b"abcd"), "key id", id="fp-short"),
        pytest.param(txt(fp=KEY.replace("a", "1").encode() + b"1"), "key id", id="fp-bad-chars"),
        pytest.param(txt(fp=b"\xff" * 24), "key id", id="fp-bad-ascii"),
        pytest.param({**txt(), b"ID": b"other"}, "twice", id="id-twice-other-case"),
        pytest.param(
            {**txt(), **{f"k{i}".encode(): b"y" * 150 for i in range(4)}},
            f"over {MAX_TXT_RECORD_BYTES} bytes",
            id="record-over-cap",
        ),
        pytest.param(
            {**txt(), **{f"k{i}".encode(): None for i in range(20)}}, "entries", id="many-keys"
        ),
        pytest.param({b"id": "nas"}, "non-bytes", id="str-value"),
        pytest.param({"id": b"nas"}, "non-bytes", id="str-key"),
        pytest.param([(b"id", b"nas")], "not a mapping", id="not-a-dict"),
    ],
)
def test_parse_rejects(props: object, reason: str) -> None:
    result, why = explain_txt(props)
    assert result is None
    assert reason in why
    assert parse_txt(props) is None  # type: ignore[arg-type]


def test_own_announcement_round_trips() -> None:
    """What we announce is exactly what the other side parses (and only id, v, fp)."""
    props = _txt_for(Announcement("nas", KEY, 8443, "My NAS"))
    assert set(props) == {b"id", b"v", b"fp"}
    assert parse_txt(props) == ("nas", PROTOCOL_VERSION, KEY)


@pytest.mark.parametrize(
    "announcement",
    [
        Announcement("my nas", KEY, 1, "x"),  # whitespace in instance id
        Announcement("nas", "not-a-key", 1, "x"),
        Announcement("nas", KEY.upper(), 1, "x"),  # peers would normalise; we must not differ
        Announcement("nas", KEY, 1, "x", version=0),
    ],
)
def test_refuses_to_announce_what_peers_would_drop(announcement: Announcement) -> None:
    with pytest.raises(ValueError):
        _txt_for(announcement)


def test_incompatible_version_is_marked() -> None:
    peer = DiscoveredPeer("nas", KEY, PROTOCOL_VERSION + 1, ("10.0.0.2",), 1, "n", 0.0)
    assert not peer.compatible
    assert DiscoveredPeer("nas", KEY, PROTOCOL_VERSION, ("10.0.0.2",), 1, "n", 0.0).compatible


# -- fuzz ----------------------------------------------------------------------------------------

_bytes = st.binary(max_size=300)
_keys = st.one_of(st.sampled_from([b"id", b"v", b"fp", b"ID", b"V", b"FP", b""]), _bytes)
_values = st.one_of(
    st.none(),
    _bytes,
    st.text(max_size=120).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.integers(min_value=-(10**7), max_value=10**7).map(lambda n: str(n).encode()),
    st.just(KEY.encode()),
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=24))
def test_fuzz_never_raises(props: dict[bytes, bytes | None]) -> None:
    result = parse_txt(props)
    if result is not None:
        instance_id, version, key_id = result
        assert 1 <= version <= 65535
        assert 0 < len(instance_id) <= 100
        assert (
            parse_txt(
                {b"id": instance_id.encode(), b"v": str(version).encode(), b"fp": key_id.encode()}
            )
            == result
        )


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.one_of(st.binary(max_size=8), st.text(max_size=4), st.integers()),
        st.one_of(st.none(), st.binary(max_size=8), st.text(max_size=4), st.integers()),
        max_size=6,
    )
)
def test_fuzz_wrong_types_never_raise(props: dict[object, object]) -> None:
    parse_txt(props)  # type: ignore[arg-type]


# -- instance names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("display", "number", "expected"),
    [
        ("My NAS", 1, "My NAS"),
        ("My NAS", 2, "My NAS (2)"),
        ("bob.local", 1, "bob-local"),
        ("  tabs\tand\nnewlines  ", 1, "tabs and newlines"),
        ("", 1, "peerstash"),
        ("\x00\x01", 3, "peerstash (3)"),
    ],
)
def test_instance_label(display: str, number: int, expected: str) -> None:
    assert instance_label(display, number) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.integers(min_value=1, max_value=99))
def test_instance_label_is_one_dns_label(display: str, number: int) -> None:
    label = instance_label(display, number)
    assert 0 < len(label.encode("utf-8")) <= 63
    assert "." not in label
    assert label.isprintable()
    if number > 1:
        assert label.endswith(f" ({number})")


# -- the list's bookkeeping, fed resolved records directly (no sockets) --------------------------


def _resolved(
    name: str, props: dict[bytes, bytes | None], address: str, port: int = 9000
) -> AsyncServiceInfo:
    return AsyncServiceInfo(
        SERVICE_TYPE,
        f"{name}.{SERVICE_TYPE}",
        port=port,
        properties=props,
        server=f"{name.replace(' ', '-')}.local.",
        parsed_addresses=[address],
    )


def _props(
    instance_id: str, key: str, version: int = PROTOCOL_VERSION
) -> dict[bytes, bytes | None]:
    return {b"id": instance_id.encode(), b"v": str(version).encode(), b"fp": key.encode()}


OTHER = Identity.from_seed(bytes(range(1, 33))).key_id
THIRD = Identity.from_seed(bytes(range(2, 34))).key_id


def test_bookkeeping_clock_self_conflicts_and_renames(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    events: list[tuple[str, str, str, int]] = []

    def on_change(peer: DiscoveredPeer | None, kind: str) -> None:
        assert peer is not None
        events.append((kind, peer.instance_id, peer.key_id, peer.port))
        if peer.instance_id == "crashy":
            raise RuntimeError("bug in the UI")

    d = Discovery(self_instance_id="me", self_key_id=KEY, on_change=on_change, clock=lambda: now[0])

    # Our own record is ignored; the same instance id with another key is a conflict.
    d._apply("me." + SERVICE_TYPE, _resolved("me", _props("me", KEY), "10.0.0.1"))
    assert d.peers() == [] and d.ignored["me." + SERVICE_TYPE] == "self"
    d._apply("me2." + SERVICE_TYPE, _resolved("me2", _props("me", OTHER), "10.0.0.9"))
    assert d.duplicates["me"] == {KEY, OTHER}
    assert events == [("added", "me", OTHER, 9000)]

    # last_seen comes from the injected clock; a refresh with nothing new is not an "updated".
    now[0] = 200.0
    d._apply("nas." + SERVICE_TYPE, _resolved("nas", _props("nas", THIRD), "10.0.0.2"))
    assert d.find("nas", THIRD) is not None and d.find("nas", THIRD).last_seen == 200.0  # type: ignore[union-attr]
    now[0] = 300.0
    d._apply("nas." + SERVICE_TYPE, _resolved("nas", _props("nas", THIRD), "10.0.0.2"))
    assert d.find("nas").last_seen == 300.0  # type: ignore[union-attr]
    assert [e[0] for e in events if e[1] == "nas"] == ["added"]

    # The same service name now announces another identity: old one removed, new one added.
    d._apply("nas." + SERVICE_TYPE, _resolved("nas", _props("backup-box", THIRD), "10.0.0.2"))
    assert [e[:2] for e in events[-2:]] == [("removed", "nas"), ("added", "backup-box")]
    assert "nas" not in d.duplicates

    # A TXT that turns bad removes the entry it used to describe.
    d._apply("nas." + SERVICE_TYPE, _resolved("nas", {b"id": b"backup-box"}, "10.0.0.2"))
    assert d.find("backup-box") is None and events[-1][0] == "removed"

    # A callback that raises is logged and does not stop the list from updating.
    caplog.set_level(logging.ERROR, logger="peerstash.peer.links.discovery")
    d._apply("crashy." + SERVICE_TYPE, _resolved("crashy", _props("crashy", THIRD), "10.0.0.3"))
    assert d.find("crashy") is not None
    assert [r.levelno for r in caplog.records] == [logging.ERROR]

    # No answer at all: a known entry is kept, an unknown name is just ignored.
    d._apply("crashy." + SERVICE_TYPE, None)
    d._apply("ghost." + SERVICE_TYPE, None)
    assert d.find("crashy") is not None and "ghost." + SERVICE_TYPE in d.ignored
