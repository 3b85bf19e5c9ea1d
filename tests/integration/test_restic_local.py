"""The restic wrapper against the real restic binary and local repositories.

Everything runs in the test's tmp dir (repository, cache, sources). Where a test has to wait for
another process it awaits that process's output or a pidfd, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import peerstash.core.restic.process as restic_process
from peerstash.core.restic import (
    BackupProgress,
    ErrorKind,
    LsNode,
    PasswordValue,
    RepoAccess,
    Restic,
    ResticError,
    build_env,
    same_snapshot_id,
)
from peerstash.core.retention import RetentionPolicy
from tests.fixtures.servers import RESTIC_BUILDS, resolve_restic

PASSWORD = "correct-horse-battery-staple"

pytestmark = pytest.mark.slow


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session", params=RESTIC_BUILDS)
def restic_bin(request: pytest.FixtureRequest) -> str:
    """Every test here runs on the system's restic (0.14 on Debian 12) and on restic 0.18.

    The shared fixture (tests/fixtures/servers.py) finds each build and skips or fails when
    one is missing; this only asks for both.
    """
    return resolve_restic(request.param)


@pytest.fixture
def restic(restic_bin: str) -> Restic:
    return Restic(restic_bin, cancel_grace=15.0)


@pytest.fixture
def repo(tmp_path: Path) -> RepoAccess:
    return RepoAccess(
        str(tmp_path / "repo"),
        PasswordValue(PASSWORD),
        cache_dir=str(tmp_path / "cache"),
        name="test-repo",
    )


@pytest.fixture(scope="session")
def template_repo(restic_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised repository per session: ``restic init`` takes seconds (key derivation),
    copying its result takes milliseconds. ``test_init_twice`` covers the wrapper's init."""
    path = tmp_path_factory.mktemp("template") / "repo"
    env = build_env(RepoAccess(str(path), PasswordValue(PASSWORD)))
    subprocess.run([restic_bin, "init"], env=env, check=True, capture_output=True)
    return path


@pytest.fixture
def ready_repo(template_repo: Path, repo: RepoAccess) -> RepoAccess:
    shutil.copytree(template_repo, repo.uri)
    return repo


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A small tree: binary files, nesting, an empty file, a non-ASCII name, a symlink."""
    root = tmp_path / "src"
    for i in range(5):
        _write(root / f"file{i}.bin", os.urandom(50_000 + i * 1000))
    _write(root / "nested" / "deeper" / "notes.txt", b"hello restic\n" * 100)
    _write(root / "nested" / "empty.dat", b"")
    _write(root / "nested" / "spr\u00e5k.txt", "\u00e5\u00e4\u00f6".encode())
    _write(root / "skip.log", b"log line\n")
    (root / "link").symlink_to("file0.bin")
    return root


def _digest_tree(root: Path) -> dict[str, str]:
    digests = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def _locks(repo: RepoAccess) -> list[str]:
    locks = Path(repo.uri) / "locks"
    return sorted(os.listdir(locks)) if locks.exists() else []


async def _restic_stats(restic_bin: str, repo: RepoAccess) -> dict[str, Any]:
    """restic's own ``stats --json --mode restore-size``, run beside the wrapper (which has no
    stats call: Peerstash never needs one) as the reference a restore's counts are checked on."""
    proc = await asyncio.create_subprocess_exec(
        restic_bin,
        "--no-cache",
        "stats",
        "--json",
        "--mode",
        "restore-size",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=build_env(repo),
    )
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


