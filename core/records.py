"""Records: what every surface shows of the model, as typed structs.

The CLI's ``--json``, the admin API, the tray and the link services (which send some of these
to peers of the same version) all use these, so a field has one name everywhere. Each record
is built from its model with ``Record.of(model)`` and becomes JSON through :func:`to_json`
(plain builtins, in field order): keys, nulls and the time format are exactly what the
dict builders before them gave, so a node of this version and one before it read
each other's records, and ``--json`` output stays what ``docs/cli.md`` documents.

Times are kept as the ISO 8601 text :func:`iso_time` gives (``+00:00``, not msgspec's ``Z``)
for that reason. Secrets are not part of a record, but for one: ``NewTokenRecord``, the answer
that shows a new pairing token once, whose ``repr`` hides it.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Self

import msgspec

# A reason of the health verdict is its own wire form (a struct in the pure health module).
from peerstash.core.health import Health, Reason

if TYPE_CHECKING:
    # Only types: the CLI imports the request structs (peer/api/schema.py, which imports
    # this module) and must not pay for SQLAlchemy or the restic wrapper to send a body.
    from peerstash.core.models import Operation, PairingTokenRow, Peer, Plan, Repo
    from peerstash.core.restic import LsNode, Snapshot
    from peerstash.core.restore_target import RestorePreview


def iso_time(dt: datetime | None) -> str | None:
    """A timestamp as the API and the CLI's JSON give it (ISO 8601 with its offset)."""
    return None if dt is None else dt.isoformat()


def to_json(record: msgspec.Struct) -> dict[str, Any]:
    """A record as plain JSON-ready builtins (a dict in field order), for ``json.dumps``,
    ``web.json_response`` and the link's messages."""
    out: dict[str, Any] = msgspec.to_builtins(record)
    return out


class Record(msgspec.Struct, kw_only=True):
    """Base of every record: keyword-only, every field always present (null when unset)."""

    @classmethod
    def extending(cls, base: Record, **more: Any) -> Self:
        """This record from ``base``, a record it extends (a peer as listed, a token just
        made), and the fields it adds."""
        return cls(**msgspec.structs.asdict(base), **more)


class OpRecord(Record):
    """An operation, ours or a peer's (``ops --json``, ``/v1/ops``, the event stream)."""

    id: str
    pk: int
    origin: str
    modno: int
    flow_id: str
    kind: str
    status: str
    plan: str | None
    repo: str | None
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    eta_seconds: int | None
    summary: dict[str, Any]
    snapshot_id: str | None
    error: str | None

    @classmethod
    def of(cls, op: Operation) -> OpRecord:
        return cls(**_op_fields(op))


def _op_fields(op: Operation) -> dict[str, Any]:
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


class ListedOpRecord(OpRecord):
    """An operation in ``/v1/ops``: with how its origin is shown (a peer's name, "this node")."""

    origin_label: str

    @classmethod
    def labelled(cls, op: Operation, labels: dict[str, str]) -> ListedOpRecord:
        return cls(**_op_fields(op), origin_label=labels.get(op.origin, op.origin))


class RepoRecord(Record):
    """A repository, its URI's credentials redacted; never its password."""

    id: str
    uri: str
    password_source: str
    #: A file path, variable name or command is configuration, not the secret itself.
    password_ref: str | None
    env_keys: list[str]
    options: list[str]
    guid: str | None
    #: Who shared it with us (None for our own); received repositories are read-only here.
    origin: str | None
    read_only: bool
    shared: bool
    client_uri: str | None
    created_at: str | None

    @classmethod
    def of(cls, repo: Repo) -> RepoRecord:
        from peerstash.core.restic import redact_uri  # the node has it loaded; see the imports

        return cls(
            id=repo.id,
            uri=redact_uri(repo.uri),
            password_source=repo.password_source,
            password_ref=repo.password_ref or None,
            env_keys=list(repo.env_keys or []),
            options=list(repo.options or []),
            guid=repo.guid,
            origin=repo.origin,
            read_only=repo.origin is not None,
            shared=bool(repo.shared),
            client_uri=redact_uri(repo.client_uri) if repo.client_uri else None,
            created_at=iso_time(repo.created_at),
        )


