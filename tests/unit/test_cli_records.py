"""The CLI reads the node's records (``core/records.py``) as typed structs.

Against a real aiohttp server on a private Unix socket standing in for the node's admin API
(in a thread with its own event loop, as tests/unit/test_admin_client.py does), the real
command line is run in-process: records the node sends are shown as before, ``--json`` prints
the node's answer byte for byte (even a field this version does not know), and an answer that
is not the record asked for (another version, a broken or hostile listener on the socket) is
one line on stderr and exit 1: nothing on stdout, no traceback, no terminal escape.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from peerstash.core.records import (
    LsNodeRecord,
    PeerRecord,
    PlanRecord,
    SnapshotRecord,
    to_json,
)
from peerstash.desktop.__main__ import main
from tests.fixtures.records import listed_op_record, op_record, repo_record, status_record
from tests.fixtures.standin import admin_in_thread


class Node:
    """What the stand-in node answers: ``"METHOD /path"`` to a JSON answer, or to a list of
    lines for a stream (sent as NDJSON, then the stream ends)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.answers: dict[str, Any] = {}
        self.streams: dict[str, list[Any]] = {}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    data_dir = tmp_path / "node"
    data_dir.mkdir(mode=0o700)
    state = Node(data_dir)

    async def answer(request: web.Request) -> web.StreamResponse:
        key = f"{request.method} {request.path}"
        if key in state.streams:
            resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await resp.prepare(request)
            for line in state.streams[key]:
                await resp.write(json.dumps(line).encode() + b"\n")
            await resp.write_eof()
            return resp
        if key in state.answers:
            return web.json_response(state.answers[key])
        return web.json_response({"error": f"nothing at {key}"}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    with admin_in_thread(data_dir, app):
        yield state


def run(node: Node, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The command line as the console script runs it: exit code, stdout, stderr."""
    code = main(["--data-dir", str(node.data_dir), *argv])
    out, err = capsys.readouterr()
    return code, out, err


#: What sets this module's operation apart from ``tests/fixtures/records.py``'s.
OP: dict[str, Any] = {
    "id": "01OPA",
    "origin": "inst-a",
    "flow_id": "01OPA",
    "plan": "docs",
    "snapshot_id": "abcdef0123456789",
}


def op_json(**changes: Any) -> dict[str, Any]:
    return to_json(op_record(**{**OP, **changes}))


def listed_op(**changes: Any) -> dict[str, Any]:
    return to_json(listed_op_record("this node", **{**OP, **changes}))


def repo_json() -> dict[str, Any]:
    return to_json(
        repo_record(
            id="r", uri="/srv/r", env_keys=["AWS_KEY"], guid="0123456789abcdef", shared=True
        )
    )


def plan_record() -> dict[str, Any]:
    return to_json(
        PlanRecord(
            id="docs",
            repo="r",
            paths=["/home/a/docs"],
            excludes=[],
            schedule=None,
            every_seconds=3600,
            retention={},
            enabled=True,
            disabled_reason=None,
            next_due_at=None,
        )
    )


def snapshot_record() -> dict[str, Any]:
    return to_json(
        SnapshotRecord(
            id="abcdef0123456789",
            short_id="abcdef01",
            time=None,
            hostname="host-a",
            username="a",
            paths=["/home/a/docs"],
            tags=["plan:docs"],
            parent=None,
            summary=None,
        )
    )


def peer_record() -> dict[str, Any]:
    return to_json(
        PeerRecord(
            id="inst-b",
            name="laptop",
            key_id="KEY-B",
            role="known_host",
            url="http://127.0.0.1:9",
            grants=["ops"],
            their_grants=[],
            state="offline",
            state_reason="refused",
            last_seen=None,
        )
    )


def test_records_read_as_before_and_json_is_the_nodes_answer(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    # A field a newer node might add: shown in --json as sent, ignored by the text.
    ops = [{**listed_op(), "added_later": [1, 2]}]
    node.answers["GET /v1/ops"] = ops
    code, out, err = run(node, capsys, "ops")
    assert (code, err) == (0, "")
    assert out.splitlines()[1].split() == [
        "01OPA",
        "this",
        "node",
        "backup",
        "success",
        "docs",
        "r",
        "-",
        "-",
        "abcdef01",
    ]
    code, out, _ = run(node, capsys, "ops", "--json")
    assert code == 0 and out == json.dumps(ops, indent=2) + "\n"

    node.answers["GET /v1/repos"] = [repo_json()]
    code, out, _ = run(node, capsys, "repo", "show", "r")
    assert code == 0
    assert out.splitlines()[:5] == [
        "repository r",
        "  location:  /srv/r",
        "  password:  secret",
        "  restic id: 0123456789abcdef",
        "  env:       AWS_KEY (values kept secret)",
    ]
    code, out, _ = run(node, capsys, "repo", "show", "r", "--json")
    assert code == 0 and out == json.dumps(repo_json(), indent=2) + "\n"

    node.answers["GET /v1/plans"] = [plan_record()]
    code, out, _ = run(node, capsys, "plan", "list")
    assert code == 0 and out.splitlines()[1].split() == [
        "docs",
        "r",
        "every",
        "1h00m",
        "/home/a/docs",
        "yes",
    ]

    node.answers["GET /v1/repos/r/snapshots"] = [snapshot_record()]
    code, out, _ = run(node, capsys, "snapshots", "r")
    assert code == 0 and out.splitlines()[1].split() == [
        "abcdef01",
        "-",
        "host-a",
        "plan:docs",
        "/home/a/docs",
    ]

    entry = to_json(
        LsNodeRecord(
            name="a.txt",
            type="file",
            path="/home/a/docs/a.txt",
            size=3,
            permissions="-rw-r--r--",
            mtime=None,
            link_target=None,
        )
    )
    node.streams["GET /v1/repos/r/snapshots/abcdef01/ls"] = [entry]
    assert run(node, capsys, "ls", "r", "abcdef01") == (0, "f /home/a/docs/a.txt\n", "")
    assert run(node, capsys, "ls", "r", "abcdef01", "--json") == (0, json.dumps(entry) + "\n", "")

    node.answers["GET /v1/peers"] = [{**peer_record(), "label": "laptop", "plans": []}]
    code, out, _ = run(node, capsys, "peer", "list")
    assert code == 0
    assert out.splitlines()[1].split()[:5] == ["laptop", "inst-b", "KEY-B", "we", "dial"]
    assert "offline (refused)" in out
    assert out.splitlines()[-2:] == ["laptop:", "  no backups shared with this node"]


#: Each command, what the stand-in node answers it, and what the one line names.
HOSTILE: list[tuple[list[str], str, Any, str]] = [
    (["ops"], "GET /v1/ops", [{"id": 5}], "a list of operations"),
    (["ops", "--json"], "GET /v1/ops", {"not": "a list"}, "a list of operations"),
    (["repo", "list"], "GET /v1/repos", [{**repo_json(), "shared": "yes"}], "repositories"),
    (["repo", "show", "r"], "GET /v1/repos", [{"id": "r", "uri": 3}], "repositories"),
    (["plan", "list"], "GET /v1/plans", [{"id": "\x1b[2Jdocs"}], "a list of plans"),
    (
        ["plan", "add", "p", "--repo", "r", "--path", "/srv/x", "--no-backup-now"],
        "POST /v1/plans",
        {"next_due_at": 5},
        "a plan",
    ),
    (["snapshots", "r"], "GET /v1/repos/r/snapshots", [{"short_id": None}], "snapshots"),
    (
        ["forget", "r", "--dry-run"],
        "POST /v1/repos/r/forget",
        {"plans": [], "remove": [snapshot_record()], "keep": []},  # no "plan" field
        "a retention preview",
    ),
    (["token", "list"], "GET /v1/tokens", [{"id": "t1", "uses": "none"}], "pairing tokens"),
    (["token", "create"], "POST /v1/tokens", {"id": "t1", "grants": []}, "a new pairing token"),
    (["remote", "list"], "GET /v1/remote/requests", [{"id": "rq1", "final": 0}], "requests"),
    (["remote", "run", "b", "docs"], "POST /v1/remote/run", {"state": "done"}, "a remote request"),
    (["log", "01OPA"], "GET /v1/ops/01OPA/log", {"lines": "all of it"}, "an operation's log"),
    # A peer's snapshots and listing entries are passed on by the node as the peer sent them.
    (
        ["remote", "snapshots", "b", "r"],
        "GET /v1/peers/b/repos/r/snapshots",
        [{**snapshot_record(), "paths": "/etc"}],
        "a list of snapshots",
    ),
    (["peer", "list"], "GET /v1/peers", [{"id": "b", "label": "b", "plans": []}], "peers"),
    (["peer", "check", "b"], "POST /v1/peers/b/check", {"state": 1, "message": "m"}, "a peer"),
    (["repo", "share", "r"], "POST /v1/repos/r/share", ["r"], "a repository"),
]


@pytest.mark.parametrize(("argv", "route", "sent", "named"), HOSTILE)
def test_an_answer_that_is_not_the_record_is_one_line(
    node: Node,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    route: str,
    sent: Any,
    named: str,
) -> None:
    node.answers[route] = sent
    code, out, err = run(node, capsys, *argv)
    assert (code, out) == (1, "")
    assert err.startswith("peerstash: the node's answer is not ") and named in err
    assert err.count("\n") == 1 and "\x1b" not in err and "Traceback" not in err


#: Streams: each command, its route, the lines, and what the one line names.
HOSTILE_STREAMS: list[tuple[list[str], str, list[Any], str]] = [
    (["ops", "--follow"], "GET /v1/ops/follow", [{"id": "01OPA"}], "an operation"),
    (
        ["events"],
        "GET /v1/events",
        [{"type": "operation", "op": {**op_json(), "status": None}}],
        "an operation",
    ),
    (["ls", "r", "s"], "GET /v1/repos/r/snapshots/s/ls", [{"name": 1}], "a snapshot listing"),
    (
        ["remote", "ls", "b", "r", "s", "--json"],
        "GET /v1/peers/b/repos/r/snapshots/s/ls",
        [{"path": "/x", "type": ["file"]}],
        "a snapshot listing",
    ),
]


@pytest.mark.parametrize(("argv", "route", "lines", "named"), HOSTILE_STREAMS)
def test_a_streamed_line_that_is_not_the_record_is_one_line(
    node: Node,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    route: str,
    lines: list[Any],
    named: str,
) -> None:
    node.streams[route] = lines
    code, out, err = run(node, capsys, *argv)
    assert (code, out) == (1, "")
    assert err.startswith("peerstash: the node's answer is not ") and named in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_what_came_before_a_bad_line_is_still_shown(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    """A follower prints each good operation as it comes; the bad one ends it with one line."""
    node.streams["GET /v1/ops/follow"] = [op_json(), {"id": "01OPB"}]
    code, out, err = run(node, capsys, "ops", "--follow", "--json")
    assert (code, out) == (1, json.dumps(op_json()) + "\n")
    assert err.startswith("peerstash: the node's answer is not an operation: ")


def test_what_a_peer_sends_that_is_not_a_record_is_read_as_before(
    node: Node, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer's first backup (its id and status) and a peer's repository (what it shows of
    one, ``remote_config.repo_public_dict``) are not records: they are not refused as such."""
    node.answers["POST /v1/peers/hub/plans"] = {
        **plan_record(),
        "first_backup": {"id": "01OPHUB", "status": "pending"},
    }
    code, out, err = run(
        node, capsys, "plan", "add", "docs", "--on", "hub", "--repo", "r", "--path", "/srv/d"
    )
    assert (code, err) == (0, "")
    assert out == "plan docs added on hub (next run -); first backup queued as operation 01OPHUB\n"

    node.answers["POST /v1/peers/hub/repos"] = {
        "repo": {
            "id": "r3",
            "uri": "/srv/r3",
            "password_source": "secret",
            "env_keys": [],
            "option_keys": [],
            "guid": "89abcdef01234567",
            "origin": None,
        },
        "message": "created a new repository",
    }
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    code, out, err = run(
        node, capsys, "repo", "add", "r3", "--on", "hub", "--uri", "/srv/r3", "--password-stdin"
    )
    assert (code, err) == (0, "")
    assert out == "repository r3 on hub: created a new repository (id 89abcdef)\n"


#: The quick commands read the answer as JSON (no msgspec): what they cannot read is one line.
QUICK_HOSTILE: list[tuple[list[str], str, Any, str]] = [
    (["status"], "GET /v1/status", {"instance_id": "x", "name": "x"}, "no field 'health'"),
    (
        ["status"],
        "GET /v1/status",
        {**to_json(status_record()), "plans": [{"id": "p", "last": "yesterday"}]},
        "a field of another type",
    ),
    (["backup", "docs", "--wait"], "POST /v1/plans/docs/backup", {"kind": "x"}, "no field 'id'"),
]


@pytest.mark.parametrize(("argv", "route", "sent", "why"), QUICK_HOSTILE)
def test_a_quick_command_says_in_one_line_what_it_could_not_read(
    node: Node, capsys: pytest.CaptureFixture[str], argv: list[str], route: str, sent: Any, why: str
) -> None:
    node.answers[route] = sent
    code, out, err = run(node, capsys, *argv)
    assert (code, out) == (1, "")
    said = f"peerstash: the node's answer is not what `peerstash {argv[0]}` reads: {why}"
    assert err.startswith(said), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_status_check_gives_a_monitor_unknown_for_a_health_it_cannot_read(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Nagios-style check must get its one line and exit 3, whatever the node answered."""
    node.answers["GET /v1/status"] = {"health": {"level": "ok", "summary": "ok"}}  # no reasons
    code, out, err = run(node, capsys, "status", "--check")
    assert code == 3 and err == ""
    assert out == (
        "PEERSTASH UNKNOWN - the node's answer is not what `peerstash status` reads: "
        "no field 'reasons'\n"
    )
    node.answers["GET /v1/status"] = to_json(status_record())
    assert run(node, capsys, "status", "--check")[:2] == (0, "PEERSTASH OK - ok\n")
