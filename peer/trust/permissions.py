"""Grants one instance gives a peer, with scopes, and how they are evaluated.

Grants (what *A gives B* lets B do, enforced on A):

=================  ==========================================================================
``ops``            receive A's operation history in scope
``config.read``    read A's repos and plans in scope (never secrets)
``config.write``   create and change A's plans and repos in scope
``repos.receive``  push repositories B shares into A's config
``run``            start A's plans, browse A's snapshots and restore on A, in scope
=================  ==========================================================================

Grammar of one entry (what ``--grant`` takes and what :meth:`Grants.to_strings` prints)::

    entry  := GRANT [ ":" scopes ]
    scopes := scope ( "," scope )*
    scope  := "*" | [ "!" ] ( "repo" | "plan" ) ":" ID
    ID     := 1-100 characters, none of them whitespace or ",", not starting with "!",
              and not "*" alone

A bare ``GRANT`` means ``GRANT:*``. Several entries for the same grant are merged (their scopes
are united), so ``--grant ops:* --grant ops:!repo:private`` is the same as
``ops:*,!repo:private``. An ID may contain ":"; only the first ":" after ``repo``/``plan``
separates kind from id.

Evaluation of ``allows(grant, repo=R, plan=P)``: an item is in scope when none of its ids is
excluded and at least one is included (``*`` includes everything). Exclusions always win, and
an exclusion alone grants nothing: ``ops:!repo:x`` allows no operations at all. An item with no
repo and no plan is in scope only under ``*``.

The JSON form (:meth:`Grants.to_dict`) maps each grant to its scope strings, e.g.
``{"ops": ["*", "!repo:private"], "run": ["plan:nightly"]}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["GRANTS", "GrantError", "Grants", "Scope"]

#: Every grant, in the order they are printed.
GRANTS: Final[tuple[str, ...]] = ("ops", "config.read", "config.write", "repos.receive", "run")
_KINDS: Final[tuple[str, ...]] = ("repo", "plan")
_MAX_ID_LENGTH = 100


class GrantError(ValueError):
    """A grant or scope string that cannot be understood; the message says why."""


def _check_grant(name: str) -> str:
    if name not in GRANTS:
        raise GrantError(f"unknown grant {name!r}; known grants are {', '.join(GRANTS)}")
    return name


def _check_id(kind: str, ident: str, scope: str) -> str:
    if not ident:
        raise GrantError(f"scope {scope!r} has an empty {kind} id")
    if ident == "*":
        raise GrantError(f"scope {scope!r}: use '*' alone to mean everything, not '{kind}:*'")
    if ident.startswith("!"):
        raise GrantError(f"scope {scope!r}: put '!' before '{kind}:', not before the id")
    if len(ident) > _MAX_ID_LENGTH:
        raise GrantError(f"scope {scope!r}: the {kind} id is longer than {_MAX_ID_LENGTH}")
    if any(ch.isspace() or ch == "," or not ch.isprintable() for ch in ident):
        raise GrantError(f"scope {scope!r}: ids cannot contain spaces, commas or controls")
    return ident


@dataclass(frozen=True, slots=True)
class Scope:
    """Which repos and plans one grant covers."""

    everything: bool = False
    repos: frozenset[str] = frozenset()
    plans: frozenset[str] = frozenset()
    not_repos: frozenset[str] = frozenset()
    not_plans: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, scopes: Iterable[str]) -> Scope:
        """Parse scope strings such as ``"*"``, ``"repo:r1"``, ``"!plan:p2"``."""
        everything = False
        inc: dict[str, set[str]] = {k: set() for k in _KINDS}
        exc: dict[str, set[str]] = {k: set() for k in _KINDS}
        for raw in scopes:
            if not isinstance(raw, str):
                raise GrantError(f"a scope is text, got {type(raw).__name__}")
            scope = raw.strip()
            if scope == "*":
                everything = True
                continue
            if not scope:
                raise GrantError("empty scope (stray ',' or ':'?)")
            negated = scope.startswith("!")
            body = scope[1:] if negated else scope
            if body == "*":
                raise GrantError("'!*' excludes everything; simply omit the grant instead")
            kind, colon, ident = body.partition(":")
            if not colon or kind not in _KINDS:
                raise GrantError(
                    f"bad scope {scope!r}; a scope is '*', 'repo:ID', 'plan:ID', "
                    f"'!repo:ID' or '!plan:ID'"
                )
            (exc if negated else inc)[kind].add(_check_id(kind, ident, scope))
        return cls(
            everything=everything,
            # Specific includes are redundant under '*': drop them so the form is canonical.
            repos=frozenset() if everything else frozenset(inc["repo"]),
            plans=frozenset() if everything else frozenset(inc["plan"]),
            not_repos=frozenset(exc["repo"]),
            not_plans=frozenset(exc["plan"]),
        )

    def merge(self, other: Scope) -> Scope:
        """The union of two scopes for the same grant (exclusions of either still win)."""
        everything = self.everything or other.everything
        return Scope(
            everything=everything,
            repos=frozenset() if everything else self.repos | other.repos,
            plans=frozenset() if everything else self.plans | other.plans,
            not_repos=self.not_repos | other.not_repos,
            not_plans=self.not_plans | other.not_plans,
        )

    @property
    def grants_anything(self) -> bool:
        """False for an exclusion-only (or empty) scope, which allows nothing."""
        return self.everything or bool(self.repos) or bool(self.plans)

    def allows(self, *, repo: str | None = None, plan: str | None = None) -> bool:
        """Whether an item with these ids is in scope (see the module docstring)."""
        if repo is not None and repo in self.not_repos:
            return False
        if plan is not None and plan in self.not_plans:
            return False
        if self.everything:
            return True
        return (repo is not None and repo in self.repos) or (
            plan is not None and plan in self.plans
        )

    def to_strings(self) -> list[str]:
        """Canonical scope strings: ``*`` first, then includes, then exclusions, each sorted."""
        out = ["*"] if self.everything else []
        out += [f"repo:{r}" for r in sorted(self.repos)]
        out += [f"plan:{p}" for p in sorted(self.plans)]
        out += [f"!repo:{r}" for r in sorted(self.not_repos)]
        out += [f"!plan:{p}" for p in sorted(self.not_plans)]
        return out


class Grants:
    """An immutable set of grants with their scopes.

    Build one with :meth:`parse` (CLI / config strings) or :meth:`from_dict` (stored JSON).
    Equal grants compare equal regardless of the order or splitting they were written in.
    """

    __slots__ = ("_scopes",)

    def __init__(self, scopes: Mapping[str, Scope] | None = None) -> None:
        checked: dict[str, Scope] = {}
        for name, scope in (scopes or {}).items():
            checked[_check_grant(name)] = scope
        self._scopes: dict[str, Scope] = {g: checked[g] for g in GRANTS if g in checked}

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Grants:
        """Parse ``GRANT[:SCOPE[,SCOPE...]]`` entries, merging entries for the same grant."""
        if isinstance(entries, str):
            raise GrantError("Grants.parse takes a list of entries, not one string")
        scopes: dict[str, Scope] = {}
        for raw in entries:
            if not isinstance(raw, str):
                raise GrantError(f"a grant entry is text, got {type(raw).__name__}")
            entry = raw.strip()
            if not entry:
                raise GrantError("empty grant entry")
            name, colon, rest = entry.partition(":")
            _check_grant(name.strip())
            if colon and not rest.strip():
                raise GrantError(f"grant entry {entry!r} ends with ':' but names no scope")
            scope = Scope.parse(rest.split(",")) if colon else Scope(everything=True)
            name = name.strip()
            scopes[name] = scopes[name].merge(scope) if name in scopes else scope
        return cls(scopes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Grants:
        """Read the JSON form written by :meth:`to_dict`; :class:`GrantError` if malformed."""
        if not isinstance(data, Mapping):
            raise GrantError("grants must be a JSON object mapping grant to scope list")
        scopes: dict[str, Scope] = {}
        for name, scope_list in data.items():
            _check_grant(name)
            if isinstance(scope_list, str) or not isinstance(scope_list, list | tuple):
                raise GrantError(f"scopes for {name!r} must be a list of strings")
            if not scope_list:
                raise GrantError(f"grant {name!r} has an empty scope list")
            scopes[name] = Scope.parse(scope_list)
        return cls(scopes)

    @classmethod
    def none(cls) -> Grants:
        """No grants at all."""
        return cls()

    @classmethod
    def stored(cls, entries: Iterable[str] | None, *, whose: str) -> Grants:
        """Grants read back from a peer's row, or none when they no longer parse.

        A row written by a newer version or edited by hand must grant nothing rather than fail
        the sync, request or share that asked: the peer then gets nothing until it is paired
        again, and the log says why (``whose``: e.g. "grants of laptop").
        """
        try:
            return cls.parse(list(entries or []))
        except GrantError as exc:
            import logging

            logging.getLogger(__name__).warning("%s are unreadable (%s); none assumed", whose, exc)
            return cls.none()

    def to_dict(self) -> dict[str, list[str]]:
        """JSON-serialisable form: grant -> canonical scope strings."""
        return {name: scope.to_strings() for name, scope in self._scopes.items()}

    def to_strings(self) -> list[str]:
        """One canonical entry per grant, e.g. ``["ops:*,!repo:x", "run:plan:nightly"]``.

        ``Grants.parse(g.to_strings()) == g`` always holds.
        """
        return [f"{name}:{','.join(scope.to_strings())}" for name, scope in self._scopes.items()]

    def scope(self, grant: str) -> Scope | None:
        """The scope of ``grant``, or None if it is not given at all."""
        return self._scopes.get(_check_grant(grant))

    def allows(self, grant: str, *, repo: str | None = None, plan: str | None = None) -> bool:
        """Whether ``grant`` covers an item with the given repo and/or plan id.

        Raises :class:`GrantError` for an unknown grant name: a typo in the code that checks a
        permission must fail loudly, not silently deny (or, worse, be mistaken for allow).
        """
        scope = self._scopes.get(_check_grant(grant))
        return scope is not None and scope.allows(repo=repo, plan=plan)

    def allows_any(self, grant: str) -> bool:
        """Whether ``grant`` can allow anything at all (given, and not exclusion-only).

        Use it to decide whether to offer a feature to the peer at all, e.g. whether to start
        operation sync; use :meth:`allows` per item to filter what is sent.
        """
        scope = self._scopes.get(_check_grant(grant))
        return scope is not None and scope.grants_anything

    def __iter__(self) -> Iterator[str]:
        """The names of the grants given, in :data:`GRANTS` order."""
        return iter(self._scopes)

    def __contains__(self, grant: object) -> bool:
        return grant in self._scopes

    def __bool__(self) -> bool:
        return bool(self._scopes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Grants):
            return NotImplemented
        return self._scopes == other._scopes

    def __hash__(self) -> int:
        return hash(tuple(self._scopes.items()))

    def __repr__(self) -> str:
        return f"Grants.parse({self.to_strings()!r})"
