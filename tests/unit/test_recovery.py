"""The recovery sheet's text and the generated passwords (pure functions of core/recovery.py)."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

from peerstash.core.recovery import (
    generate_password,
    password_from_sheet,
    recovery_sheet,
    restic_command,
    write_private,
)


def test_generated_passwords_are_long_random_and_unambiguous() -> None:
    seen = {generate_password() for _ in range(200)}
    assert len(seen) == 200
    for pw in seen:
        groups = pw.split("-")
        assert len(groups) == 6 and all(len(g) == 5 for g in groups)
        assert not set(pw) & set("0O1lI")


def test_sheet_names_what_it_does_not_hold() -> None:
    text = recovery_sheet(
        name="cloud",
        uri="s3:https://s3.example.com/bucket/laptop",
        password="pw-here",
        env_keys=["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        machine="laptop",
        now=datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
    )
    assert "Written 2026-01-02 03:04 UTC on laptop." in text
    assert password_from_sheet(text) == "pw-here"
    assert "    restic -r s3:https://s3.example.com/bucket/laptop snapshots" in text
    assert "    AWS_SECRET_ACCESS_KEY" in text and "not on this sheet" in text
    rest = recovery_sheet(name="r", uri="rest:https://me:***@host:8000/x", password="p")
    assert "holds *** where the server's password goes" in rest
    assert "restic -r 'rest:https://me:***@host:8000/x' snapshots" in rest


def test_restic_command_quotes_for_the_shell() -> None:
    cmd = restic_command("/media/my disk/repo", ["sftp.command=ssh -p 2222 me@nas -s sftp"])
    assert cmd == (
        "restic -r '/media/my disk/repo' -o 'sftp.command=ssh -p 2222 me@nas -s sftp' snapshots"
    )


def test_write_private_makes_an_existing_file_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "sheet.txt"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
