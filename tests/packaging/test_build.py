"""packaging/build.py's finishing step on a small real .deb (dpkg-deb, no Briefcase).

``finish_deb`` is what makes Briefcase's package one a Debian maintainer would accept: the
Debian revision in Version, our maintainer scripts, DEBIAN/md5sums. The full package build
and install run in test_deb.py (slow); this checks the step itself in a second.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


def load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("peerstash_build", ROOT / "packaging/build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_deb(tmp_path: Path) -> Path:
    """A package shaped like Briefcase's: a binary, a symlink, DEBIAN/control only."""
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN").chmod(0o755)
    (root / "DEBIAN" / "control").write_text(
        "Package: peerstash\nVersion: 0.1.0\nArchitecture: all\n"
        "Maintainer: T <t@example.invalid>\nDescription: test\n a test package\n"
    )
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/peerstash").write_text("#!/bin/sh\n")
    (root / "usr/bin/peerstash").chmod(0o755)
    (root / "usr/share/doc/peerstash").mkdir(parents=True)
    (root / "usr/share/doc/peerstash/install.md").write_text("# install\n")
    (root / "usr/bin/ps-link").symlink_to("peerstash")
    deb = tmp_path / "peerstash_0.1.0-1~debian-bookworm_all.deb"
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)],
        check=True,
        capture_output=True,
    )
    return deb