async def _wait_pid_gone(pid: int) -> None:
    """Await the exit of a process that is not our child, via a pidfd (no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        loop = asyncio.get_running_loop()
        gone = loop.create_future()

        def readable() -> None:
            if not gone.done():
                gone.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await gone
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


def _process_exists(pid: int) -> bool:
    """True while ``pid`` exists in any state, zombie included (a zombie has /proc/PID)."""
    return os.path.exists(f"/proc/{pid}")


# -------------------------------------------------------------------------------- happy path


async def test_init_guid_backup_snapshots_ls_restore(
    restic: Restic, restic_bin: str, ready_repo: RepoAccess, source: Path, tmp_path: Path
) -> None:
    repo = ready_repo
    guid = await restic.guid(repo)
    assert len(guid) == 64 and int(guid, 16) >= 0
    assert (await restic.cat_config(repo))["id"] == guid

    progress: list[BackupProgress] = []
    logs: list[str] = []
    result = await restic.backup(
        repo,
        [source],
        excludes=["*.log"],
        tags=["plan:p1", "host:node-a"],
        host="node-a",
        on_progress=progress.append,
        on_log=logs.append,
    )
    # restic 0.14 prints a status line as it starts; 0.16 and later print them on a timer, so a
    # backup of eight small files can end before the first one (progress on those versions
    # is proven by test_cancel_backup_sends_sigint_and_leaves_no_lock's large file).
    if await restic.version() < (0, 16, 0):
        assert progress, "no progress callback was seen"
    assert all(0.0 <= p.percent <= 100.0 for p in progress)
    assert result.snapshot_id and not result.partial and result.warnings == ()
    assert result.files_new == 8  # 5 + notes + empty + non-ASCII; the .log is excluded
    assert result.total_bytes_processed > 250_000

    snaps = await restic.snapshots(repo)
    assert len(snaps) == 1
    snap = snaps[0]
    assert same_snapshot_id(result.snapshot_id, snap.id)
    assert snap.paths == (str(source),) and snap.hostname == "node-a"
    assert set(snap.tags) == {"plan:p1", "host:node-a"}
    assert [s.id for s in await restic.snapshots(repo, tags=["plan:p1", "host:node-a"])] == [
        snap.id
    ]
    assert await restic.snapshots(repo, tags=["plan:other"]) == []
    assert await restic.snapshots(repo, tags=["plan:p1", "host:elsewhere"]) == []

    nodes: list[LsNode] = []
    stream = restic.ls(repo, snap.short_id)
    async for node in stream:
        nodes.append(node)
    by_path = {n.path: n for n in nodes}
    assert by_path[str(source / "file3.bin")].size == 53_000
    assert by_path[str(source / "link")].type == "symlink"
    assert str(source / "nested" / "spr\u00e5k.txt") in by_path
    assert str(source / "skip.log") not in by_path
    below = [n async for n in restic.ls(repo, snap.id, str(source / "nested"))]
    assert {n.name for n in below} >= {"empty.dat", "deeper"}

    target = tmp_path / "restored"
    restored = await restic.restore(repo, snap.id, target)
    expected = _digest_tree(source)
    del expected["skip.log"]
    assert _digest_tree(target / source.relative_to("/")) == expected
    assert (target / source.relative_to("/") / "link").is_symlink()
    if await restic.version() < (0, 16, 0):
        assert restored.files_restored is None  # no restore summary before 0.16
    else:
        # restic counts entries as `stats --mode restore-size` does: directories too (16 for
        # these 8 files on 0.18), so the count is checked against restic's own, and against
        # the files actually written.
        assert restored.files_restored == restored.files_total
        entries = (await _restic_stats(restic_bin, repo))["total_file_count"]
        assert restored.files_restored == entries > len(expected)

    partial_target = tmp_path / "partial"
    await restic.restore(repo, snap.id, partial_target, include=[str(source / "nested" / "deeper")])
    got = _digest_tree(partial_target / source.relative_to("/"))
    assert got == {"nested/deeper/notes.txt": expected["nested/deeper/notes.txt"]}
    assert not restic.active_pids


async def test_relative_paths_are_made_absolute(
    restic: Restic, ready_repo: RepoAccess, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(source.parent)
    result = await restic.backup(ready_repo, ["src"])
    (snap,) = await restic.snapshots(ready_repo)
    assert same_snapshot_id(result.snapshot_id or "", snap.id)
    assert snap.paths == (str(source),)


async def test_check_prune_unlock(restic: Restic, ready_repo: RepoAccess, source: Path) -> None:
    await restic.backup(ready_repo, [source])
    logs: list[str] = []
    await restic.check(ready_repo, on_log=logs.append)
    assert any("no errors were found" in line for line in logs)
    await restic.check(ready_repo, read_data_subset="1/2")
    logs.clear()
    await restic.prune(ready_repo, on_log=logs.append)
    assert logs
    await restic.unlock(ready_repo)
    await restic.unlock(ready_repo, remove_all=True)


# -------------------------------------------------------------------------------- forget


async def test_forget_keep_last_after_three_backups(
    restic: Restic, ready_repo: RepoAccess, source: Path
) -> None:
    ids = []
    for i in range(3):
        (source / "changing.txt").write_text(f"version {i}\n")
        result = await restic.backup(ready_repo, [source], tags=["plan:p1"], host="node-a")
        ids.append(result.snapshot_id or "")
    # Another plan's snapshot must survive a forget filtered on plan:p1.
    other = await restic.backup(ready_repo, [source], tags=["plan:p2"], host="node-a")

    logs: list[str] = []
    forgotten = await restic.forget(
        ready_repo, RetentionPolicy(keep_last=1), tags=["plan:p1"], on_log=logs.append
    )
    assert len(forgotten.removed) == 2 and len(forgotten.kept) == 1
    assert same_snapshot_id(ids[-1], forgotten.kept[0])
    assert all(any(same_snapshot_id(r, i) for i in ids[:2]) for r in forgotten.removed)
    remaining = await restic.snapshots(ready_repo)
    assert len(remaining) == 2
    assert any(same_snapshot_id(other.snapshot_id or "", s.id) for s in remaining)

    await restic.prune(ready_repo)
    await restic.check(ready_repo)


async def test_forget_groups_a_plan_by_host_and_tags(
    restic: Restic, ready_repo: RepoAccess, source: Path, tmp_path: Path
) -> None:
    other_dir = tmp_path / "other-src"
    _write(other_dir / "x.txt", b"x")
    # Same plan, paths edited between runs, on two hosts.
    for host in ("node-a", "node-b"):
        await restic.backup(ready_repo, [source], tags=["plan:p1"], host=host)
        await restic.backup(ready_repo, [source, other_dir], tags=["plan:p1"], host=host)

    logs: list[str] = []
    result = await restic.forget(
        ready_repo,
        RetentionPolicy(keep_last=1),
        tags=["plan:p1"],
        prune=True,
        on_log=logs.append,
    )
    # host,tags: one group per host whatever the paths, so each host keeps exactly one.
    assert sorted(g.host for g in result.groups) == ["node-a", "node-b"]
    assert len(result.kept) == 2 and len(result.removed) == 2 and result.pruned
    assert logs, "prune's text output should reach on_log"
    assert sorted(s.hostname for s in await restic.snapshots(ready_repo)) == ["node-a", "node-b"]


async def test_forget_refuses_empty_policy_and_keeps_everything(
    restic: Restic, ready_repo: RepoAccess, source: Path
) -> None:
    await restic.backup(ready_repo, [source])
    with pytest.raises(ResticError) as info:
        await restic.forget(ready_repo, RetentionPolicy())
    assert info.value.kind is ErrorKind.INVALID_ARGS
    assert len(await restic.snapshots(ready_repo)) == 1


# -------------------------------------------------------------------------------- failures


async def test_wrong_password(restic: Restic, ready_repo: RepoAccess) -> None:
    wrong_secret = "not-the-password-4711"
    wrong = RepoAccess(ready_repo.uri, PasswordValue(wrong_secret), cache_dir=ready_repo.cache_dir)
    logs: list[str] = []
    with pytest.raises(ResticError) as info:
        await restic.forget(wrong, RetentionPolicy(keep_last=1), on_log=logs.append)
    err = info.value
    assert err.kind is ErrorKind.WRONG_PASSWORD, err.message
    assert err.exit_code in (1, 12)
    shown = "\n".join([err.message, str(err), repr(err), *err.stderr_tail, *logs])
    assert wrong_secret not in shown and PASSWORD not in shown


async def test_missing_repository(restic: Restic, tmp_path: Path) -> None:
    missing = RepoAccess(str(tmp_path / "nope"), PasswordValue(PASSWORD), name="gone")
    with pytest.raises(ResticError) as info:
        await restic.snapshots(missing)
    assert info.value.kind is ErrorKind.REPO_MISSING
    assert "gone" in info.value.message


async def test_init_twice(restic: Restic, repo: RepoAccess) -> None:
    logs: list[str] = []
    await restic.init(repo, on_log=logs.append)
    assert any("created restic repository" in line for line in logs)
    assert len(await restic.guid(repo)) == 64
    with pytest.raises(ResticError) as info:
        await restic.init(repo)
    assert info.value.kind is ErrorKind.REPO_EXISTS


async def test_unknown_snapshot(restic: Restic, ready_repo: RepoAccess, tmp_path: Path) -> None:
    with pytest.raises(ResticError) as info:
        [n async for n in restic.ls(ready_repo, "deadbeef")]
    assert info.value.kind is ErrorKind.INVALID_ARGS
    with pytest.raises(ResticError) as info:
        await restic.restore(ready_repo, "deadbeef", tmp_path / "t")
    assert info.value.kind is ErrorKind.INVALID_ARGS


async def test_source_missing(restic: Restic, ready_repo: RepoAccess, tmp_path: Path) -> None:
    with pytest.raises(ResticError) as info:
        await restic.backup(ready_repo, [tmp_path / "not-there"])
    assert info.value.kind is ErrorKind.SOURCE_MISSING
    # One missing path among others: a snapshot, marked partial.
    (tmp_path / "there").mkdir()
    (tmp_path / "there" / "f").write_text("x")
    result = await restic.backup(ready_repo, [tmp_path / "there", tmp_path / "not-there"])
    assert result.snapshot_id and result.partial
    assert any("not-there" in w for w in result.warnings)


async def test_locked_by_another_restic(
    restic: Restic, restic_bin: str, ready_repo: RepoAccess
) -> None:
    # A backup reading stdin holds a (shared) lock for as long as we keep stdin open; its first
    # status line tells us the lock exists. prune needs an exclusive lock.
    env = build_env(ready_repo)
    holder = await asyncio.create_subprocess_exec(
        restic_bin,
        "--cache-dir",
        ready_repo.cache_dir or "",
        "backup",
        "--json",
        "--stdin",
        "--stdin-filename",
        "held.txt",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        first = await asyncio.wait_for(holder.stdout.readline(), 30)
        assert b'"message_type":"status"' in first
        assert _locks(ready_repo)

        with pytest.raises(ResticError) as info:
            await restic.prune(ready_repo)
        err = info.value
        assert err.kind is ErrorKind.LOCKED, err.message
        assert err.lock is not None
        assert err.lock.pid == holder.pid
        assert err.lock.host == socket.gethostname()
        assert f"PID {holder.pid}" in err.message and socket.gethostname() in err.message
        assert "peerstash unlock test-repo" in err.message
    finally:
        holder.stdin.write(b"some data\n")
        holder.stdin.close()
        await holder.stdout.read()
        assert await holder.wait() == 0
    assert _locks(ready_repo) == []
    await restic.prune(ready_repo)  # lock gone: works again


async def test_retry_lock_waits_for_a_brief_lock_on_016_and_later(
    restic_bin: str, ready_repo: RepoAccess
) -> None:
    """With ``retry_lock``, restic 0.16+ waits for another process's lock instead of failing;
    0.14 has no ``--retry-lock`` and keeps failing at once (LOCKED)."""
    restic = Restic(restic_bin, cancel_grace=15.0, retry_lock=60)
    env = build_env(ready_repo)
    holder = await asyncio.create_subprocess_exec(
        restic_bin,
        "--cache-dir",
        ready_repo.cache_dir or "",
        "backup",
        "--json",
        "--stdin",
        "--stdin-filename",
        "held.txt",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    assert holder.stdin is not None and holder.stdout is not None
    released = False

    async def release() -> None:
        nonlocal released
        if not released:
            released = True
            assert holder.stdin is not None and holder.stdout is not None
            holder.stdin.write(b"some data\n")
            holder.stdin.close()
            await holder.stdout.read()
            assert await holder.wait() == 0

    waiting = asyncio.Event()

    def on_log(line: str) -> None:
        if "waiting up to" in line:
            waiting.set()

    try:
        first = await asyncio.wait_for(holder.stdout.readline(), 30)
        assert b'"message_type":"status"' in first
        if await restic.version() < (0, 16, 0):
            with pytest.raises(ResticError) as info:
                await restic.prune(ready_repo, on_log=on_log)
            assert info.value.kind is ErrorKind.LOCKED
            assert not waiting.is_set()
            return
        prune = asyncio.create_task(restic.prune(ready_repo, on_log=on_log))
        await asyncio.wait_for(waiting.wait(), 30)  # "repo already locked, waiting up to 1m0s"
        assert not prune.done()
        await release()
        await asyncio.wait_for(prune, 120)  # got the lock once the holder was gone
    finally:
        await release()
    assert _locks(ready_repo) == []


class _RefusingStorage:
    """A storage server on 127.0.0.1 that refuses every request as a hostile or misconfigured
    one would: a REST server rejecting the credentials (401), or an S3 endpoint answering
    SignatureDoesNotMatch (a wrong secret key). It counts what it was sent."""

    S3_BODY = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SignatureDoesNotMatch</Code>'
        "<Message>The request signature we calculated does not match the signature you "
        "provided. Check your key and signing method.</Message></Error>"
    )

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests: list[str] = []
        self.runner: Any = None
        self.port = 0

    async def __aenter__(self) -> _RefusingStorage:
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            self.requests.append(f"{request.method} {request.path}")
            if self.mode == "rest":
                return web.Response(
                    status=401, text="Unauthorized\n", headers={"WWW-Authenticate": "Basic"}
                )
            return web.Response(status=403, text=self.S3_BODY, content_type="application/xml")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


@pytest.mark.parametrize("mode", ["rest", "s3"])
async def test_refused_credentials_are_said_at_once_without_the_secret(
    restic: Restic, mode: str, tmp_path: Path
) -> None:
    """A 401 from a REST server or an S3 signature mismatch is WRONG_CREDENTIALS, not "no
    repository here"; restic 0.17+ would retry the S3 refusal for ~15 minutes, the wrapper
    stops it after two refused retries."""
    secret = "hunter2-wrong-9931"
    async with _RefusingStorage(mode) as storage:
        if mode == "rest":
            uri = f"rest:http://ana:{secret}@127.0.0.1:{storage.port}/repo"
            env: dict[str, str] = {}
        else:
            uri = f"s3:http://127.0.0.1:{storage.port}/bucket/repo"
            env = {"AWS_ACCESS_KEY_ID": "AKIAWRONGKEY", "AWS_SECRET_ACCESS_KEY": secret}
        access = RepoAccess(
            uri, PasswordValue(PASSWORD), env=env, cache_dir=str(tmp_path / "c"), name="nas"
        )
        logs: list[str] = []
        started = time.monotonic()
        for attempt in ("snapshots", "init"):
            with pytest.raises(ResticError) as info:
                if attempt == "snapshots":
                    await restic.forget(access, RetentionPolicy(keep_last=1), on_log=logs.append)
                else:
                    await restic.init(access, on_log=logs.append)
            err = info.value
            assert err.kind is ErrorKind.WRONG_CREDENTIALS, (attempt, err.message)
            assert err.message.startswith("the storage of nas refused the credentials")
            shown = "\n".join([err.message, str(err), repr(err), *err.stderr_tail, *logs])
            assert secret not in shown and PASSWORD not in shown
        assert time.monotonic() - started < 90
        assert storage.requests  # restic really asked, and was refused
    assert not restic.active_pids


def _unreadable_path(tmp_path: Path) -> Path | None:
    """A file restic cannot read: chmod 000 as a user; as root, a write-only sysctl."""
    if os.geteuid() != 0:
        path = tmp_path / "src" / "secret.bin"
        path.write_bytes(b"no")
        path.chmod(0)
        return path
    # Root reads through chmod 000, but sysctl permission checks deny even root a read of a
    # 0200 entry such as vm.drop_caches: open() fails with EACCES, which is all we need.
    candidate = Path("/proc/sys/vm/drop_caches")
    try:
        with open(candidate, "rb"):
            return None
    except PermissionError:
        return candidate
    except OSError:
        return None


async def test_unreadable_file_gives_partial_backup(
    restic: Restic, ready_repo: RepoAccess, source: Path, tmp_path: Path
) -> None:
    unreadable = _unreadable_path(tmp_path)
    if unreadable is None:
        pytest.skip("running as root and no file is unreadable to root on this machine")
    logs: list[str] = []
    result = await restic.backup(ready_repo, [source, unreadable], on_log=logs.append)
    assert result.partial and result.exit_code == 3
    assert result.snapshot_id
    assert result.warnings and str(unreadable) in result.warnings[0]
    assert "permission denied" in result.warnings[0]
    assert any(str(unreadable) in line for line in logs)
    (snap,) = await restic.snapshots(ready_repo)
    assert same_snapshot_id(result.snapshot_id, snap.id)


# -------------------------------------------------------------------------------- cancellation


@pytest.fixture
def huge_sparse_file(tmp_path: Path) -> Path:
    """A 64 GiB sparse file: restic needs minutes to read it, we need no disk space."""
    path = tmp_path / "huge" / "sparse.img"
    path.parent.mkdir()
    with open(path, "wb") as handle:
        handle.truncate(64 * 1024**3)
    return path.parent


async def test_cancel_backup_sends_sigint_and_leaves_no_lock(
    restic: Restic, ready_repo: RepoAccess, huge_sparse_file: Path, source: Path
) -> None:
    reading = asyncio.Event()
    pids: set[int] = set()

    def on_progress(progress: BackupProgress) -> None:
        if progress.bytes_done > 0:
            pids.update(restic.active_pids)
            reading.set()

    task = asyncio.create_task(
        restic.backup(ready_repo, [huge_sparse_file], on_progress=on_progress)
    )
    await asyncio.wait_for(reading.wait(), 60)
    assert _locks(ready_repo), "restic should hold a lock while backing up"
    (pid,) = pids
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # SIGINT sufficed: well within the grace period, so no SIGKILL was needed.
    assert time.monotonic() - started < restic.cancel_grace
    assert not restic.active_pids
    assert not _process_exists(pid), "restic must be gone and reaped (no zombie)"
    assert _locks(ready_repo) == [], "SIGINT lets restic remove its lock"
    # The next operations need no `restic unlock`; check even needs an exclusive lock.
    result = await restic.backup(ready_repo, [source])
    assert result.snapshot_id
    await restic.check(ready_repo)


def _fake_restic(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-restic"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


async def test_backup_progress_comes_at_the_rate_we_set(
    restic_bin: str, ready_repo: RepoAccess, huge_sparse_file: Path
) -> None:
    """restic honours ``RESTIC_PROGRESS_FPS`` on this version: at 4 lines a second, the lines
    after the first come a quarter of a second apart, not at restic's default 60 a second
    (five intervals then take under 0.2 s even on a loaded machine). Live progress still
    shows: the lines arrive, with bytes read."""
    restic = Restic(restic_bin, cancel_grace=15.0, progress_fps=4)
    assert restic.progress_fps == 4
    seen: list[tuple[float, BackupProgress]] = []
    enough = asyncio.Event()

    def on_progress(progress: BackupProgress) -> None:
        seen.append((time.monotonic(), progress))
        if len(seen) >= 7:
            enough.set()

    task = asyncio.create_task(
        restic.backup(ready_repo, [huge_sparse_file], on_progress=on_progress)
    )
    try:
        await asyncio.wait_for(enough.wait(), 60)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # From the second line on (0.14 prints one as it starts, then on its timer).
    times = [t for t, _ in seen[1:7]]
    assert times[-1] - times[0] >= 5 * 0.25 * 0.8, [round(t - times[0], 3) for t in times]
    assert seen[-1][1].bytes_done > 0


async def test_only_backup_and_restore_get_a_progress_rate(tmp_path: Path) -> None:
    """Elsewhere ``RESTIC_PROGRESS_FPS`` would turn on progress output that restic keeps off
    when it does not write to a terminal, so only the commands whose ``--json`` progress we
    read get it (restore only where it has ``--json``, from 0.16)."""
    seen = tmp_path / "seen.txt"
    for version in ("0.16.4", "0.14.0"):
        binary = _fake_restic(
            tmp_path,
            'for a in "$@"; do case "$a" in backup|restore|snapshots|version) cmd=$a; break;; '
            "esac; done\n"
            f'echo "{version} $cmd ${{RESTIC_PROGRESS_FPS-unset}}" >> {seen}\n'
            'case "$cmd" in\n'
            f"  version) echo 'restic {version} compiled with go1.21.0 on linux/amd64';;\n"
            """  backup) echo '{"message_type":"summary","snapshot_id":"abcdef1234567890"}';;\n"""
            "  snapshots) echo '[]';;\n"
            "esac\n",
        )
        restic = Restic(binary, progress_fps=7)
        repo = RepoAccess(str(tmp_path / "repo"), PasswordValue(PASSWORD))
        await restic.backup(repo, [tmp_path])
        await restic.snapshots(repo)
        await restic.restore(repo, "abcdef12", tmp_path / "target")
    assert seen.read_text().splitlines() == [
        "0.16.4 backup 7",
        "0.16.4 snapshots unset",
        "0.16.4 version unset",
        "0.16.4 restore 7",
        "0.14.0 backup 7",
        "0.14.0 snapshots unset",
        "0.14.0 version unset",
        "0.14.0 restore unset",
    ]


async def test_cancel_escalates_to_sigkill_when_sigint_is_ignored(tmp_path: Path) -> None:
    # A stand-in for a restic that hangs: it ignores SIGINT and sleeps.
    binary = _fake_restic(
        tmp_path,
        "trap '' INT\n"
        'echo \'{"message_type":"status","percent_done":0.1,"bytes_done":1}\'\n'
        "exec sleep 120\n",
    )
    restic = Restic(binary, cancel_grace=0.5)
    repo = RepoAccess(str(tmp_path / "repo"), PasswordValue(PASSWORD))
    seen = asyncio.Event()
    pids: set[int] = set()

    def on_progress(_: BackupProgress) -> None:
        pids.update(restic.active_pids)
        seen.set()

    task = asyncio.create_task(restic.backup(repo, [tmp_path], on_progress=on_progress))
    await asyncio.wait_for(seen.wait(), 10)
    (pid,) = pids
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 0.4 < time.monotonic() - started < 10
    assert not restic.active_pids and not _process_exists(pid)


async def test_grandchild_holding_the_pipes_does_not_hang_us(tmp_path: Path) -> None:
    # restic exits, but something it started (think ssh) keeps stdout/stderr open.
    pid_file = tmp_path / "grandchild.pid"
    binary = _fake_restic(
        tmp_path,
        f"sleep 120 &\necho $! > {pid_file}\n"
        'echo \'{"message_type":"summary","snapshot_id":"abcdef12"}\'\n'
        "exit 0\n",
    )
    restic = Restic(binary)
    repo = RepoAccess(str(tmp_path / "repo"), PasswordValue(PASSWORD))
    try:
        started = time.monotonic()
        result = await asyncio.wait_for(restic.backup(repo, [tmp_path]), 20)
        assert result.snapshot_id == "abcdef12"
        assert time.monotonic() - started < 10
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


@pytest.fixture
async def many_entries_repo(restic: Restic, ready_repo: RepoAccess, tmp_path: Path) -> RepoAccess:
    """A snapshot of 4000 entries: far more than the ls queue and a pipe buffer hold, so
    restic is still listing (blocked on its stdout) while a consumer holds the first node."""
    many = tmp_path / "many"
    many.mkdir()
    for i in range(4000):
        (many / f"entry-{i:05d}-{'x' * 60}.txt").write_bytes(b"")
    await restic.backup(ready_repo, [many])
    return ready_repo


async def test_ls_stops_restic_when_the_consumer_stops(
    restic: Restic, many_entries_repo: RepoAccess
) -> None:
    repo = many_entries_repo
    pids: set[int] = set()
    async with contextlib.aclosing(restic.ls(repo, "latest")) as nodes:
        async for node in nodes:
            assert isinstance(node, LsNode)
            pids.update(restic.active_pids)
            break
    assert pids and not restic.active_pids
    assert not any(_process_exists(pid) for pid in pids)
    assert _locks(repo) == []
    count = 0
    async for _ in restic.ls(repo, "latest"):
        count += 1
    assert count >= 4001  # the directory, its entries and the parents


async def test_cancelling_a_task_consuming_ls(
    restic: Restic, many_entries_repo: RepoAccess
) -> None:
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in restic.ls(many_entries_repo, "latest"):
            first.set()
            await asyncio.Event().wait()  # a consumer that hangs mid-stream

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 30)
    pids = set(restic.active_pids)
    assert pids
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The generator may still be suspended, but restic is stopped because its consumer is gone.
    await asyncio.wait_for(restic.wait_idle(), 30)
    assert not any(_process_exists(pid) for pid in pids)
    assert _locks(many_entries_repo) == []


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs Linux pidfd_open")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
@pytest.mark.parametrize("how", ["setpriv", "preexec_fn"])
async def test_restic_is_interrupted_when_the_node_is_killed(
    restic_bin: str, restic: Restic, ready_repo: RepoAccess, huge_sparse_file: Path, how: str
) -> None:
    # A "node" process running a backup through the wrapper; we SIGKILL it mid-backup. The
    # death signal is set by setpriv where it works, else by a preexec_fn (no setpriv found).
    if how == "setpriv" and not any(os.access(p, os.X_OK) for p in restic_process._SETPRIV_PATHS):
        pytest.skip("no setpriv on this machine")
    script = (
        "import asyncio, sys\n"
        "import peerstash.core.restic.process as restic_process\n"
        "from peerstash.core.restic import PasswordValue, RepoAccess, Restic\n"
        + ("restic_process._SETPRIV_PATHS = ()\n" if how == "preexec_fn" else "")
        + "async def main():\n"
        "    r = Restic(sys.argv[1])\n"
        "    repo = RepoAccess(sys.argv[2], PasswordValue(sys.argv[3]), cache_dir=sys.argv[4])\n"
        "    def progress(p):\n"
        "        if p.bytes_done > 0:\n"
        "            print(*r.active_pids, flush=True)\n"
        "    await r.backup(repo, [sys.argv[5]], on_progress=progress)\n"
        "asyncio.run(main())\n"
    )
    node = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        restic_bin,
        ready_repo.uri,
        PASSWORD,
        ready_repo.cache_dir or "",
        str(huge_sparse_file),
        stdout=asyncio.subprocess.PIPE,
    )
    assert node.stdout is not None
    line = await asyncio.wait_for(node.stdout.readline(), 60)
    restic_pid = int(line.split()[0])
    assert _locks(ready_repo)
    node.kill()
    await node.wait()
    # The kernel sends restic SIGINT (PR_SET_PDEATHSIG): it cleans up and exits on its own.
    async with asyncio.timeout(30):
        await _wait_pid_gone(restic_pid)
    assert _locks(ready_repo) == []
    await restic.check(ready_repo)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
async def test_restic_is_spawned_without_preexec_fn(
    restic: Restic, ready_repo: RepoAccess, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A preexec_fn makes subprocess fork the whole node instead of vfork (10-20 ms and 4 ms
    # of CPU per restic under load): with setpriv present, restic is started without one.
    if not any(os.access(p, os.X_OK) for p in restic_process._SETPRIV_PATHS):
        pytest.skip("no setpriv on this machine")
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    real = asyncio.create_subprocess_exec

    async def recording(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        seen.append((args, kwargs))
        return await real(*args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", recording)
    result = await restic.backup(ready_repo, [source])
    assert result.snapshot_id
    (args, kwargs), *_ = [(a, k) for a, k in seen if restic.binary in a]
    assert args[1:4] == ("--pdeathsig", "INT", "--") and args[4] == restic.binary
    assert kwargs["preexec_fn"] is None and kwargs["start_new_session"] is True
    assert not restic.active_pids


async def test_missing_or_unexecutable_restic_is_not_installed(tmp_path: Path) -> None:
    # Started through setpriv, a missing restic would otherwise be setpriv's exit 127.
    not_exec = tmp_path / "restic"
    not_exec.write_text("#!/bin/sh\n")
    not_exec.chmod(0o644)
    for binary, words in (
        (str(tmp_path / "gone"), "was not found"),
        (str(not_exec), "cannot be executed"),
        (str(tmp_path), "cannot be executed"),
        ("peerstash-no-such-restic", "was not found"),
    ):
        with pytest.raises(ResticError) as info:
            await Restic(binary).version()
        assert info.value.kind is ErrorKind.NOT_INSTALLED, binary
        assert words in info.value.message, (binary, info.value.message)


async def test_ls_iterator_type(restic: Restic, ready_repo: RepoAccess, source: Path) -> None:
    await restic.backup(ready_repo, [source])
    stream = restic.ls(ready_repo, "latest")
    first = await anext(stream)
    assert isinstance(first, LsNode)
    await stream.aclose()
    assert not restic.active_pids
