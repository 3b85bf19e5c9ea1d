"""pyproject.toml's hand-written ``packages`` list names every folder that has an ``__init__.py``.

The editable dev install finds a subpackage through ``package-dir`` whether it is listed or not,
so a forgotten one passes every test here and is missing only from the wheel and the .deb: the
installed node then fails on its first import of it. Each move that adds a subpackage must add it
to the list; this test says which one was forgotten (or which listed one no longer exists).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def listed_packages(pyproject: Path) -> set[str]:
    """The ``[tool.setuptools] packages`` of ``pyproject``."""
    with pyproject.open("rb") as f:
        return set(tomllib.load(f)["tool"]["setuptools"]["packages"])


def packages_on_disk(root: Path, package_dir: dict[str, str]) -> set[str]:
    """Every folder under the ``package_dir`` roots that has an ``__init__.py``, by import name."""
    found: set[str] = set()
    for name, folder in package_dir.items():
        base = root / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join((name, *rel.parts)))
    return found


def package_dir_of(pyproject: Path) -> dict[str, str]:
    with pyproject.open("rb") as f:
        mapping: dict[str, str] = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return mapping


def test_pyproject_packages_are_the_folders_with_an_init() -> None:
    pyproject = ROOT / "pyproject.toml"
    package_dir = package_dir_of(pyproject)
    assert set(package_dir) == {"peerstash.core", "peerstash.peer", "peerstash.desktop"}
    on_disk = packages_on_disk(ROOT, package_dir)
    listed = listed_packages(pyproject)
    assert sorted(on_disk - listed) == [], "folders with an __init__.py missing from packages"
    assert sorted(listed - on_disk) == [], "packages listed that have no __init__.py"
    # A folder of modules without an __init__.py would be left out of the list unnoticed.
    loose = sorted(
        str(py.parent.relative_to(ROOT))
        for folder in package_dir.values()
        for py in (ROOT / folder).rglob("*.py")
        if not (py.parent / "__init__.py").exists()
    )
    assert loose == [], "folders of modules with no __init__.py"


def test_checker_catches_a_forgotten_subpackage(tmp_path: Path) -> None:
    for folder in ("peer", "peer/links", "peer/links/__pycache__"):
        (tmp_path / folder).mkdir()
    (tmp_path / "peer" / "__init__.py").write_text("")
    (tmp_path / "peer" / "links" / "__init__.py").write_text("")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools]\npackage-dir = { "peerstash.peer" = "peer" }\n'
        'packages = ["peerstash.peer"]\n'
    )
    on_disk = packages_on_disk(tmp_path, package_dir_of(tmp_path / "pyproject.toml"))
    assert on_disk == {"peerstash.peer", "peerstash.peer.links"}
    assert on_disk - listed_packages(tmp_path / "pyproject.toml") == {"peerstash.peer.links"}
