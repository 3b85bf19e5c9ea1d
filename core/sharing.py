"""Shared repositories, as the engine sees them: what an owner offers and what a receiver got.

The peer layer carries these over the link (``peer/services/shares.py``); the rules about them
(which id a received repository gets, what a GUID conflict means, what unsharing does to plans) are
here and in :class:`peerstash.core.engine.Engine`, so no surface can bypass them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: Separates a received repository's name from its owner in the local id (``photos@nas``).
#: ``check_name`` never allows it in a name a person gives, so a received repository can
#: never collide with one of our own, nor with the same name from another owner.
ORIGIN_SEP = "@"


def received_repo_id(name: str, origin: str) -> str:
    """The local id of repository ``name`` shared by instance ``origin``."""
    return f"{name}{ORIGIN_SEP}{origin}"


def gone_reason_prefix(local_id: str) -> str:
    """How the ``disabled_reason`` of every plan disabled because received repository
    ``local_id`` went away begins (unshared, no longer allowed, or its owner removed here).

    It is the marker that lets the repository's return re-enable exactly those plans: a plan
    a person disabled has no reason (``Engine.update_plan`` clears it), and no other rule
    writes one that starts like this.
    """
    return f"repository {local_id} "


def peer_removed_reason(local_id: str, origin: str) -> str:
    """Why a plan on ``local_id`` was disabled when its owner ``origin`` was removed here."""
    return f"{gone_reason_prefix(local_id)}is gone: peer {origin} was removed"


@dataclass(frozen=True)
class SharedRepoSpec:
    """One shared repository with everything a receiver needs to open it.

    ``password`` and ``env`` are secrets: the repr never shows them, so a spec can be logged
    or end up in a traceback without leaking anything.
    """

    name: str
    uri: str
    guid: str
    password: str = field(repr=False)
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    options: tuple[str, ...] = ()


@dataclass
class ShareResult:
    """What applying an owner's full set of shared repositories changed here.

    Lists hold local repository ids, except ``refused`` (the owner's names, which we did not
    let in because our grant does not allow them).
    """

    origin: str
    offered: int = 0
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    disabled_plans: list[str] = field(default_factory=list)
    #: Plans that a repository's return re-enabled (they were disabled when it went away).
    enabled_plans: list[str] = field(default_factory=list)
    #: local id → why it was not taken (GUID already here, name unusable...).
    skipped: dict[str, str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


__all__ = [
    "ORIGIN_SEP",
    "ShareResult",
    "SharedRepoSpec",
    "gone_reason_prefix",
    "peer_removed_reason",
    "received_repo_id",
]
