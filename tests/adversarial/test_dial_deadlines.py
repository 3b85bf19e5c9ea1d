"""Dials that meet a silent listener or a flaky path: every step has a deadline, and a healed
path is used again quickly.

Issue 11: B dialled A through a forwarder that accepted and then said nothing (a frozen
process behind docker-proxy, ``ssh -L``); B stayed ``connecting`` for ever and ``peer check``
did nothing. After 30 cuts the backoff held a healthy path down for 265 s. Here the path is a
TCP forwarder on 127.0.0.1 that the test switches between forwarding, silence and refusal; the
nodes are real processes with the default dial deadline and backoff.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from tests.fixtures.netnodes import Forwarder, LinkWatch, Node, pair

# Quick detection of a dropped link; dial deadlines and backoff stay at their defaults.
TIMINGS = "heartbeat=1,offline_after=4"
FIGURES: dict[str, float] = {}


async def test_silent_listener_fails_the_dial_and_peer_check_redials(tmp_path: Path) -> None:
    a = Node(tmp_path / "a-data", "alpha", timings=TIMINGS)
    b = Node(tmp_path / "b-data", "beta", timings=TIMINGS)
    await a.start()
    await b.start()
    try:
        async with Forwarder(a.port) as fwd, LinkWatch(b) as wb:
            await pair(b, a, fwd.url)
            await wb.wait("alpha", "online", 30)
            # The path goes silent: connections are accepted and never answered.
            fwd.mode = "silent"
            seen = fwd.accepted
            cut_at = time.monotonic()
            fwd.cut()
            seen = await fwd.wait_accepted(seen, 15)
            await wb.wait("alpha", "connecting", 5, after=cut_at)
            # `peer check` abandons the hanging dial and dials again at once.
            check_at = time.monotonic()
            res = await b.cli("peer", "check", "alpha", "--json")
            assert json.loads(res.stdout)["message"] == "reconnecting now"
            await fwd.wait_accepted(seen, 5)
            restarted = time.monotonic() - check_at
            # Left alone, the dial gives up at its deadline instead of hanging for ever.
            failed = await wb.wait(
                "alpha", "offline", 25, reason_has="no answer within 10 s", after=check_at
            )
            # The path heals: the link is back within 30 s.
            fwd.mode = "forward"
            healed_at = time.monotonic()
            back = await wb.wait("alpha", "online", 30, after=healed_at)
        assert restarted < 5
        assert failed - check_at < 20
        assert back - healed_at < 30
        FIGURES.update(
            silent_check_redial_s=round(restarted, 2),
            silent_dial_failed_after_s=round(failed - check_at, 1),
            silent_heal_to_online_s=round(back - healed_at, 1),
        )
        print("silent listener figures:", FIGURES)
    finally:
        await b.stop()
        await a.stop()


async def test_backoff_starts_over_after_each_reconnect(tmp_path: Path) -> None:
    a = Node(tmp_path / "a-data", "alpha", timings=TIMINGS)
    b = Node(tmp_path / "b-data", "beta", timings=TIMINGS)
    await a.start()
    await b.start()
    try:
        recoveries: list[float] = []
        async with Forwarder(a.port) as fwd, LinkWatch(b) as wb:
            await pair(b, a, fwd.url)
            await wb.wait("alpha", "online", 30)
            # Twelve short cuts: each one drops the link and refuses connections for 1.5 s.
            for _ in range(12):
                fwd.mode = "refuse"
                fwd.cut()
                cut_at = time.monotonic()
                await wb.wait("alpha", "offline", 10, after=cut_at)
                await _hold_for(cut_at + 1.5)
                fwd.mode = "forward"
                healed_at = time.monotonic()
                back = await wb.wait("alpha", "online", 10, after=healed_at)
                recoveries.append(back - healed_at)
            # Then a long outage (45 s of refused connections): the backoff is capped while
            # the peer was reachable recently, so the healed path is used within 20 s.
            fwd.mode = "refuse"
            fwd.cut()
            cut_at = time.monotonic()
            await _hold_for(cut_at + 45)
            fwd.mode = "forward"
            healed_at = time.monotonic()
            back = await wb.wait("alpha", "online", 20, after=healed_at)
            long_outage = back - healed_at
        assert max(recoveries) < 10
        assert long_outage < 20
        FIGURES.update(
            cuts=12,
            cut_recovery_max_s=round(max(recoveries), 2),
            long_outage_recovery_s=round(long_outage, 1),
        )
        print("backoff figures:", FIGURES)
    finally:
        await b.stop()
        await a.stop()


async def _hold_for(until: float) -> None:
    """Keep the path cut until ``until`` (the outage's length is the point of the test)."""
    rest = until - time.monotonic()
    if rest > 0:
        await asyncio.sleep(rest)


async def test_pairing_again_the_other_way_leaves_no_stale_dialer(tmp_path: Path) -> None:
    a = Node(tmp_path / "a-data", "alpha", timings=TIMINGS)
    b = Node(tmp_path / "b-data", "beta", timings=TIMINGS)
    await a.start()
    await b.start()
    try:
        async with LinkWatch(a) as wa, LinkWatch(b) as wb:
            await pair(b, a)  # beta dials alpha
            await wb.wait("alpha", "online", 30)
            paired_at = time.monotonic()
            await pair(a, b)  # now alpha redeems beta's token: alpha dials beta from here on
            await wa.wait("beta", "online", 30, after=paired_at)
            await wb.wait("alpha", "online", 30, after=paired_at)
            settled = time.monotonic()
            # A dialer left running on beta would dial alpha (which has no URL there now) and
            # show it connecting/offline/unreachable within a few seconds of backoff.
            await _hold_for(settled + 8)
            after = [
                (st, why) for when, who, st, why in wb.history if who == "alpha" and when > settled
            ]
        assert after == [], after
        on_b = {p["id"]: p for p in await b.cli_json("peer", "list")}["alpha"]
        on_a = {p["id"]: p for p in await a.cli_json("peer", "list")}["beta"]
        assert (on_b["role"], on_b["state"]) == ("authorized_client", "online")
        assert (on_a["role"], on_a["state"]) == ("known_host", "online")
        res = await b.cli("peer", "check", "alpha", "--json")
        assert "dials us" in json.loads(res.stdout)["message"]
    finally:
        await b.stop()
        await a.stop()
