"""Every rule of the fleet's health (core/health.py), as a pure function of the facts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from peerstash.core.health import (
    ATTENTION,
    FAILING,
    OK,
    Health,
    PeerFacts,
    PeerPlanFacts,
    PlanFacts,
    compute,
)
from peerstash.core.records import HealthRecord, to_json

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
GOOD = PlanFacts("docs", last_status="success", last_success_at=NOW - HOUR)


def peer(**kw: object) -> PeerFacts:
    base: dict[str, object] = {
        "id": "laptop",
        "state": "online",
        "last_seen": NOW - HOUR,
        "since": NOW - timedelta(days=30),
        "sends_ops": True,
        "plans": (PeerPlanFacts("home", "success", None, NOW - HOUR),),
    }
    base.update(kw)
    return PeerFacts(**base)  # type: ignore[arg-type]


def kinds(h: Health) -> list[tuple[str, str]]:
    return [(r.level, r.kind) for r in h.reasons]


def test_all_good_is_ok() -> None:
    h = compute(plans=[GOOD], peers=[peer()], skipped_shares={}, now=NOW)
    assert h.level == OK and h.reasons == ()
    assert h.summary() == "ok"
    assert to_json(HealthRecord.of(h)) == {"level": "ok", "summary": "ok", "reasons": []}


def test_nothing_at_all_is_ok() -> None:
    assert compute(plans=[], now=NOW).level == OK


def test_plan_never_run_needs_attention() -> None:
    h = compute(plans=[PlanFacts("docs")], now=NOW)
    assert h.level == ATTENTION
    assert kinds(h) == [(ATTENTION, "never_succeeded")]
    assert h.reasons[0].plan == "docs"
    assert h.reasons[0].message == "plan docs has never succeeded"
    assert h.summary() == "attention — 1 thing needs a look"


def test_first_backup_running_still_attention_and_says_so() -> None:
    h = compute(plans=[PlanFacts("docs", running=True)], now=NOW)
    assert h.level == ATTENTION
    assert "first backup is running" in h.reasons[0].message


def test_never_succeeded_and_failed_is_failing() -> None:
    h = compute(
        plans=[PlanFacts("docs", last_status="error", last_error="wrong password")], now=NOW
    )
    assert kinds(h) == [(FAILING, "never_succeeded")]
    assert "wrong password" in h.reasons[0].message


def test_last_run_failed_is_failing_even_after_an_older_success() -> None:
    p = PlanFacts("docs", last_status="error", last_error="boom", last_success_at=NOW - HOUR)
    h = compute(plans=[p], now=NOW)
    assert kinds(h) == [(FAILING, "backup_failed")]
    assert h.reasons[0].message == "plan docs: last backup failed: boom"


def test_warning_result_needs_attention() -> None:
    p = PlanFacts("docs", last_status="warning", last_success_at=NOW - HOUR)
    assert kinds(compute(plans=[p], now=NOW)) == [(ATTENTION, "backup_warning")]


@pytest.mark.parametrize("status", ["cancelled", "interrupted"])
def test_unfinished_last_run_needs_attention(status: str) -> None:
    p = PlanFacts("docs", last_status=status, last_success_at=NOW - HOUR)
    assert kinds(compute(plans=[p], now=NOW)) == [(ATTENTION, "backup_unfinished")]


def test_stale_plan_needs_attention() -> None:
    p = PlanFacts("docs", last_status="success", last_success_at=NOW - 9 * HOUR, stale=True)
    assert kinds(compute(plans=[p], now=NOW)) == [(ATTENTION, "stale")]


def test_disabled_by_user_is_ignored() -> None:
    assert compute(plans=[PlanFacts("docs", enabled=False)], now=NOW).level == OK


def test_disabled_by_the_system_needs_attention_with_reason() -> None:
    p = PlanFacts("docs", enabled=False, disabled_reason="repository x@nas was unshared")
    h = compute(plans=[p], now=NOW)
    assert kinds(h) == [(ATTENTION, "plan_disabled")]
    assert "x@nas was unshared" in h.reasons[0].message


def test_peer_backup_failed_is_failing_and_names_the_machine() -> None:
    pp = PeerPlanFacts("home", "error", "repository not found", NOW - 30 * HOUR)
    h = compute(plans=[GOOD], peers=[peer(plans=(pp,), name="Anna's laptop")], now=NOW)
    assert h.level == FAILING
    r = h.reasons[0]
    assert (r.kind, r.peer, r.plan) == ("peer_backup_failed", "laptop", "home")
    assert r.message == (
        "machine Anna's laptop (laptop), plan home: last backup failed: repository not found"
    )
    # As /v1/status and `status --json` give it: a field that is about nothing is absent.
    assert to_json(HealthRecord.of(h))["reasons"][0] == {
        "level": "failing",
        "kind": "peer_backup_failed",
        "message": r.message,
        "plan": "home",
        "peer": "laptop",
    }


def test_peer_warning_needs_attention() -> None:
    pp = PeerPlanFacts("home", "warning", "unreadable", NOW - HOUR)
    assert kinds(compute(plans=[], peers=[peer(plans=(pp,))], now=NOW)) == [
        (ATTENTION, "peer_backup_warning")
    ]


def test_peer_plan_stale_after_setting() -> None:
    pp = PeerPlanFacts("home", "success", None, NOW - timedelta(days=8))
    h = compute(plans=[], peers=[peer(plans=(pp,))], now=NOW)
    assert kinds(h) == [(ATTENTION, "peer_stale")]
    assert "8 days" in h.reasons[0].message
    fresh = compute(plans=[], peers=[peer(plans=(pp,))], now=NOW, peer_stale_after=9 * 24 * HOUR)
    assert fresh.level == OK


def test_peer_plan_never_succeeded_needs_attention() -> None:
    pp = PeerPlanFacts("home", "running", None, None)
    assert kinds(compute(plans=[], peers=[peer(plans=(pp,))], now=NOW)) == [
        (ATTENTION, "peer_never_succeeded")
    ]


def test_peer_offline_longer_than_setting_needs_attention() -> None:
    away = peer(state="offline", last_seen=NOW - timedelta(days=3))
    h = compute(plans=[], peers=[away], now=NOW)
    assert kinds(h) == [(ATTENTION, "peer_offline")]
    assert h.reasons[0].message.startswith("machine laptop: not seen for 3 days")
    # within the setting: fine; a tiny setting: reported
    assert (
        compute(plans=[], peers=[away], now=NOW, peer_offline_after=timedelta(days=4)).level == OK
    )
    short = peer(state="offline", last_seen=NOW - timedelta(seconds=5))
    assert compute(plans=[], peers=[short], now=NOW).level == OK
    assert (
        compute(plans=[], peers=[short], now=NOW, peer_offline_after=timedelta(seconds=1)).level
        == ATTENTION
    )


def test_online_peer_is_never_offline_whatever_last_seen_says() -> None:
    p = peer(state="online", last_seen=NOW - timedelta(days=30))
    assert compute(plans=[], peers=[p], now=NOW).level == OK


def test_peer_never_seen_counts_from_pairing() -> None:
    p = peer(state="offline", last_seen=None, since=NOW - timedelta(days=3), plans=())
    h = compute(plans=[], peers=[p], now=NOW)
    assert kinds(h) == [(ATTENTION, "peer_offline")]
    assert "never seen since pairing" in h.reasons[0].message


def test_offline_peer_is_not_also_reported_stale_but_failures_still_count() -> None:
    old = PeerPlanFacts("home", "error", "boom", NOW - timedelta(days=20))
    h = compute(
        plans=[],
        peers=[peer(state="offline", last_seen=NOW - timedelta(days=3), plans=(old,))],
        now=NOW,
    )
    assert kinds(h) == [(FAILING, "peer_backup_failed"), (ATTENTION, "peer_offline")]


def test_peer_that_shares_no_ops_is_not_watched() -> None:
    pp = PeerPlanFacts("home", "error", "boom", None)
    p = peer(sends_ops=False, state="offline", last_seen=NOW - timedelta(days=30), plans=(pp,))
    assert compute(plans=[], peers=[p], now=NOW).level == OK


def test_skipped_share_needs_attention() -> None:
    h = compute(plans=[], skipped_shares={"nas@laptop": "this repository is here already"}, now=NOW)
    assert kinds(h) == [(ATTENTION, "share_skipped")]
    assert h.reasons[0].repo == "nas@laptop"
    assert "nas@laptop was not taken" in h.reasons[0].message


def test_worst_wins_and_failing_reasons_come_first() -> None:
    plans = [PlanFacts("a"), PlanFacts("b", last_status="error", last_success_at=NOW - HOUR)]
    h = compute(plans=plans, skipped_shares={"x@y": "why"}, now=NOW)
    assert h.level == FAILING
    assert [r.kind for r in h.reasons] == ["backup_failed", "never_succeeded", "share_skipped"]
    assert h.summary() == "failing — 3 things need a look"


def test_error_text_is_one_printable_bounded_line() -> None:
    hostile = "line one\nline two\r\x1b[31mred\x00" + "x" * 10_000
    pp = PeerPlanFacts("home", "error", hostile, None)
    msg = compute(plans=[], peers=[peer(plans=(pp,))], now=NOW).reasons[0].message
    assert "\n" not in msg and "\r" not in msg and "\x1b" not in msg and "\x00" not in msg
    assert msg.startswith(
        "machine laptop, plan home: last backup failed: line one line two [31mred"
    )
    assert len(msg) < 300 and msg.endswith("…")


def test_refused_share_needs_attention_naming_the_machine() -> None:
    h = compute(plans=[], refused_shares={"nas": ["r1", "r2\nx"]}, now=NOW)
    assert kinds(h) == [(ATTENTION, "share_refused")]
    assert h.reasons[0].peer == "nas"
    assert h.reasons[0].message == (
        "machine nas shares repositories r1, r2 x with this node, which does not grant it "
        "repos.receive for them: refused"
    )
    many = compute(plans=[], refused_shares={"nas": [f"r{i:02}" for i in range(13)]}, now=NOW)
    assert "r09 and 3 more with this node" in many.reasons[0].message
