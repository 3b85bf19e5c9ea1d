"""Plain-JSON views of records: kept so callers of the dict builders keep working.

The records themselves are :mod:`peerstash.core.records` (typed structs); each function here is
that record as plain builtins, exactly the dict it always was. New code uses the records.
"""

from __future__ import annotations

from typing import Any

from peerstash.core.models import Operation, Plan, Repo
from peerstash.core.records import (
    LsNodeRecord,
    OpRecord,
    PlanRecord,
    RepoRecord,
    SnapshotRecord,
    iso_time,
    to_json,
)
from peerstash.core.restic import LsNode, Snapshot

__all__ = [
    "iso_time",
    "lsnode_to_dict",
    "op_to_dict",
    "plan_to_dict",
    "repo_to_dict",
    "snapshot_to_dict",
]


def op_to_dict(op: Operation) -> dict[str, Any]:
    return to_json(OpRecord.of(op))


def repo_to_dict(repo: Repo) -> dict[str, Any]:
    return to_json(RepoRecord.of(repo))


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    return to_json(PlanRecord.of(plan))


def snapshot_to_dict(snap: Snapshot) -> dict[str, Any]:
    return to_json(SnapshotRecord.of(snap))


def lsnode_to_dict(node: LsNode) -> dict[str, Any]:
    return to_json(LsNodeRecord.of(node))
