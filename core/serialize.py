"""Plain-JSON views of records, as every surface shows them.

The CLI's ``--json``, the admin API and the tray all use these, so a field has one name
everywhere. Secrets are never part of a record, so nothing here can leak one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from peerstash.core.models import Operation, Plan, Repo
from peerstash.core.restic import LsNode, Snapshot, redact_uri


def iso_time(dt: datetime | None) -> str | None:
    """A timestamp as the API and the CLI's JSON give it (ISO 8601 with its offset)."""
    return None if dt is None else dt.isoformat()


def op_to_dict(op: Operation) -> dict[str, Any]:
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
        "created_at": iso_time(op.created_at),
        "started_at": iso_time(op.started_at),
        "ended_at": iso_time(op.ended_at),
        "bytes_done": op.bytes_done,
        "bytes_total": op.bytes_total,
        "files_done": op.files_done,
        "files_total": op.files_total,
        "eta_seconds": op.eta_seconds,
        "summary": op.summary or {},
        "snapshot_id": op.snapshot_id,
        "error": op.error,
    }


def repo_to_dict(repo: Repo) -> dict[str, Any]:
    return {
        "id": repo.id,
        "uri": redact_uri(repo.uri),
        "password_source": repo.password_source,
        # A file path, variable name or command is configuration, not the secret itself.
        "password_ref": repo.password_ref or None,
        "env_keys": list(repo.env_keys or []),
        "options": list(repo.options or []),
        "guid": repo.guid,
        # Who shared it with us (None for our own); received repositories are read-only here.
        "origin": repo.origin,
        "read_only": repo.origin is not None,
        "shared": bool(repo.shared),
        "client_uri": redact_uri(repo.client_uri) if repo.client_uri else None,
        "created_at": iso_time(repo.created_at),
    }


def plan_to_dict(plan: Plan) -> dict[str, Any]:
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
        "next_due_at": iso_time(plan.next_due_at),
    }


def snapshot_to_dict(snap: Snapshot) -> dict[str, Any]:
    return {
        "id": snap.id,
        "short_id": snap.short_id,
        "time": iso_time(snap.time),
        "hostname": snap.hostname,
        "username": snap.username,
        "paths": list(snap.paths),
        "tags": list(snap.tags),
        "parent": snap.parent,
        "summary": dict(snap.summary) if snap.summary else None,
    }


def lsnode_to_dict(node: LsNode) -> dict[str, Any]:
    return {
        "name": node.name,
        "type": node.type,
        "path": node.path,
        "size": node.size,
        "permissions": node.permissions,
        "mtime": iso_time(node.mtime),
        "link_target": node.link_target,
    }
