"""Imports point down only: desktop → peer → core. core knows no Qt or HTTP; peer knows no Qt."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {"core": 0, "peer": 1, "desktop": 2}
FORBIDDEN = {
    "core": ("PySide6", "qasync", "aiohttp", "zeroconf", "peerstash.peer", "peerstash.desktop"),
    "peer": ("PySide6", "qasync", "peerstash.desktop"),
}


def imports_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def sources(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_down(layer: str) -> None:
    files = sources(layer)
    assert files, f"no sources found under {layer}/"
    offenders = []
    for path in files:
        for name in imports_of(path):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[layer]):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_no_bare_layer_imports() -> None:
    """Code says `from peerstash.core...`, never `import core`."""
    offenders = []
    for layer in LAYERS:
        for path in sources(layer):
            for name in imports_of(path):
                if name.split(".")[0] in LAYERS:
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_checker_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from peerstash.desktop import app\nimport PySide6.QtWidgets\n")
    assert imports_of(bad) == ["peerstash.desktop", "PySide6.QtWidgets"]
