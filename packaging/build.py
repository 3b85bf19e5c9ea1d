"""Build Peerstash's .deb with Briefcase, offline but for PyPI and Debian's apt repositories.

Run through ``packaging/build`` (Debian's /usr/bin/python3, standard library only). Steps:

1. apt-get install what the build machine lacks: the build packages of briefcase.toml, and the
   app's ``system_requires`` and ``system_runtime_requires`` from pyproject.toml (restic, the
   libraries Qt loads), which Briefcase insists on finding installed before it builds;
2. a venv at packaging/.build-venv with the pinned Briefcase from PyPI;
3. our wheel, built from a copy of the checkout (the working tree stays clean);
4. a staging project in packaging/out/stage: pyproject.toml as it is, plus the files Briefcase
   wants next to it (CHANGELOG, license) that live in packaging/ in our layout;
5. ``briefcase create/build/package linux system`` there, with our template and our wheel
   given as ``-C`` overrides, and the extra files of briefcase.toml copied into the package
   between create and build;
6. Briefcase's .deb is finished (``finish_deb``): Version gets the Debian revision, our
   maintainer scripts (packaging/debian/) and an md5sums file go into DEBIAN/, and it is
   built again with ``dpkg-deb --root-owner-group``;
7. the .deb lands in packaging/out/.
"""

from __future__ import annotations

import argparse
import calendar
import email
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"
OUT = PACKAGING / "out"
STAGE = OUT / "stage"
VENV = PACKAGING / ".build-venv"
SYSTEM_PYTHON = "/usr/bin/python3"
#: What our wheel is built from (pyproject's package-dir mapping needs these folders).
WHEEL_SOURCES = ["pyproject.toml", "README.md", "core", "peer", "desktop"]


