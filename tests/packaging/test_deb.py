"""The .deb, for real: build it, install it into a fresh Debian tree, use it there.

Slow (a package build and a debootstrap: many minutes) and needs root and the network to
Debian's mirror, so it runs in CI (``CI`` set) or with ``PEERSTASH_TEST_DEB=1``. ``PEERSTASH_DEB=path`` skips
the build and tests that package instead.

The checks themselves live in ``packaging/installcheck.py``, shared with
``packaging/test-releases`` (the same test in fresh trees of Debian 13 and Ubuntu 24.04): in a
bookworm tree (``chroot``, /proc and /dev mounted, unmounted in ``finally``),
``apt-get install ./peerstash_*.deb`` pulls restic and the Qt runtime libraries; then
``peerstash --no-gui`` starts, the CLI creates a repository, a plan, backs a folder up and
restores it with the packaged restic (bytes compared), and the tray app starts offscreen and
quits cleanly on SIGTERM. Then the package is upgraded over that populated data dir (the node
starts on it again and backs up), removed and purged.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _installcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "peerstash_installcheck", ROOT / "packaging" / "installcheck.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


installcheck = _installcheck()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(
        not (os.environ.get("CI") or os.environ.get("PEERSTASH_TEST_DEB") == "1"),
        reason="slow (about 5 minutes, fetches Debian's base system): runs in CI, or locally "
        "with PEERSTASH_TEST_DEB=1",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and chroot need root"),
]


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("PEERSTASH_DEB")
    if given:
        return Path(given).resolve()
    t0 = time.monotonic()
    subprocess.run([str(ROOT / "packaging" / "build")], check=True, cwd=ROOT)
    print(f"[deb] packaging/build: {time.monotonic() - t0:.0f} s", flush=True)
    (found,) = (ROOT / "packaging" / "out").glob("peerstash_*.deb")
    return found


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    path = tmp_path_factory.mktemp("bookworm") / "root"
    t0 = time.monotonic()
    subprocess.run([str(ROOT / "packaging" / "rootfs"), str(path), "bookworm"], check=True)
    print(f"[deb] debootstrap: {time.monotonic() - t0:.0f} s", flush=True)
    t = installcheck.Tree(path)
    t.mount()
    try:
        yield t
    finally:
        t.unmount()
        shutil.rmtree(path, ignore_errors=True)


def test_deb_installs_and_works_in_fresh_bookworm(deb: Path, tree) -> None:  # type: ignore[no-untyped-def]
    installcheck.install_and_check(tree, deb, version_prefix="peerstash 0.1")


def test_deb_upgrade_remove_purge(deb: Path, tree, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An upgrade to a bumped Debian revision over the data dir the first test populated (the
    node starts on it and backs up again), remove, purge. No systemd runs in a chroot, so
    restarts are not observable here; what is: every script exits 0, remove disables
    peerstash@ instances, purge removes /etc/peerstash and keeps /var/lib/peerstash."""
    if not (tree.path / "usr/bin/peerstash").exists():  # alone: install the package first
        tree.run("apt-get", "update")
        tree.apt_install(deb)
    installcheck.upgrade_remove_purge(tree, installcheck.bumped_revision(deb, tmp_path))
