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
import hashlib
import json
import os
import shutil
import subprocess
import sys
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
    - DEBIAN/md5sums.
    """
    root = OUT / "deb-root"
    if root.exists():
        shutil.rmtree(root)
    run(["dpkg-deb", "--raw-extract", deb, root])
    control = root / "DEBIAN" / "control"
    fields = control.read_text(encoding="utf-8").splitlines()
    (version,) = [line.split(":", 1)[1].strip() for line in fields if line.startswith("Version:")]
    upstream = version.split("-", 1)[0]
    fields = [f"Version: {upstream}-{revision}" if f.startswith("Version:") else f for f in fields]
    control.write_text("\n".join(fields) + "\n", encoding="utf-8")
    for name in MAINTAINER_SCRIPTS:
        dest = root / "DEBIAN" / name
        shutil.copyfile(PACKAGING / "debian" / name, dest)
        dest.chmod(0o755)
    sums = root / "DEBIAN" / "md5sums"
    sums.write_text(md5sums(root), encoding="utf-8")
    sums.chmod(0o644)
    deb.unlink()
    run(["dpkg-deb", "--build", "--root-owner-group", root, deb], stdout=subprocess.DEVNULL)
    shutil.rmtree(root)
    log(f"{deb.name}: Version {upstream}-{revision}, maintainer scripts and md5sums added")


def toml_value(value: object) -> str:
    # JSON strings, numbers, booleans and lists of them are valid TOML values.
    return json.dumps(value)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-apt", action="store_true", help="do not apt-get install anything")
    p.add_argument("-v", "--verbose", action="store_true", help="verbose Briefcase output")
    args = p.parse_args()
    started = time.monotonic()

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
    stage_project()

    overrides = {
        "template": str((ROOT / target["template"]).resolve()),
        "requires": app_requires(wheel),
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
    check_shared_objects(bundle)
    for dest, src in target.get("files", {}).items():
        path = bundle / dest
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / src, path)
        path.chmod(0o644)
        print(f"  + /{dest} (from {src})")

    log("briefcase build linux system")
    run([*briefcase, "build", "linux", "system", *opts], cwd=STAGE, env=env)
    log("briefcase package linux system")
    run(
        [*briefcase, "package", "linux", "system", "--adhoc-sign", *opts],
        cwd=STAGE,
        env=env,
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
