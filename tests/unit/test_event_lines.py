"""The lines of ``/v1/events`` (schema.py's tagged union) are exactly the JSON they were as
hand-built dicts: the desktop and the CLI read these keys. The oracle is the old code."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec

from peerstash.core.events import (
    ConfigChanged,
    Event,
    Notice,
    OperationChanged,
    OperationsDeleted,
    PlanStale,
    SharesReceived,
    SnapshotsChanged,
)
from peerstash.core.models import Operation
from peerstash.core.records import OpRecord, to_json
from peerstash.core.sharing import ShareResult
from peerstash.peer.api import schema
from peerstash.peer.api.common import WindowWanted
from peerstash.peer.api.streams import event_line
from peerstash.peer.links.link import LinkStateChanged
from peerstash.peer.services.opsync import OpsSynced

T0 = datetime(2026, 12, 5, 23, 1, 2, 345678, tzinfo=UTC)


def old_event_to_dict(event: Event) -> dict[str, Any] | None:
    """``peer/api/streams.py``'s ``event_to_dict`` before the structs (remote requests aside:
    their record, ``request_record``, is checked against the old dict in test_records.py)."""
    if isinstance(event, OperationChanged) and event.op is not None:
        return {"type": "operation", "op": to_json(OpRecord.of(event.op))}
    if isinstance(event, LinkStateChanged):
        return {"type": "link", "peer": event.peer_id, "state": event.state, "reason": event.reason}
    if isinstance(event, ConfigChanged):
        return {"type": "config", "what": event.what, "id": event.id}
    if isinstance(event, PlanStale):
        last = event.last_success_at.isoformat() if event.last_success_at else None
        return {"type": "stale", "plan": event.plan_id, "last_success_at": last}
    if isinstance(event, Notice):
        return {"type": "notice", "level": event.level, "message": event.message}
    if isinstance(event, WindowWanted):
        return {"type": "present"}
    if isinstance(event, SnapshotsChanged):
        return {
            "type": "snapshots",
            "repo": event.repo_id,
            "reason": event.reason,
            "origin": event.origin,
        }
    if isinstance(event, SharesReceived) and event.result is not None:
        r = event.result
        return {
            "type": "shares",
            "origin": event.origin,
            "added": list(r.added),
            "updated": list(r.updated),
            "removed": list(r.removed),
            "disabled_plans": list(r.disabled_plans),
            "skipped": dict(r.skipped),
            "refused": list(r.refused),
        }
    if isinstance(event, OperationsDeleted) and event.ops:
        return {"type": "ops_deleted", "origin": event.origin, "count": len(event.ops)}
    if isinstance(event, OpsSynced) and event.deleted:
        return {"type": "ops_deleted", "origin": event.peer_id, "count": event.deleted}
    return None


def an_op() -> Operation:
    return Operation(
        pk=3, op_id="01J", origin="a", modno=1, flow_id="01J", kind="backup", status="running",
        plan_id="p", repo_id="r", created_at=T0, started_at=T0, ended_at=None, bytes_done=1,
        bytes_total=2, files_done=0, files_total=0, eta_seconds=None, summary={},
        snapshot_id=None, error=None,
    )  # fmt: skip


def test_each_event_line_is_the_old_json() -> None:
    result = ShareResult(origin="b", added=["x"], updated=[], removed=["y"])
    result.skipped["z"] = "a reason"
    events: list[Event] = [
        OperationChanged(op=an_op()),
        LinkStateChanged(peer_id="b", state="online", reason=None),
        LinkStateChanged(peer_id="b", state="offline", reason="gone"),
        ConfigChanged(what="plan", id="p"),
        PlanStale(plan_id="p", last_success_at=T0),
        PlanStale(plan_id="p", last_success_at=None),
        Notice(level="warning", message="careful"),
        WindowWanted(),
        SnapshotsChanged(repo_id="r", reason="forget", origin=None),
        SharesReceived(origin="b", result=result),
        OperationsDeleted(origin="a", ops=(1, 2)),
        OpsSynced(peer_id="b", deleted=4),
    ]
    for event in events:
        line = event_line(event)
        old = old_event_to_dict(event)
        assert line is not None and old is not None, event
        new = msgspec.to_builtins(line)
        assert list(new) == list(old) and json.dumps(new) == json.dumps(old), event
        # The union decodes its own lines back (a client may use the same structs).
        assert msgspec.json.decode(msgspec.json.encode(line), type=schema.ServerEvent) == line


def test_events_no_client_follows_give_no_line() -> None:
    for event in (
        OperationChanged(op=None),
        SharesReceived(origin="b", result=None),
        OperationsDeleted(origin="a", ops=()),
        OpsSynced(peer_id="b", deleted=0),
    ):
        assert event_line(event) is None and old_event_to_dict(event) is None


def test_ready_line_is_the_type_alone() -> None:
    assert json.dumps(msgspec.to_builtins(schema.Ready())) == '{"type": "ready"}'
