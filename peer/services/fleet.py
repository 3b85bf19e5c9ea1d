"""The fleet at a glance: each paired peer, its link state and its last backup per plan.

Nothing is asked of the peers: the results come from the operations they already sync to us
(grant ``ops``), so the view works while a peer is offline (it shows what we last heard) and
costs one query however many peers there are. A peer that shares no history with us is listed
with no plans.
"""

from __future__ import annotations

from peerstash.core.models import Peer
from peerstash.core.records import FleetPeerRecord, LastBackupRecord
from peerstash.core.store import Store


async def plans_by_peer(store: Store, local: str) -> dict[str, list[LastBackupRecord]]:
    """Each other origin's last backup result per plan (sorted by plan id)."""
    out: dict[str, list[LastBackupRecord]] = {}
    for (origin, plan_id), op in sorted((await store.latest_per_plan()).items()):
        if origin != local:
            out.setdefault(origin, []).append(LastBackupRecord.of(plan_id, op))
    return out


def labels(peers: list[Peer], self_id: str, self_name: str) -> dict[str, str]:
    """What to show for each instance (the peers and this one), by instance id.

    A peer shows its name (its id when it sent none). Names are chosen freely, so two can be
    the same (three machines called ``raspberrypi``): then each of them shows ``name (id)``,
    and the ids, which are unique, tell them apart. This node takes part, so a peer with our
    name is never shown as if it were us.
    """
    names = {p.id: p.name or p.id for p in peers}
    names[self_id] = self_name or self_id
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name.casefold()] = counts.get(name.casefold(), 0) + 1
    ids = {i.casefold() for i in names}
    out = {}
    for ident, name in names.items():
        clash = counts[name.casefold()] > 1 or (name != ident and name.casefold() in ids)
        out[ident] = f"{name} ({ident})" if clash else name
    return out


async def fleet(store: Store, local: str, local_name: str = "") -> list[FleetPeerRecord]:
    """Every paired peer with its state and last backup per plan, by peer id."""
    plans = await plans_by_peer(store, local)
    peers = sorted(await store.list_peers(), key=lambda p: p.id)
    shown = labels(peers, local, local_name)
    return [FleetPeerRecord.of(p, shown[p.id], plans.get(p.id, [])) for p in peers]


__all__ = ["fleet", "labels", "plans_by_peer"]