class PlanRecord(Record):
    """A backup plan (also what ``config.read`` sends a peer of a plan it may see)."""

    id: str
    repo: str
    paths: list[str]
    excludes: list[str]
    schedule: str | None
    every_seconds: int | None
    retention: dict[str, Any]
    enabled: bool
    disabled_reason: str | None
    next_due_at: str | None

    @classmethod
    def of(cls, plan: Plan) -> PlanRecord:
        return cls(
            id=plan.id,
            repo=plan.repo_id,
            paths=list(plan.paths),
            excludes=list(plan.excludes or []),
            schedule=plan.schedule_cron,
            every_seconds=plan.schedule_interval,
            retention=dict(plan.retention or {}),
            enabled=plan.enabled,
            disabled_reason=plan.disabled_reason,
            next_due_at=iso_time(plan.next_due_at),
        )


class SnapshotRecord(Record):
    """A restic snapshot (also sent to a peer that asks for a shared repository's)."""

    id: str
    short_id: str
    time: str | None
    hostname: str
    username: str
    paths: list[str]
    tags: list[str]
    parent: str | None
    summary: dict[str, Any] | None

    @classmethod
    def of(cls, snap: Snapshot) -> SnapshotRecord:
        return cls(
            id=snap.id,
            short_id=snap.short_id,
            time=iso_time(snap.time),
            hostname=snap.hostname,
            username=snap.username,
            paths=list(snap.paths),
            tags=list(snap.tags),
            parent=snap.parent,
            summary=dict(snap.summary) if snap.summary else None,
        )


class PlannedSnapshotRecord(SnapshotRecord):
    """A snapshot in a forget dry run, with the plan whose retention keeps or removes it."""

    plan: str

    @classmethod
    def for_plan(cls, snap: Snapshot, plan_id: str) -> PlannedSnapshotRecord:
        return cls(**to_json(SnapshotRecord.of(snap)), plan=plan_id)


class LsNodeRecord(Record):
    """One entry of a snapshot listing (streamed as NDJSON, also over the link)."""

    name: str
    type: str
    path: str
    size: int
    permissions: str
    mtime: str | None
    link_target: str | None

    @classmethod
    def of(cls, node: LsNode) -> LsNodeRecord:
        return cls(
            name=node.name,
            type=node.type,
            path=node.path,
            size=node.size,
            permissions=node.permissions,
            mtime=iso_time(node.mtime),
            link_target=node.link_target,
        )


class PeerRecord(Record):
    """A paired peer: who it is, how it is reached, what each side grants (never its key)."""

    id: str
    name: str
    key_id: str
    role: str
    url: str | None
    grants: list[str]
    their_grants: list[str]
    state: str
    state_reason: str | None
    last_seen: str | None

    @classmethod
    def of(cls, peer: Peer) -> PeerRecord:
        return cls(
            id=peer.id,
            name=peer.name or peer.id,
            key_id=peer.key_id,
            role=peer.role,
            url=peer.url,
            grants=list(peer.grants),
            their_grants=list(peer.their_grants),
            state=peer.state,
            state_reason=peer.state_reason,
            last_seen=iso_time(peer.last_seen),
        )


class LastBackupRecord(Record):
    """One plan's newest backup on a peer machine, as the fleet views show it (``/v1/status``
    ``peers``, ``/v1/peers`` ``plans``): the fields a person reads, from the synced operation."""

    plan: str
    repo: str | None
    op: str
    status: str
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    snapshot_id: str | None
    error: str | None

    @classmethod
    def of(cls, plan_id: str, op: Operation) -> LastBackupRecord:
        return cls(
            plan=plan_id,
            repo=op.repo_id,
            op=op.op_id,
            status=op.status,
            created_at=iso_time(op.created_at),
            started_at=iso_time(op.started_at),
            ended_at=iso_time(op.ended_at),
            snapshot_id=op.snapshot_id,
            error=op.error,
        )


