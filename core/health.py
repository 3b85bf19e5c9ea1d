"""Is everything protected? One answer for the whole fleet, computed by the node.

The tray, ``peerstash status`` and a monitoring system (``status --check``) all show this one
result, so "green" means the same everywhere and no surface invents its own "all fine". This
module is a pure function of facts the node gathers (its plans and their results, the peers
whose operations it receives, the shared repositories it did not take, and the time), so every
rule is tested without a node, and the answer does not depend on who asks.

Levels, worst wins:

* ``ok``: every enabled plan here has a successful backup and is not overdue, every peer that
  shares its history with us is heard from and its plans' last backups succeeded.
* ``attention``: nothing has failed, but something is not (yet, or no longer) protected: a plan
  that never succeeded (the first backup has not run or is running), a plan overdue (stale), a
  backup that finished with warnings (some files unread), a run cancelled or interrupted, a plan
  the system disabled (its shared repository was unshared), a peer not heard from for longer
  than ``peer_offline_after``, a peer's plan that has not succeeded for ``peer_stale_after``, a
  shared repository we did not take (skipped, or refused: not in our ``repos.receive`` grant).
* ``failing``: a backup failed, here or on a peer machine whose history we receive.

Plans the user disabled are left out on purpose: the user said not to run them, and ``plan
list`` shows them; reporting them would keep the fleet amber forever. A plan disabled by the
system (its ``disabled_reason`` is set) is reported, since nobody chose that.

Peers count when they share their operations with us (grant ``ops``, or we hold operations
from them): only then can this node know anything about their backups. A peer that only
stores our repository is not a machine we watch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

import msgspec

OK: Final = "ok"
ATTENTION: Final = "attention"
FAILING: Final = "failing"
LEVELS: Final[tuple[str, ...]] = (OK, ATTENTION, FAILING)

#: Defaults of the node settings of the same names (seconds in the settings).
PEER_OFFLINE_AFTER: Final = timedelta(days=2)
PEER_STALE_AFTER: Final = timedelta(days=7)


@dataclass(frozen=True)
class PlanFacts:
    """One of this node's plans as health needs it.

    ``last_status``/``last_error`` are the newest *finished* backup of the plan (a running one
    does not hide the previous failure); ``running`` says one is queued or running now.
    """

    id: str
    enabled: bool = True
    disabled_reason: str | None = None
    last_status: str | None = None
    last_error: str | None = None
    last_success_at: datetime | None = None
    stale: bool = False
    running: bool = False


@dataclass(frozen=True)
class PeerPlanFacts:
    """A peer's plan, from the operations it synced to us."""

    plan: str
    last_status: str | None = None
    last_error: str | None = None
    last_success_at: datetime | None = None


@dataclass(frozen=True)
class PeerFacts:
    """A paired machine. ``since`` is when it was paired (used when it was never seen)."""

    id: str
    state: str
    last_seen: datetime | None
    since: datetime
    sends_ops: bool
    plans: tuple[PeerPlanFacts, ...] = ()
    name: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.id})" if self.name and self.name != self.id else self.id


class Reason(msgspec.Struct, frozen=True, omit_defaults=True):
    """One thing that needs a look: a sentence for a person plus fields for a machine.

    A struct, not a dataclass like the facts above: it is also how ``/v1/status`` gives it
    (``HealthRecord.reasons``), where ``plan``/``peer``/``repo`` are absent when it is not
    about one."""

    level: str
    kind: str
    message: str
    plan: str | None = None
    peer: str | None = None
    repo: str | None = None


@dataclass(frozen=True)
class Health:
    level: str
    reasons: tuple[Reason, ...] = field(default=())

    def summary(self) -> str:
        """The one line: ``ok`` or ``attention — 2 things need a look``."""
        if self.level == OK:
            return OK
        n = len(self.reasons)
        return f"{self.level} — {n} {'thing needs' if n == 1 else 'things need'} a look"