def test_finish_deb_adds_revision_scripts_and_md5sums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = load_build()
    monkeypatch.setattr(build, "OUT", tmp_path / "out")
    (tmp_path / "out").mkdir()
    deb = small_deb(tmp_path)

    build.finish_deb(deb, 3)

    field = subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Version"], capture_output=True, text=True, check=True
    )
    assert field.stdout.strip() == "0.1.0-3"
    # An upgrade for dpkg: 0.1.0-3 > 0.1.0-1 (a packaging-only rebuild).
    assert (
        subprocess.run(["dpkg", "--compare-versions", "0.1.0-3", "gt", "0.1.0-1"]).returncode == 0
    )

    out = tmp_path / "x"
    subprocess.run(["dpkg-deb", "--raw-extract", str(deb), str(out)], check=True)
    for name in ("postinst", "prerm", "postrm"):
        script = out / "DEBIAN" / name
        assert script.read_bytes() == (ROOT / "packaging/debian" / name).read_bytes()
        assert script.stat().st_mode & 0o777 == 0o755
        assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    sums = (out / "DEBIAN/md5sums").read_text().splitlines()
    assert sorted(sums) == sorted(
        f"{hashlib.md5((out / rel).read_bytes()).hexdigest()}  {rel}"
        for rel in (
            "usr/bin/peerstash",
            "usr/share/doc/peerstash/install.md",
            "usr/share/doc/peerstash/changelog.Debian.gz",
            "usr/share/doc/peerstash/copyright",
            "usr/share/lintian/overrides/peerstash",
        )
    )
    contents = subprocess.run(
        ["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    assert all(" root/root " in line for line in contents.splitlines()), contents
    assert not (tmp_path / "out" / "deb-root").exists()


def test_maintainer_scripts_keep_data_and_only_purge_config() -> None:
    """What the scripts remove, read from their text: /etc/peerstash and the cache, never
    /var/lib/peerstash (the nodes' data)."""
    postrm = (ROOT / "packaging/debian/postrm").read_text()
    removes = [line for line in postrm.splitlines() if line.strip().startswith("rm ")]
    assert removes == ["    rm -rf /etc/peerstash /var/cache/peerstash"]
    for name in ("postinst", "prerm", "postrm"):
        text = (ROOT / "packaging/debian" / name).read_text()
        code = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
        assert not any("/var/lib/peerstash" in ln for ln in code), name


def test_finish_deb_debian_files_and_fixed_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What lintian and reproducibility ask of finish_deb: a Debian changelog whose first entry
    is the package's version, a DEP-5 copyright, Installed-Size, a synopsis without a full stop,
    Recommends from briefcase.toml, every mtime at SOURCE_DATE_EPOCH; and the same bytes when
    the same package is finished twice."""
    build = load_build()
    monkeypatch.setattr(build, "OUT", tmp_path / "out")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    (tmp_path / "out").mkdir()
    first = tmp_path / "one"
    first.mkdir()
    deb = small_deb(first)
    build.finish_deb(deb, 2)
    second = tmp_path / "two"
    second.mkdir()
    old_umask = os.umask(0o002)  # another machine's umask must not reach the package
    try:
        again = small_deb(second)
        build.finish_deb(again, 2)
    finally:
        os.umask(old_umask)
    assert deb.read_bytes() == again.read_bytes()

    out = tmp_path / "x"
    subprocess.run(["dpkg-deb", "--raw-extract", str(deb), str(out)], check=True)
    changelog = gzip.decompress((out / "usr/share/doc/peerstash/changelog.Debian.gz").read_bytes())
    head = changelog.decode().splitlines()[0]
    assert head == "peerstash (0.1.0-2) bookworm; urgency=medium"
    assert " -- Peerstash developers <maintainers@peerstash.invalid>  Tue, 14 Nov 2023" in (
        changelog.decode()
    )
    copyright_text = (out / "usr/share/doc/peerstash/copyright").read_text()
    assert copyright_text.startswith(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
    )
    assert "\nLicense: MIT\n Permission is hereby granted" in copyright_text
    control = (out / "DEBIAN/control").read_text()
    size = int(control.split("Installed-Size: ", 1)[1].split("\n", 1)[0])
    assert 1 <= size < 100, control
    assert size == build.installed_size(out)  # the tree as shipped (DEBIAN/ not counted)
    assert "Recommends: libwayland-client0, libwayland-cursor0, libwayland-egl1\n" in control
    assert "\nDescription: test\n" in control
    assert all(len(line) <= 80 for line in control.splitlines())
    listing = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True
    ).stdout
    names = subprocess.run(
        ["tar", "--list", "--full-time", "--verbose"],
        input=listing,
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert all(" 2023-11-14 22:13:20 " in line for line in names.splitlines()), names


def test_debian_changelog_from_release_notes() -> None:
    """packaging/CHANGELOG.md as a changelog dpkg-parsechangelog reads: package, version,
    distribution, one item per bullet."""
    build = load_build()
    text = build.debian_changelog("peerstash", "0.1.0-1", "bookworm", 1700000000)
    parsed = subprocess.run(
        ["dpkg-parsechangelog", "-l-"], input=text, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for field in ("Source: peerstash", "Version: 0.1.0-1", "Distribution: bookworm"):
        assert field in parsed, parsed
    assert "  * First packaged release: the tray app, `peerstash --no-gui` and the CLI in" in (
        text.splitlines()
    )
    assert all(len(line) <= 80 for line in text.splitlines() if line.startswith("  "))


def test_every_lock_holds_every_requirement_of_the_package_at_one_version() -> None:
    """A dependency added to pyproject without ``packaging/build --lock`` would stop the
    package build (pip --require-hashes refuses it): caught here in a second, not by the
    build half an hour into CI. Every release's lock (one per Python) is checked, and they pin
    the same versions, so the three packages carry the same libraries."""
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [
        *project["project"]["dependencies"],
        *project["project"]["optional-dependencies"]["gui"],
        *(
            r
            for r in project["tool"]["briefcase"]["app"]["peerstash"]["requires"]
            if not r.startswith(".")
        ),
    ]

    def name(req: str) -> str:
        return re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].lower().replace("_", "-")

    build = load_build()
    locks = sorted(build.PACKAGING.glob("requirements-cp*-x86_64.lock"))
    assert build.lock_path() in locks
    assert [p.name for p in locks] == [
        "requirements-cp311-x86_64.lock",  # Debian 12
        "requirements-cp312-x86_64.lock",  # Ubuntu 24.04
        "requirements-cp313-x86_64.lock",  # Debian 13
    ]
    pinned: dict[str, list[str]] = {}
    for lock in locks:
        pins = [
            line.split(" ")[0]
            for line in lock.read_text().splitlines()
            if line and not line.startswith((" ", "#"))
        ]
        missing = sorted({name(r) for r in wanted} - {name(p) for p in pins})
        assert not missing, f"not in {lock.name}: {missing} (run packaging/build --lock)"
        pinned[lock.name] = sorted(pins)
    assert len({tuple(p) for p in pinned.values()}) == 1, pinned
