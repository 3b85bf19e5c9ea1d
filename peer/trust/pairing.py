"""Pairing tokens as the node issues them: made here, stored hashed, shown once.

The wire side of pairing (redeeming a token when a new peer dials) is in ``link.py``; this module
is what ``peerstash token create/list/delete`` does.
"""

from __future__ import annotations

import re
from datetime import timedelta

from peerstash.core.models import PairingTokenRow
from peerstash.core.store import Store, utcnow
from peerstash.peer.trust.identity import Identity
from peerstash.peer.trust.permissions import Grants
from peerstash.peer.trust.tokens import PairingToken

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_TTL = timedelta(days=30)


class TokenError(Exception):
    pass


def parse_ttl(text: str) -> timedelta:
    """``90s``, ``15m``, ``1h``, ``7d``, ``2w``; at most 30 days (a token is a key to the door)."""
    m = _DURATION.match(text)
    if not m:
        raise TokenError(f"--ttl {text!r}: use a number and a unit, e.g. 15m, 1h, 7d")
    ttl = timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    if not timedelta(0) < ttl <= MAX_TTL:
        raise TokenError("--ttl must be more than 0 and at most 30 days")
    return ttl


async def create_token(
    store: Store,
    identity: Identity,
    instance_id: str,
    *,
    label: str = "",
    ttl: str = "1h",
    max_uses: int = 1,
    grants: list[str] | None = None,
) -> tuple[str, PairingTokenRow]:
    """Make a token; returns its text (shown once, never stored) and the stored row."""
    if not 1 <= max_uses <= 1000:
        raise TokenError("--max-uses must be between 1 and 1000")
    if len(label) > 200:
        raise TokenError("--label is too long (200 characters at most)")
    parsed = Grants.parse(grants or []).to_strings()
    lifetime = parse_ttl(ttl)
    token = PairingToken.generate(identity.key_id, instance_id)
    row = PairingTokenRow(
        id=token.token_id,
        secret_hash=token.secret_hash,
        label=label,
        grants=parsed,
        max_uses=max_uses,
        expires_at=utcnow() + lifetime,
    )
    await store.add_token(row)
    return token.text, row
