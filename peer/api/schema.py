"""The admin API's requests and events as typed structs (msgspec).

One request struct per route that takes a body (:data:`BODIES` says which route takes which,
and which take none): :func:`peerstash.peer.api.common.read_body` decodes a body straight into
it, so a handler never sees a value of the wrong type, and :func:`refusal` turns msgspec's
complaint into our one sentence naming the field ("field 'id' must be a string", "missing
field 'password'"). Unknown fields are refused: a typo is an error, not silently ignored. The
CLI and the desktop can build their bodies from the same structs (``msgspec.to_builtins``).

The events of ``/v1/events`` are a tagged union (``"type"`` first) of :class:`EventLine`
structs; the records they carry are :mod:`peerstash.core.records`. Both encode to exactly the
JSON the routes wrote before the structs.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Union

import msgspec
from msgspec import UNSET, UnsetType

from peerstash.core.records import OpRecord, RemoteRequestRecord


class Request(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every request body: keyword-only, unknown fields refused.

    ``wording`` replaces the generic sentence for a field: key ``"name"`` for a value of the
    wrong type, ``"name:missing"`` when it is absent. ``unknown`` is the sentence for an
    unknown field (``{}`` is its name).
    """

    wording: ClassVar[Mapping[str, str]] = {}
    unknown: ClassVar[str] = "unknown field {}"
    #: Fields that can hold a secret (a password, a token, credentials in a URI or in an
    #: environment variable): ``repr`` shows them as ``<hidden>`` (a mapping's keys stay), so
    #: a body that reaches a log line, a traceback or a test failure does not carry them. What
    #: is sent and decoded is unaffected.
    hidden: ClassVar[frozenset[str]] = frozenset()

    def __repr__(self) -> str:
        parts = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if value is UNSET:
                continue
            if name in self.hidden and value is not None:
                shown = (
                    repr(dict.fromkeys(value, "<hidden>"))
                    if isinstance(value, dict)
                    else "<hidden>"
                )
            else:
                shown = repr(value)
            parts.append(f"{name}={shown}")
        return f"{type(self).__name__}({', '.join(parts)})"


class Password(Request):
    """Where a repository's password comes from: ``secret`` (with ``value``, stored encrypted),
    ``file``, ``env`` or ``command`` (with ``ref``). The engine checks the combination."""

    hidden: ClassVar[frozenset[str]] = frozenset({"value"})

    source: str
    ref: str | None = None
    value: str | None = None


class AddRepo(Request):
    """``POST /v1/repos`` (and ``/v1/peers/{id}/repos``)."""

    wording: ClassVar[Mapping[str, str]] = {
        "password": "missing field 'password' (an object with 'source')",
        "password:missing": "missing field 'password' (an object with 'source')",
        "env": "field 'env' must map names to strings",
    }
    hidden: ClassVar[frozenset[str]] = frozenset({"uri", "env"})

    id: str
    uri: str
    password: Password
    env: dict[str, str] = {}
    options: list[str] = []
    init: bool = False


class EditRepo(Request):
    """``PATCH /v1/repos/{id}`` (and a peer's): only the fields given change."""

    wording: ClassVar[Mapping[str, str]] = {
        "password": "field 'password' must be an object with 'source'",
        "env": "field 'env' must map names to strings",
    }
    unknown: ClassVar[str] = "cannot change {} of a repository"
    hidden: ClassVar[frozenset[str]] = frozenset({"uri", "env"})

    uri: str | UnsetType | None = UNSET
    password: Password | UnsetType = UNSET
    env: dict[str, str] | UnsetType | None = UNSET
    options: list[str] | UnsetType = UNSET


class ShareRepo(Request):
    """``POST /v1/repos/{id}/share``: ``client_uri`` absent keeps the one set before, ``""``
    clears it."""

    client_uri: str | None = None


class AddPlan(Request):
    """``POST /v1/plans`` (and ``/v1/peers/{id}/plans``). The engine checks the meaning (the
    schedule parses, the repository exists, the paths are absolute)."""

    wording: ClassVar[Mapping[str, str]] = {"retention": "field 'retention' must be an object"}

    id: str
    repo: str
    paths: list[str] = []
    excludes: list[str] = []
    schedule: str | None = None
    every: str | None = None
    retention: dict[str, Any] = {}
    backup_now: bool = True


