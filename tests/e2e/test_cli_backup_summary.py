"""``peerstash backup PLAN --wait`` says what restic reported, and ``--wait --json`` prints the
finished operation: a real node process, the real CLI, real restic 0.14 and 0.18."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from peerstash.core.wording import backup_summary_line
from tests.fixtures.processes import NodeProc
from tests.fixtures.servers import resolve_restic

PASSWORD = "summary-Pa55word-for-tests"


@pytest.fixture(params=["system", "0.18"])
def restic_bin(request: pytest.FixtureRequest) -> str:
    return resolve_restic(request.param)


def test_backup_wait_shows_the_summary_and_json_prints_the_operation(
    node_factory: object, restic_bin: str, tmp_path: Path
) -> None:
    node: NodeProc = node_factory("alpha").start("--restic", restic_bin)  # type: ignore[operator]
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(5):
        (src / "d" / f"f{i}.txt").write_text(f"file {i}\n" * 100)
    node.cli(
        "repo",
        "add",
        "main",
        "--uri",
        str(tmp_path / "repo"),
        "--password-stdin",
        "--init",
        input=PASSWORD + "\n",
    )
    node.cli(
        "plan",
        "add",
        "--no-backup-now",
        "docs",
        "--repo",
        "main",
        "--path",
        str(src),
        "--keep-last",
        "5",
    )

    first = node.cli("backup", "docs", "--wait")
    lines = first.stdout.splitlines()
    backup_line = next(line for line in lines if line.startswith("backup "))
    # "backup <id>: success, snapshot <8 hex>: 5 new, 0 changed, 0 unmodified files · ... added
    # · took ..."
    assert re.fullmatch(
        r"backup \w+: success, snapshot [0-9a-f]{8}: 5 new, 0 changed, 0 unmodified files"
        r" · [0-9.]+ (B|KiB) added · took \d+s",
        backup_line,
    ), backup_line
    assert any(line.startswith("forget ") and ": success" in line for line in lines)

    (src / "d" / "f0.txt").write_text("changed\n")
    (src / "d" / "new.txt").write_text("new\n")
    res = node.cli("backup", "docs", "--wait", "--json")
    op = json.loads(res.stdout)  # stdout is exactly one JSON document
    assert op["kind"] == "backup" and op["status"] == "success" and op["plan"] == "docs"
    s = op["summary"]
    assert (s["files_new"], s["files_changed"], s["files_unmodified"]) == (1, 1, 4)
    assert s["data_added"] > 0 and s["total_duration"] >= 0
    # The progress ends at 100 %: done equals total once it succeeded.
    assert op["bytes_total"] > 0 and op["bytes_done"] == op["bytes_total"]
    assert op["files_done"] == op["files_total"] == 6, json.dumps(op)
    # The retention that followed it in the same flow is there too.
    assert [f["kind"] for f in op["followed_by"]] == ["forget"]
    assert op["followed_by"][0]["status"] == "success"
    # The same words in the operation's log as on the terminal.
    log = node.cli("log", op["id"]).stdout
    said = backup_summary_line(s)
    assert said and f"snapshot {op['snapshot_id'][:8]} saved: {said}" in log
    # And the operation as `ops --json` lists it is the one printed.
    listed = json.loads(node.cli("ops", "--json").stdout)
    assert next(o for o in listed if o["id"] == op["id"])["summary"] == s
