"""Identifiers minted by this instance.

Operation ids must sort by creation time across restarts and must never collide between
instances (every origin mints its own), so we use ULIDs: 48 bits of milliseconds and 80 random
bits, in Crockford base32. Python 3.11 has no uuid7, and a ULID is short enough to read aloud.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid(now_ms: int | None = None) -> str:
    """A 26-character, time-sortable, random id."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    out = []
    for _ in range(26):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))
