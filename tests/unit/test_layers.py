"""Imports point down only: desktop → peer → core. core knows no Qt or HTTP; peer knows no Qt.

Inside ``peer`` the subpackages are layers too (see :data:`PEER_ALLOWED`).
"""

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

#: Which parts of ``peerstash.peer`` each part may import. A part is a subpackage, or ``node``
#: for the modules at the top of ``peer/`` (node, daemon, paths, server, health, logflood,
#: systemd: the runtime that wires one node).
#:
#: Why these directions: trust (who a peer is, what it may do) must hold without any wire, so it
#: can be reasoned about and tested alone; a link carries frames between trusted keys and knows
#: nothing of what rides it; the services that ride a link know links and trust but not who
#: started them. The admin API, the CLI and the node runtime sit on top and may use everything
#: (and each other: the node serves the API, the CLI's quick client is in ``api``), but nothing
#: below may reach up to them, or a link or a grant check would start depending on a surface.
PEER_ALLOWED: dict[str, frozenset[str]] = {
    "trust": frozenset({"trust"}),
    "links": frozenset({"trust", "links"}),
    "services": frozenset({"trust", "links", "services"}),
    "api": frozenset({"trust", "links", "services", "api", "cli", "node"}),
    "cli": frozenset({"trust", "links", "services", "api", "cli", "node"}),
    "node": frozenset({"trust", "links", "services", "api", "cli", "node"}),
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


def peer_targets(path: Path) -> list[str]:
    """The ``peerstash.peer`` modules (or names in them) that ``path`` imports, fully dotted.

    ``from peerstash.peer.links import protocol`` gives ``peerstash.peer.links.protocol`` and
    ``from peerstash.peer import systemd`` gives ``peerstash.peer.systemd``, so the part a name
    belongs to is always its third component. Lazy imports and ``TYPE_CHECKING`` ones count.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith("peerstash.peer.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "peerstash.peer" or node.module.startswith("peerstash.peer."):
                names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def part_of_name(name: str, subpackages: set[str]) -> str:
    """``peerstash.peer.links.link.Link`` is in ``links``; ``peerstash.peer.node`` in ``node``."""
    head = name.split(".")[2]
    return head if head in subpackages else "node"


def part_of_file(peer_dir: Path, path: Path) -> str:
    rel = path.relative_to(peer_dir)
    return rel.parts[0] if len(rel.parts) > 1 else "node"


def peer_offenders(peer_dir: Path) -> list[str]:
    subpackages = {d.name for d in peer_dir.iterdir() if (d / "__init__.py").exists()}
    offenders = []
    for path in sorted(peer_dir.rglob("*.py")):
        part = part_of_file(peer_dir, path)
        for name in peer_targets(path):
            target = part_of_name(name, subpackages)
            if target not in PEER_ALLOWED.get(part, frozenset()):
                offenders.append(f"peer/{path.relative_to(peer_dir)} ({part}) imports {name}")
    return offenders


def test_every_peer_subpackage_has_a_rule() -> None:
    subpackages = {d.name for d in (ROOT / "peer").iterdir() if (d / "__init__.py").exists()}
    assert subpackages == set(PEER_ALLOWED) - {"node"}


def test_peer_subpackages_import_down_only() -> None:
    assert peer_offenders(ROOT / "peer") == []


def test_checker_catches_an_import_up_inside_peer(tmp_path: Path) -> None:
    peer = tmp_path / "peer"
    for sub in ("trust", "links", "services", "api"):
        (peer / sub).mkdir(parents=True)
        (peer / sub / "__init__.py").write_text("")
    (peer / "trust" / "bad.py").write_text("from peerstash.peer.links import protocol as proto\n")
    (peer / "links" / "bad.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from peerstash.peer.services.opsync import SyncService\n"
    )
    (peer / "services" / "bad.py").write_text(
        "def later() -> None:\n    from peerstash.peer import daemon\n"
    )
    (peer / "services" / "good.py").write_text(
        "from peerstash.peer.links.link import Link\nfrom peerstash.peer.trust import tokens\n"
    )
    (peer / "api" / "good.py").write_text("import peerstash.peer.node\n")
    assert peer_offenders(peer) == [
        "peer/links/bad.py (links) imports peerstash.peer.services.opsync.SyncService",
        "peer/services/bad.py (services) imports peerstash.peer.daemon",
        "peer/trust/bad.py (trust) imports peerstash.peer.links.protocol",
    ]
