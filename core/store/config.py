"""What a person configures: settings, secrets (ciphertext only), repositories and plans.

:class:`ConfigMixin` is the part of the Store for these rows, and :func:`repo_record` builds a
repository row for ``add_repo``. The peer-history limits are read here too: they are settings,
which operation sync (:mod:`peerstash.core.store.opsync`) uses to bound what it keeps of each
peer.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update

from peerstash.core.models import Operation, OpKind, OpStatus, Plan, Repo, Secret, Setting
from peerstash.core.store.base import AlreadyExists, NotFound, StoreBase, StoreError, utcnow

#: Settings bounding the copy of each peer's history kept here (see
#: :meth:`Store.trim_peer_ops`): its age in days, and the most operations per peer.
PEER_HISTORY_DAYS = "peer_history_days"
PEER_HISTORY_MAX_OPS = "peer_history_max_ops"
DEFAULT_PEER_HISTORY_DAYS = 90
DEFAULT_PEER_HISTORY_MAX_OPS = 200_000


class ConfigMixin(StoreBase):
    """Settings, secrets, repositories and plans: the rows a person (or a peer's share) sets."""

    # -- settings ----------------------------------------------------------------------------

    async def get_setting(self, key: str, default: Any = None) -> Any:
        async with self.session() as s:
            row = await s.get(Setting, key)
            return default if row is None else row.value

    async def set_setting(self, key: str, value: Any) -> None:
        async with self.session() as s, s.begin():
            row = await s.get(Setting, key)
            if row is None:
                s.add(Setting(key=key, value=value))
            else:
                row.value = value

    # -- secrets (ciphertext only; see core/secrets.py) ---------------------------------------

    async def put_secret(self, name: str, ciphertext: bytes) -> None:
        async with self.session() as s, s.begin():
            row = await s.get(Secret, name)
            if row is None:
                s.add(Secret(name=name, ciphertext=ciphertext))
            else:
                row.ciphertext = ciphertext

    async def get_secret(self, name: str) -> bytes | None:
        async with self.session() as s:
            row = await s.get(Secret, name)
            return None if row is None else row.ciphertext

    async def secret_names(self, prefix: str) -> list[str]:
        """Names of the secrets under ``prefix`` (never their values)."""
        async with self.session() as s:
            q = select(Secret.name).where(Secret.name.startswith(prefix, autoescape=True))
            return sorted((await s.scalars(q)).all())

    async def delete_secrets(self, prefix: str) -> None:
        async with self.session() as s, s.begin():
            await s.execute(delete(Secret).where(Secret.name.startswith(prefix, autoescape=True)))

    async def forget_freed_bytes(self) -> None:
        """Rewrite an SQLite database so values just replaced (a password taken out of a URI)
        no longer linger in its free pages or its write-ahead log. Best effort: a checkpoint
        that a reader holds back leaves the log for the next one. PostgreSQL: nothing (its
        old row versions go at its own VACUUM; its files are the server's)."""
        if not self._sqlite:
            return
        auto = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        async with auto.connect() as conn:
            await conn.exec_driver_sql("VACUUM")
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- repos -------------------------------------------------------------------------------

    async def add_repo(self, repo: Repo) -> Repo:
        now = utcnow()
        repo.created_at = repo.created_at or now
        repo.updated_at = now
        async with self.session() as s, s.begin():
            if await s.get(Repo, repo.id) is not None:
                raise AlreadyExists(f"a repository named {repo.id!r} already exists")
            s.add(repo)
        return repo

    async def get_repo(self, repo_id: str) -> Repo:
        return await self._get(Repo, repo_id, "repository")

    async def list_repos(self) -> list[Repo]:
        return await self._list(Repo)

    async def update_repo(self, repo_id: str, **fields: Any) -> Repo:
        return await self._update(Repo, repo_id, "repository", fields)

    async def delete_repo(self, repo_id: str) -> None:
        async with self.session() as s, s.begin():
            used = await s.scalar(
                select(func.count()).select_from(Plan).where(Plan.repo_id == repo_id)
            )
            if used:
                raise StoreError(
                    f"repository {repo_id!r} is used by {used} plan(s); delete or move them first"
                )
            await s.execute(delete(Repo).where(Repo.id == repo_id))

    async def remove_unshared_repo(self, repo_id: str, reason: str) -> list[str]:
        """Delete a received repository its owner stopped sharing, disabling its plans.

        One transaction: the plans that used it stay (disabled, with ``reason``, still naming
        the repository) so a person sees why they stopped, and nothing runs into a repository
        we no longer have the password of. Returns the ids of the plans disabled. A plan that
        was disabled already keeps its own reason (or none, when a person disabled it), so
        the repository's return does not enable it (:meth:`reenable_plans`).
        """
        async with self.session() as s, s.begin():
            repo = await s.get(Repo, repo_id)
            if repo is None:
                raise NotFound(f"no repository named {repo_id!r}")
            if repo.origin is None:
                raise StoreError(f"repository {repo_id!r} is our own; it cannot be unshared to us")
            plans = list((await s.scalars(select(Plan).where(Plan.repo_id == repo_id))).all())
            now = utcnow()
            plans = [p for p in plans if p.enabled]
            for plan in plans:
                plan.enabled = False
                plan.disabled_reason = reason
                plan.updated_at = now
            await s.delete(repo)
        return [p.id for p in plans]

    async def reenable_plans(self, repo_id: str, reason_prefix: str) -> list[str]:
        """Enable again the disabled plans on ``repo_id`` whose reason starts with
        ``reason_prefix`` (those its going away disabled), in one transaction; their ids."""
        async with self.session() as s, s.begin():
            plans = list(
                (
                    await s.scalars(
                        select(Plan).where(Plan.repo_id == repo_id, Plan.enabled.is_(False))
                    )
                ).all()
            )
            now = utcnow()
            done = []
            for plan in plans:
                if (plan.disabled_reason or "").startswith(reason_prefix):
                    plan.enabled = True
                    plan.disabled_reason = None
                    plan.updated_at = now
                    done.append(plan.id)
        return done

    # -- plans -------------------------------------------------------------------------------

    async def add_plan(self, plan: Plan) -> Plan:
        now = utcnow()
        plan.created_at = plan.created_at or now
        plan.updated_at = now
        async with self.session() as s, s.begin():
            if await s.get(Plan, plan.id) is not None:
                raise AlreadyExists(f"a plan named {plan.id!r} already exists")
            if await s.get(Repo, plan.repo_id) is None:
                raise NotFound(f"no repository named {plan.repo_id!r}")
            s.add(plan)
        return plan

    async def get_plan(self, plan_id: str) -> Plan:
        return await self._get(Plan, plan_id, "plan")

    async def list_plans(self) -> list[Plan]:
        return await self._list(Plan)

    async def update_plan(self, plan_id: str, **fields: Any) -> Plan:
        return await self._update(Plan, plan_id, "plan", fields)

    async def delete_plan(self, plan_id: str) -> None:
        async with self.session() as s, s.begin():
            await s.execute(delete(Plan).where(Plan.id == plan_id))

    async def last_success_by_plan(self) -> dict[str, datetime]:
        """When each plan last produced a snapshot (success or warning)."""
        async with self.session() as s:
            rows = await s.execute(
                select(Operation.plan_id, func.max(Operation.ended_at))
                .where(
                    Operation.origin == self.local_origin,
                    Operation.kind == OpKind.BACKUP,
                    Operation.status.in_([OpStatus.SUCCESS, OpStatus.WARNING]),
                    Operation.plan_id.is_not(None),
                )
                .group_by(Operation.plan_id)
            )
            return {pid: ended for pid, ended in rows.all() if pid and ended is not None}

    async def set_next_due(self, plan_id: str, when: datetime | None) -> None:
        async with self.session() as s, s.begin():
            await s.execute(update(Plan).where(Plan.id == plan_id).values(next_due_at=when))

    async def peer_history_limits(self) -> tuple[int, int]:
        """``(days, max_ops)``: how much of each peer's history this node keeps (settings
        ``peer_history_days`` and ``peer_history_max_ops``; a bad value means the default)."""
        days = await self.get_setting(PEER_HISTORY_DAYS, None)
        most = await self.get_setting(PEER_HISTORY_MAX_OPS, None)
        if not isinstance(days, int) or isinstance(days, bool) or days < 1:
            days = DEFAULT_PEER_HISTORY_DAYS
        if not isinstance(most, int) or isinstance(most, bool) or most < 1:
            most = DEFAULT_PEER_HISTORY_MAX_OPS
        return days, most


def repo_record(
    repo_id: str,
    uri: str,
    password_source: str,
    password_ref: str = "",
    env_keys: Sequence[str] = (),
    options: Sequence[str] = (),
) -> Repo:
    """Build a Repo row to hand to ``Store.add_repo``."""
    now = utcnow()
    return Repo(
        id=repo_id,
        uri=uri,
        password_source=password_source,
        password_ref=password_ref,
        env_keys=list(env_keys),
        options=list(options),
        created_at=now,
        updated_at=now,
    )
