"""The restic wrapper's parsers, fed with recorded output.

``data/restic/0.14`` holds real output of the restic 0.14.0 that Debian bookworm ships,
re-recordable with ``data/restic/capture_0.14.sh`` (NAME.stdout, NAME.stderr, NAME.rc).
``data/restic/0.17`` is written by hand from the shapes restic documents for 0.17+ (the
"Scripting" chapter, doc/075_scripting.rst: backup/restore JSON lines, exit codes 10/11/12/130,
``exit_error`` messages) and restic's own example messages, since no 0.17 binary is installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, cast

import pytest

from peerstash.core.restic import (
    MAX_SECONDS_REMAINING,
    MAX_WARNINGS,
    BackupOutputParser,
    BackupProgress,
    BackupResult,
    ErrorKind,
    LsNode,
    PasswordCommand,
    PasswordFile,
    PasswordValue,
    Redactor,
    RepoAccess,
    Restic,
    ResticError,
    RestoreOutputParser,
    Snapshot,
    StderrCollector,
    build_env,
    classify_failure,
    find_restic,
    forget_args,
    format_error_line,
    iter_lines,
    parse_cat_config,
    parse_forget,
    parse_lock_info,
    parse_ls_line,
    parse_retry_line,
    parse_snapshots,
    parse_version,
    progress_fps_for,
    redact_uri,
    same_snapshot_id,
    split_json_output,
    strip_ansi,
)
from peerstash.core.retention import RetentionPolicy

DATA = Path(__file__).parent / "data" / "restic"


class Recording:
    """One recorded restic run: its stdout and stderr lines and its exit code."""

    def __init__(self, version: str, name: str) -> None:
        base = DATA / version / name
        self.stdout = _read(base.with_suffix(".stdout"))
        self.stderr = _read(base.with_suffix(".stderr"))
        self.rc = int(base.with_suffix(".rc").read_text().strip())

    @property
    def stdout_lines(self) -> list[str]:
        return self.stdout.splitlines()

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.splitlines()


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


def rec(version: str, name: str) -> Recording:
    return Recording(version, name)


def classify(recording: Recording, command: str = "snapshots") -> ResticError:
    """Classify a recorded failure the way the wrapper does: stderr through a collector."""
    collector = StderrCollector()
    for line in recording.stderr_lines:
        collector.feed(strip_ansi(line))
    code = recording.rc
    if code == 1 and collector.exit_error_code not in (None, 1):
        code = collector.exit_error_code
    return classify_failure(code, collector.raw_text(), command=command, repo_name="home-nas")


def feed_backup(lines: list[str]) -> tuple[BackupOutputParser, list[BackupProgress], list[str]]:
    parser = BackupOutputParser()
    progress: list[BackupProgress] = []
    logged: list[str] = []
    for line in lines:
        item = parser.feed_stdout(strip_ansi(line))
        if isinstance(item, BackupProgress):
            progress.append(item)
        elif isinstance(item, str):
            logged.append(item)
    return parser, progress, logged


# -------------------------------------------------------------------------------- version


def test_version_from_recording_and_variants() -> None:
    assert parse_version(rec("0.14", "version").stdout) == (0, 14, 0)
    assert parse_version("restic 0.17.3 compiled with go1.23.3 on linux/amd64") == (0, 17, 3)
    assert parse_version("restic 0.18.0-dev (compiled manually) compiled with go1.24") == (0, 18, 0)
    with pytest.raises(ResticError) as info:
        parse_version("borg 1.2.3")
    assert info.value.kind is ErrorKind.NOT_INSTALLED


# -------------------------------------------------------------------------------- backup


def test_backup_014_progress_and_summary() -> None:
    recording = rec("0.14", "backup_big")
    assert recording.rc == 0
    parser, progress, logged = feed_backup(recording.stdout_lines)
    assert progress and not logged
    first = progress[0]
    # 0.14's first status line has no bytes_done/files_done: they read as 0.
    assert first.bytes_done == 0 and first.files_done == 0
    assert first.seconds_remaining is None  # absent, not 0
    assert first.percent == 0.0
    last = progress[-1]
    assert last.percent == pytest.approx(100.0)
    assert last.bytes_done == last.bytes_total == 30 * 4_000_000
    assert last.files_done == last.files_total == 30
    assert any(p.current_files for p in progress)
    assert all(0.0 <= p.percent <= 100.0 for p in progress)
    result = BackupResult.from_summary(parser.summary)
    assert result.snapshot_id is not None and len(result.snapshot_id) == 8  # 0.14: short id
    assert result.files_new == 30 and result.total_files_processed == 30
    assert result.total_bytes_processed == 30 * 4_000_000
    assert result.data_added > 0 and result.total_duration > 0
    assert result.data_added_packed == 0  # not printed by 0.14: missing reads as 0
    summary = result.summary_dict()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["snapshot_id"] == result.snapshot_id and summary["warnings"] == []


def test_backup_014_seconds_remaining_present_when_restic_has_an_eta() -> None:
    _, progress, _ = feed_backup(rec("0.14", "interrupted").stdout_lines)
    etas = [p.seconds_remaining for p in progress if p.seconds_remaining is not None]
    assert etas and all(0 <= eta <= MAX_SECONDS_REMAINING for eta in etas)


def test_backup_014_overflowing_eta_is_clamped() -> None:
    # Real 0.14 output while a --stdin backup waits for data: the ETA is 2**63.
    recording = rec("0.14", "backup_stdin_slow")
    assert "9223372036854775808" in recording.stdout
    _, progress, _ = feed_backup(recording.stdout_lines)
    assert progress[0].seconds_remaining is None
    assert [p.seconds_remaining for p in progress[1:]] == [MAX_SECONDS_REMAINING] * 3


def test_backup_014_scan_finished_under_status() -> None:
    recording = rec("0.14", "backup_vv")
    raw = [json.loads(line) for line in recording.stdout_lines]
    assert any(m.get("action") == "scan_finished" and m["message_type"] == "status" for m in raw)
    parser, progress, _ = feed_backup(recording.stdout_lines)
    finished = [p for p in progress if p.scan_finished]
    assert finished
    assert finished[0].files_total == 5
    assert finished[0].bytes_total == 900_011
    assert parser.summary is not None


def test_backup_017_scan_finished_under_verbose_status_and_long_id() -> None:
    recording = rec("0.17", "backup")
    parser, progress, _ = feed_backup(recording.stdout_lines)
    assert [p.scan_finished for p in progress] == [False, True, True, True]
    assert progress[1].files_total == 5 and progress[1].bytes_total == 900_011
    middle = progress[2]
    assert middle.seconds_remaining == 7
    assert middle.error_count == 1
    assert middle.percent == pytest.approx(33.33)
    assert middle.current_files == ("/data/f2.bin", "/data/f3.bin")
    result = BackupResult.from_summary(parser.summary, partial=recording.rc == 3)
    assert result.snapshot_id is not None and len(result.snapshot_id) == 64
    assert result.data_added_packed == 880_000
    assert result.partial


def test_progress_missing_fields_and_clamping() -> None:
    parser = BackupOutputParser()
    bare = parser.feed_stdout('{"message_type":"status"}')
    assert bare == BackupProgress()
    cases = {
        '{"message_type":"status","seconds_remaining":-5}': 0,
        '{"message_type":"status","seconds_remaining":1e15}': MAX_SECONDS_REMAINING,
        '{"message_type":"status","seconds_remaining":"soon"}': 0,
        '{"message_type":"status","seconds_remaining":null}': None,
        '{"message_type":"status","seconds_remaining":42.7}': 42,
    }
    for line, expected in cases.items():
        item = parser.feed_stdout(line)
        assert isinstance(item, BackupProgress)
        assert item.seconds_remaining == expected, line
    over = parser.feed_stdout('{"message_type":"status","percent_done":1.7,"bytes_done":-3}')
    assert isinstance(over, BackupProgress)
    assert over.percent == 100.0 and over.bytes_done == 0
    # No percent_done: computed from bytes.
    computed = parser.feed_stdout('{"message_type":"status","bytes_done":25,"total_bytes":100}')
    assert isinstance(computed, BackupProgress) and computed.percent == pytest.approx(25.0)
    # Wrong types everywhere: still no exception.
    odd = parser.feed_stdout(
        '{"message_type":"status","total_files":"x","files_done":true,"current_files":"a"}'
    )
    assert isinstance(odd, BackupProgress)
    assert odd.files_total == 0 and odd.files_done == 0 and odd.current_files == ()


def test_non_json_and_ansi_lines_are_tolerated() -> None:
    lines = [
        "\x1b[2Kusing parent snapshot 4017d19f",
        '{"message_type":"status","percent_done":0.5,"total_bytes":10,"bytes_done":5}',
        '{"message_type": "status", "percent_',  # cut-off JSON
        "\x1b[1;31m[0:01] 50.00%\x1b[0m",
        "",
        '{"message_type":"some_future_type","x":1}',
        '["not", "a", "message"]',
        '{"message_type":"summary","snapshot_id":"abcdef12"}',
    ]
    parser, progress, logged = feed_backup(lines)
    assert len(progress) == 1 and progress[0].percent == 50.0
    assert logged[0] == "using parent snapshot 4017d19f"
    assert "[0:01] 50.00%" in logged
    assert all("\x1b" not in line for line in logged)
    assert parser.summary == {"message_type": "summary", "snapshot_id": "abcdef12"}


def test_strip_ansi() -> None:
    assert strip_ansi("\x1b[2Ksignal interrupt received, cleaning up") == (
        "signal interrupt received, cleaning up"
    )
    assert strip_ansi("\x1b]0;title\x07text\x1b[0m") == "text"
    assert strip_ansi("[0:01] 10%\r[0:02] 20%\r") == "[0:02] 20%"
    assert strip_ansi("a\x00b\tc\n") == "ab\tc"
    recorded = rec("0.14", "interrupted").stderr
    assert "\x1b[" in recorded  # the real recording does carry an escape
    assert strip_ansi(recorded) == "signal interrupt received, cleaning up"


# -------------------------------------------------------------------------------- warnings


def test_backup_014_partial_json_error_and_text_error() -> None:
    recording = rec("0.14", "backup_partial")
    assert recording.rc == 3
    collector = StderrCollector()
    logged = [collector.feed(line) for line in recording.stderr_lines]
    assert collector.warning_count == 1
    (warning,) = collector.warnings
    assert "/proc/sys/vm/drop_caches" in warning and "permission denied" in warning
    assert "archival" in warning
    # The closing remark is logged, but is not a warning of its own.
    assert any(line and line.startswith("Warning: at least one") for line in logged)

    text = rec("0.14", "backup_partial_text")
    collector = StderrCollector()
    for line in text.stderr_lines:
        collector.feed(line)
    assert collector.warnings == ["error: open /proc/sys/vm/drop_caches: permission denied"]


def test_backup_017_error_message_line() -> None:
    collector = StderrCollector()
    for line in rec("0.17", "backup").stderr_lines:
        collector.feed(line)
    assert collector.warnings == [
        "error: open /data/secret.db: permission denied (during archival)"
    ]


def test_skipped_missing_path_is_a_warning() -> None:
    recording = rec("0.14", "backup_skip_missing")
    assert recording.rc == 0
    collector = StderrCollector()
    for line in recording.stderr_lines:
        collector.feed(line)
    assert collector.skipped_paths == 1
    assert collector.warnings and "does not exist, skipping" in collector.warnings[0]


def test_format_error_line_shapes() -> None:
    assert format_error_line(
        {"message_type": "error", "error": {"message": "boom"}, "during": "scan", "item": "/a"}
    ) == ("error: /a: boom (during scan)")
    assert format_error_line(
        {"error": {"Op": "lstat", "Path": "/b", "Err": 2}, "during": "scan", "item": "/b"}
    ) == ("error: lstat /b: no such file or directory (during scan)")
    assert format_error_line({"error": {}, "item": "/c"}) == "error: /c: unknown error"
    assert format_error_line({"error": "plain"}) == "error: plain"


def test_warnings_are_bounded() -> None:
    collector = StderrCollector()
    for i in range(MAX_WARNINGS + 50):
        collector.feed(f"error: open /f{i}: permission denied")
    assert len(collector.warnings) == MAX_WARNINGS
    assert collector.warning_count == MAX_WARNINGS + 50
    assert len(collector.tail) == 20


# -------------------------------------------------------------------------------- restore


def test_restore_017_progress_and_summary() -> None:
    parser = RestoreOutputParser()
    items = [parser.feed_stdout(line) for line in rec("0.17", "restore").stdout_lines]
    progress = [i for i in items if i is not None and not isinstance(i, str)]
    assert len(progress) == 2
    assert progress[0].percent == 50.0 and progress[0].files_done == 2
    assert progress[1].files_skipped == 1 and progress[1].bytes_done == 600_000
    assert parser.summary is not None and parser.summary["files_restored"] == 3
    collector = StderrCollector()
    for line in rec("0.17", "restore").stderr_lines:
        collector.feed(line)
    assert collector.warnings and "/data/x" in collector.warnings[0]


def test_restore_014_prints_text_only() -> None:
    recording = rec("0.14", "restore")
    docs, text = split_json_output(recording.stdout_lines)
    assert docs == [] and text and text[0].startswith("restoring <Snapshot")


# -------------------------------------------------------------------------------- snapshots


def test_snapshots_014() -> None:
    recording = rec("0.14", "snapshots")
    assert len(recording.stdout_lines) == 1  # one JSON document on one line
    docs, text = split_json_output(recording.stdout_lines)
    assert text == []
    snaps = parse_snapshots(docs[0])
    assert len(snaps) == 6  # one per backup in capture_0.14.sh
    for snap in snaps:
        assert len(snap.id) == 64 and snap.short_id == snap.id[:8]
        assert snap.time is not None and snap.time.tzinfo is not None
        assert all(os.path.isabs(p) for p in snap.paths)
    tagged = [s for s in snaps if s.tags]
    assert tagged[0].tags == ("plan:p1", "host:me") and tagged[0].hostname == "myhost"
    assert sum(1 for s in snaps if s.parent) >= 1
    only_tagged = parse_snapshots(
        split_json_output(rec("0.14", "snapshots_tag").stdout_lines)[0][0]
    )
    assert [s.id for s in only_tagged] == [tagged[0].id]


def test_snapshots_017_fields_and_missing_short_id() -> None:
    docs, _ = split_json_output(rec("0.17", "snapshots").stdout_lines)
    first, second = parse_snapshots(docs[0])
    assert first.program_version == "restic 0.17.3"
    assert first.excludes == ("*.tmp",)
    assert first.summary is not None and first.summary["files_new"] == 4
    assert first.time is not None and first.time.utcoffset() is not None
    assert first.time.microsecond == 123456  # nanoseconds truncated, not rejected
    assert second.short_id == second.id[:8]  # derived when restic omits it
    assert second.parent == first.id


def test_snapshots_tolerates_odd_entries_and_group_by_form() -> None:
    doc = [
        {"id": "a" * 64, "time": "not a time"},
        {"no": "id"},
        "junk",
        {"group_key": {"hostname": "h"}, "snapshots": [{"id": "b" * 64, "tags": None}]},
    ]
    snaps = parse_snapshots(doc)
    assert [s.id[:1] for s in snaps] == ["a", "b"]
    assert snaps[0].time is None and snaps[1].tags == ()
    with pytest.raises(ResticError):
        parse_snapshots({"not": "a list"})


def _big_snapshots_document(min_bytes: int) -> tuple[bytes, int]:
    template = json.loads(rec("0.14", "snapshots").stdout)[0]
    snaps = []
    size = 0
    i = 0
    while size < min_bytes:
        snap = dict(template)
        snap["id"] = f"{i:064x}"
        snap["short_id"] = snap["id"][:8]
        snap["paths"] = [f"/srv/data/{i}/{'x' * 200}"]
        snaps.append(snap)
        size += len(json.dumps(snap, separators=(",", ":"))) + 1
        i += 1
    return json.dumps(snaps, separators=(",", ":")).encode() + b"\n", len(snaps)


async def test_one_megabyte_single_line_snapshots_document() -> None:
    payload, count = _big_snapshots_document(1024 * 1024 + 1)
    assert len(payload) > 1024 * 1024 and payload.count(b"\n") == 1

    # asyncio's own readline cannot take it...
    reader = asyncio.StreamReader()
    reader.feed_data(payload)
    reader.feed_eof()
    with pytest.raises(ValueError):
        await reader.readline()

    # ...our line splitter can, whatever the chunking.
    for chunk_size in (1, 4096, 64 * 1024, 4 * 1024 * 1024):
        reader = asyncio.StreamReader()
        reader.feed_data(b"noise before\n" + payload + b"trailing text without newline")
        reader.feed_eof()
        lines = [line async for line in iter_lines(reader, chunk_size=chunk_size)]
        assert [len(line) for line in lines] == [12, len(payload) - 1, 29]
        docs, text = split_json_output(line.decode() for line in lines)
        assert text == ["noise before", "trailing text without newline"]
        assert len(parse_snapshots(docs[0])) == count


async def test_iter_lines_edges() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"a\n\nb\r\nlast")
    reader.feed_eof()
    assert [line async for line in iter_lines(reader, chunk_size=2)] == [b"a", b"", b"b\r", b"last"]
    empty = asyncio.StreamReader()
    empty.feed_eof()
    assert [line async for line in iter_lines(empty)] == []


def test_same_snapshot_id() -> None:
    long_id = "2e3ef99a6957ddbd22cb6917e748d004df81d0a08dd633d601644e2196f379f2"
    assert same_snapshot_id("2e3ef99a", long_id)
    assert same_snapshot_id(long_id, "2E3EF99A")
    assert same_snapshot_id(long_id, long_id)
    assert not same_snapshot_id("2e3ef99b", long_id)
    assert not same_snapshot_id("2e3e", long_id)  # too short to be unambiguous


# -------------------------------------------------------------------------------- forget, ls...


def test_forget_014_dry_run() -> None:
    docs, text = split_json_output(rec("0.14", "forget_dry").stdout_lines)
    assert text == []
    result = parse_forget(docs[0])
    assert len(result.groups) == 4
    assert len(result.kept) == 4 and len(result.removed) == 2
    assert all(len(i) == 64 for i in result.kept + result.removed)
    assert set(result.kept).isdisjoint(result.removed)
    assert all(g.host for g in result.groups)
    summary = result.summary_dict()
    assert json.loads(json.dumps(summary)) == summary and len(summary["groups"]) == 4
    # The full snapshots (for a dry run's listing) match the ids, and stay out of the summary.
    assert [s.id for s in result.kept_snapshots] == list(result.kept)
    assert [s.id for s in result.removed_snapshots] == list(result.removed)
    assert all(s.time and s.hostname and s.paths for s in result.removed_snapshots)
    assert all("remove_snapshots" not in g for g in summary["groups"])


def test_forget_014_with_prune_mixes_json_and_text() -> None:
    docs, text = split_json_output(rec("0.14", "forget_prune").stdout_lines)
    assert len(docs) == 1
    assert "done" in text and any(line.startswith("[0:00]") for line in text)
    result = parse_forget(docs[0], pruned=True)
    assert result.pruned and len(result.removed) >= 1
    assert parse_forget(None) == parse_forget([])  # forget printed nothing: nothing matched


def test_ls_014_and_017() -> None:
    items = [parse_ls_line(line) for line in rec("0.14", "ls").stdout_lines]
    assert isinstance(items[0], Snapshot)
    nodes = [i for i in items if isinstance(i, LsNode)]
    assert len(nodes) == len(items) - 1
    files = {n.name: n for n in nodes if n.type == "file"}
    assert files["f1.bin"].size == 300_000 and files["f1.bin"].permissions == "-rw-r--r--"
    assert all(n.mtime is not None for n in nodes)
    dirs = [n for n in nodes if n.type == "dir"]
    assert dirs and all(n.size == 0 for n in dirs)  # dirs have no size: reads as 0

    items = [parse_ls_line(line) for line in rec("0.17", "ls").stdout_lines]
    assert isinstance(items[0], Snapshot)
    link = items[-1]
    assert isinstance(link, LsNode) and link.type == "symlink" and link.link_target == "f1.bin"
    assert isinstance(items[2], LsNode) and items[2].inode == 1235
    assert parse_ls_line("not json") is None
    assert parse_ls_line('{"struct_type":"something else"}') is None


def test_cat_config_and_stats() -> None:
    config = parse_cat_config(rec("0.14", "cat_config").stdout)
    assert re.fullmatch(r"[0-9a-f]{64}", config["id"]) and config["version"] == 2
    assert parse_cat_config("some notice\n" + rec("0.14", "cat_config").stdout) == config
    with pytest.raises(ResticError):
        parse_cat_config("nope")
    docs, _ = split_json_output(rec("0.14", "stats").stdout_lines)
    assert docs[0]["total_size"] > 0 and "snapshots_count" in docs[0]
    docs, _ = split_json_output(rec("0.14", "stats_raw").stdout_lines)
    assert "total_blob_count" in docs[0]


# -------------------------------------------------------------------------------- errors


def test_locked_014() -> None:
    recording = rec("0.14", "locked")
    found = re.search(r"PID (\d+) on (\S+) by", recording.stderr)
    assert found is not None
    pid, host = int(found[1]), found[2]
    err = classify(recording, command="prune")
    assert err.kind is ErrorKind.LOCKED and err.exit_code == 1
    assert err.lock is not None and err.lock.pid == pid and err.lock.host == host
    assert err.lock.user == "root" and err.lock.uid == 0 and not err.lock.exclusive
    assert err.lock.storage_id and err.lock.created_at and err.lock.age
    assert f"locked by {host} (PID {pid}, user root) since {err.lock.created_at}" in err.message
    assert "`peerstash unlock home-nas`" in err.message
    assert err.stderr_tail[0].startswith("unable to create lock")


def test_locked_017_exit_11() -> None:
    err = classify(rec("0.17", "locked"), command="backup")
    assert err.kind is ErrorKind.LOCKED and err.exit_code == 11
    assert err.lock == parse_lock_info(rec("0.17", "locked").stderr)
    assert err.lock is not None
    assert (err.lock.pid, err.lock.host, err.lock.user) == (111971, "ubuntu2204-kvm", "oneadmin")
    assert err.lock.exclusive and err.lock.age == "55.876852076s"
    # Exit code 11 alone is enough, whatever the text.
    assert classify_failure(11, "", command="backup").kind is ErrorKind.LOCKED


@pytest.mark.parametrize(
    ("version", "name", "kind"),
    [
        ("0.14", "wrong_password", ErrorKind.WRONG_PASSWORD),
        ("0.17", "wrong_password", ErrorKind.WRONG_PASSWORD),
        ("0.17", "exit_error_password", ErrorKind.WRONG_PASSWORD),
        ("0.14", "password_file_missing", ErrorKind.WRONG_PASSWORD),
        ("0.14", "repo_missing", ErrorKind.REPO_MISSING),
        ("0.17", "repo_missing", ErrorKind.REPO_MISSING),
        ("0.17", "exit_error_missing", ErrorKind.REPO_MISSING),
        ("0.14", "rest_unreachable", ErrorKind.BACKEND_UNREACHABLE),
        ("0.14", "sftp_unreachable", ErrorKind.BACKEND_UNREACHABLE),
        ("0.14", "sftp_refused", ErrorKind.BACKEND_UNREACHABLE),
        ("0.14", "init_exists", ErrorKind.REPO_EXISTS),
        ("0.14", "backup_source_missing", ErrorKind.SOURCE_MISSING),
        ("0.14", "unknown_flag", ErrorKind.INVALID_ARGS),
        ("0.14", "interrupted", ErrorKind.INTERRUPTED),
        ("0.17", "interrupted", ErrorKind.INTERRUPTED),
        ("0.14", "locked", ErrorKind.LOCKED),
        ("0.17", "locked", ErrorKind.LOCKED),
    ],
)
def test_classification_of_recorded_failures(version: str, name: str, kind: ErrorKind) -> None:
    recording = rec(version, name)
    assert recording.rc != 0
    err = classify(recording)
    assert err.kind is kind, (err.kind, err.message)
    assert err.message and err.stderr_tail
    assert "\x1b" not in err.message and all("\x1b" not in line for line in err.stderr_tail)


@pytest.mark.parametrize("version", ["0.14", "0.18"])
@pytest.mark.parametrize("name", ["rest_401", "rest_401_init", "s3_signature", "s3_signature_init"])
def test_refused_credentials_are_not_a_missing_repository(version: str, name: str) -> None:
    """restic says "Is there a repository at the following location?" after a 401 or an S3
    signature mismatch; a person must read "wrong credentials", with no secret in it."""
    recording = rec(version, name)
    assert "Is there a repository" in recording.stderr or "failed" in recording.stderr
    collector = StderrCollector(Redactor(["wrong-pass-99", "capture-secret-5678"]))
    for line in recording.stderr_lines:
        collector.feed(strip_ansi(line))
    # A 0.18 run stopped by SIGINT (as the wrapper stops it) is classified from its words.
    code = None if recording.rc == 124 else recording.rc
    err = classify_failure(
        code,
        collector.raw_text(),
        command="init" if name.endswith("_init") else "snapshots",
        repo_name="home-nas",
        redact=Redactor(["wrong-pass-99"]),
        stderr_tail=tuple(collector.tail),
    )
    assert err.kind is ErrorKind.WRONG_CREDENTIALS, (err.kind, err.message)
    assert err.message.startswith("the storage of home-nas refused the credentials")
    shown = "\n".join([err.message, *err.stderr_tail])
    assert "wrong-pass-99" not in shown and "capture-secret-5678" not in shown


def test_retry_notices_of_both_versions_are_parsed() -> None:
    lines = rec("0.18", "rest_500_retrying").stderr_lines
    parsed = [parse_retry_line(line) for line in lines]
    assert parsed[0] == (
        "Stat(<config/>)",
        "unexpected HTTP response (500): 500 Internal Server Error",
    )
    retries = [line for line in lines if "returned error, retrying after" in line]
    assert len(retries) >= 3 and sum(p is not None for p in parsed) == len(retries)
    assert parse_retry_line(rec("0.18", "s3_signature").stderr_lines[0]) == (
        "Stat(<config/>)",
        "Stat: The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
    )
    # restic 0.14's wording (internal/backend/backend_retry.go through cmd/restic's Warnf).
    assert parse_retry_line(
        "Save(<data/956b9ced99>) returned error, retrying after 357.131936ms: "
        "client.PutObject: connection reset by peer"
    ) == ("Save(<data/956b9ced99>)", "client.PutObject: connection reset by peer")
    assert parse_retry_line("Load(<lock/12ab>, 0, 0) returned error, retrying after 1m2.5s: x") == (
        "Load(<lock/12ab>, 0, 0)",
        "x",
    )
    for other in ("Stat(<config/>) failed: unexpected HTTP response (401)", "", "retrying"):
        assert parse_retry_line(other) is None


@pytest.mark.parametrize(
    ("version", "name"),
    [
        ("0.14", "ls_unknown_snapshot"),
        ("0.14", "restore_unknown_snapshot"),
        ("0.18", "ls_unknown_snapshot"),
        ("0.18", "restore_unknown_snapshot"),
    ],
)
def test_unknown_snapshot_wordings_of_both_versions(version: str, name: str) -> None:
    from peerstash.core.restic import _Session

    session = _Session(None, "ls", None)
    for line in rec(version, name).stderr_lines:
        session.stderr.feed(line)
    err = session.snapshot_missing("deadbeef", rec(version, name).rc)
    assert err is not None and err.kind is ErrorKind.INVALID_ARGS
    assert err.message == "snapshot deadbeef was not found in restic"


def test_classification_by_exit_code_alone() -> None:
    assert classify_failure(10, "", command="x").kind is ErrorKind.REPO_MISSING
    assert classify_failure(12, "", command="x").kind is ErrorKind.WRONG_PASSWORD
    assert classify_failure(130, "", command="x").kind is ErrorKind.INTERRUPTED
    assert classify_failure(-9, "", command="x").kind is ErrorKind.INTERRUPTED
    unknown = classify_failure(2, "panic: runtime error\ngoroutine 1", command="prune")
    assert unknown.kind is ErrorKind.UNKNOWN and "exit code 2" in unknown.message
    assert "goroutine 1" in unknown.message


def test_messages_say_what_to_do() -> None:
    wrong = classify(rec("0.14", "wrong_password"))
    assert "home-nas" in wrong.message and "Check the password" in wrong.message
    missing = classify(rec("0.14", "repo_missing"))
    assert "no restic repository at home-nas" in missing.message
    rest = classify(rec("0.14", "rest_unreachable"))
    assert "connection refused" in rest.message and "rest-secret-99" not in rest.message


def test_ls_unknown_snapshot_014_exits_zero_but_says_so() -> None:
    recording = rec("0.14", "ls_unknown")
    assert recording.rc == 0 and recording.stdout == ""
    assert "no matching ID found" in recording.stderr


# -------------------------------------------------------------------------------- redaction

SECRET = "s3cr3t-Pa55"


def test_redaction_in_messages_tail_and_log() -> None:
    repo = RepoAccess(
        "rest:http://bob:url-pw-777@nas.lan:8000/repo",
        PasswordValue(SECRET),
        env={"AWS_SECRET_ACCESS_KEY": 'aws"secret&key', "AWS_DEFAULT_REGION": "eu"},
    )
    redact = Redactor(repo.secrets())
    collector = StderrCollector(redact)
    stderr = [
        f"Fatal: wrong password or no key found (tried {SECRET})",
        'debug: env {"key":"aws\\"secret\\u0026key"}',  # as Go's JSON encoder writes it
        "Head http://bob:url-pw-777@nas.lan:8000/repo/config: 500",
        "region eu stays readable",
    ]
    logged = [collector.feed(line) for line in stderr]
    err = classify_failure(
        1,
        collector.raw_text(),
        command="snapshots",
        repo_name=repo.display_name,
        redact=redact,
        stderr_tail=tuple(collector.tail),
    )
    assert err.kind is ErrorKind.WRONG_PASSWORD
    everything = "\n".join([err.message, *err.stderr_tail, *(x or "" for x in logged)])
    for secret in (SECRET, 'aws"secret&key', 'aws\\"secret\\u0026key', "url-pw-777"):
        assert secret not in everything
    assert "***" in logged[0] and "rest:http://bob:***@nas.lan:8000/repo" in err.message
    assert logged[3] == "region eu stays readable"  # values under 4 chars are not hunted
    assert SECRET not in repr(repo) and "secret&key" not in repr(repo)


def test_password_that_is_an_ordinary_word_does_not_break_classification() -> None:
    redact = Redactor(["password"])
    collector = StderrCollector(redact)
    collector.feed("Fatal: wrong password or no key found")
    err = classify_failure(
        1, collector.raw_text(), command="snapshots", redact=redact, stderr_tail=collector.tail
    )
    assert err.kind is ErrorKind.WRONG_PASSWORD
    assert err.stderr_tail == ("Fatal: wrong *** or no key found",)


def test_redact_uri() -> None:
    assert redact_uri("rest:http://user:pass@host/") == "rest:http://user:***@host/"
    assert redact_uri("rest:https://u:p@ss@host:8000/r") == "rest:https://u:***@host:8000/r"
    assert redact_uri("s3:https://:tok@s3.example/b") == "s3:https://:***@s3.example/b"
    assert redact_uri("rest:http://host:8000/") == "rest:http://host:8000/"
    assert redact_uri("sftp:user@host:/srv/repo") == "sftp:user@host:/srv/repo"
    assert redact_uri("/srv/restic") == "/srv/restic"
    text = "Head http://a:b@h1/x and http://c:dd@h2/y"
    assert redact_uri(text) == "Head http://a:***@h1/x and http://c:***@h2/y"


# -------------------------------------------------------------------------------- env


def test_build_env_sets_exactly_one_password_method() -> None:
    base = {
        "PATH": "/usr/bin",
        "HOME": "/home/x",
        "RESTIC_PASSWORD": "inherited",
        "RESTIC_PASSWORD_FILE": "/inherited",
        "RESTIC_REPOSITORY": "/elsewhere",
        "RESTIC_CACHE_DIR": "/c",
        "AWS_PROFILE": "kept",
    }
    for password, variable in (
        (PasswordValue("pw-value"), "RESTIC_PASSWORD"),
        (PasswordFile("/etc/pw"), "RESTIC_PASSWORD_FILE"),
        (PasswordCommand("pass show restic"), "RESTIC_PASSWORD_COMMAND"),
    ):
        repo = RepoAccess("/srv/repo", password, env={"B2_ACCOUNT_ID": "id1"})
        env = build_env(repo, base)
        restic_vars = {k for k in env if k.startswith("RESTIC_")}
        assert restic_vars == {"RESTIC_REPOSITORY", variable}
        assert env["RESTIC_REPOSITORY"] == "/srv/repo"
        assert env["PATH"] == "/usr/bin" and env["AWS_PROFILE"] == "kept"
        assert env["B2_ACCOUNT_ID"] == "id1"
    assert build_env(RepoAccess("/r", PasswordValue("abc1")), base)["RESTIC_PASSWORD"] == "abc1"


def test_progress_rate_is_ours_and_only_where_asked() -> None:
    """``RESTIC_PROGRESS_FPS`` is set only when asked (backup, restore: elsewhere it would turn
    progress output on), and a value in the node's own environment never reaches restic."""
    base = {"PATH": "/usr/bin", "RESTIC_PROGRESS_FPS": "60"}
    repo = RepoAccess("/srv/repo", PasswordValue("pw-value"))
    assert "RESTIC_PROGRESS_FPS" not in build_env(repo, base)
    assert build_env(repo, base, progress_fps=4)["RESTIC_PROGRESS_FPS"] == "4"


