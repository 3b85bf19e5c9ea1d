"""The suite's own layout: a test module imports shared code from ``tests/fixtures/`` only.

Why: a test module (or a layer's ``conftest.py``) imported by another one drags that layer's
fixtures, environment set-up and import-time side effects into a layer that did not ask for
them, and makes a move or a rename in one layer break another. What two layers share lives in
``tests/fixtures/`` (see CONTRIBUTING.md); a ``conftest.py`` only defines its layer's fixtures.

The check parses every module under ``tests/`` with :mod:`ast` (nothing is imported), so it
also sees imports inside functions, relative imports and ``pytest_plugins`` lists.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ALLOWED = "tests.fixtures"


def _module_name(path: Path) -> str:
    """The dotted name of a module under tests/ (``tests/gui/conftest.py`` -> ``tests.gui.conftest``)."""
    parts = path.relative_to(TESTS.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(importer: str, is_package: bool, module: str | None, level: int) -> str:
    """The absolute module an ``import``/``from ... import`` names, relative ones resolved."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: -(level - 1)]
    return ".".join([*base, *([module] if module else [])])


def _is_tests_module(name: str) -> bool:
    return name == "tests" or name.startswith("tests.")


def _allowed(name: str) -> bool:
    return name == ALLOWED or name.startswith(ALLOWED + ".")


def offences(source: str, importer: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) for each import in ``source`` of a tests/ module outside
    tests/fixtures (or of a bare ``conftest``)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(importer, is_package, node.module, node.level)
            # ``from tests import e2e`` and ``from . import conftest`` import submodules.
            if base == "tests" or (node.level and not node.module):
                targets = [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
            else:
                targets = [base]
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytest_plugins" for t in node.targets
        ):
            targets = [
                elt.value
                for elt in ast.walk(node.value)
                if isinstance(elt, ast.Constant) and isinstance(elt.value, str)
            ]
        for target in targets:
            bare_conftest = target == "conftest" or target.startswith("conftest.")
            if bare_conftest or (_is_tests_module(target) and not _allowed(target)):
                found.append((node.lineno, target))
    return sorted(found)


def test_test_modules_import_shared_code_from_tests_fixtures_only() -> None:
    modules = sorted(TESTS.rglob("*.py"))
    # The walk must see the suite, not an empty or wrong directory.
    assert Path(__file__).resolve() in modules
    assert len(modules) > 50, f"only {len(modules)} modules under {TESTS}"
    problems = []
    for path in modules:
        importer = _module_name(path)
        for line, target in offences(
            path.read_text(), importer, is_package=path.name == "__init__.py"
        ):
            rel = path.relative_to(TESTS.parent)
            problems.append(
                f"{rel}:{line}: imports {target}; move what it needs to tests/fixtures/"
            )
    assert not problems, "\n".join(problems)


def test_the_check_sees_every_way_of_importing_a_test_module() -> None:
    src = "\n".join(
        [
            "from tests.e2e.conftest import NodeProc",  # 1
            "import tests.gui.dbus_helpers",  # 2
            "from tests import adversarial",  # 3
            "from .conftest import PASSWORD",  # 4
            "from . import netnodes",  # 5
            "def f():",  # 6
            "    from tests.gui.conftest import node_options",  # 7
            "import conftest",  # 8
            "pytest_plugins = ['tests.e2e.conftest', 'tests.fixtures.nodes']",  # 9
            "from tests.fixtures.nodes import MakeNode",  # 10: allowed
            "from tests.fixtures import gui",  # 11: allowed
            "import tests.fixtures.servers",  # 12: allowed
            "from ..fixtures.cli import FAST",  # 13: allowed (tests.fixtures.cli)
            "import dbus, os",  # 14: not a tests/ module
        ]
    )
    assert offences(src, "tests.gui.test_x") == [
        (1, "tests.e2e.conftest"),
        (2, "tests.gui.dbus_helpers"),
        (3, "tests.adversarial"),
        (4, "tests.gui.conftest"),
        (5, "tests.gui.netnodes"),
        (7, "tests.gui.conftest"),
        (8, "conftest"),
        (9, "tests.e2e.conftest"),
    ]
    # Inside tests/fixtures, a relative import of a sibling is allowed.
    assert offences("from .nodes import FAST\nfrom . import servers", "tests.fixtures.cli") == []