class EditPlan(Request):
    """``PATCH /v1/plans/{id}`` (and a peer's): only the fields given change; ``null`` or
    ``""`` for ``repo``/``schedule``/``every`` clears."""

    wording: ClassVar[Mapping[str, str]] = {"retention": "field 'retention' must be an object"}
    unknown: ClassVar[str] = "cannot change {} of a plan"

    repo: str | UnsetType | None = UNSET
    schedule: str | UnsetType | None = UNSET
    every: str | UnsetType | None = UNSET
    paths: list[str] | UnsetType = UNSET
    excludes: list[str] | UnsetType = UNSET
    retention: dict[str, Any] | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET

    def changes(self) -> dict[str, Any]:
        """The fields given, as the engine's ``update_plan`` takes them."""
        out: dict[str, Any] = {}
        for key in ("repo", "schedule", "every"):
            value = getattr(self, key)
            if value is not UNSET:
                out[key] = value or ""
        for key in ("paths", "excludes", "retention", "enabled"):
            value = getattr(self, key)
            if value is not UNSET:
                out[key] = value
        return out


class Restore(Request):
    """``POST /v1/repos/{id}/restore``: a snapshot, or the paths ``include`` of it, into
    ``target`` (an absolute path; the engine checks)."""

    unknown: ClassVar[str] = "unknown field(s) for a restore: {}"

    snapshot: str
    target: str
    include: list[str] = []


class RestorePreview(Restore):
    """``POST /v1/repos/{id}/restore/preview``: the same fields as a restore."""

    unknown: ClassVar[str] = "unknown field(s) for a restore preview: {}"


class Forget(Request):
    """``POST /v1/repos/{id}/forget``: a dry run answers what would go; ``expect`` (the ids a
    person confirmed) makes a real forget remove nothing beyond them."""

    wording: ClassVar[Mapping[str, str]] = {"dry_run": "dry_run is true or false"}
    unknown: ClassVar[str] = "unknown field(s) for forget: {}"

    plan: str | None = None
    dry_run: bool = False
    expect: list[str] | UnsetType = UNSET


class Maintenance(Request):
    """``POST /v1/repos/{id}/prune|check|unlock``: ``all`` removes every lock (unlock only;
    the CLI sends it to all three)."""

    all: bool = False


class Pause(Request):
    """``POST /v1/schedules/pause``."""

    paused: bool = True


class Gc(Request):
    """``POST /v1/gc``: forget finished operations older than this many days."""

    wording: ClassVar[Mapping[str, str]] = {
        "older_than_days": "older_than_days must be a positive whole number"
    }

    older_than_days: typing.Annotated[int, msgspec.Meta(ge=1)] = 90


class Rename(Request):
    """``POST /v1/rename``: ``null`` is the host name again."""

    name: str | None = None


class Setting(Request):
    """``POST /v1/settings``: the value's type depends on the key (checked by the route)."""

    key: str
    value: Any = None


class CreateToken(Request):
    """``POST /v1/tokens``."""

    wording: ClassVar[Mapping[str, str]] = {"max_uses": "max_uses must be a whole number"}

    label: str | None = None
    ttl: str | None = None
    max_uses: int = 1
    grants: list[str] = []


class AddPeer(Request):
    """``POST /v1/peers``: pair with a token from the other node."""

    hidden: ClassVar[frozenset[str]] = frozenset({"token"})

    token: str
    url: str | None = None
    grants: list[str] = []
    replace: bool = False


class Grants(Request):
    """``PATCH /v1/peers/{id}``: what we grant that peer, the whole list."""

    grants: list[str] = []


class RemoteRun(Request):
    """``POST /v1/remote/run``: ask a peer to back up one of its plans."""

    peer: str
    plan: str


class RemoteRestore(Request):
    """``POST /v1/remote/restore``: ask a peer to restore into a folder on that peer."""

    peer: str
    repo: str
    snapshot: str
    target: str
    include: list[str] = []


