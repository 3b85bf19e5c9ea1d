"""The shared wording of results and the restore-target rules, one function at a time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from peerstash.core.restore_target import (
    SelectionError,
    check_selection,
    default_restore_folder,
    in_selection,
    restored_path,
)
from peerstash.core.wording import backup_summary_line, snapshot_size, split_tags


def test_backup_summary_line() -> None:
    s = {
        "files_new": 12,
        "files_changed": 3,
        "files_unmodified": 480,
        "data_added": 4404019,
        "total_duration": 5.4,
    }
    assert backup_summary_line(s) == (
        "12 new, 3 changed, 480 unmodified files · 4.2 MiB added · took 5s"
    )
    # Not a backup's summary: nothing to say.
    assert backup_summary_line(None) is None
    assert backup_summary_line({}) is None
    assert backup_summary_line({"detail": "retrying: 500"}) is None
    assert backup_summary_line({"removed": [], "kept": ["x"]}) is None
    assert backup_summary_line({**s, "files_new": "12"}) is None  # a peer's odd record
    assert backup_summary_line({**s, "files_new": True}) is None


def test_split_tags_and_size() -> None:
    t = split_tags(["plan:docs", "host:laptop", "manual"])
    assert (t.plan, t.host, t.others) == ("docs", "laptop", ("manual",))
    assert split_tags(None).plan == ""
    assert snapshot_size(None) == (None, None)
    assert snapshot_size({"total_bytes_processed": 10, "total_files_processed": 2}) == (10, 2)


def test_check_selection_refuses_what_is_not_the_snapshots() -> None:
    held = ["/home/a/docs"]
    assert check_selection(["/home/a/docs/x.txt", "/", "/home"], held) == [
        "/home/a/docs/x.txt",
        "/",
        "/home",
    ]
    assert check_selection(["/home/a/docs/"], held) == ["/home/a/docs"]
    for bad, why in (
        ("../../etc", "snapshot paths are absolute"),
        ("/home/a/docs/../../../etc", "may not contain '..'"),
        ("/etc", "/etc is not in the snapshot (it holds /home/a/docs)"),
        ("/home/a/docsX", "is not in the snapshot"),
        ("", "empty"),
        ("/home/a/docs/\0", "empty or not text"),
    ):
        with pytest.raises(SelectionError) as exc:
            check_selection([bad], held)
        assert why in str(exc.value)


def test_in_selection_and_restored_path() -> None:
    assert in_selection("/a/b", [])
    assert in_selection("/a/b/c", ["/a/b"]) and not in_selection("/a/bc", ["/a/b"])
    assert restored_path("/", "/home/a/x") == "/home/a/x"
    assert restored_path("/tmp/r", "/home/a/x") == "/tmp/r/home/a/x"


def test_default_restore_folder_never_lands_on_something(tmp_path: Path) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    first = default_restore_folder(tmp_path, "docs", when)
    stamp = when.astimezone().strftime("%Y-%m-%d_%H%M%S")
    assert first == tmp_path / f"docs-{stamp}"
    first.mkdir()
    assert default_restore_folder(tmp_path, "docs", when) == first  # empty: fine
    (first / "f").write_text("x")
    second = default_restore_folder(tmp_path, "docs", when)
    assert second == tmp_path / f"docs-{stamp}-2"
    assert default_restore_folder(tmp_path, "../evil/x", when).parent == tmp_path
