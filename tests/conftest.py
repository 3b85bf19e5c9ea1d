"""Suite-wide configuration: the fixture plugins, and the ``slow`` marker by layer.

``pytest -m "not slow"`` is the fast loop (the unit tests, about a minute on two cores): every
test outside ``tests/unit`` starts real processes, servers or nodes and is marked ``slow`` here,
so a new test file lands in the right subset by where it is put. A unit test that is slow
anyway carries ``@pytest.mark.slow`` itself.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures.servers", "tests.fixtures.nodes", "tests.fixtures.standin"]

_UNIT = Path(__file__).parent / "unit"
_CACHE = pytest.StashKey[tuple[str, str | None]]()


def pytest_configure(config: pytest.Config) -> None:
    """The user's cache folder is one of the run's own: every node a test starts keeps restic's
    cache under ``$XDG_CACHE_HOME`` (``core/engine.py`` ``restic_cache_dir``), and a test run
    must not leave a cache per test repository in the home of whoever runs it."""
    cache = tempfile.mkdtemp(prefix="peerstash-test-cache-")
    config.stash[_CACHE] = (cache, os.environ.get("XDG_CACHE_HOME"))
    os.environ["XDG_CACHE_HOME"] = cache


def pytest_unconfigure(config: pytest.Config) -> None:
    cache, before = config.stash.get(_CACHE, (None, None))
    if cache is None:
        return
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before
    shutil.rmtree(cache, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _UNIT not in item.path.parents:
            item.add_marker(pytest.mark.slow)