def _ago(now: datetime, then: datetime) -> str:
    """'3 days', '5 hours', '12 minutes': how long ago, roughly, for a sentence."""
    secs = max(0, int((now - then).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if secs >= size:
            n = secs // size
            return f"{n} {unit}{'' if n == 1 else 's'}"
    return f"{secs} second{'' if secs == 1 else 's'}"


#: How much of an error a reason quotes (the full text is in the operation's log).
MAX_ERROR = 200


def _why(error: str | None) -> str:
    """``": <error>"`` on one line, printable and bounded: a peer's error text is not ours
    to trust, and ``status --check`` promises a monitoring system exactly one line."""
    return f": {_clean(error)}" if error else ""


def _clean(text: str, limit: int = MAX_ERROR) -> str:
    """Printable, whitespace collapsed, at most ``limit`` characters (then "…")."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return f"{flat[:limit]}…" if len(flat) > limit else flat


def _plan_reasons(p: PlanFacts) -> list[Reason]:
    if not p.enabled:
        if p.disabled_reason:
            return [
                Reason(
                    ATTENTION,
                    "plan_disabled",
                    f"plan {p.id} was disabled: {p.disabled_reason}",
                    p.id,
                )
            ]
        return []  # the user turned it off: their call, not a problem
    if p.last_success_at is None:
        if p.last_status == "error":
            msg = f"plan {p.id} has never succeeded; its last backup failed{_why(p.last_error)}"
            return [Reason(FAILING, "never_succeeded", msg, p.id)]
        now = " (its first backup is running)" if p.running else ""
        return [Reason(ATTENTION, "never_succeeded", f"plan {p.id} has never succeeded{now}", p.id)]
    out: list[Reason] = []
    if p.last_status == "error":
        out.append(
            Reason(
                FAILING,
                "backup_failed",
                f"plan {p.id}: last backup failed{_why(p.last_error)}",
                p.id,
            )
        )
    elif p.last_status == "warning":
        out.append(
            Reason(
                ATTENTION,
                "backup_warning",
                f"plan {p.id}: last backup finished with warnings{_why(p.last_error)}",
                p.id,
            )
        )
    elif p.last_status in ("cancelled", "interrupted"):
        out.append(
            Reason(
                ATTENTION,
                "backup_unfinished",
                f"plan {p.id}: last backup was {p.last_status}",
                p.id,
            )
        )
    if p.stale:
        out.append(
            Reason(
                ATTENTION,
                "stale",
                f"plan {p.id} is overdue: no backup since its schedule expected one",
                p.id,
            )
        )
    return out


def _peer_reasons(
    peer: PeerFacts, now: datetime, offline_after: timedelta, stale_after: timedelta
) -> list[Reason]:
    if not peer.sends_ops:
        return []
    out: list[Reason] = []
    heard = peer.last_seen or peer.since
    gone = peer.state != "online" and now - heard > offline_after
    if gone:
        when = "never seen since pairing" if peer.last_seen is None else "not seen"
        out.append(
            Reason(
                ATTENTION,
                "peer_offline",
                f"machine {peer.label}: {when} for {_ago(now, heard)}; its backups are unknown",
                peer=peer.id,
            )
        )
    for pp in peer.plans:
        where = f"machine {peer.label}, plan {_clean(pp.plan, 100)}"
        if pp.last_status == "error":
            out.append(
                Reason(
                    FAILING,
                    "peer_backup_failed",
                    f"{where}: last backup failed{_why(pp.last_error)}",
                    plan=pp.plan,
                    peer=peer.id,
                )
            )
        elif pp.last_status == "warning":
            out.append(
                Reason(
                    ATTENTION,
                    "peer_backup_warning",
                    f"{where}: last backup finished with warnings{_why(pp.last_error)}",
                    plan=pp.plan,
                    peer=peer.id,
                )
            )
        if gone:
            continue  # while it is away its plans say nothing new; the offline reason covers it
        if pp.last_success_at is None:
            if pp.last_status != "error":
                out.append(
                    Reason(
                        ATTENTION,
                        "peer_never_succeeded",
                        f"{where}: has never succeeded",
                        plan=pp.plan,
                        peer=peer.id,
                    )
                )
        elif now - pp.last_success_at > stale_after:
            out.append(
                Reason(
                    ATTENTION,
                    "peer_stale",
                    f"{where}: no successful backup for {_ago(now, pp.last_success_at)}",
                    plan=pp.plan,
                    peer=peer.id,
                )
            )
    return out


def compute(
    *,
    plans: Iterable[PlanFacts],
    peers: Iterable[PeerFacts] = (),
    skipped_shares: Mapping[str, str] | None = None,
    refused_shares: Mapping[str, Iterable[str]] | None = None,
    now: datetime,
    peer_offline_after: timedelta = PEER_OFFLINE_AFTER,
    peer_stale_after: timedelta = PEER_STALE_AFTER,
) -> Health:
    """The fleet's health from the facts; reasons are ordered failing first, then as given."""
    reasons: list[Reason] = []
    for plan in sorted(plans, key=lambda p: p.id):
        reasons += _plan_reasons(plan)
    for peer in sorted(peers, key=lambda p: p.id):
        reasons += _peer_reasons(peer, now, peer_offline_after, peer_stale_after)
    for local_id, why in sorted((skipped_shares or {}).items()):
        reasons.append(
            Reason(
                ATTENTION,
                "share_skipped",
                f"shared repository {local_id} was not taken: {why}",
                repo=local_id,
            )
        )
    for origin, given in sorted((refused_shares or {}).items()):
        names = sorted(given)
        listed = ", ".join(_clean(n, 100) for n in names[:10])
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        reasons.append(
            Reason(
                ATTENTION,
                "share_refused",
                f"machine {origin} shares repositories {listed}{more} with this node, which "
                "does not grant it repos.receive for them: refused",
                peer=origin,
            )
        )
    reasons.sort(key=lambda r: -LEVELS.index(r.level))  # stable: keeps the order within a level
    level = max((r.level for r in reasons), key=LEVELS.index, default=OK)
    return Health(level, tuple(reasons))


__all__ = [
    "ATTENTION",
    "FAILING",
    "LEVELS",
    "OK",
    "PEER_OFFLINE_AFTER",
    "PEER_STALE_AFTER",
    "Health",
    "PeerFacts",
    "PeerPlanFacts",
    "PlanFacts",
    "Reason",
    "compute",
]
