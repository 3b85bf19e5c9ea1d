"""Every admin route that takes a body, fed what neither the CLI nor the desktop would send.

The route table (``peer/api/server.py``) is walked, not copied: a POST or PATCH route missing
from ``schema.BODIES`` fails here, so a new route cannot skip its request struct. Each body
route then gets wrong types for each of its fields, bodies that are not objects, broken JSON,
a 2 MB body, deeply nested junk and unknown fields. The node answers 400 with one sentence
(and the field it is about, when there is one), and what a person would see of its store
(repositories, plans, settings, tokens, peers, operations, remote requests) is unchanged.
Real node, real admin socket, real restic for the repository that is there before.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from peerstash.core.engine import PasswordSpec
from peerstash.peer.api import schema
from peerstash.peer.api.server import make_admin_app
from peerstash.peer.node import Node
from tests.fixtures.nodes import MakeNode, admin

#: Nested this deep, a decoder that recurses would exhaust Python's stack.
DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000

#: Marks an expected field as "this one, or none": a deep value may be refused either way.
NESTED = "?nested"

#: What a person sees of the store: it must read the same after every refused request.
VIEWS = (
    "/v1/repos",
    "/v1/plans",
    "/v1/settings",
    "/v1/tokens",
    "/v1/peers",
    "/v1/ops?limit=1000",
    "/v1/remote/requests",
)


def body_routes() -> list[tuple[str, str]]:
    """(method, path pattern) of every route whose method carries a body."""
    app = make_admin_app(None)  # type: ignore[arg-type]  # the table only; no request is served
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method in ("POST", "PATCH", "PUT") and path:
            out.add((route.method, path))
    return sorted(out)


def test_every_body_route_has_a_schema_entry() -> None:
    routes = body_routes()
    missing = [r for r in routes if r not in schema.BODIES]
    assert missing == [], f"routes with no entry in schema.BODIES: {missing}"
    stale = [r for r in schema.BODIES if r not in routes]
    assert stale == [], f"schema.BODIES names routes that do not exist: {stale}"


def _wrong_value(hint: Any) -> Any:
    """A JSON value of the wrong type for a field of type ``hint`` (``...``: any is right)."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a not in (type(None), msgspec.UnsetType)]
        hint = rest[0] if len(rest) == 1 else hint
    origin = typing.get_origin(hint)
    if hint is str:
        return 5
    if hint is bool:
        return "yes"
    if hint is int:
        return "many"
    if origin is list:
        return "not a list"
    if origin is dict:
        return [1, 2]
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return 7
    return ...


def hostile_bodies(kind: type[schema.Request]) -> list[tuple[str, bytes, str | None, str | None]]:
    """(what, raw body, a text the error must hold or None, the field it must name or None)."""
    bodies: list[tuple[str, bytes, str | None, str | None]] = [
        ("array", b"[1, 2]", "request body must be a JSON object", None),
        ("string", b'"text"', "request body must be a JSON object", None),
        ("null", b"null", "request body must be a JSON object", None),
        ("number", b"42", "request body must be a JSON object", None),
        ("broken JSON", b"{not json", "request body is not valid JSON", None),
        ("bad UTF-8", b"\xff\xfe\x00garbage", "request body is not valid JSON", None),
        ("lone surrogate", b'{"\\ud800": 1}', "request body is not valid JSON", None),
        ("2 MB", b'{"x": "' + b"a" * (2 << 20) + b'"}', "request body too large", None),
        ("deep array", DEEP_ARRAY, None, None),
        ("unknown field", b'{"zz_not_a_field": 1}', "zz_not_a_field", None),
        ("unknown, deep", b'{"zz_junk": ' + DEEP_ARRAY + b"}", "zz_junk", None),
        ("unknown name with a newline", b'{"a\\nb": 1}', None, None),
        ("unknown long name", b'{"' + b"n" * 5000 + b'": 1}', None, None),
    ]
    for f in msgspec.structs.fields(kind):
        wrong = _wrong_value(f.type)
        if wrong is not ...:
            raw = msgspec.json.encode({f.name: wrong})
            bodies.append((f"{f.name} of the wrong type", raw, f.name, f.name))
        else:
            raw = b'{"' + f.name.encode() + b'": ' + DEEP_ARRAY + b"}"
            bodies.append((f"{f.name} nested deep", raw, None, NESTED))
        # A field that takes an object gets one nested past any stack.
        if wrong == [1, 2] or wrong is ...:
            raw = b'{"' + f.name.encode() + b'": ' + DEEP_OBJECT + b"}"
            bodies.append((f"{f.name} as a deep object", raw, None, f.name + NESTED))
    return bodies


