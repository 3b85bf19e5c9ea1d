"""schema.refusal: msgspec's complaint about a body or query as our one sentence and field.

A unit test of one function; the same sentences over a real node's socket are in
tests/integration/test_admin.py, test_forget_expect.py, test_restore_preview.py and
tests/adversarial/test_hostile_admin_bodies.py.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import msgspec
import pytest

from peerstash.peer.api import schema as s

BODY_CASES: list[tuple[type[s.Request], bytes, str, str | None]] = [
    (s.AddRepo, b'{"id": 5}', "field 'id' must be a string", "id"),
    (
        s.AddRepo,
        b'{"id": null, "uri": "/x", "password": {"source": "s"}}',
        "missing field 'id'",
        "id",
    ),
    (
        s.AddRepo,
        b'{"id": "r", "uri": "/x"}',
        "missing field 'password' (an object with 'source')",
        "password",
    ),
    (
        s.AddRepo,
        b'{"id": "r", "uri": "/x", "password": {"source": 1}}',
        "field 'password.source' must be a string",
        "password",
    ),
    (
        s.AddRepo,
        b'{"id": "r", "uri": "/x", "password": {}}',
        "missing field 'password.source'",
        "password",
    ),
    (
        s.AddRepo,
        b'{"id": "r", "uri": "/x", "password": {"source": "s"}, "env": {"A": 1}}',
        "field 'env' must map names to strings",
        "env",
    ),
    (
        s.AddPlan,
        b'{"id": "p", "repo": "r", "paths": ["/a", 1]}',
        "field 'paths' must be a list of strings",
        "paths",
    ),
    (
        s.AddPlan,
        b'{"id": "p", "repo": "r", "backup_now": "yes"}',
        "field 'backup_now' must be true or false",
        "backup_now",
    ),
    (
        s.AddPlan,
        b'{"id": "p", "repo": "r", "retention": []}',
        "field 'retention' must be an object",
        "retention",
    ),
    (s.EditPlan, b'{"id": "x"}', "cannot change id of a plan", None),
    (s.EditRepo, b'{"guid": "x"}', "cannot change guid of a repository", None),
    (s.Forget, b'{"dry_run": "yes"}', "dry_run is true or false", "dry_run"),
    (s.Forget, b'{"prune": true}', "unknown field(s) for forget: prune", None),
    (s.Forget, b'{"expect": null}', "field 'expect' must be a list of strings", "expect"),
    (
        s.Gc,
        b'{"older_than_days": 0}',
        "older_than_days must be a positive whole number",
        "older_than_days",
    ),
    (s.CreateToken, b'{"max_uses": true}', "max_uses must be a whole number", "max_uses"),
    (s.RestorePreview, b'{"target": "/"}', "missing field 'snapshot'", "snapshot"),
    (
        s.RestorePreview,
        b'{"snapshot": "a", "target": "/", "steal": 1}',
        "unknown field(s) for a restore preview: steal",
        None,
    ),
    (s.Setting, b"[]", "request body must be a JSON object", None),
    (s.Setting, b'{"key": "k", "a\\nb": 1}', "unknown field 'a\\nb'", None),
    (s.Setting, b'{"key": "k", "zz": 1}', "unknown field zz", None),
]


@pytest.mark.parametrize(("kind", "raw", "message", "field"), BODY_CASES)
def test_body_refusals(kind: type[s.Request], raw: bytes, message: str, field: str | None) -> None:
    with pytest.raises(msgspec.ValidationError) as err:
        msgspec.json.decode(raw, type=kind)
    assert s.refusal(kind, err.value) == (message, field)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"limit": "lots"}, "limit must be a whole number"),
        ({"limit": "0"}, "limit must be between 1 and 100000"),
        ({"limit": "100001"}, "limit must be between 1 and 100000"),
        ({"before": "-1"}, "before must be an operation's pk (a whole number)"),
        ({"before": ""}, "before must be an operation's pk (a whole number)"),
    ],
)
def test_query_refusals(query: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError) as err:
        msgspec.convert(query, type=s.OpsQuery, strict=False)
    assert s.refusal(s.OpsQuery, err.value)[0] == message


def test_what_the_cli_and_desktop_send_still_decodes() -> None:
    """The bodies as peer/cli and desktop/ build them today (nulls included)."""
    for kind, body in (
        (
            s.AddPlan,
            {
                "id": "p",
                "repo": "r",
                "paths": ["/a"],
                "excludes": [],
                "schedule": None,
                "every": None,
                "retention": {"keep_last": 3},
                "backup_now": True,
            },
        ),
        (
            s.AddRepo,
            {
                "id": "r",
                "uri": "/x",
                "password": {"source": "file", "ref": "/pw"},
                "env": {},
                "options": [],
                "init": False,
            },
        ),
        (s.EditPlan, {"schedule": "", "every": "", "enabled": False}),
        (s.EditRepo, {"uri": "/y", "password": {"source": "secret", "value": "v"}, "options": []}),
        (s.Maintenance, {"all": False}),
        (s.Forget, {"plan": "p", "dry_run": True}),
        (s.Forget, {"expect": ["a", "b"]}),
        (s.Restore, {"snapshot": "a", "target": "/t", "include": []}),
        (s.CreateToken, {"label": "", "ttl": "1h", "max_uses": 1, "grants": []}),
        (s.AddPeer, {"token": "t", "url": None, "grants": [], "replace": False}),
        (s.Grants, {"grants": ["ops.read"]}),
        (s.Setting, {"key": "listen", "value": None}),
        (s.Rename, {"name": None}),
        (s.Pause, {"paused": True}),
        (s.Gc, {"older_than_days": 30}),
        (s.ShareRepo, {}),
        (s.RemoteRun, {"peer": "b", "plan": "p"}),
        (
            s.RemoteRestore,
            {"peer": "b", "repo": "r", "snapshot": "a", "target": "/t", "include": []},
        ),
    ):
        msgspec.json.decode(msgspec.json.encode(body), type=kind)


def test_the_request_structs_load_without_the_store_or_restic() -> None:
    """The CLI builds its bodies from these structs: loading them must not pull in SQLAlchemy
    (about 100 ms) or the restic wrapper, which a command that sends a body does not use."""
    code = (
        "import sys, peerstash.peer.api.schema; "
        "print(sorted(m for m in ('sqlalchemy', 'peerstash.core.restic', 'aiohttp') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_a_body_shown_in_a_log_or_traceback_hides_its_secrets() -> None:
    """repr (what a log line, a traceback or a failing assertion shows) hides passwords, tokens,
    URIs and environment values; the JSON sent to the node still carries them."""
    repo = s.AddRepo(
        id="r",
        uri="s3:https://AKIAKEY:s3cr3t@host/bucket",
        password=s.Password(source="secret", value="hunter2"),
        env={"AWS_SECRET_ACCESS_KEY": "shh"},
    )
    edit = s.EditRepo(password=s.Password(source="secret", value="hunter2"), env={"K": "shh"})
    peer = s.AddPeer(token="pst1-secret-token")
    shown = " ".join(repr(x) for x in (repo, edit, peer, [repo]))
    for secret in ("s3cr3t", "AKIAKEY", "hunter2", "shh", "pst1-secret-token"):
        assert secret not in shown
    assert "AWS_SECRET_ACCESS_KEY" in shown and "source='secret'" in shown
    assert repr(s.EditRepo(options=["x"])) == "EditRepo(options=['x'])"
    sent = msgspec.json.encode(repo).decode()
    assert "hunter2" in sent and "s3cr3t" in sent and "shh" in sent
