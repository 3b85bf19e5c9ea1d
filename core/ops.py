"""The vocabulary of operations: what kind each is and where it stands.

Apart from the tables (``core/models.py``) so that the CLI and the tray, which show these words
but never touch the database, import them without SQLAlchemy. ``models`` re-exports both.
"""

from __future__ import annotations

import enum


class OpKind(enum.StrEnum):
    BACKUP = "backup"
    FORGET = "forget"
    PRUNE = "prune"
    CHECK = "check"
    RESTORE = "restore"
    UNLOCK = "unlock"


class OpStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    WARNING = "warning"
    ERROR = "error"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self not in (OpStatus.PENDING, OpStatus.RUNNING)


#: The statuses an operation ends in.
FINISHED = frozenset(s for s in OpStatus if s.finished)
