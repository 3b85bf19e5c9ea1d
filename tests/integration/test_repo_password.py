"""``Engine.repo_password``: what the owner's recovery sheet and ``repo show`` may get.

A real store (SQLite and PostgreSQL), the real secret store, real restic for the repositories
that must open. The stored password comes back for our own repository; a repository a peer
shared with us is refused (its password is its owner's to give); for a password file, variable
or command only where it comes from is said (nothing is read or run); nothing is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from peerstash.core.engine import Engine, EngineError, PasswordSpec
from peerstash.core.events import EventBus
from peerstash.core.secrets import SecretStore, load_or_create_key
from peerstash.core.store import NotFound, Store, repo_record

PW = "reveal-pw-Qq82-only-on-request"


async def test_repo_password_for_each_kind_of_repository(
    bare_store: Store, restic_bin: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = SecretStore(bare_store, load_or_create_key(tmp_path / "secret.key"))
    engine = Engine(
        tmp_path, bare_store, secrets, EventBus(), instance_id="a", restic_path=restic_bin
    )
    await engine.add_repo("own", str(tmp_path / "own"), PasswordSpec("secret", value=PW), init=True)
    said = await engine.repo_password("own")
    assert said == {"source": "secret", "password": PW, "ref": None, "where": "stored by Peerstash"}

    # A password command: said, never run (it would leave a marker file).
    marker = tmp_path / "ran"
    row = repo_record("bycmd", str(tmp_path / "x"), "command", f"touch {marker}; echo from-command")
    await bare_store.add_repo(row)
    said = await engine.repo_password("bycmd")
    assert said["password"] is None and said["source"] == "command"
    assert f"touch {marker}" in str(said["where"])
    assert not marker.exists()
    row = repo_record("byenv", str(tmp_path / "y"), "env", "SOME_VAR")
    await bare_store.add_repo(row)
    said = await engine.repo_password("byenv")
    assert said["password"] is None and "SOME_VAR" in str(said["where"])

    # A repository shared with us by peer b: its owner's to give.
    received = repo_record("photos@b", str(tmp_path / "p"), "secret")
    received.origin = "b"
    await bare_store.add_repo(received)
    await secrets.put("repo/photos@b/password", PW)
    with pytest.raises(EngineError, match="shared by b; its password is its owner's"):
        await engine.repo_password("photos@b")

    with pytest.raises(NotFound, match="no repository named 'ghost'"):
        await engine.repo_password("ghost")
    assert PW not in caplog.text
