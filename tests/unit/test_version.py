"""One version: pyproject.toml's, as every part of Peerstash reports it."""

from __future__ import annotations

import tomllib
from pathlib import Path

from peerstash.core import __version__
from peerstash.desktop.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


def test_version_is_pyprojects(capsys) -> None:  # type: ignore[no-untyped-def]
    with (ROOT / "pyproject.toml").open("rb") as f:
        declared = tomllib.load(f)["project"]["version"]
    assert __version__ == declared
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"peerstash {declared}"
    # Nothing else in the tree pins a version of its own.
    init = (ROOT / "core" / "__init__.py").read_text()
    assert declared not in init