def test_progress_rate_follows_the_progress_interval() -> None:
    """At least one status line per progress write, never fewer than 4 a second, at most
    restic's ceiling of 60."""
    assert progress_fps_for(1.0) == 4
    assert progress_fps_for(3600.0) == 4
    assert progress_fps_for(0.2) == 5
    assert progress_fps_for(0.05) == 20
    assert progress_fps_for(0.001) == 60
    assert progress_fps_for(0.0) == 60


def test_repo_access_validation() -> None:
    with pytest.raises(ValueError, match="RESTIC_PASSWORD"):
        RepoAccess("/r", PasswordValue("x"), env={"RESTIC_PASSWORD": "y"})
    with pytest.raises(ValueError):
        RepoAccess("", PasswordValue("x"))
    with pytest.raises(ValueError):
        RepoAccess("/r", PasswordValue("x"), options=["sftp.command"])
    with pytest.raises(TypeError):
        RepoAccess("/r", cast(Any, "plain string"))
    env = {"K": "v1"}
    repo = RepoAccess("/r", PasswordValue("x"), env=env, options=["a=b"])
    env["K"] = "changed"
    assert repo.env["K"] == "v1" and repo.options == ("a=b",)


def test_password_file_content_is_redacted_too(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-a-file-123\n")
    redact = Redactor(RepoAccess("/r", PasswordFile(str(secret_file))).secrets())
    assert redact("x from-a-file-123 y") == "x *** y"
    assert Redactor(RepoAccess("/r", PasswordFile(str(tmp_path / "none"))).secrets())("a") == "a"


# -------------------------------------------------------------------------------- finding restic


def test_find_restic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "restic-custom"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert find_restic(str(fake)) == str(fake)
    monkeypatch.setattr(
        "shutil.which", lambda name: "/usr/bin/restic" if name == "restic" else None
    )
    assert find_restic(None) == "/usr/bin/restic"
    assert find_restic(str(tmp_path / "gone")) == "/usr/bin/restic"  # falls back to PATH
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ResticError) as info:
        find_restic(str(tmp_path / "gone"))
    assert info.value.kind is ErrorKind.NOT_INSTALLED and "install restic" in info.value.message