def log(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def run(cmd: Sequence[str | Path], **kw: Any) -> None:
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo"]


def apt_install(packages: list[str]) -> None:
    """Install the Debian packages that are missing (one apt-get update, only if needed)."""
    missing = [
        p
        for p in packages
        if subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True, check=False
        ).stdout.strip()
        != "install ok installed"
    ]
    if not missing:
        return
    log(f"apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run([*sudo(), "apt-get", "update"], env=env)
    run([*sudo(), "apt-get", "install", "-y", "--no-install-recommends", *missing], env=env)


def briefcase_system_packages() -> list[str]:
    """The Debian packages Briefcase checks for (``dpkg -s``) before ``create``/``build``: the
    app's ``system_requires`` and ``system_runtime_requires`` (pyproject.toml)."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        app = tomllib.load(f)["tool"]["briefcase"]["app"]["peerstash"]
    debian = app.get("linux", {}).get("system", {}).get("debian", {})
    return [*debian.get("system_requires", []), *debian.get("system_runtime_requires", [])]


def build_venv(requirement: str) -> Path:
    python = VENV / "bin" / "python"
    stamp = VENV / ".requirement"
    if python.exists() and stamp.exists() and stamp.read_text() == requirement:
        return python
    log(f"venv {VENV} with {requirement}")
    if VENV.exists():
        shutil.rmtree(VENV)
    run([SYSTEM_PYTHON, "-m", "venv", VENV])
    run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"])
    run([python, "-m", "pip", "install", "-q", requirement, "build"])
    stamp.write_text(requirement)
    return python


def build_wheel(python: Path) -> Path:
    src = OUT / "wheel-src"
    wheels = OUT / "wheels"
    for d in (src, wheels):
        if d.exists():
            shutil.rmtree(d)
    src.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in WHEEL_SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    log("building our wheel")
    run([python, "-m", "build", "--wheel", "--outdir", wheels, src], stdout=subprocess.DEVNULL)
    (wheel,) = wheels.glob("peerstash-*.whl")
    return wheel


def stage_project() -> None:
    if STAGE.exists():
        shutil.rmtree(STAGE)
    STAGE.mkdir(parents=True)
    shutil.copy2(ROOT / "pyproject.toml", STAGE / "pyproject.toml")
    shutil.copy2(PACKAGING / "CHANGELOG.md", STAGE / "CHANGELOG.md")
    for rel in ("packaging/LICENSE", "packaging/launcher", "resources/icons"):
        dest = STAGE / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / rel).is_dir():
            shutil.copytree(ROOT / rel, dest, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / rel, dest)


def app_requires(wheel: Path) -> list[str]:
    """pyproject's requires, with the checkout ("./[extras]") replaced by our wheel."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        app = tomllib.load(f)["tool"]["briefcase"]["app"]["peerstash"]
    out = []
    for req in app["requires"]:
        if req.startswith(("./", "../", "/")):
            extras = "[" + req.rsplit("[", 1)[1] if "[" in req else ""
            out.append(f"{wheel}{extras}")
        else:
            out.append(req)
    return out


#: Libraries we ship: if a kept library or plugin needs one that is gone, cleanup went too far.
BUNDLED_PREFIXES = ("libQt6", "libpyside6", "libshiboken6", "libicu")


def check_shared_objects(bundle: Path) -> None:
    """ldd every shared object in the bundle; fail on a missing library we ship ourselves."""
    missing: dict[str, set[str]] = {}
    for so in bundle.rglob("*.so*"):
        if not so.is_file() or so.is_symlink():
            continue
        out = subprocess.run(["ldd", str(so)], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            name = line.strip().split(" ", 1)[0]
            if "not found" in line and name.startswith(BUNDLED_PREFIXES):
                missing.setdefault(name, set()).add(str(so.relative_to(bundle)))
    if missing:
        lines = [f"  {lib}, needed by {', '.join(sorted(users))}" for lib, users in missing.items()]
        raise SystemExit("cleanup_paths removed libraries still in use:\n" + "\n".join(lines))
    log("ldd: every bundled shared object finds the libraries we ship")


#: Maintainer scripts copied into DEBIAN/ (Briefcase writes only DEBIAN/control).
MAINTAINER_SCRIPTS = ("postinst", "prerm", "postrm")


def md5sums(root: Path) -> str:
    """DEBIAN/md5sums: one ``md5  path`` line per regular file (dpkg --verify reads it)."""
    lines = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == "DEBIAN" or path.is_symlink() or not path.is_file():
            continue
        digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
        lines.append(f"{digest}  {rel.as_posix()}\n")
    return "".join(lines)


def finish_deb(deb: Path, revision: int) -> None:
    """What Briefcase 0.4.7 leaves out of the .deb, put in: rebuild ``deb`` in place with

    - ``Version: X.Y.Z-REVISION`` (Briefcase writes the bare upstream version, so a
      packaging-only rebuild with a bumped revision would not count as an upgrade);
    - the maintainer scripts of packaging/debian/ (systemd reload/restart on upgrade, stop
      and disable on remove, /etc/peerstash gone on purge);
    - what lintian asks for (``add_debian_files``: changelog.Debian.gz, DEP-5 copyright,
      overrides, Recommends, Description, Installed-Size);
    - DEBIAN/md5sums;
    - reproducibly: fixed modes and mtimes (SOURCE_DATE_EPOCH), root-owned, sorted by dpkg-deb.
    """
    epoch = source_date_epoch()
    root = OUT / "deb-root"
    if root.exists():
        shutil.rmtree(root)
    run(["dpkg-deb", "--raw-extract", deb, root])
    control = root / "DEBIAN" / "control"
    fields = control.read_text(encoding="utf-8").splitlines()
    (version,) = [line.split(":", 1)[1].strip() for line in fields if line.startswith("Version:")]
    upstream = version.split("-", 1)[0]
    fields = [f"Version: {upstream}-{revision}" if f.startswith("Version:") else f for f in fields]
    for name in MAINTAINER_SCRIPTS:
        dest = root / "DEBIAN" / name
        shutil.copyfile(PACKAGING / "debian" / name, dest)
        dest.chmod(0o755)
    # Before add_debian_files: Installed-Size counts the tree as it ships.
    strip_shared_objects(root)
    remove_empty_dirs(root)
    codename = re.search(r"~[a-z]+-([a-z0-9]+)_[^_]+\.deb$", deb.name)
    fields = add_debian_files(root, fields, codename.group(1) if codename else "unstable", epoch)
    control.write_text("\n".join(fields) + "\n", encoding="utf-8")
    sums = root / "DEBIAN" / "md5sums"
    sums.write_text(md5sums(root), encoding="utf-8")
    normalize_tree(root, epoch)
    deb.unlink()
    run(
        ["dpkg-deb", "--build", "--root-owner-group", root, deb],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)},
    )
    shutil.rmtree(root)
    log(f"{deb.name}: Version {upstream}-{revision}, maintainer scripts, Debian files, md5sums")