class ListedPeerRecord(PeerRecord):
    """A peer in ``/v1/peers``: with how this node shows it (its name, told apart from a
    same-named one) and its last backup per plan (from the operations it synced to us)."""

    label: str
    plans: list[LastBackupRecord]

    @classmethod
    def listed(cls, peer: Peer, label: str, plans: list[LastBackupRecord]) -> ListedPeerRecord:
        return cls.extending(PeerRecord.of(peer), label=label, plans=plans)


class FleetPeerRecord(Record):
    """A paired machine in ``/v1/status``: its link and its last backup per plan."""

    id: str
    name: str
    label: str
    state: str
    state_reason: str | None
    last_seen: str | None
    plans: list[LastBackupRecord]

    @classmethod
    def of(cls, peer: Peer, label: str, plans: list[LastBackupRecord]) -> FleetPeerRecord:
        return cls(
            id=peer.id,
            name=peer.name or peer.id,
            label=label,
            state=peer.state,
            state_reason=peer.state_reason,
            last_seen=iso_time(peer.last_seen),
            plans=plans,
        )


class HealthRecord(Record):
    """The node's verdict on the whole fleet (``core/health.py``) and why."""

    level: str
    summary: str
    reasons: list[Reason]

    @classmethod
    def of(cls, health: Health) -> HealthRecord:
        return cls(level=health.level, summary=health.summary(), reasons=list(health.reasons))


class PlanStatusRecord(Record):
    """One of this node's plans in ``/v1/status``: when it runs next and how it last ran."""

    id: str
    repo: str
    enabled: bool
    next_due_at: str | None
    #: No successful backup for longer than the plan's schedule allows.
    stale: bool
    last: OpRecord | None

    @classmethod
    def of(cls, plan: Plan, stale: bool, last: Operation | None) -> PlanStatusRecord:
        return cls(
            id=plan.id,
            repo=plan.repo_id,
            enabled=plan.enabled,
            next_due_at=iso_time(plan.next_due_at),
            stale=stale,
            last=OpRecord.of(last) if last else None,
        )


class StatusRecord(Record):
    """``/v1/status``: this running node, its health verdict, its plans and the fleet.

    The tray reads it as this record; ``peerstash status`` reads the same JSON without msgspec
    (a quick command, see ``peer/cli/format.py``), so a field renamed here is renamed there.
    """

    instance_id: str
    name: str
    #: The version this process runs (see ``installed_version``).
    version: str
    data_dir: str
    pid: int
    admin_socket: str
    paused: bool
    key_id: str
    peer_url: str | None
    #: What this running node really uses (the settings may say otherwise until the next
    #: restart, and ``--listen`` / ``--no-discovery`` override them).
    listen: str | None
    discovery: bool
    #: Repositories peers shared that were not taken here, and why (e.g. same GUID).
    shared_skipped: dict[str, str]
    #: The last change each owner made to where a received repository is or how it opens
    #: (no secret), since this node started.
    shared_changes: dict[str, str]
    #: The version on disk now: not ``version`` once the package was upgraded under this
    #: running node, which then has to restart (the tray shows it).
    installed_version: str
    health: HealthRecord
    plans: list[PlanStatusRecord]
    peers: list[FleetPeerRecord]


class TokenRecord(Record):
    """A pairing token this node issued. Never its secret: only a hash of it is kept."""

    id: str
    label: str
    grants: list[str]
    max_uses: int
    uses: int
    expires_at: str
    created_at: str

    @classmethod
    def of(cls, row: PairingTokenRow) -> TokenRecord:
        return cls(
            id=row.id,
            label=row.label,
            grants=list(row.grants),
            max_uses=row.max_uses,
            uses=row.uses,
            expires_at=row.expires_at.isoformat(),
            created_at=row.created_at.isoformat(),
        )


