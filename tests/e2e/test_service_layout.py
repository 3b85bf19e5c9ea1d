"""Where a node's restic cache goes, with a real node, the real CLI and real restic.

Under systemd the unit's ``CacheDirectory=`` (``$CACHE_DIRECTORY``) holds it, else the user's
XDG cache; never the data dir (a hardened unit may not write elsewhere, and a copy of the data
dir should not carry a disposable cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from peerstash.core.engine import restic_cache_dir
from tests.fixtures.cli import add_repo, jcli, make_tree


def repo_caches(cache: Path) -> list[Path]:
    """restic's per-repository cache folders (named by repository ID) under ``cache``."""
    return [d for d in cache.iterdir() if d.is_dir() and (d / "snapshots").is_dir()]


@pytest.mark.parametrize("where", ["systemd", "xdg"])
def test_restic_cache_goes_where_the_environment_says(
    node_factory: Any, tmp_path: Path, where: str
) -> None:
    if where == "systemd":
        cache = tmp_path / "var-cache" / "peerstash" / "main"
        env = {"CACHE_DIRECTORY": str(cache), "XDG_CACHE_HOME": str(tmp_path / "xdg-unused")}
    else:
        env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
        cache = tmp_path / "xdg" / "peerstash" / "restic"
    node = node_factory("alpha", **env).start()
    src = make_tree(tmp_path / "src", files=5)
    add_repo(node, "main", str(tmp_path / "repo"))
    node.cli(
        "plan",
        "add",
        "docs",
        "--repo",
        "main",
        "--path",
        str(src),
        "--every",
        "1d",
        "--no-backup-now",
    )
    assert "success, snapshot" in node.cli("backup", "docs", "--wait").stdout
    assert len(jcli(node, "snapshots", "main")) == 1

    assert len(repo_caches(cache)) == 1, sorted(p.name for p in cache.rglob("*"))
    assert not (node.data_dir / "cache").exists()
    if where == "systemd":
        assert not (tmp_path / "xdg-unused").exists()


def test_restic_cache_dir_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/c")
    first = {"CACHE_DIRECTORY": "/var/cache/peerstash/a:/var/cache/x"}
    assert restic_cache_dir(first) == Path("/var/cache/peerstash/a")
    # A relative or empty value is not systemd's: the XDG cache then.
    for env in ({"CACHE_DIRECTORY": "rel/dir"}, {"CACHE_DIRECTORY": ""}, {}):
        assert restic_cache_dir(env) == Path("/c/peerstash/restic")


def test_system_flag_finds_the_system_node(
    node_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``peerstash --system NAME status`` talks to the node in <system data dir>/NAME (here a
    temp dir stands in for /var/lib/peerstash); a CLI pointed elsewhere names that node."""
    import json

    from peerstash.desktop.__main__ import main
    from peerstash.peer import systemd
    from peerstash.peer.cli.commands import status as status_command

    system_root = tmp_path / "var-lib-peerstash"
    monkeypatch.setattr(systemd, "SYSTEM_DATA_DIR", system_root)
    node = node_factory("lab")
    node.data_dir = system_root / "lab"
    node.start()

    assert main(["--system", "lab", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["pid"] == node.proc.pid and status["data_dir"] == str(system_root / "lab")

    # The package was upgraded under the running node: status says a restart is due.
    monkeypatch.setattr(status_command, "__version__", "99.0.0")
    assert main(["--system", "lab", "status"]) == 0
    out = capsys.readouterr().out
    assert f"restart due: the node runs Peerstash {status['version']}, 99.0.0 is installed" in out

    assert main(["--data-dir", str(tmp_path / "nobody"), "status"]) != 0
    err = capsys.readouterr().err
    assert "no Peerstash node is running" in err and "peerstash --system lab" in err

    with pytest.raises(SystemExit) as exit_:
        main(["--system", "lab", "--data-dir", str(tmp_path), "status"])
    assert exit_.value.code == 2
    assert "give one of them" in capsys.readouterr().err


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Any:
    """A read-only tmpfs, as ProtectSystem=strict makes /usr or /home for a unit."""
    import os
    import subprocess

    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)


@pytest.mark.parametrize("under_systemd", [False, True])
def test_restore_into_read_only_place_is_one_clear_line(
    node_factory: Any,
    tmp_path: Path,
    read_only_dir: Path,
    under_systemd: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("INVOCATION_ID", raising=False)  # the test runner may be a unit itself
    env = {"INVOCATION_ID": "0123456789abcdef0123456789abcdef"} if under_systemd else {}
    node = node_factory("alpha", **env).start()
    src = make_tree(tmp_path / "src", files=3)
    add_repo(node, "main", str(tmp_path / "repo"))
    node.cli(
        "plan",
        "add",
        "docs",
        "--repo",
        "main",
        "--path",
        str(src),
        "--every",
        "1d",
        "--no-backup-now",
    )
    node.cli("backup", "docs", "--wait")
    (snap,) = jcli(node, "snapshots", "main")
    ops_before = len(jcli(node, "ops"))

    target = read_only_dir / "restored"
    res = node.cli("restore", "main", snap["id"], "--target", str(target), "--wait", check=False)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    if under_systemd:
        assert lines[0].endswith(
            f"the service is not allowed to write to {target} (read-only for it); see "
            "docs/install.md#restore-under-systemd"
        )
    else:
        assert f"{read_only_dir} is on a read-only file system" in lines[0]
    assert len(jcli(node, "ops")) == ops_before  # refused up front: no failed operation
    assert not target.exists()
    # A writable target still works.
    node.cli("restore", "main", snap["id"], "--target", str(tmp_path / "ok"), "--wait")
    assert (tmp_path / "ok" / src.relative_to("/") / "notes.txt").is_file()
