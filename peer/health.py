"""Gather the facts :mod:`peerstash.core.health` judges, from this node's store and engine.

Kept apart from the judging so the rules stay a pure function: this module only reads (plans,
their newest finished and newest successful backups, the peers and the operations they synced
to us, the shared repositories not taken, two settings) and hands them over with the time.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from peerstash.core import health as h
from peerstash.core.engine import Engine
from peerstash.core.models import OpStatus
from peerstash.core.store import utcnow
from peerstash.peer.trust.permissions import GrantError, Grants

#: Node settings (seconds) and their defaults; see docs/cli.md "Monitoring".
OFFLINE_SETTING = "peer_offline_after"
STALE_SETTING = "peer_stale_after"

_FINISHED = [s.value for s in OpStatus if s.finished]
_SUCCEEDED = [OpStatus.SUCCESS.value, OpStatus.WARNING.value]


async def _seconds(engine: Engine, key: str, default: timedelta) -> timedelta:
    value: Any = await engine.store.get_setting(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return timedelta(seconds=value)
    return default


def _sends_ops(their_grants: list[Any]) -> bool:
    try:
        return Grants.parse(their_grants).allows_any("ops")
    except GrantError:
        return False


async def node_health(engine: Engine) -> h.Health:
    """This node's verdict on the whole fleet, as of now."""
    store, local = engine.store, engine.instance_id
    newest = await store.latest_per_plan()
    finished = await store.latest_per_plan(statuses=_FINISHED)
    success = await store.latest_per_plan(statuses=_SUCCEEDED)
    plans = []
    for plan in await engine.list_plans():
        key = (local, plan.id)
        last, ok, now_op = finished.get(key), success.get(key), newest.get(key)
        plans.append(
            h.PlanFacts(
                id=plan.id,
                enabled=plan.enabled,
                disabled_reason=plan.disabled_reason,
                last_status=last.status if last else None,
                last_error=last.error if last else None,
                last_success_at=(ok.ended_at or ok.created_at) if ok else None,
                stale=plan.id in engine.stale_plans,
                running=now_op is not None and not OpStatus(now_op.status).finished,
            )
        )
    by_origin: dict[str, list[h.PeerPlanFacts]] = {}
    for (origin, plan_id), op in sorted(newest.items()):
        if origin == local:
            continue
        last, ok = finished.get((origin, plan_id)), success.get((origin, plan_id))
        by_origin.setdefault(origin, []).append(
            h.PeerPlanFacts(
                plan=plan_id,
                last_status=last.status if last else op.status,
                last_error=last.error if last else None,
                last_success_at=(ok.ended_at or ok.created_at) if ok else None,
            )
        )
    peers = [
        h.PeerFacts(
            id=p.id,
            state=p.state,
            last_seen=p.last_seen,
            since=p.created_at,
            sends_ops=p.id in by_origin or _sends_ops(list(p.their_grants)),
            plans=tuple(by_origin.get(p.id, ())),
            name=getattr(p, "name", None),
        )
        for p in await store.list_peers()
    ]
    return h.compute(
        plans=plans,
        peers=peers,
        skipped_shares=engine.skipped_shares,
        refused_shares=engine.refused_shares,
        now=utcnow(),
        peer_offline_after=await _seconds(engine, OFFLINE_SETTING, h.PEER_OFFLINE_AFTER),
        peer_stale_after=await _seconds(engine, STALE_SETTING, h.PEER_STALE_AFTER),
    )


__all__ = ["OFFLINE_SETTING", "STALE_SETTING", "node_health"]