async def raw_request(node: Node, method: str, path: str, raw: bytes) -> tuple[int, Any]:
    conn = aiohttp.UnixConnector(path=str(node.socket_path))
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(connector=conn, timeout=timeout) as s,
        s.request(
            method, f"http://node{path}", data=raw, headers={"Content-Type": "application/json"}
        ) as r,
    ):
        return r.status, await r.json()


async def store_view(node: Node) -> dict[str, Any]:
    out = {}
    for path in VIEWS:
        status, res = await admin(node, "GET", path)
        assert status == 200, (path, res)
        out[path] = res
    return out


ROUTES = [(m, p) for (m, p), kind in sorted(schema.BODIES.items()) if kind is not None]


@pytest.mark.parametrize(("method", "pattern"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
async def test_hostile_bodies_get_one_sentence_and_change_nothing(
    make_node: MakeNode, tmp_path: Path, method: str, pattern: str
) -> None:
    kind = schema.BODIES[(method, pattern)]
    assert kind is not None
    node = await make_node("adm")
    engine = node.engine
    assert engine
    # Something in the store to lose: a repository, a plan, a token, a setting.
    pw = PasswordSpec("secret", value="pw-hostile-bodies-1")
    await engine.add_repo("main", str(tmp_path / "repo"), pw, init=True)
    await engine.add_plan("home", repo_id="main", paths=[str(tmp_path)])
    status, _ = await admin(node, "POST", "/v1/tokens", {"label": "kept"})
    assert status == 201
    status, _ = await admin(node, "POST", "/v1/settings", {"key": "peer_history_days", "value": 9})
    assert status == 200
    before = await store_view(node)

    # The path's own parts name what exists, so only the body can be what is refused.
    path = re.sub(r"\{(\w+)\}", lambda m: "home" if "plans" in pattern else "main", pattern)
    for what, raw, says, field in hostile_bodies(kind):
        status, res = await raw_request(node, method, path, raw)
        assert status == 400, (what, status, res)
        assert set(res) <= {"error", "field"} and isinstance(res["error"], str), (what, res)
        sentence = res["error"]
        assert "\n" not in sentence and 0 < len(sentence) <= 200, (what, sentence[:300])
        if says is not None:
            assert says in sentence, (what, sentence)
        if field is not None and field.endswith(NESTED):
            # Refused as too deep (the body as a whole), or at the field's first wrong value.
            assert res.get("field") in (None, field.removesuffix(NESTED) or None), (what, res)
        else:
            assert res.get("field") == field, (what, res)

    assert await store_view(node) == before
    status, res = await admin(node, "GET", "/v1/status")  # and the node is still fine
    assert status == 200 and res["instance_id"] == "adm"


async def test_nesting_past_the_stack_is_one_sentence(make_node: MakeNode) -> None:
    """A value nested 100,000 deep where any JSON is taken (a setting's value, a retention
    policy): refused as such, not a crash of the decoder or a 500."""
    node = await make_node("adm")
    before = await store_view(node)
    for path, raw in (
        ("/v1/settings", b'{"key": "listen", "value": ' + DEEP_ARRAY + b"}"),
        ("/v1/plans", b'{"id": "p", "repo": "main", "retention": ' + DEEP_OBJECT + b"}"),
    ):
        status, res = await raw_request(node, "POST", path, raw)
        assert (status, res) == (400, {"error": "request body is nested too deeply"})
    assert await store_view(node) == before
