"""Suite-wide configuration: the fixture plugins, and the ``slow`` marker by layer.

``pytest -m "not slow"`` is the fast loop (the unit tests, about a minute on two cores): every
test outside ``tests/unit`` starts real processes, servers or nodes and is marked ``slow`` here,
so a new test file lands in the right subset by where it is put. A unit test that is slow
anyway carries ``@pytest.mark.slow`` itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures.servers", "tests.fixtures.nodes"]

_UNIT = Path(__file__).parent / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _UNIT not in item.path.parents:
            item.add_marker(pytest.mark.slow)
