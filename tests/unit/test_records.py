"""The records (core/records.py) encode to exactly the dicts the old builders gave.

``--json`` output, the desktop and peers of the previous version read these keys, so the
oracle below is the old ``core/serialize.py`` code, kept verbatim: any drift (a renamed key, a
dropped null, ``Z`` instead of ``+00:00``) fails here.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from peerstash.core.health import Health, Reason
from peerstash.core.models import Operation, PairingTokenRow, Peer, Plan, RemoteRequest, Repo
from peerstash.core.records import (
    FleetPeerRecord,
    HealthRecord,
    LastBackupRecord,
    ListedOpRecord,
    ListedPeerRecord,
    LsNodeRecord,
    NewTokenRecord,
    OpRecord,
    PeerRecord,
    PlannedSnapshotRecord,
    PlanRecord,
    RepoRecord,
    RestorePreviewRecord,
    SnapshotRecord,
    TokenRecord,
    to_json,
)
from peerstash.core.restic import LsNode, Snapshot, redact_uri
from peerstash.core.restore_target import RestorePreview
from peerstash.peer.services.remote_commands import (
    FINAL_STATES,
    describe,
    is_followable,
    request_record,
)

T0 = datetime(2026, 12, 5, 23, 1, 2, 345678, tzinfo=UTC)
T1 = datetime(2026, 12, 6, 1, 0, tzinfo=timezone(timedelta(hours=2)))


# -- the oracle: core/serialize.py as it was before the records -------------------------------
def old_iso_time(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat()


def old_op_to_dict(op: Operation) -> dict[str, Any]:
    return {
        "id": op.op_id,
        "pk": op.pk,
        "origin": op.origin,
        "modno": op.modno,
        "flow_id": op.flow_id,
        "kind": op.kind,
        "status": op.status,
        "plan": op.plan_id,
        "repo": op.repo_id,
        "created_at": old_iso_time(op.created_at),
        "started_at": old_iso_time(op.started_at),
        "ended_at": old_iso_time(op.ended_at),
        "bytes_done": op.bytes_done,
        "bytes_total": op.bytes_total,
        "files_done": op.files_done,
        "files_total": op.files_total,
        "eta_seconds": op.eta_seconds,
        "summary": op.summary or {},
        "snapshot_id": op.snapshot_id,
        "error": op.error,
    }


def old_repo_to_dict(repo: Repo) -> dict[str, Any]:
    return {
        "id": repo.id,
        "uri": redact_uri(repo.uri),
        "password_source": repo.password_source,
        "password_ref": repo.password_ref or None,
        "env_keys": list(repo.env_keys or []),
        "options": list(repo.options or []),
        "guid": repo.guid,
        "origin": repo.origin,
        "read_only": repo.origin is not None,
        "shared": bool(repo.shared),
        "client_uri": redact_uri(repo.client_uri) if repo.client_uri else None,
        "created_at": old_iso_time(repo.created_at),
    }


def old_plan_to_dict(plan: Plan) -> dict[str, Any]:
    return {
        "id": plan.id,
        "repo": plan.repo_id,
        "paths": list(plan.paths),
        "excludes": list(plan.excludes or []),
        "schedule": plan.schedule_cron,
        "every_seconds": plan.schedule_interval,
        "retention": dict(plan.retention or {}),
        "enabled": plan.enabled,
        "disabled_reason": plan.disabled_reason,
        "next_due_at": old_iso_time(plan.next_due_at),
    }


def old_snapshot_to_dict(snap: Snapshot) -> dict[str, Any]:
    return {
        "id": snap.id,
        "short_id": snap.short_id,
        "time": old_iso_time(snap.time),
        "hostname": snap.hostname,
        "username": snap.username,
        "paths": list(snap.paths),
        "tags": list(snap.tags),
        "parent": snap.parent,
        "summary": dict(snap.summary) if snap.summary else None,
    }


def old_lsnode_to_dict(node: LsNode) -> dict[str, Any]:
    return {
        "name": node.name,
        "type": node.type,
        "path": node.path,
        "size": node.size,
        "permissions": node.permissions,
        "mtime": old_iso_time(node.mtime),
        "link_target": node.link_target,
    }


def old_peer_to_dict(peer: Peer) -> dict[str, Any]:
    return {
        "id": peer.id,
        "name": peer.name or peer.id,
        "key_id": peer.key_id,
        "role": peer.role,
        "url": peer.url,
        "grants": list(peer.grants),
        "their_grants": list(peer.their_grants),
        "state": peer.state,
        "state_reason": peer.state_reason,
        "last_seen": peer.last_seen.isoformat() if peer.last_seen else None,
    }


# -- models with every field set, and with every optional one empty ---------------------------
def ops() -> list[Operation]:
    full = Operation(
        pk=7,
        op_id="01JXYZ",
        origin="laptop",
        modno=3,
        flow_id="01JFLOW",
        kind="backup",
        status="success",
        plan_id="home",
        repo_id="main",
        created_at=T0,
        started_at=T1,
        ended_at=T0,
        bytes_done=10,
        bytes_total=20,
        files_done=1,
        files_total=2,
        eta_seconds=5,
        summary={"files_new": 3, "nested": {"a": [1, None]}},
        snapshot_id="abcdef01",
        error="boom \u00e9",
    )
    empty = Operation(
        pk=1,
        op_id="01J",
        origin="o",
        modno=0,
        flow_id="01J",
        kind="check",
        status="queued",
        plan_id=None,
        repo_id=None,
        created_at=T0,
        started_at=None,
        ended_at=None,
        bytes_done=0,
        bytes_total=0,
        files_done=0,
        files_total=0,
        eta_seconds=None,
        summary=None,
        snapshot_id=None,
        error=None,
    )
    return [full, empty]


def repos() -> list[Repo]:
    own = Repo(
        id="main",
        uri="sftp://user:hunter2@host/srv",
        password_source="file",
        password_ref="/etc/pw",
        env_keys=["AWS_ACCESS_KEY_ID"],
        options=["-o", "x=1"],
        guid="g" * 64,
        origin=None,
        shared=True,
        client_uri="rest:http://u:p@h:8000/",
        created_at=T1,
    )
    received = Repo(
        id="theirs",
        uri="/srv/r",
        password_source="secret",
        password_ref="",
        env_keys=None,
        options=None,
        guid=None,
        origin="desk",
        shared=None,
        client_uri=None,
        created_at=T0,
    )
    return [own, received]


def plans() -> list[Plan]:
    full = Plan(
        id="home",
        repo_id="main",
        paths=["/home/a"],
        excludes=["*.tmp"],
        schedule_cron="0 3 * * *",
        schedule_interval=None,
        retention={"keep_last": 3},
        enabled=False,
        disabled_reason="repo gone",
        next_due_at=T1,
    )
    bare = Plan(
        id="p",
        repo_id="r",
        paths=[],
        excludes=None,
        schedule_cron=None,
        schedule_interval=3600,
        retention=None,
        enabled=True,
        disabled_reason=None,
        next_due_at=None,
    )
    return [full, bare]


def snapshots() -> list[Snapshot]:
    return [
        Snapshot(
            id="f" * 64,
            short_id="ffffffff",
            time=T0,
            hostname="a",
            username="u",
            paths=("/home",),
            tags=("plan:home",),
            parent="e" * 64,
            summary={"total_bytes_processed": 5},
        ),
        Snapshot(id="e" * 64, short_id="eeeeeeee", time=None),
    ]


def lsnodes() -> list[LsNode]:
    return [
        LsNode(name="a", type="file", path="/a", size=3, permissions="-rw-r--r--", mtime=T1),
        LsNode(name="l", type="symlink", path="/l", link_target="/a"),
    ]


def peers() -> list[Peer]:
    return [
        Peer(
            id="desk",
            public_key=b"k",
            key_id="kid",
            role="known_host",
            url="http://h:1",
            grants=["ops.read"],
            their_grants=[],
            state="online",
            state_reason=None,
            last_seen=T0,
            name="Desk",
        ),
        Peer(
            id="old",
            public_key=b"k",
            key_id="kid2",
            role="authorized_client",
            url=None,
            grants=[],
            their_grants=["ops.read"],
            state="offline",
            state_reason="gone",
            last_seen=None,
            name=None,
        ),
    ]


CASES: list[tuple[str, Any, Any, Any]] = [
    ("op", ops, OpRecord.of, old_op_to_dict),
    ("repo", repos, RepoRecord.of, old_repo_to_dict),
    ("plan", plans, PlanRecord.of, old_plan_to_dict),
    ("snapshot", snapshots, SnapshotRecord.of, old_snapshot_to_dict),
    ("lsnode", lsnodes, LsNodeRecord.of, old_lsnode_to_dict),
    ("peer", peers, PeerRecord.of, old_peer_to_dict),
]


@pytest.mark.parametrize(("kind", "models", "record", "oracle"), CASES, ids=[c[0] for c in CASES])
def test_record_encodes_exactly_the_old_dict(
    kind: str, models: Any, record: Any, oracle: Any
) -> None:
    for model in models():
        old = oracle(model)
        new = to_json(record(model))
        # Same keys in the same order, same values (nulls kept, times with their offset).
        assert list(new) == list(old)
        assert json.dumps(new) == json.dumps(old)
        # And msgspec's own JSON of the record says the same, so either encoder can be used.
        assert json.loads(msgspec.json.encode(record(model))) == old


def test_records_keep_the_offset_not_z() -> None:
    op = ops()[0]
    assert to_json(OpRecord.of(op))["created_at"] == "2026-12-05T23:01:02.345678+00:00"
    assert to_json(PlanRecord.of(plans()[0]))["next_due_at"] == "2026-12-06T01:00:00+02:00"


def test_extended_records_append_their_field_last() -> None:
    op = ops()[0]
    listed = to_json(ListedOpRecord.labelled(op, {"laptop": "Laptop"}))
    assert listed == {**old_op_to_dict(op), "origin_label": "Laptop"}
    assert list(listed)[-1] == "origin_label"
    unknown = to_json(ListedOpRecord.labelled(op, {}))
    assert unknown["origin_label"] == "laptop"
    snap = snapshots()[0]
    planned = to_json(PlannedSnapshotRecord.for_plan(snap, "home"))
    assert planned == {**old_snapshot_to_dict(snap), "plan": "home"}


# -- /v1/status and /v1/peers: the fleet view and health as the dict builders gave them -------
def old_last_result(plan_id: str, op: Operation) -> dict[str, Any]:
    return {
        "plan": plan_id,
        "repo": op.repo_id,
        "op": op.op_id,
        "status": op.status,
        "created_at": old_iso_time(op.created_at),
        "started_at": old_iso_time(op.started_at),
        "ended_at": old_iso_time(op.ended_at),
        "snapshot_id": op.snapshot_id,
        "error": op.error,
    }


def old_peer_entry(peer: Peer, plans: list[dict[str, Any]], label: str) -> dict[str, Any]:
    return {
        "id": peer.id,
        "name": peer.name or peer.id,
        "label": label,
        "state": peer.state,
        "state_reason": peer.state_reason,
        "last_seen": old_iso_time(peer.last_seen),
        "plans": plans,
    }


def test_fleet_records_encode_exactly_the_old_dicts() -> None:
    for peer in peers():
        last = [LastBackupRecord.of(f"plan-{op.pk}", op) for op in ops()]
        old_last = [old_last_result(f"plan-{op.pk}", op) for op in ops()]
        assert [to_json(r) for r in last] == old_last
        fleet = to_json(FleetPeerRecord.of(peer, "Label", last))
        assert json.dumps(fleet) == json.dumps(old_peer_entry(peer, old_last, "Label"))
        listed = to_json(ListedPeerRecord.listed(peer, "Label", last))
        old = {**old_peer_to_dict(peer), "label": "Label", "plans": old_last}
        assert json.dumps(listed) == json.dumps(old)


def test_health_record_leaves_out_what_a_reason_is_not_about() -> None:
    health = Health(
        "failing",
        (
            Reason("failing", "backup_failed", "plan p: last backup failed", plan="p"),
            Reason("attention", "share_skipped", "r was not taken", repo="r"),
        ),
    )
    assert to_json(HealthRecord.of(health)) == {
        "level": "failing",
        "summary": "failing — 2 things need a look",
        "reasons": [
            {"level": "failing", "kind": "backup_failed", "message": health.reasons[0].message,
             "plan": "p"},
            {"level": "attention", "kind": "share_skipped", "message": health.reasons[1].message,
             "repo": "r"},
        ],
    }  # fmt: skip
    # What the node sends is what the tray decodes, the absent fields as None.
    back = msgspec.convert(to_json(HealthRecord.of(health)), HealthRecord)
    assert back == HealthRecord.of(health) and back.reasons[0].peer is None


# -- tokens and remote requests ---------------------------------------------------------------
def old_token_to_dict(row: PairingTokenRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "label": row.label,
        "grants": list(row.grants),
        "max_uses": row.max_uses,
        "uses": row.uses,
        "expires_at": row.expires_at.isoformat(),
        "created_at": row.created_at.isoformat(),
    }


def old_request_to_dict(req: RemoteRequest) -> dict[str, Any]:
    return {
        "id": req.id,
        "peer": req.peer,
        "kind": req.kind,
        "args": dict(req.args or {}),
        "state": req.state,
        "remote_op_id": req.remote_op_id,
        "snapshot_id": req.snapshot_id,
        "error": req.error if req.state != "done" else None,
        "warning": req.error if req.state == "done" else None,
        "note": req.note,
        "message": describe(req),
        "final": req.state in FINAL_STATES,
        "followable": is_followable(req),
        "created_at": req.created_at.isoformat() if req.created_at else None,
        "updated_at": req.updated_at.isoformat() if req.updated_at else None,
    }


def test_token_records_encode_the_old_dict_and_hide_the_new_token() -> None:
    row = PairingTokenRow(
        id="t1", secret_hash="h", label="laptop", grants=["ops", "run:plan:docs"],
        max_uses=2, uses=1, expires_at=T1, created_at=T0,
    )  # fmt: skip
    assert json.dumps(to_json(TokenRecord.of(row))) == json.dumps(old_token_to_dict(row))
    made = NewTokenRecord.extending(TokenRecord.of(row), token="ps1-SECRET")
    assert to_json(made) == {**old_token_to_dict(row), "token": "ps1-SECRET"}
    # The one record with a secret: a log line or a failed assertion that shows it does not.
    assert "SECRET" not in repr(made) and repr(made).endswith(", token=<hidden>)")
    assert "label='laptop'" in repr(made)


@pytest.mark.parametrize(
    ("state", "error"), [("queued", None), ("done", "1 file unreadable"), ("failed", "refused")]
)
def test_remote_request_record_encodes_the_old_dict(state: str, error: str | None) -> None:
    req = RemoteRequest(
        id="rq1", peer="alpha", kind="run", args={"plan": "docs"}, state=state,
        remote_op_id="op9" if state != "queued" else None, snapshot_id=None, error=error,
        note=None, created_at=T0, updated_at=T1,
    )  # fmt: skip
    assert json.dumps(to_json(request_record(req))) == json.dumps(old_request_to_dict(req))


def test_restore_preview_record_encodes_the_old_dict() -> None:
    preview = RestorePreview(
        snapshot_id="abc", target="/srv/back", selection=("/home/a",), files=12,
        overwrite_count=3, overwrite=("/srv/back/home/a/x",), target_exists=True,
        target_empty=False,
    )  # fmt: skip
    old = {**asdict(preview), "selection": ["/home/a"], "overwrite": ["/srv/back/home/a/x"]}
    old["truncated"] = True  # 3 would be overwritten, 1 is named
    assert json.dumps(to_json(RestorePreviewRecord.of(preview))) == json.dumps(old)
