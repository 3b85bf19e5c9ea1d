"""A guard against a reference-counting bug of PySide6 6.12 on Python 3.11.

With PySide6-Essentials 6.12.0 on CPython 3.11, every call of a Qt method that returns
``void`` (``setObjectName``, ``killTimer``, ``update``...) drops one reference to ``None``
without having taken it. On 3.12+ ``None`` is immortal and nothing happens; on 3.11 its count
falls by one per call, and after a few thousand calls Python aborts with
``Fatal Python error: none_dealloc``. qasync runs every asyncio callback through a Qt timer
(``killTimer`` is void), so the tray app would die within a minute of work.

The real fix is a PySide6 without the bug or Python 3.12+. Until then :func:`apply` probes
for the bug (64 calls of a void method, counting ``None``'s references) and, only when it is
there, does what Python 3.12 does: makes ``None``, ``True`` and ``False`` effectively immortal
by adding 2**60 to their reference counts. Nothing is ever freed early or late by this: these
singletons are never deallocated in a healthy interpreter anyway.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

_BOOST = 1 << 60
_applied = False


def leaks_none(calls: int = 64) -> bool:
    """True when calling a void Qt method loses references to ``None`` (the 6.12 bug)."""
    if sys.version_info >= (3, 12):
        return False
    from PySide6.QtCore import QObject

    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(calls):
        probe.setObjectName("peerstash-refcount-probe")
    return before - sys.getrefcount(None) >= calls // 2


def apply() -> bool:
    """Make the singletons immortal if (and only if) this PySide6 needs it. Idempotent."""
    global _applied
    if _applied:
        return True
    if not leaks_none():
        return False
    if sys.implementation.name != "cpython":  # pragma: no cover - the bug is CPython-only
        return False
    for obj in (None, True, False):
        # ob_refcnt is the first field of every object in a CPython (non-debug) build.
        ctypes.c_ssize_t.from_address(id(obj)).value += _BOOST
    _applied = True
    import PySide6

    log.warning(
        "PySide6 %s on Python %d.%d loses references to None; applied the immortal-singletons "
        "guard (upgrade PySide6 or use Python 3.12+ to make this unnecessary)",
        PySide6.__version__,
        *sys.version_info[:2],
    )
    return True