# --- Size, lint and reproducibility (issue 14) -------------------------------------------------


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH as given, else HEAD's commit date: every timestamp the build writes
    (wheel entries, man page date, changelog date, file mtimes, the .deb's ar and tar headers)
    comes from it, so two builds of one commit give the same bytes."""
    given = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if given:
        return int(given)
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%ct"],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:  # a source tree without git (an unpacked archive, a chroot)
        out = None
    if out is None or out.returncode != 0 or not out.stdout.strip():
        raise SystemExit(
            "no git commit to date the build (not a git checkout, or git is not installed): "
            "set SOURCE_DATE_EPOCH, e.g. to the release's date in seconds since 1970"
        )
    return int(out.stdout.strip())


def lock_path() -> Path:
    """The lock for the Python that runs the build (it is the one the package runs on)."""
    machine = os.uname().machine
    return PACKAGING / f"requirements-cp{sys.version_info[0]}{sys.version_info[1]}-{machine}.lock"


def write_lock(python: Path, wheel: Path) -> Path:
    """Resolve pyproject's requirements (our wheel's dependencies included) with pip and write
    every distribution pip would install as ``name==version --hash=sha256:...``."""
    reqs = app_requires(wheel)
    report = OUT / "lock-report.json"
    run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--only-binary",
            ":all:",
            "--report",
            report,
            *reqs,
        ]
    )
    data = json.loads(report.read_text(encoding="utf-8"))
    lines = []
    for item in data["install"]:
        name = item["metadata"]["name"]
        if name.lower() == "peerstash":
            continue
        sha = item["download_info"]["archive_info"]["hashes"]["sha256"]
        lines.append(f"{name}=={item['metadata']['version']} \\\n    --hash=sha256:{sha}\n")
    path = lock_path()
    path.write_text(
        "# Exact Python requirements of the package, for this Python and machine.\n"
        '# Written by `packaging/build --lock` (see docs/install.md, "The lock file"):\n'
        "# packaging/build installs exactly these with pip --require-hashes.\n"
        + "".join(sorted(lines, key=str.lower)),
        encoding="utf-8",
    )
    return path


def locked_requires(wheel: Path, extras: str) -> list[str]:
    """pip arguments for Briefcase's ``requires``: a requirements file holding the lock and
    our wheel (by its hash), installed in --require-hashes mode, so nothing unlocked (no new
    release on PyPI, no dependency the lock lacks) gets into the package."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    reqs = OUT / "requirements.txt"
    reqs.write_text(
        lock_path().read_text(encoding="utf-8")
        + f"peerstash{extras} @ {wheel.as_uri()} --hash=sha256:{digest}\n",
        encoding="utf-8",
    )
    return ["--require-hashes", "-r", str(reqs)]


def is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def strip_shared_objects(root: Path) -> None:
    """Strip every ELF file as dh_strip does (``--strip-unneeded``, no .comment and .note
    sections): the wheels of cryptography, asyncpg, greenlet… ship symbol tables, Qt's keep
    their .comment. strip is deterministic (same input, same bytes), and idempotent."""
    before = after = 0
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file() or not is_elf(path):
            continue
        before += path.stat().st_size
        mode = path.stat().st_mode
        subprocess.run(
            [
                "strip",
                "--strip-unneeded",
                "--remove-section=.comment",
                "--remove-section=.note",
                str(path),
            ],
            check=True,
        )
        path.chmod(mode)
        after += path.stat().st_size
    log(f"strip: {before / 1e6:.1f} MB of ELF files down to {after / 1e6:.1f} MB")


def scrub_install_records(bundle: Path) -> None:
    """pip writes the build machine's path of our wheel into direct_url.json, and RECORD lines
    for console scripts it put outside app_packages (``../../bin/alembic``, not shipped, whose
    hash covers a shebang with the build venv's path): both go (nothing reads them at run
    time)."""
    for direct in sorted(bundle.rglob("*.dist-info/direct_url.json")):
        direct.unlink()
    for record in sorted(bundle.rglob("*.dist-info/RECORD")):
        lines = record.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [ln for ln in lines if "/direct_url.json," not in ln and not ln.startswith("../")]
        if kept != lines:
            record.write_text("".join(kept), encoding="utf-8")
    leaks = [
        str(p.relative_to(bundle))
        for p in bundle.rglob("*.dist-info/*")
        if p.is_file() and str(ROOT).encode() in p.read_bytes()
    ]
    if leaks:
        raise SystemExit(f"the build path {ROOT} is written in: {', '.join(leaks)}")