class NewTokenRecord(TokenRecord):
    """``POST /v1/tokens``: the token just made, with its text (``token``), shown this once.

    The one record that holds a secret, so its ``repr`` hides it (a failed test or a log line
    that shows the record does not show the token)."""

    token: str

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={'<hidden>' if name == 'token' else repr(getattr(self, name))}"
            for name in self.__struct_fields__
        )
        return f"{type(self).__name__}({shown})"


class DiscoveredRecord(Record):
    """A Peerstash instance announced on the LAN (zeroconf), as ``/v1/discovered`` lists it.

    Everything but ``paired``/``key_matches``/``duplicate_id`` is what the announcement said,
    which anyone on the network can send: a hint of where to dial, never a proof of who it is
    (pairing checks the key)."""

    id: str
    key_id: str
    #: The peer protocol version it announces.
    version: int
    #: Whether that is the one this node speaks (if not, it is shown but not dialed).
    compatible: bool
    addresses: list[str]
    port: int
    #: A peer with this instance id is paired here...
    paired: bool
    #: ...and the key it announces is the one we paired with (None when not paired).
    key_matches: bool | None
    #: More than one machine on the LAN announces this instance id.
    duplicate_id: bool


class RemoteRequestRecord(Record):
    """Something this node asked a peer to run (``run`` a plan, ``restore`` a snapshot) and
    where it stands (``/v1/remote/requests``, the ``remote`` event). ``args`` hold no secret."""

    id: str
    peer: str
    kind: str
    args: dict[str, Any]
    state: str
    remote_op_id: str | None
    snapshot_id: str | None
    error: str | None
    #: Done, but the peer's operation ended with a warning (why).
    warning: str | None
    note: str | None
    #: Where it stands, in a sentence.
    message: str
    final: bool
    #: Its progress can still be followed (``/v1/remote/requests/ID/wait``).
    followable: bool
    created_at: str | None
    updated_at: str | None


class FollowedRemoteRecord(RemoteRequestRecord):
    """A line of ``/v1/remote/requests/ID/wait``: the request and the peer's operation for it
    as last synced here (progress included; None before it arrives)."""

    op: OpRecord | None


class RestorePreviewRecord(Record):
    """``POST /v1/repos/ID/restore/preview``: what a restore of ``selection`` (empty: the whole
    snapshot) into ``target`` would write and overwrite. The tray asks the person before it
    overwrites anything, so an answer that is not this record restores nothing."""

    snapshot_id: str
    target: str
    selection: list[str]
    #: The files (and links) the restore writes.
    files: int
    #: How many of them exist at the target already and would be replaced...
    overwrite_count: int
    #: ...the first of them, as paths at the target.
    overwrite: list[str]
    target_exists: bool
    target_empty: bool
    #: More would be overwritten than ``overwrite`` names.
    truncated: bool

    @classmethod
    def of(cls, preview: RestorePreview) -> RestorePreviewRecord:
        return cls(
            snapshot_id=preview.snapshot_id,
            target=preview.target,
            selection=list(preview.selection),
            files=preview.files,
            overwrite_count=preview.overwrite_count,
            overwrite=list(preview.overwrite),
            target_exists=preview.target_exists,
            target_empty=preview.target_empty,
            truncated=preview.overwrite_count > len(preview.overwrite),
        )


class RetentionPlanRecord(Record):
    """A plan whose retention a forget applies: its policy and which snapshots are its own
    (this node's ``host`` with the plan's ``tags``; nobody else's are ever considered)."""

    plan: str
    retention: dict[str, Any]
    host: str
    tags: list[str]


class ForgetPreviewRecord(Record):
    """``POST /v1/repos/ID/forget`` with ``dry_run``: what retention would remove and keep,
    changing nothing (the person confirms the ``remove`` list, sent back as ``expect``)."""

    repo: str
    dry_run: bool
    plans: list[RetentionPlanRecord]
    keep: list[PlannedSnapshotRecord]
    remove: list[PlannedSnapshotRecord]


class LogRecord(Record):
    """``/v1/ops/ID/log``: an operation's log lines (a peer's operation's, fetched from that
    peer by the node), as restic and the runner wrote them; a peer's lines are its words."""

    id: str
    origin: str
    lines: list[str]
