"""Grants: parsing, merging, canonical forms and evaluation (exclusions win)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerstash.peer.trust.permissions import GRANTS, GrantError, Grants, Scope

# -- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "canonical"),
    [
        ([], []),
        (["ops"], ["ops:*"]),
        (["ops:*"], ["ops:*"]),
        (["run:plan:nightly"], ["run:plan:nightly"]),
        (["config.read:repo:r1,!plan:p2"], ["config.read:repo:r1,!plan:p2"]),
        (["config.read:!plan:p2,repo:r1"], ["config.read:repo:r1,!plan:p2"]),
        (["ops:*", "ops:!repo:private"], ["ops:*,!repo:private"]),
        (["ops:repo:a", "ops:repo:b", "ops:plan:c"], ["ops:repo:a,repo:b,plan:c"]),
        (["ops:repo:a", "ops"], ["ops:*"]),  # '*' subsumes specific includes
        (["ops:repo:a,*,!repo:a"], ["ops:*,!repo:a"]),
        (["run:plan:x", "ops", "repos.receive"], ["ops:*", "repos.receive:*", "run:plan:x"]),
        (["ops:!repo:x"], ["ops:!repo:x"]),  # kept: merging may add includes later
        ([" ops : * "], ["ops:*"]),
        (["ops:repo:a:b"], ["ops:repo:a:b"]),  # ':' inside an id is fine
        (["ops:repo:r1,repo:r1"], ["ops:repo:r1"]),
    ],
)
def test_parse_canonical(entries: list[str], canonical: list[str]) -> None:
    grants = Grants.parse(entries)
    assert grants.to_strings() == canonical
    assert Grants.parse(grants.to_strings()) == grants


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["opz"], "unknown grant 'opz'"),
        (["config"], "unknown grant"),
        (["run:host:x"], "bad scope"),
        (["run:plan"], "bad scope"),
        (["run:plan:"], "empty plan id"),
        (["run:"], "names no scope"),
        (["run:*,"], "empty scope"),
        (["run:,*"], "empty scope"),
        (["run:!*"], "omit the grant"),
        (["run:repo:*"], "use '\\*' alone"),
        (["run:!!repo:x"], "bad scope"),
        (["run:repo:!x"], "put '!' before"),
        (["run:repo:a b"], "spaces"),
        (["run:repo:" + "x" * 101], "longer than 100"),
        ([""], "empty grant entry"),
        (["*"], "unknown grant"),
        ([":ops"], "unknown grant"),
    ],
)
def test_parse_errors(entries: list[str], message: str) -> None:
    with pytest.raises(GrantError, match=message):
        Grants.parse(entries)


def test_parse_refuses_a_bare_string() -> None:
    with pytest.raises(GrantError, match="list"):
        Grants.parse("ops")
    with pytest.raises(GrantError):
        Grants.parse([1])


def test_unknown_grant_error_lists_the_known_ones() -> None:
    with pytest.raises(GrantError) as info:
        Grants.parse(["backup"])
    for name in GRANTS:
        assert name in str(info.value)


# -- dict / JSON form ---------------------------------------------------------------------


def test_dict_round_trip_through_json() -> None:
    grants = Grants.parse(["ops:*,!repo:private", "run:plan:nightly", "config.read"])
    data = grants.to_dict()
    assert data == {
        "ops": ["*", "!repo:private"],
        "config.read": ["*"],
        "run": ["plan:nightly"],
    }
    assert Grants.from_dict(json.loads(json.dumps(data))) == grants


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"opz": ["*"]},
        {"ops": "*"},
        {"ops": []},
        {"ops": [1]},
        {"ops": ["host:x"]},
        {"ops": None},
    ],
)
def test_from_dict_errors(data: object) -> None:
    with pytest.raises(GrantError):
        Grants.from_dict(data)


def test_equality_ignores_how_it_was_written() -> None:
    a = Grants.parse(["ops:repo:a", "ops:!plan:b", "run"])
    b = Grants.parse(["run:*", "ops:!plan:b,repo:a"])
    assert a == b and hash(a) == hash(b)
    assert a != Grants.parse(["run"])
    assert Grants.none() == Grants.parse([]) and not Grants.none()
    assert list(a) == ["ops", "run"]
    assert "ops" in a and "config.write" not in a
    assert eval(repr(a), {"Grants": Grants}) == a


# -- evaluation ---------------------------------------------------------------------------

G = Grants.parse(
    [
        "ops:*,!repo:secret,!plan:private",
        "config.read:repo:r1,!plan:p2",
        "config.write:plan:p1",
        "run:!plan:x",
    ]
)


@pytest.mark.parametrize(
    ("grant", "repo", "plan", "expected"),
    [
        # '*' with exclusions
        ("ops", "r1", "p1", True),
        ("ops", None, None, True),
        ("ops", "secret", None, False),
        ("ops", "secret", "p1", False),  # an excluded repo wins over '*'
        ("ops", "r1", "private", False),  # so does an excluded plan
        ("ops", None, "private", False),
        # specific includes with an exclusion
        ("config.read", "r1", None, True),
        ("config.read", "r1", "p1", True),
        ("config.read", "r1", "p2", False),  # excluded plan wins over included repo
        ("config.read", "r2", None, False),
        ("config.read", None, None, False),  # nothing identifies it as in scope
        ("config.read", None, "p1", False),
        # included by plan only
        ("config.write", "anything", "p1", True),
        ("config.write", "r1", None, False),
        ("config.write", None, "p2", False),
        # an exclusion alone grants nothing
        ("run", None, None, False),
        ("run", "r1", "y", False),
        ("run", None, "x", False),
        # not given at all
        ("repos.receive", "r1", "p1", False),
    ],
)
def test_allows_table(grant: str, repo: str | None, plan: str | None, expected: bool) -> None:
    assert G.allows(grant, repo=repo, plan=plan) is expected


def test_allows_any() -> None:
    assert G.allows_any("ops")
    assert G.allows_any("config.read")
    assert G.allows_any("config.write")
    assert not G.allows_any("run")  # exclusion only
    assert not G.allows_any("repos.receive")  # not given


def test_unknown_grant_in_a_check_is_an_error() -> None:
    with pytest.raises(GrantError):
        G.allows("op")
    with pytest.raises(GrantError):
        G.allows_any("admin")
    with pytest.raises(GrantError):
        G.scope("x")


def test_merging_adds_includes_to_an_exclusion_only_grant() -> None:
    g = Grants.parse(["run:!plan:x", "run:*"])
    assert g.allows("run", plan="y")
    assert not g.allows("run", plan="x")


def test_scope_accessor() -> None:
    assert G.scope("repos.receive") is None
    scope = G.scope("config.read")
    assert scope == Scope(repos=frozenset({"r1"}), not_plans=frozenset({"p2"}))


# -- properties ---------------------------------------------------------------------------

ids = st.sampled_from(["a", "b", "c", "x:y"])
scope_strings = st.one_of(
    st.just("*"),
    st.builds(lambda neg, kind, i: f"{'!' if neg else ''}{kind}:{i}", st.booleans(),
              st.sampled_from(["repo", "plan"]), ids),
)  # fmt: skip
entries = st.builds(
    lambda g, scopes: f"{g}:{','.join(scopes)}" if scopes else g,
    st.sampled_from(GRANTS),
    st.lists(scope_strings, max_size=4),
)


@given(st.lists(entries, max_size=6), st.sampled_from(GRANTS), st.none() | ids, st.none() | ids)
def test_properties(
    raw: list[str], grant: str, repo: str | None, plan: str | None
) -> None:  # fmt: skip
    g = Grants.parse(raw)
    # Canonical forms round-trip.
    assert Grants.parse(g.to_strings()) == g
    assert Grants.from_dict(g.to_dict()) == g
    # Splitting entries never changes the meaning: parsing each entry alone then merging
    # equals parsing them together.
    merged = Grants.parse([s for e in raw for s in Grants.parse([e]).to_strings()])
    assert merged == g
    allowed = g.allows(grant, repo=repo, plan=plan)
    scope = g.scope(grant)
    if allowed:
        assert scope is not None and g.allows_any(grant)
        assert repo not in scope.not_repos and plan not in scope.not_plans
    if scope is not None and not scope.grants_anything:
        assert not allowed


def test_stored_grants_that_no_longer_parse_grant_nothing_and_say_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A peer row written by a newer version (an unknown grant) or edited by hand must not fail
    the sync or request that reads it, nor grant anything: none, and one warning naming whose."""
    assert Grants.stored(["ops:plan:home", "repos.receive"], whose="x") == Grants.parse(
        ["ops:plan:home", "repos.receive"]
    )
    assert Grants.stored(None, whose="x") == Grants.none()
    with caplog.at_level("WARNING"):
        got = Grants.stored(["ops", "teleport"], whose="the grants stored for laptop")
    assert got == Grants.none()
    assert [r.getMessage() for r in caplog.records] == [
        "the grants stored for laptop are unreadable (unknown grant 'teleport'; known grants "
        "are ops, config.read, config.write, repos.receive, run); none assumed"
    ]