def write_man_page(bundle: Path, version: str, epoch: int) -> None:
    """peerstash(1) from the CLI's parser (packaging/manpage.py), run on the bundle's own
    libraries with a fixed environment; Briefcase gzips ``<bundle dir>/peerstash.1``."""
    app = bundle / "usr" / "lib" / "peerstash"
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    env = {
        "PATH": "/usr/bin:/bin",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": f"{app / 'app'}:{app / 'app_packages'}",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
    }
    out = bundle.parent / "peerstash.1"
    run(
        [SYSTEM_PYTHON, PACKAGING / "manpage.py", "--version", version, "--date", date, "-o", out],
        env=env,
    )


#: The Debian changelog's distribution, maintainer line and urgency.
CHANGELOG_URGENCY = "medium"


def debian_changelog(package: str, version: str, distribution: str, epoch: int) -> str:
    """packaging/CHANGELOG.md (``## X.Y.Z (date or unreleased)`` and ``- item`` lines) as a
    Debian changelog: one entry per release, the newest carrying the full package version."""
    text = (PACKAGING / "CHANGELOG.md").read_text(encoding="utf-8")
    maintainer = "Peerstash developers <maintainers@peerstash.invalid>"
    entries: list[str] = []
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        head, _, body = block.partition("\n")
        m = re.match(r"(\S+)\s*(?:\((.*)\))?", head.strip())
        assert m, head
        upstream, when = m.group(1), (m.group(2) or "").strip()
        items: list[str] = []
        for line in body.splitlines():
            if line.startswith("- "):
                items.append(line[2:].strip())
            elif line.startswith("  ") and items:
                items[-1] += " " + line.strip()
        stamp = epoch
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", when):
            stamp = calendar.timegm(time.strptime(when + " 12", "%Y-%m-%d %H"))  # noon UTC
        full = version if not entries else f"{upstream}-1"
        lines = [f"{package} ({full}) {distribution}; urgency={CHANGELOG_URGENCY}", ""]
        for item in items:
            lines += textwrap.wrap(
                item,
                width=78,
                initial_indent="  * ",
                subsequent_indent="    ",
                break_long_words=False,
                break_on_hyphens=False,  # never split --no-gui
            )
        date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(stamp))
        lines += ["", f" -- {maintainer}  {date}", ""]
        entries.append("\n".join(lines))
    if not entries:
        raise SystemExit("packaging/CHANGELOG.md has no '## VERSION' section")
    return "\n".join(entries)


#: Licences Debian ships in /usr/share/common-licenses: referred to, never copied.
COMMON_LICENSES = {
    "Apache-2.0": "Apache-2.0",
    "GPL-2": "GPL-2",
    "GPL-3": "GPL-3",
    "LGPL-2.1": "LGPL-2.1",
    "LGPL-2.1+": "LGPL-2.1",
    "LGPL-3": "LGPL-3",
}
#: SPDX identifiers (and classifiers) in DEP-5's short names.
SPDX_TO_DEP5 = {
    "Apache 2.0": "Apache-2.0",
    "GPL-2.0-only": "GPL-2",
    "GPL-3.0-only": "GPL-3",
    "LGPL-3.0-only": "LGPL-3",
    "LGPL-2.1-or-later": "LGPL-2.1+",
    "BSD-2-Clause": "BSD-2-clause",
    "BSD-3-Clause": "BSD-3-clause",
    "PSF-2.0": "PSF-2.0",
    "License :: OSI Approved :: MIT License": "MIT",
    "License :: OSI Approved :: Apache Software License": "Apache-2.0",
    "License :: OSI Approved :: Python Software Foundation License": "PSF-2.0",
}
#: Full texts of a common licence (so the file is referred to, not copied).
COMMON_TEXT_MARKERS = ("Apache License", "GNU LESSER GENERAL PUBLIC", "GNU GENERAL PUBLIC")