async def test_missing_binary_is_not_installed(tmp_path: Path) -> None:
    with pytest.raises(ResticError) as info:
        await Restic(str(tmp_path / "no-restic")).version()
    assert info.value.kind is ErrorKind.NOT_INSTALLED


# -------------------------------------------------------------------------------- retention


def test_retention_policy() -> None:
    assert RetentionPolicy().is_empty()
    assert RetentionPolicy(keep_last=0, keep_within="").is_empty()  # 0 / "" mean "off"
    policy = RetentionPolicy(keep_daily=7, keep_last=3, keep_within="1y6m")
    assert not policy.is_empty()
    assert policy.to_args() == ["--keep-last", "3", "--keep-daily", "7", "--keep-within", "1y6m"]
    assert policy.to_dict() == {"keep_last": 3, "keep_daily": 7, "keep_within": "1y6m"}
    assert RetentionPolicy.from_dict(policy.to_dict()) == policy
    assert RetentionPolicy.from_dict({"keep_last": 3, "keep_hourly": None}).keep_hourly is None
    assert RetentionPolicy.from_dict(None).is_empty()
    assert policy.describe() == "last 3, daily 7, within 1y6m"
    with pytest.raises(ValueError, match="keep_dayly"):
        RetentionPolicy.from_dict({"keep_dayly": 7})
    for bad in ({"keep_last": -1}, {"keep_last": True}, {"keep_last": "3"}, {"keep_within": "30"}):
        with pytest.raises(ValueError):
            RetentionPolicy.from_dict(bad)
    for good in ("30d", "2d12h", "1y", "5m"):
        assert RetentionPolicy(keep_within=good).to_args() == ["--keep-within", good]