class Query(msgspec.Struct, kw_only=True):
    """Base of the typed query parameters of a GET route (decoded from their text with
    :func:`peerstash.peer.api.common.read_query`); unknown parameters are ignored, as before.
    ``wording`` as for :class:`Request`, plus ``"name:range"`` for a number out of range."""

    wording: ClassVar[Mapping[str, str]] = {}
    unknown: ClassVar[str] = "unknown parameter {}"


class OpsQuery(Query):
    """``GET /v1/ops``: newest first, ``limit`` of them, older than the operation ``before``
    (its pk) when given, filtered by each field given."""

    wording: ClassVar[Mapping[str, str]] = {
        "before": "before must be an operation's pk (a whole number)",
        "limit": "limit must be a whole number",
        "limit:range": "limit must be between 1 and 100000",
    }

    before: typing.Annotated[int, msgspec.Meta(ge=0)] | None = None
    limit: typing.Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 100
    origin: str | None = None
    plan: str | None = None
    repo: str | None = None
    status: str | None = None
    kind: str | None = None


#: Every admin route that takes a method with a body (POST, PATCH), with its request struct, or
#: ``None`` when it reads no body. A route missing here fails the hostile-body test.
BODIES: dict[tuple[str, str], type[Request] | None] = {
    ("POST", "/v1/repos"): AddRepo,
    ("PATCH", "/v1/repos/{id}"): EditRepo,
    ("POST", "/v1/repos/{id}/reveal-password"): None,
    ("POST", "/v1/repos/{id}/share"): ShareRepo,
    ("POST", "/v1/repos/{id}/unshare"): None,
    ("POST", "/v1/repos/{id}/restore"): Restore,
    ("POST", "/v1/repos/{id}/restore/preview"): RestorePreview,
    ("POST", "/v1/repos/{id}/forget"): Forget,
    ("POST", "/v1/repos/{id}/prune"): Maintenance,
    ("POST", "/v1/repos/{id}/check"): Maintenance,
    ("POST", "/v1/repos/{id}/unlock"): Maintenance,
    ("POST", "/v1/plans"): AddPlan,
    ("PATCH", "/v1/plans/{id}"): EditPlan,
    ("POST", "/v1/plans/{id}/backup"): None,
    ("POST", "/v1/ops/{id}/cancel"): None,
    ("POST", "/v1/schedules/pause"): Pause,
    ("POST", "/v1/gc"): Gc,
    ("POST", "/v1/ui/present"): None,
    ("POST", "/v1/rename"): Rename,
    ("POST", "/v1/settings"): Setting,
    ("POST", "/v1/tokens"): CreateToken,
    ("POST", "/v1/peers"): AddPeer,
    ("POST", "/v1/peers/{id}/check"): None,
    ("PATCH", "/v1/peers/{id}"): Grants,
    ("POST", "/v1/peers/{id}/plans"): AddPlan,
    ("PATCH", "/v1/peers/{id}/plans/{plan}"): EditPlan,
    ("POST", "/v1/peers/{id}/repos"): AddRepo,
    ("PATCH", "/v1/peers/{id}/repos/{repo}"): EditRepo,
    ("POST", "/v1/remote/run"): RemoteRun,
    ("POST", "/v1/remote/restore"): RemoteRestore,
}


# -- refusals: msgspec's complaint as our sentence ----------------------------------------------

_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_QUOTED = re.compile(r"`([^`]*)`")
_UNKNOWN = "Object contains unknown field `"


