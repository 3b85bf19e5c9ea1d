"""Secrets at rest: repository passwords and credentials handed to the node.

Values are sealed with a NaCl SecretBox whose key lives in a 0600 file in the data directory,
never in the database. A PostgreSQL hub's DBA, a copied ``peerstash.db`` or a backup of the
database therefore reveals nothing without that file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nacl.exceptions
import nacl.secret
import nacl.utils

from peerstash.core.store import Store


class SecretError(Exception):
    """The secret store cannot be opened or a value cannot be read; worded for a person."""


def load_or_create_key(path: Path) -> bytes:
    """Read the store key, creating it 0600 on first use; refuse a key others can read."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise SecretError(
                f"{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`"
            ) from None
        key = path.read_bytes()
        if len(key) != nacl.secret.SecretBox.KEY_SIZE:
            raise SecretError(f"{path} is not a Peerstash secret key (wrong size)") from None
        return key
    key = nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


class SecretStore:
    """Named secrets, sealed before they reach the Store."""

    def __init__(self, store: Store, key: bytes) -> None:
        self._store = store
        self._box = nacl.secret.SecretBox(key)

    async def put(self, name: str, value: str) -> None:
        await self._store.put_secret(name, bytes(self._box.encrypt(value.encode())))

    async def get(self, name: str) -> str | None:
        sealed = await self._store.get_secret(name)
        if sealed is None:
            return None
        try:
            return self._box.decrypt(sealed).decode()
        except nacl.exceptions.CryptoError:
            raise SecretError(
                f"secret {name!r} cannot be decrypted: the data directory's secret.key does not "
                "match this database"
            ) from None

    async def delete_prefix(self, prefix: str) -> None:
        await self._store.delete_secrets(prefix)
