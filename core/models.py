"""The tables Peerstash keeps (the vocabulary of operations is in ``core/ops.py``).

Every table is declared here and created by an Alembic migration in ``migrations/versions``; a
change to a model without a migration is caught by ``tests/unit/test_migrations.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from peerstash.core.ops import OpKind as OpKind  # re-exported: the tables' vocabulary
from peerstash.core.ops import OpStatus as OpStatus


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps always come back timezone-aware UTC.

    SQLite stores no zone, PostgreSQL does; without this the same code would compare naive with
    aware datetimes depending on the backend.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Setting(Base):
    """Instance-wide settings as key → JSON value (instance id, restic path, limits...)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)


class Secret(Base):
    """Encrypted secret values; the key that opens them lives in a 0600 file, not the DB."""

    __tablename__ = "secrets"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)


class Repo(Base):
    __tablename__ = "repos"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    uri: Mapped[str] = mapped_column(Text)
    # How restic gets the password: "secret" (our secret store), "file", "env" or "command".
    password_source: Mapped[str] = mapped_column(String(20))
    # The file path, variable name or command; empty for "secret". Never the password itself.
    password_ref: Mapped[str] = mapped_column(Text, default="")
    # Names of extra environment variables; their values live in the secret store.
    env_keys: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # restic -o options (e.g. sftp.command); not secret by contract.
    options: Mapped[list[Any]] = mapped_column(JSON, default=list)
    guid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The instance that shared this repository with us (None for our own). A received
    # repository is read-only here; its id is ``NAME@ORIGIN`` (see core/engine.py).
    origin: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # Our own repository offered to peers that grant us ``repos.receive``
    # (see peer/services/shares.py).
    shared: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The URI receivers use when set: the owner's local path is useless to them.
    client_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Plan(Base):
    __tablename__ = "plans"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    # No foreign key (since migration 0003): a plan on a repository its owner unshared stays,
    # disabled with the reason, naming the repository it used. The store checks a plan's
    # repository exists when one is added, and refuses to delete a repository plans use.
    repo_id: Mapped[str] = mapped_column(String(100))
    paths: Mapped[list[Any]] = mapped_column(JSON)
    excludes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    schedule_cron: Mapped[str | None] = mapped_column(String(100), nullable=True)
    schedule_interval: Mapped[int | None] = mapped_column(Integer, nullable=True)
    retention: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Operation(Base):
    """One unit of work, local or synced from a peer (``origin`` says whose)."""

    __tablename__ = "operations"
    __table_args__ = (
        UniqueConstraint("origin", "op_id", name="uq_operations_origin_op_id"),
        Index("ix_operations_origin_modno", "origin", "modno"),
        Index("ix_operations_plan_ended", "plan_id", "ended_at"),
        Index("ix_operations_status", "status"),
    )

    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    op_id: Mapped[str] = mapped_column(String(40))
    origin: Mapped[str] = mapped_column(String(100))
    modno: Mapped[int] = mapped_column(BigInteger)
    flow_id: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    plan_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    repo_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    files_done: Mapped[int] = mapped_column(BigInteger, default=0)
    files_total: Mapped[int] = mapped_column(BigInteger, default=0)
    eta_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    snapshot_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class OperationLog(Base):
    """Log lines of one operation, kept bounded (see ``Store.append_log``)."""

    __tablename__ = "operation_logs"
    __table_args__ = (Index("ix_operation_logs_op", "op_pk", "seq"),)

    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    op_pk: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("operations.pk", ondelete="CASCADE"),
    )
    seq: Mapped[int] = mapped_column(Integer)
    line: Mapped[str] = mapped_column(Text)


class Peer(Base):
    """Another Peerstash instance this one trusts, by its pinned identity key.

    ``role`` says who dials: a ``known_host`` is one we dial (we paired with its token), an
    ``authorized_client`` dials us (it used one of our tokens). ``grants`` are what *we* give
    *it*; ``their_grants`` what it told us it gives us (informational: each side enforces its
    own). ``id`` is the peer's instance id: the origin of its operations, fixed for good;
    ``name`` is only what people read.
    """

    __tablename__ = "peers"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    key_id: Mapped[str] = mapped_column(String(40))
    role: Mapped[str] = mapped_column(String(20))
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    grants: Mapped[list[Any]] = mapped_column(JSON, default=list)
    their_grants: Mapped[list[Any]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(20), default="offline")
    state_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The name the peer goes by (its Hello/Welcome ``name``; it can rename itself). ``None``
    #: for a peer that never sent one (an older version): its ``id`` is shown instead.
    name: Mapped[str | None] = mapped_column(String(100), nullable=True, default=None)


#: States of a :class:`RemoteRequest` that never change again
#: (``peer/services/remote_commands.py`` has them all); garbage collection removes old requests
#: in these states.
REQUEST_FINAL_STATES: tuple[str, ...] = ("done", "failed", "timed out")


class RemoteRequest(Base):
    """A command this instance asked a peer to run (a backup, a restore), kept until it ends.

    It is persisted because the peer may be offline when it is made: it waits ``queued`` and
    is delivered when the link comes up, even after a restart. ``args`` holds what the peer
    needs (plan, repository, snapshot, target), never a secret. ``remote_op_id`` is the
    operation the peer started for it; its state follows that operation as it arrives through
    operation sync.
    """

    __tablename__ = "remote_requests"
    __table_args__ = (Index("ix_remote_requests_peer_state", "peer", "state"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    peer: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    args: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(20))
    remote_op_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    snapshot_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PairingTokenRow(Base):
    """A one-time pairing token we issued; only a hash of its secret is kept."""

    __tablename__ = "pairing_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(200))
    label: Mapped[str] = mapped_column(Text, default="")
    grants: Mapped[list[Any]] = mapped_column(JSON, default=list)
    max_uses: Mapped[int] = mapped_column(Integer, default=1)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
