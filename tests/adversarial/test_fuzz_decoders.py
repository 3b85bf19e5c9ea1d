"""Fuzzing every decoder a peer's bytes reach, with hypothesis, bounded to a few seconds.

A peer controls the bytes of each frame, and inside a decoded ``Call`` the values of its
arguments. Whatever it sends, each decoder must answer with its own declared error (so the
caller turns it into a clear refusal) and never with a crash or an unbounded loop:

* the handshake and link-message decoders: random bytes, and msgpack maps tagged with every
  real message type and carrying its real field names with random values (the shape most
  likely to get past the first checks), operation records as arrays included;
* the RPC argument decoders the answering side uses (``arg``, passwords, URIs, environment,
  string lists), and the receiver's operation-row check (``_accept``);
* the strings a peer's text goes through on the way to a screen (``printable``), grants and
  pairing tokens.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerstash.core.text import is_unsafe_char, printable
from peerstash.peer.links import protocol as proto
from peerstash.peer.links.rpc import CallError, arg
from peerstash.peer.services.opsync import _accept
from peerstash.peer.services.remote_config import _env_arg, _str_list, check_peer_uri, peer_password
from peerstash.peer.trust.permissions import GrantError, Grants
from peerstash.peer.trust.tokens import TokenFormatError, parse_token

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=60)
    | st.binary(max_size=60)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)

MESSAGE_TYPES: list[type[msgspec.Struct]] = [
    *proto.Message.__args__,  # type: ignore[attr-defined]
]
HANDSHAKE_TYPES: list[type[msgspec.Struct]] = [
    *proto.HandshakeMessage.__args__,  # type: ignore[attr-defined]
]


def tag_of(t: type[msgspec.Struct]) -> str:
    return str(t.__struct_config__.tag)


def typed_map(types: list[type[msgspec.Struct]]) -> st.SearchStrategy[bytes]:
    """A msgpack map with a real tag and (some of) that type's real field names."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        t = draw(st.sampled_from(types))
        names = list(t.__struct_fields__)
        chosen = draw(st.lists(st.sampled_from(names), max_size=len(names), unique=True))
        body: dict[str, Any] = {"t": tag_of(t)}
        for name in chosen:
            body[name] = draw(values | op_record_arrays if name == "ops" else values)
        return msgspec.msgpack.encode(body)

    return build()


op_record_arrays = st.lists(st.lists(values, min_size=15, max_size=20), max_size=3)


@FUZZ
@given(st.binary(max_size=4096) | typed_map(MESSAGE_TYPES) | typed_map(HANDSHAKE_TYPES))
def test_the_frame_decoders_raise_only_protocol_error(data: bytes) -> None:
    for decoder in (proto.decode, proto.decode_handshake):
        try:
            decoder(data)
        except proto.ProtocolError:
            pass
    assert proto.peek_version(data) is None or isinstance(proto.peek_version(data), int)


@FUZZ
@given(typed_map(MESSAGE_TYPES))
def test_a_decoded_message_keeps_its_bounds(data: bytes) -> None:
    """What does decode keeps the limits the rest of the code relies on."""
    try:
        msg = proto.decode(data)
    except proto.ProtocolError:
        return
    if isinstance(msg, proto.Hello | proto.Welcome):
        assert 1 <= len(msg.instance_id) <= 100
    if isinstance(msg, proto.ReplyChunk):
        assert len(msg.items) <= proto.MAX_CHUNK_ITEMS
    if isinstance(msg, proto.OpsBatch):
        assert len(msg.ops) <= proto.MAX_OPS_PER_BATCH


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["plan", "repo", "env", "include", "password", "x"]), values, max_size=5
    )
)
def test_rpc_argument_decoders_raise_only_call_error(args: dict[str, Any]) -> None:
    checks = (
        lambda: arg(args, "plan"),
        lambda: arg(args, "repo", str, default=None),
        lambda: arg(args, "include", (list, tuple), default=[]),
        lambda: _env_arg(args),
        lambda: _str_list(args, "include"),
        lambda: peer_password(args.get("password")),
        lambda: check_peer_uri(args["repo"]) if isinstance(args.get("repo"), str) else None,
    )
    for check in checks:
        try:
            check()
        except CallError as exc:
            assert exc.code and exc.message


ids = st.text(min_size=1, max_size=40) | st.sampled_from(["01JABCDEF", "p1", "r1", "nas.2"])
times = st.sampled_from(
    ["2026-11-23 05:05:41.906297", "2026-02-30 05:05:41.906297", "2026-11-23T05:05:41.906297"]
) | st.text(min_size=26, max_size=26)
kinds = st.sampled_from(["backup", "forget", "prune", "check", "restore"]) | st.text(max_size=20)
statuses = st.sampled_from(["success", "error", "running", "queued"]) | st.text(max_size=20)
counts = st.integers(min_value=0, max_value=2**40)
op_rows = st.tuples(
    ids, counts, st.text(max_size=40), kinds, statuses, st.none() | ids, st.none() | ids,
    times, st.none() | times, st.none() | times, counts, counts, counts, counts,
    st.none() | st.integers(min_value=0, max_value=2**31 - 1),
    st.sampled_from(["{}", '{"a": [1, {"b": 2}]}', "[]", "{"]) | st.text(max_size=40),
    st.none() | st.text(max_size=64), st.none() | st.text(max_size=200),
)  # fmt: skip


@FUZZ
@given(st.lists(op_rows, max_size=4))
def test_received_operation_rows_are_checked_without_crashing(rows: list[tuple[Any, ...]]) -> None:
    """Rows shaped like the owner's (so they pass the decoder) with hostile content."""
    try:
        records = msgspec.convert(rows, list[proto.OpRecord])
    except msgspec.ValidationError:
        return
    accepted, skipped = _accept(records)
    assert len(accepted) + skipped == len(records)
    for row in accepted:
        for value in (row[0], row[2], row[5], row[6], row[16]):
            assert value is None or not any(is_unsafe_char(c) for c in value)


@FUZZ
@given(st.text(max_size=200))
def test_printable_output_carries_no_unsafe_character(text: str) -> None:
    shown = printable(text)
    assert not any(is_unsafe_char(c) for c in shown)
    if not any(is_unsafe_char(c) for c in text):
        assert shown == text


@FUZZ
@given(st.lists(st.text(max_size=40), max_size=5), st.text(max_size=300))
def test_grants_and_tokens_refuse_with_their_own_errors(entries: list[str], token: str) -> None:
    try:
        Grants.parse(entries)
    except GrantError:
        pass
    try:
        parsed = parse_token(token)
    except TokenFormatError:
        return
    assert printable(parsed.instance_id) == parsed.instance_id