def refusal(kind: type[Request | Query], exc: msgspec.ValidationError) -> tuple[str, str | None]:
    """The sentence and the field (its top-level name; ``None`` for the body as a whole) for a
    body that does not decode as ``kind``."""
    m = _AT.match(str(exc))
    what, path = (m.group("what"), m.group("path") or "") if m else (str(exc), "")
    names = [n for n in re.split(r"\.|\[[^\]]*\]", path) if n]
    if what.startswith("Object missing required field"):
        missing = _QUOTED.search(what)
        name = ".".join([*names, missing.group(1) if missing else "?"])
        top = name.split(".")[0]
        return kind.wording.get(f"{name}:missing", f"missing field {name!r}"), top
    if what.startswith(_UNKNOWN):
        # The name is the client's: shown only when short and printable (one line, always).
        given = what[len(_UNKNOWN) : -1]
        shown = given if given.isprintable() and len(given) <= 64 else repr(given[:64])
        template = kind.unknown if not names else Request.unknown
        return template.format(".".join([*names, shown])), None
    if not names:
        return "request body must be a JSON object", None
    name, top = ".".join(names), names[0]
    if len(names) == 1 and what.endswith("got `null`") and _required(kind, top):
        # As before the structs: a required field sent as null is a missing one.
        return kind.wording.get(f"{top}:missing", f"missing field {top!r}"), top
    if len(names) == 1 and f"{top}:range" in kind.wording and re.search(r"[<>]=? ?-?\d", what):
        return kind.wording[f"{top}:range"], top
    if len(names) == 1 and top in kind.wording:
        return kind.wording[top], top
    return f"field {name!r} must be {_describe(kind, names)}", top


def _required(kind: type[msgspec.Struct], name: str) -> bool:
    return any(f.name == name and f.required for f in msgspec.structs.fields(kind))


def _describe(kind: type[msgspec.Struct], names: list[str]) -> str:
    """What a field holds, in words ("a string", "a list of strings"), from the struct."""
    hints = typing.get_type_hints(kind)
    hint: Any = hints.get(names[0], Any)
    for name in names[1:]:
        inner = _strip(hint)
        if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
            hint = typing.get_type_hints(inner).get(name, Any)
        else:
            break
    return _words(_strip(hint))


def _strip(hint: Any) -> Any:
    """``T`` of ``T | None | UnsetType`` (and of ``Annotated[T, ...]``)."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a not in (type(None), UnsetType)]
        if len(rest) == 1:
            return _strip(rest[0])
    return hint


def _words(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if hint is str:
        return "a string"
    if hint is bool:
        return "true or false"
    if hint is int:
        return "a whole number"
    if origin is list:
        return "a list of strings" if typing.get_args(hint) == (str,) else "a list"
    if origin is dict or (isinstance(hint, type) and issubclass(hint, msgspec.Struct)):
        return "an object"
    return "valid"


# -- events: the lines of /v1/events -----------------------------------------------------------


class EventLine(msgspec.Struct, tag_field="type", kw_only=True):
    """One line of ``/v1/events``: ``{"type": ..., ...}``."""


class Ready(EventLine, tag="ready"):
    """The subscription is live: whatever the client does after this line is seen."""


class OperationEvent(EventLine, tag="operation"):
    op: OpRecord


class LinkEvent(EventLine, tag="link"):
    peer: str
    state: str
    reason: str | None


class ConfigEvent(EventLine, tag="config"):
    what: str
    id: str | None


class StaleEvent(EventLine, tag="stale"):
    plan: str
    last_success_at: str | None


class NoticeEvent(EventLine, tag="notice"):
    level: str
    message: str


class PresentEvent(EventLine, tag="present"):
    """A second launch asked the open window to come up."""


class SnapshotsEvent(EventLine, tag="snapshots"):
    repo: str
    reason: str
    origin: str | None


class SharesEvent(EventLine, tag="shares"):
    origin: str
    added: list[str]
    updated: list[str]
    removed: list[str]
    disabled_plans: list[str]
    skipped: dict[str, Any]
    refused: list[Any]


class OpsDeletedEvent(EventLine, tag="ops_deleted"):
    """Operations gone (our gc, or a peer's reaching us): views drop them by reloading."""

    origin: str
    count: int


class RemoteEvent(EventLine, tag="remote"):
    #: A remote request as ``/v1/remote/requests`` gives it.
    request: RemoteRequestRecord


ServerEvent = (
    Ready
    | OperationEvent
    | LinkEvent
    | ConfigEvent
    | StaleEvent
    | NoticeEvent
    | PresentEvent
    | SnapshotsEvent
    | SharesEvent
    | OpsDeletedEvent
    | RemoteEvent
)