def test_forget_args_select_one_hosts_plan() -> None:
    policy = RetentionPolicy(keep_last=1, keep_daily=7)
    args = forget_args(policy, tags=["plan:home", "host:node-a"], host="node-a")
    assert args == [
        "forget",
        "--json",
        "--keep-last",
        "1",
        "--keep-daily",
        "7",
        "--host",
        "node-a",
        "--tag",
        "plan:home,host:node-a",  # one --tag with a comma: both tags (two flags would be OR)
        "--group-by",
        "host,tags",
    ]
    assert "--prune" not in args and "--dry-run" not in args
    dry = forget_args(policy, tags=["plan:home", "host:node-a"], host="node-a", dry_run=True)
    assert dry == [*args, "--dry-run", "--no-lock"]
    assert forget_args(policy, prune=True) == [
        "forget",
        "--json",
        *policy.to_args(),
        "--group-by",
        "host,paths",
        "--prune",
    ]
    for bad_host in ("", " ", "--prune"):
        with pytest.raises(ResticError, match="invalid host") as info:
            forget_args(policy, host=bad_host)
        assert info.value.kind is ErrorKind.INVALID_ARGS
    with pytest.raises(ResticError, match="cannot also prune"):
        forget_args(policy, dry_run=True, prune=True)
    with pytest.raises(ResticError, match="cannot contain ','"):
        forget_args(policy, tags=["plan:a,host:b"])


async def test_forget_refuses_an_empty_policy() -> None:
    repo = RepoAccess("/nonexistent", PasswordValue("x"))
    with pytest.raises(ResticError) as info:
        # Never reaches the binary: the refusal comes first.
        await Restic("/nonexistent/restic").forget(repo, RetentionPolicy())
    assert info.value.kind is ErrorKind.INVALID_ARGS
    assert "empty retention policy" in info.value.message


async def test_invalid_arguments_are_refused_before_running(tmp_path: Path) -> None:
    restic = Restic(str(tmp_path / "never-run"))
    repo = RepoAccess("/r", PasswordValue("x"))
    with pytest.raises(ResticError, match="cannot contain ','"):
        await restic.snapshots(repo, tags=["a,b"])
    with pytest.raises(ResticError, match="invalid snapshot id"):
        [n async for n in restic.ls(repo, "--help")]
    with pytest.raises(ResticError, match="no paths"):
        await restic.backup(repo, [])