def dep5_license(meta: email.message.Message) -> str:
    expr = meta.get("License-Expression") or ""
    if not expr:
        short = (meta.get("License") or "").strip()
        if short and "\n" not in short and len(short) < 80:  # a name, not a licence's text
            expr = short
    if not expr:
        classifiers = [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
        expr = " AND ".join(SPDX_TO_DEP5.get(c, c.rsplit(" :: ", 1)[-1]) for c in classifiers)
    words = re.split(r"(\s+|\(|\))", expr.strip())
    out = "".join(
        {"AND": "and", "OR": "or"}.get(w, SPDX_TO_DEP5.get(w, w)) for w in words if w is not None
    )
    return SPDX_TO_DEP5.get(out, out) or "unknown"


def dep5_text(text: str) -> list[str]:
    """Text as a DEP-5 field body: indented one space, blank lines as ' .'."""
    return [(" " + ln.rstrip()) if ln.strip() else " ." for ln in text.strip("\n").splitlines()]


def debian_copyright(root: Path) -> str:
    """DEP-5 copyright for the package: packaging/debian/copyright.in, a paragraph per bundled
    Python distribution (from its metadata and licence files), Peerstash's MIT text."""
    parts = [(PACKAGING / "debian" / "copyright.in").read_text(encoding="utf-8").strip("\n")]
    packages = root / "usr" / "lib" / "peerstash" / "app_packages"
    used: set[str] = {"LGPL-3", "GPL-2", "GPL-3"}
    for dist in sorted(packages.glob("*.dist-info")) if packages.is_dir() else []:
        meta = email.message_from_bytes((dist / "METADATA").read_bytes())
        name = meta["Name"]
        if name.lower() == "peerstash":
            continue
        licence = dep5_license(meta)
        used.update(w for w in re.split(r"\s+|\(|\)", licence) if w and w not in ("and", "or"))
        tops = sorted(
            {
                line.split(",", 1)[0].split("/", 1)[0]
                for line in (dist / "RECORD").read_text(encoding="utf-8").splitlines()
                if line and not line.startswith("..")
            }
            | {dist.name}
        )
        tops = [t for t in tops if (packages / t).exists()]
        files = "\n       ".join(
            f"usr/lib/peerstash/app_packages/{t}{'/*' if (packages / t).is_dir() else ''}"
            for t in tops
        )
        texts = sorted(
            p
            for p in dist.rglob("*")
            if p.is_file() and re.search(r"LICEN[CS]E|COPYING|NOTICE", p.name, re.I)
        )
        copyrights = sorted(
            {
                ln.strip()
                for p in texts
                for ln in p.read_text(encoding="utf-8", errors="replace").splitlines()
                if re.match(r"\s*(Copyright|\(c\)|©)", ln, re.I) and len(ln.strip()) < 120
            }
        ) or [f"the {name} authors"]
        para = [f"Files: {files}", "Copyright: " + "\n           ".join(copyrights)]
        para.append(f"License: {licence}")
        body: list[str] = []
        for p in texts:
            content = p.read_text(encoding="utf-8", errors="replace")
            if any(marker in content[:2000] for marker in COMMON_TEXT_MARKERS):
                continue
            body += [*(["."] if body else []), *dep5_text(content)]
        para += [ln if ln != "." else " ." for ln in body]
        para.append(f"Comment: {name} {meta['Version']}, from its wheel's metadata.")
        parts.append("\n".join(para))
    for short in sorted(used):
        target = COMMON_LICENSES.get(short)
        if target:
            parts.append(
                f"License: {short}\n On Debian systems, the complete text of this licence is in\n"
                f" /usr/share/common-licenses/{target}."
            )
    mit = (PACKAGING / "LICENSE").read_text(encoding="utf-8")
    mit = mit[mit.index("Permission") :]  # the licence text, without its title and copyright
    parts.append("License: MIT\n" + "\n".join(dep5_text(mit)))
    return "\n\n".join(parts) + "\n"


def wrap_description(fields: list[str]) -> list[str]:
    """Description: the synopsis without a final full stop, the long text re-wrapped to lines of
    at most 79 columns (Briefcase copies pyproject's lines as they are)."""
    out: list[str] = []
    i = 0
    while i < len(fields):
        line = fields[i]
        if not line.startswith("Description:"):
            out.append(line)
            i += 1
            continue
        synopsis = line.split(":", 1)[1].strip().rstrip(".")
        body = []
        i += 1
        while i < len(fields) and fields[i].startswith(" "):
            body.append(fields[i].strip())
            i += 1
        paragraphs = " ".join(body).split(" . ")
        out.append(f"Description: {synopsis}")
        for n, para in enumerate(paragraphs):
            if n:
                out.append(" .")
            out += textwrap.wrap(
                para,
                width=79,
                initial_indent=" ",
                subsequent_indent=" ",
                break_long_words=False,
                break_on_hyphens=False,
            )
    return out


def installed_size(root: Path) -> int:
    """Installed-Size in KiB, counted as dpkg-gencontrol does: each file rounded up to 1 KiB,
    each directory and symlink 1 KiB."""
    total = 0
    for path in root.rglob("*"):
        if path.relative_to(root).parts[0] == "DEBIAN":
            continue
        if path.is_symlink() or path.is_dir():
            total += 1
        else:
            total += (path.stat().st_size + 1023) // 1024
    return total


def write_gzip(path: Path, data: bytes) -> None:
    """gzip -9n: no name, no time stamp in the header (reproducible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        path.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f,
    ):
        f.write(data)
    path.chmod(0o644)


def add_debian_files(root: Path, fields: list[str], distribution: str, epoch: int) -> list[str]:
    """Files and control fields lintian expects of a Debian package: changelog.Debian.gz,
    a DEP-5 copyright, lintian overrides (packaging/debian/lintian-overrides), Recommends
    (briefcase.toml ``recommends``: Wayland), a wrapped Description, Installed-Size (last:
    it counts everything). Returns the new control fields."""
    with (ROOT / "briefcase.toml").open("rb") as f:
        target = tomllib.load(f)["linux"]["system"]
    value = {f.split(":", 1)[0]: f.split(":", 1)[1].strip() for f in fields if ":" in f}
    package, version = value["Package"], value["Version"]
    doc = root / "usr" / "share" / "doc" / package
    write_gzip(
        doc / "changelog.Debian.gz",
        debian_changelog(package, version, distribution, epoch).encode("utf-8"),
    )
    copyright_file = doc / "copyright"
    copyright_file.write_text(debian_copyright(root), encoding="utf-8")
    copyright_file.chmod(0o644)
    overrides = root / "usr" / "share" / "lintian" / "overrides" / package
    overrides.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PACKAGING / "debian" / "lintian-overrides", overrides)
    overrides.chmod(0o644)

    fields = wrap_description(
        [f for f in fields if not f.startswith(("Recommends:", "Installed-Size:"))]
    )
    recommends = target.get("recommends", [])
    if recommends:
        depends = [i for i, f in enumerate(fields) if f.startswith("Depends:")]
        at = depends[0] + 1 if depends else len(fields)
        fields.insert(at, "Recommends: " + ", ".join(recommends))
    at = next(i for i, f in enumerate(fields) if f.startswith("Architecture:")) + 1
    fields.insert(at, f"Installed-Size: {installed_size(root)}")
    return fields


def remove_empty_dirs(root: Path) -> None:
    """Empty directories under /usr/lib go: what cleanup_paths left of a folder of stubs."""
    for path in sorted((root / "usr" / "lib").rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()


def normalize_tree(root: Path, epoch: int) -> None:
    """Fixed mtimes (SOURCE_DATE_EPOCH) and modes on everything, so neither a checkout's mtimes
    nor the build machine's umask reach the package: directories 0755; 0755 for files that
    were executable and are programs (an ELF executable, not a shared library, or a script
    with ``#!``), 0644 for the rest (wheels mark libraries and plain modules executable).
    """
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_symlink():
            pass
        elif path.is_dir():
            path.chmod(0o755)
        else:
            program = False
            if path.stat().st_mode & 0o111:
                with path.open("rb") as f:
                    head = f.read(4)
                shared = re.search(r"\.so(\.[0-9.]+)?$", path.name) is not None
                program = head[:2] == b"#!" or (head == b"\x7fELF" and not shared)
            path.chmod(0o755 if program else 0o644)
        os.utime(path, (epoch, epoch), follow_symlinks=False)
    root.chmod(0o755)
    os.utime(root, (epoch, epoch))


def toml_value(value: object) -> str:
    # JSON strings, numbers, booleans and lists of them are valid TOML values.
    return json.dumps(value)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-apt", action="store_true", help="do not apt-get install anything")
    p.add_argument("-v", "--verbose", action="store_true", help="verbose Briefcase output")
    p.add_argument(
        "--lock",
        action="store_true",
        help="resolve the requirements anew, write the lock file for this Python, and stop",
    )
    args = p.parse_args()
    started = time.monotonic()
    # One time for everything the build stamps (see source_date_epoch).
    epoch = source_date_epoch()
    os.environ["SOURCE_DATE_EPOCH"] = str(epoch)

    with (ROOT / "briefcase.toml").open("rb") as f:
        conf = tomllib.load(f)
    target = conf["linux"]["system"]
    if Path(sys.executable).resolve() != Path(conf["briefcase"]["python"]).resolve():
        print(f"run me with {conf['briefcase']['python']} (packaging/build does)", file=sys.stderr)
        return 2

    if not args.no_apt:
        apt_install(list(dict.fromkeys([*target["build_requires"], *briefcase_system_packages()])))
    python = build_venv(conf["briefcase"]["requirement"])
    wheel = build_wheel(python)
    if args.lock:
        log(f"lock written: {write_lock(python, wheel)}")
        return 0
    stage_project()

    requires = app_requires(wheel)
    if lock_path().exists():
        (ours,) = [r for r in requires if r.startswith(str(wheel))]
        requires = locked_requires(wheel, ours[len(str(wheel)) :])
        log(f"requirements: exactly {lock_path().relative_to(ROOT)} (pip --require-hashes)")
    else:
        log(
            f"WARNING: no {lock_path().relative_to(ROOT)}: requirements resolved anew, the "
            "package is not reproducible (packaging/build --lock writes one)"
        )
    overrides = {
        "template": str((ROOT / target["template"]).resolve()),
        "requires": requires,
        **target.get("overrides", {}),
    }
    opts = [f"-C{key}={toml_value(value)}" for key, value in overrides.items()]
    opts += ["--no-input"] + (["-vv"] if args.verbose else [])
    briefcase = [str(VENV / "bin" / "briefcase")]
    # Briefcase's own cache (tools, templates) stays in packaging/out, not in ~/.cache.
    home = OUT / "briefcase-home"
    home.mkdir(parents=True, exist_ok=True)
    # Debian's tools first on PATH: a pyenv or /usr/local python3.X-config must not leak in.
    path = f"/usr/sbin:/usr/bin:/sbin:/bin:{os.environ.get('PATH', '')}"
    env = {**os.environ, "BRIEFCASE_HOME": str(home), "PATH": path}

    log("briefcase create linux system")
    run([*briefcase, "create", "linux", "system", *opts], cwd=STAGE, env=env)

    (bundle,) = (STAGE / "build" / "peerstash").glob("*/*/peerstash-*")
    scrub_install_records(bundle)
    check_shared_objects(bundle)
    write_man_page(bundle, bundle.name.split("-", 1)[1], epoch)
    for dest, src in target.get("files", {}).items():
        path = bundle / dest
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / src, path)
        path.chmod(0o644)
        print(f"  + /{dest} (from {src})")

    log("briefcase build linux system")
    run([*briefcase, "build", "linux", "system", *opts], cwd=STAGE, env=env)
    log("briefcase package linux system")
    # Uncompressed: finish_deb unpacks this .deb and compresses the final one (once, not twice).
    run(
        [*briefcase, "package", "linux", "system", "--adhoc-sign", *opts],
        cwd=STAGE,
        env={**env, "DPKG_DEB_COMPRESSOR_TYPE": "none"},
    )

    debs = sorted((STAGE / "dist").glob("*.deb"))
    if len(debs) != 1:
        print(f"expected one .deb in {STAGE / 'dist'}, found {debs}", file=sys.stderr)
        return 1
    for old in OUT.glob("*.deb"):
        old.unlink()
    deb = OUT / debs[0].name
    shutil.copy2(debs[0], deb)
    finish_deb(deb, int(target.get("overrides", {}).get("revision", 1)))
    log(f"{deb} ({deb.stat().st_size / 1e6:.1f} MB) in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
